#!/usr/bin/env python
"""Throughput of the MDS training loader (MDSLoader) per rank, with 0/1/2 worker processes.

Writes a synthetic MDS dataset (random token ids, column ``tokens`` = ``ndarray:int32:<seq_len+1>``,
the format of ``write_mds``) uncompressed and with zstd, then times ``MDSLoader`` (1 DP rank,
shuffled) after a warm-up, for every worker count and both variants. Tokens per batch are
``local_batch_size * seq_len``. Figures are reported

* as ratios to what one H100 consumes: 57.8k tok/s training the 1B model (torchtitan's compiled random-token anchor) and ~690k tok/s
  training debugmodel. Targets: >= 10x the 1B demand with 1 worker, >= 1x debugmodel with 2 workers;
* as a ratio to a baseline measured in the same run: the same samples, in the same order, read with
  plain numpy from memory-mapped uncompressed shard files (no streaming, no torch), i.e. the loader's
  overhead over reading the bytes.

The zstd variant is decompressed into the dataset directory the first time a shard is read (during
the warm-up of the first setting), so its timed reads are of decompressed shards, as in training
after the first touch; ``scripts/bench_mds_remote.py`` measures the cold path.

Results: ``<out>/mds_loader.json`` and ``<out>/mds_loader.png``; the table is printed.

    python scripts/bench_mds_loader.py                     # defaults: 3000 samples of 4096 tokens
    python scripts/bench_mds_loader.py --workers 0 1 2 4 --batches 400
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from titan_recipes.bench import (
    H100_1B_TOKENS_PER_S,
    H100_DEBUGMODEL_TOKENS_PER_S,
    bar_chart,
    environment,
    format_table,
    time_batches,
    write_json,
    write_synthetic_mds,
)
from titan_recipes.data.workers import Workers
from titan_recipes.data.mds import MDSLoader, StreamSpec

TARGETS = {1: ("1b", 10.0), 2: ("debugmodel", 1.0)}
"""workers -> (demand, minimum ratio): >= 10x the 1B demand with 1 worker, >= 1x debugmodel with 2."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=3000, help="samples per dataset variant (default 3000)")
    p.add_argument("--seq-len", type=int, default=4096, help="tokens per sample, as training.seq_len (default 4096)")
    p.add_argument("--batch-size", type=int, default=8, help="local_batch_size (default 8)")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="worker counts (default 0 1 2)")
    p.add_argument("--batches", type=int, default=200, help="timed batches per setting (default 200)")
    p.add_argument("--warmup", type=int, default=5, help="untimed batches first, incl. worker start (default 5)")
    p.add_argument("--compression", nargs="+", default=["none", "zstd"], help="variants (default none zstd)")
    p.add_argument("--size-limit", default="64mb", help="MDS shard size limit (default 64mb)")
    p.add_argument("--data", type=Path, default=None, help="dataset directory (default: a temporary one)")
    p.add_argument("--out", type=Path, default=Path("runs/bench"), help="result directory (default runs/bench)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    return p.parse_args(argv)


def raw_numpy_baseline(loader: MDSLoader, local: str, batches: int, warmup: int, progress: str | None) -> float:
    """Seconds for ``batches`` batches of the loader's own sample order read with numpy from
    memory-mapped uncompressed shards: MDS layout ``uint32 n, uint32 offsets[n+1], samples``."""
    maps = []
    for shard in loader.shards:
        raw = np.memmap(os.path.join(local, shard.raw_data.basename), dtype=np.uint8, mode="r")
        n = int(raw[:4].view(np.uint32)[0])
        maps.append((raw, raw[4 : 4 + 4 * (n + 1)].view(np.uint32)))
    order = loader.epoch_order(0)
    B, L1 = loader.local_batch_size, loader.seq_len + 1

    def batches_iter():
        for k in range(0, 1 << 62, B):
            rows = np.empty((B, L1), np.int64)
            for j in range(B):
                shard_id, row = loader.spanner[int(order[(k + j) % len(order)])]
                raw, offsets = maps[shard_id]
                rows[j] = raw[offsets[row] : offsets[row + 1]].view(np.int32)
            yield rows

    return time_batches(batches_iter(), warmup=warmup, measure=batches, progress=progress)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    progress = not args.no_progress
    tmp = tempfile.TemporaryDirectory(prefix="bench-mds-") if args.data is None else None
    data = Path(tmp.name) if tmp else args.data
    B, L = args.batch_size, args.seq_len
    tokens_per_batch = B * L
    rows, result_rows = [], []
    try:
        for comp in args.compression:
            local = data / comp
            t0 = time.perf_counter()
            payload = write_synthetic_mds(
                local, samples=args.samples, seq_len=L, compression=None if comp == "none" else comp,
                size_limit=args.size_limit,
            )
            write_s = time.perf_counter() - t0
            print(f"[{comp}] wrote {args.samples} samples ({payload / 2**20:.0f} MiB) in {write_s:.1f} s", file=sys.stderr)
            baseline_tps = None
            for nw in args.workers:
                workers = Workers(num_workers=nw, setting="bench")
                loader = MDSLoader(
                    streams=[StreamSpec(name=comp, local=str(local), setting="bench.local")],
                    seq_len=L, local_batch_size=B, dp_rank=0, dp_world_size=1, workers=workers,
                )
                label = f"{comp} w={nw}"
                secs = time_batches(
                    (x for x, _ in loader), warmup=args.warmup, measure=args.batches, progress=label if progress else None
                )
                if baseline_tps is None:  # after the first loader pass, zstd shards are decompressed on disk
                    bsecs = raw_numpy_baseline(
                        loader, str(local), args.batches, args.warmup, f"{comp} numpy" if progress else None
                    )
                    baseline_tps = args.batches * tokens_per_batch / bsecs
                    result_rows.append({
                        "compression": comp, "reader": "numpy memmap baseline", "num_workers": None,
                        "tokens_per_s": baseline_tps, "samples_per_s": args.batches * B / bsecs,
                    })
                    rows.append([comp, "numpy baseline", "-", baseline_tps, baseline_tps / H100_1B_TOKENS_PER_S,
                                 baseline_tps / H100_DEBUGMODEL_TOKENS_PER_S, 1.0, "-"])
                tps = args.batches * tokens_per_batch / secs
                target = TARGETS.get(nw)
                passed = None
                if target:
                    demand = H100_1B_TOKENS_PER_S if target[0] == "1b" else H100_DEBUGMODEL_TOKENS_PER_S
                    passed = tps / demand >= target[1]
                entry = {
                    "compression": comp, "reader": "MDSLoader", "num_workers": nw, "tokens_per_s": tps,
                    "samples_per_s": args.batches * B / secs, "ratio_1b_h100": tps / H100_1B_TOKENS_PER_S,
                    "ratio_debugmodel_h100": tps / H100_DEBUGMODEL_TOKENS_PER_S, "ratio_numpy_baseline": tps / baseline_tps,
                    "target": f">= {target[1]:g}x {target[0]}" if target else None, "pass": passed,
                }
                result_rows.append(entry)
                verdict = "-" if passed is None else f"{'PASS' if passed else 'FAIL'} ({entry['target']})"
                rows.append([comp, "MDSLoader", nw, tps, entry["ratio_1b_h100"], entry["ratio_debugmodel_h100"],
                             entry["ratio_numpy_baseline"], verdict])
    finally:
        if tmp:
            tmp.cleanup()

    header = ["data", "reader", "workers", "tok/s per rank", "x 1B H100 (57.8k)", "x debugmodel H100 (690k)",
              "x numpy baseline", "target"]
    table = format_table(header, rows)
    print(table)
    result = {
        "benchmark": "mds_loader",
        "settings": {"samples": args.samples, "seq_len": L, "local_batch_size": B, "batches": args.batches,
                     "warmup": args.warmup, "workers": args.workers, "compression": args.compression,
                     "size_limit": args.size_limit, "dp_world_size": 1},
        "demand_tokens_per_s": {"1b_h100": H100_1B_TOKENS_PER_S, "debugmodel_h100": H100_DEBUGMODEL_TOKENS_PER_S},
        "environment": environment(),
        "results": result_rows,
        "table": table,
    }
    result["json"] = str(args.out / "mds_loader.json")
    result["png"] = str(bar_chart(
        args.out / "mds_loader.png",
        [f"{r['compression']}\n{'numpy' if r['num_workers'] is None else 'w=%d' % r['num_workers']}" for r in result_rows],
        [r["tokens_per_s"] for r in result_rows],
        title=f"MDS loader tokens/s per rank (seq {L}, batch {B}); {environment()['cpu_count']} CPU cores",
        ylabel="tokens/s (log)", log=True,
        hlines=[(H100_1B_TOKENS_PER_S, "1B on one H100"), (10 * H100_1B_TOKENS_PER_S, "10x 1B target"),
                (H100_DEBUGMODEL_TOKENS_PER_S, "debugmodel on one H100")],
    ))
    write_json(args.out / "mds_loader.json", result)
    print(f"results: {result['json']}, {result['png']}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
