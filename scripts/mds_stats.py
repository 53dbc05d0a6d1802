#!/usr/bin/env python
"""Summarize Mosaic streaming (MDS) datasets, local or remote: shard files, bytes, samples, tokens.

    python scripts/mds_stats.py /data/mds/web [/data/mds/books ...]
    S3_ENDPOINT_URL=http://minio:9000 python scripts/mds_stats.py s3://bucket/web

Reads only ``index.json`` (and ``conversion.json`` when the column has no fixed length), so it is
instant on any size; a remote dataset (s3://, or another scheme streaming downloads from) has just
those two files downloaded into a temporary directory. "raw" is the uncompressed shard size, "compressed" the size of the zstd (or
other) files ("-" when uncompressed). Tokens are samples x tokens per sample as stored: consecutive
samples written by scripts/mds_convert.py share one token, so the packed stream is samples x seq_len + 1.
"""

from __future__ import annotations

import argparse
import sys
from titan_recipes.errors import DataError
from titan_recipes.data.mds import MdsStats, mds_stats


def human(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:,} B" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    raise AssertionError


def table(stats: list[MdsStats]) -> str:
    header = ["dataset", "shard files", "samples", "tokens/sample", "tokens", "raw", "compressed", "compression"]
    rows = [
        [
            s.path, f"{s.shards:,}", f"{s.samples:,}",
            "-" if s.tokens_per_sample is None else str(s.tokens_per_sample),
            "-" if s.tokens is None else f"{s.tokens:,}",
            human(s.raw_bytes), human(s.zip_bytes), s.compression or "none",
        ]
        for s in stats
    ]
    if len(stats) > 1:
        tokens = [s.tokens for s in stats]
        zips = [s.zip_bytes for s in stats if s.zip_bytes is not None]
        rows.append([
            "total", f"{sum(s.shards for s in stats):,}", f"{sum(s.samples for s in stats):,}", "",
            "-" if None in tokens else f"{sum(tokens):,}", human(sum(s.raw_bytes for s in stats)),
            human(sum(zips)) if zips else "-", "",
        ])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if len(stats) > 1:
        lines.insert(len(lines) - 1, lines[1])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dirs", nargs="+", help="MDS directories (each with index.json): local paths or s3://bucket/prefix")
    args = parser.parse_args(argv)
    try:
        stats = [mds_stats(d) for d in args.dirs]
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(table(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
