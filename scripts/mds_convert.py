#!/usr/bin/env python
"""Convert JSONL documents to packed token samples in Mosaic streaming (MDS) shards.

    python scripts/mds_convert.py data/part-*.jsonl.gz \
        --tokenizer assets/tokenizers/shakespeare-bpe-2048 --seq-len 2048 --out /data/mds/web \
        [--compression zstd] [--size-limit 64mb] [--overwrite]

Every non-blank input line is a JSON object with a ``text`` field (plain or gzipped files). Each
document is tokenized with BOS and EOS. The documents are concatenated in the order given and cut
into samples of seq_len + 1 tokens with stride seq_len (inputs = first seq_len tokens, labels = last
seq_len). The tail shorter than one sample is dropped and its size reported. The output is a
streaming MDS directory (``index.json`` + shards, column ``tokens`` = ndarray:int32:<seq_len+1>) plus
``conversion.json`` recording the tokenizer hash and the counts. Train on it with:

    [training]
    dataset = "mds"
    seq_len = 2048                      # must equal --seq-len
    [mosaic_dataloader.dataset]
    local = "/data/mds/web"

Inspect it with ``python scripts/mds_stats.py /data/mds/web``. Tokenization runs in one process.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from titan_recipes.data.common import DataError
from titan_recipes.data.mds import write_mds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", type=Path, help="JSONL files (.jsonl or .jsonl.gz), in packing order")
    parser.add_argument("--tokenizer", required=True, help="HF tokenizer directory (tokenizer.json + tokenizer_config.json)")
    parser.add_argument("--seq-len", type=int, required=True, help="training.seq_len the data is for; samples hold seq_len + 1 tokens")
    parser.add_argument("--out", type=str, required=True, help="output directory: local (must be empty unless --overwrite) or remote, e.g. s3://bucket/prefix (endpoint from S3_ENDPOINT_URL)")
    parser.add_argument("--compression", default=None, help="shard compression: none (default), zstd or zstd:<level>")
    parser.add_argument("--size-limit", default="64mb", help="uncompressed bytes per shard, e.g. 64mb (default) or 1048576")
    parser.add_argument("--overwrite", action="store_true", help="delete the contents of --out first")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    compression = None if args.compression in (None, "none", "") else args.compression
    size_limit = int(args.size_limit) if args.size_limit.isdigit() else args.size_limit
    try:
        summary = write_mds(
            args.inputs, args.tokenizer, args.seq_len, args.out, compression=compression,
            size_limit=size_limit, overwrite=args.overwrite, progress=not args.no_progress,
        )
    except (DataError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(
        f"wrote {summary.out}: {summary.documents:,} documents, {summary.tokens:,} tokens -> "
        f"{summary.samples:,} samples of {summary.seq_len + 1} tokens in {summary.shards} shard(s); "
        f"{summary.tail_tokens} tail tokens unused"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
