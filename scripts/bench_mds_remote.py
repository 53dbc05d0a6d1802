#!/usr/bin/env python
"""Streaming benchmark: read a remote MDS dataset through MDSLoader into a local cache, cold and warm.

For each remote dataset, one epoch (every sample once, in the loader's shuffled order) is read twice
with a fresh ``MDSLoader`` (``remote=...``, ``local=`` a new cache directory):

* cold: the cache is empty, so building the loader downloads ``index.json`` and reading downloads
  (and, for compressed shards, decompresses) every shard on demand;
* warm: a second loader on the same cache; nothing is downloaded.

Both timings include building the loader. Reported: samples/s and tokens/s (``seq_len`` tokens per
sample), and warm/cold as a ratio measured in the same run.

Modes:

* default (self-contained): starts moto's S3 server (``ThreadedMotoServer``) on 127.0.0.1 at a free
  port, writes a synthetic dataset (random token ids, the column format of ``write_mds``) and uploads
  it twice, uncompressed and zstd, with streaming's ``MDSWriter``; then benchmarks both variants.
* ``--remote s3://bucket/prefix`` (repeatable): an existing dataset; the endpoint comes from
  ``S3_ENDPOINT_URL`` and credentials as boto3 finds them. ``--seq-len`` must match the data.

Results: ``<out>/mds_remote.json`` and ``<out>/mds_remote.png``; the table is printed.

    python scripts/bench_mds_remote.py                              # moto on loopback, 3000 x 4096 tokens
    S3_ENDPOINT_URL=http://minio:9000 python scripts/bench_mds_remote.py --remote s3://data/mds/web --seq-len 2048
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

from titan_recipes.bench import bar_chart, environment, format_table, write_json, write_synthetic_mds
from titan_recipes.data.workers import Workers
from titan_recipes.data.mds import MDSLoader, StreamSpec

BUCKET = "titan-bench"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--remote", action="append", default=None,
                   help="existing remote dataset (s3://bucket/prefix), repeatable; default: self-contained moto mode")
    p.add_argument("--samples", type=int, default=3000, help="samples of the generated dataset (default 3000)")
    p.add_argument("--seq-len", type=int, default=4096, help="tokens per sample, as training.seq_len (default 4096)")
    p.add_argument("--batch-size", type=int, default=8, help="local_batch_size (default 8)")
    p.add_argument("--workers", type=int, default=0, help="loader worker processes (default 0)")
    p.add_argument("--compression", nargs="+", default=["none", "zstd"],
                   help="variants generated in self-contained mode (default none zstd)")
    p.add_argument("--size-limit", default="8mb", help="MDS shard size limit of the generated data (default 8mb)")
    p.add_argument("--cache", type=Path, default=None, help="parent of the local caches (default: a temporary directory)")
    p.add_argument("--out", type=Path, default=Path("runs/bench"), help="result directory (default runs/bench)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    return p.parse_args(argv)


@contextlib.contextmanager
def loopback_s3() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 (free port) with bucket BUCKET; S3_ENDPOINT_URL and test
    credentials are set in ``os.environ`` inside the block and restored after."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    # The server's request log (werkzeug, one INFO line per GET) would bury the table.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server.start()
    keys = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "MOSAICML_STREAMING_AWS_REQUESTER_PAYS", "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "S3_ENDPOINT_URL")
    saved = {k: os.environ.get(k) for k in keys}
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        for k in keys[:3]:
            os.environ.pop(k, None)
        os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                          AWS_DEFAULT_REGION="us-east-1", S3_ENDPOINT_URL=endpoint)
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
        yield endpoint
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


def read_epoch(remote: str, local: Path, args: argparse.Namespace, label: str | None) -> tuple[float, int]:
    """Build a loader on ``remote`` with cache ``local`` and read one epoch; (seconds, samples)."""
    from tqdm import tqdm

    start = time.perf_counter()
    workers = Workers(num_workers=args.workers, setting="bench")
    loader = MDSLoader(
        streams=[StreamSpec(name="bench", local=str(local), remote=remote, setting="bench.local")],
        seq_len=args.seq_len, local_batch_size=args.batch_size, dp_rank=0, dp_world_size=1, workers=workers,
    )
    batches = max(1, loader.num_samples // args.batch_size)
    it = iter(loader)
    for _ in tqdm(range(batches), desc=label, unit="batch", leave=False, disable=label is None):
        next(it)
    del it
    return time.perf_counter() - start, batches * args.batch_size


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    tmp = tempfile.TemporaryDirectory(prefix="bench-mds-remote-") if args.cache is None else None
    root = Path(tmp.name) if tmp else args.cache
    results, rows = [], []
    remote_bytes: dict[str, int] = {}
    try:
        with contextlib.ExitStack() as stack:
            if args.remote:
                remotes = [(r, r) for r in args.remote]
                mode = "remote"
            else:
                endpoint = stack.enter_context(loopback_s3())
                mode = "moto"
                remotes = []
                for comp in args.compression:
                    remote = f"s3://{BUCKET}/{comp}"
                    t0 = time.perf_counter()
                    write_synthetic_mds(
                        root / f"src-{comp}", samples=args.samples, seq_len=args.seq_len,
                        compression=None if comp == "none" else comp, size_limit=args.size_limit, remote=remote,
                    )
                    print(f"[{comp}] wrote and uploaded {args.samples} samples to {remote} ({endpoint}) in "
                          f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)
                    remotes.append((comp, remote))
                    remote_bytes[comp] = sum(f.stat().st_size for f in (root / f"src-{comp}").glob("shard.*"))
            for name, remote in remotes:
                local = root / f"cache-{len(results)}"
                entry = {"data": name, "remote": remote, "remote_shard_bytes": remote_bytes.get(name)}
                for phase in ("cold", "warm"):
                    label = None if args.no_progress else f"{name} {phase}"
                    secs, samples = read_epoch(remote, local, args, label)
                    entry[phase] = {"seconds": secs, "samples": samples, "samples_per_s": samples / secs,
                                    "tokens_per_s": samples * args.seq_len / secs}
                entry["cache_bytes"] = sum(f.stat().st_size for f in local.rglob("*") if f.is_file())
                entry["warm_over_cold"] = entry["warm"]["tokens_per_s"] / entry["cold"]["tokens_per_s"]
                results.append(entry)
                for phase in ("cold", "warm"):
                    rows.append([name, phase, entry[phase]["samples"], entry[phase]["seconds"],
                                 entry[phase]["samples_per_s"], entry[phase]["tokens_per_s"],
                                 entry["warm_over_cold"] if phase == "warm" else 1.0,
                                 "-" if entry["remote_shard_bytes"] is None else f"{entry['remote_shard_bytes'] / 2**20:.1f}"])
    finally:
        if tmp:
            tmp.cleanup()

    table = format_table(["data", "cache", "samples", "seconds", "samples/s", "tokens/s", "x cold", "shard MiB"], rows)
    print(table)
    result = {
        "benchmark": "mds_remote",
        "mode": mode,
        "settings": {"samples": args.samples, "seq_len": args.seq_len, "local_batch_size": args.batch_size,
                     "num_workers": args.workers, "compression": args.compression, "size_limit": args.size_limit},
        "environment": environment(),
        "results": results,
        "table": table,
        "json": str(args.out / "mds_remote.json"),
    }
    result["png"] = str(bar_chart(
        args.out / "mds_remote.png",
        [f"{r['data']}\n{phase}" for r in results for phase in ("cold", "warm")],
        [r[phase]["tokens_per_s"] for r in results for phase in ("cold", "warm")],
        title=f"MDS from {'moto S3 on 127.0.0.1' if mode == 'moto' else 'remote'}: tokens/s, cold vs warm cache\n"
              f"(seq {args.seq_len}, batch {args.batch_size}, {args.workers} workers, one epoch per pass)",
        ylabel="tokens/s (log)", log=True,
    ))
    write_json(args.out / "mds_remote.json", result)
    print(f"results: {result['json']}, {result['png']}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
