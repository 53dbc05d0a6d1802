#!/usr/bin/env python
"""Cold build of the BlendCorpus blend index vs megatron-core's ``BlendedMegatronDatasetBuilder``.

For each setting ``PxD`` (P path prefixes of D documents each) the script writes real Megatron
``.bin``/``.idx`` pairs with :class:`MegatronWriter` (byte-identical to megatron-core's
``IndexedDatasetBuilder``; document lengths uniform in ``--doc-len``, random uint16 ids) into a
temporary directory, and a file list giving each prefix a weight (0.5..2) and one of ``--corpora``
corpora. Then, in the same process and interleaved, it times:

* ours: ``BlendCorpusLoader(...)`` with an empty cache directory: open every shard, fingerprint it,
  build the two-level blend (corpora, then shards), save ``<hash>-blend.npy``;
* megatron-core: ``BlendedMegatronDatasetBuilder(GPTDataset, [N, 0, 0], ...).build()`` with an
  empty ``path_to_cache``, on the same prefixes and weights (one flat blend, Megatron has no corpus
  level), the same ``seq_len`` and ``split``, and ``N`` = our epoch's sample count: open every
  ``IndexedDataset``, build each GPTDataset's document/sample/shuffle indices and the BlendedDataset's
  blending indices, save them.

Each build runs once untimed (both read the files from the page cache afterwards), then
``--repeats`` times each, alternating; the table shows medians and the ratio ours / megatron (the
target is <= 1.0 at every size). The default split is "100,0,0": one split is built on both sides
(megatron builds every split with a share in one call, and hangs on a split of zero documents).

Results: ``<out>/blend_index.json`` and ``<out>/blend_index.png`` (time vs prefixes, log-log).

    python scripts/bench_blend_index.py --out runs/bench      # 2x50000, 200x500, 2000x100 documents
    python scripts/bench_blend_index.py --settings 2x50000 --repeats 7
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from titan_recipes.bench import environment, format_table, write_json
from titan_recipes.data.blendcorpus.loader import BlendCorpusLoader
from titan_recipes.data.blendcorpus.megatron_format import MegatronWriter


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--settings", nargs="+", default=["2x50000", "200x500", "2000x100"],
                   help="PREFIXESxDOCS per setting (default 2x50000 200x500 2000x100)")
    p.add_argument("--doc-len", type=int, nargs=2, default=[50, 800], metavar=("MIN", "MAX"),
                   help="document length range in tokens (default 50 800)")
    p.add_argument("--seq-len", type=int, default=512, help="training.seq_len / sequence_length (default 512)")
    p.add_argument("--split", default="100,0,0", help="blendcorpus.split and megatron's split (default 100,0,0)")
    p.add_argument("--corpora", type=int, default=2, help="corpora the prefixes are dealt into (default 2)")
    p.add_argument("--repeats", type=int, default=5, help="timed builds of each side per setting (default 5)")
    p.add_argument("--data", type=Path, default=None, help="directory for the shards (default: a temporary one)")
    p.add_argument("--out", type=Path, default=Path("runs/bench"), help="result directory (default runs/bench)")
    return p.parse_args(argv)


def write_shards(root: Path, prefixes: int, docs: int, doc_len: tuple[int, int], corpora: int, seed: int = 0):
    """P shards of D documents and their file list; returns (file list, [(weight, prefix)], bytes)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows, blend, nbytes = [], [], 0
    for p in range(prefixes):
        lengths = rng.integers(doc_len[0], doc_len[1] + 1, docs)
        tokens = rng.integers(0, 50_000, int(lengths.sum()), dtype=np.uint16)
        ends = np.cumsum(lengths)
        prefix = root / f"shard{p:05d}"
        with MegatronWriter(prefix, np.uint16) as w:
            for start, end in zip(ends - lengths, ends):
                w.add_document(tokens[start:end])
        weight = round(float(rng.uniform(0.5, 2.0)), 3)
        rows.append(f"{weight} {prefix.name} corpus{p % corpora}\n")
        blend.append((weight, str(prefix)))
        nbytes += tokens.nbytes
    file_list = root / "list.txt"
    file_list.write_text("".join(rows), encoding="utf-8")
    return file_list, blend, nbytes


def build_ours(file_list: Path, cache: Path, seq_len: int, split: str) -> int:
    loader = BlendCorpusLoader(file_list=file_list, seq_len=seq_len, local_batch_size=1, dp_rank=0,
                               dp_world_size=1, split=split, cache_dir=cache)
    return loader.num_samples


class _Tokenizer:
    """What GPTDatasetConfig reads of a tokenizer: vocab size, EOD and pad ids, a cache identity."""

    vocab_size = 50_000
    eod = 0
    pad = 1
    unique_identifiers = {"class": "bench_blend_index"}


def build_megatron(blend: list[tuple[float, str]], cache: Path, seq_len: int, split: str, size: int) -> int:
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    config = GPTDatasetConfig(
        random_seed=1234, sequence_length=seq_len, blend=([p for _, p in blend], [w for w, _ in blend]),
        split=split, path_to_cache=str(cache), tokenizer=_Tokenizer(), reset_position_ids=False,
        reset_attention_mask=False, eod_mask_loss=False,
    )
    train, _, _ = BlendedMegatronDatasetBuilder(GPTDataset, [size, 0, 0], lambda: True, config).build()
    return len(train)


def _timed(fn, cache: Path) -> tuple[float, int]:
    shutil.rmtree(cache, ignore_errors=True)  # cold: no index from an earlier run
    start = time.perf_counter()
    n = fn(cache)
    return time.perf_counter() - start, n


def _init_process_group(root: Path) -> None:
    """megatron's BlendedDataset asks torch.distributed for its rank: a one-process gloo group."""
    import torch.distributed as dist

    if not dist.is_initialized():
        root.mkdir(parents=True, exist_ok=True)  # the rendezvous waits forever for a file it cannot create
        (root / "pg").unlink(missing_ok=True)  # nor may it find one of an earlier run
        dist.init_process_group("gloo", init_method=f"file://{root / 'pg'}", rank=0, world_size=1)


def plot(path: Path, rows: list[dict], title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    x = [r["prefixes"] for r in rows]
    for key, label in (("ours_s", "BlendCorpusLoader (ours)"), ("megatron_s", "megatron-core BlendedMegatronDatasetBuilder")):
        ax.plot(x, [r[key] for r in rows], marker="o", label=label)
    for r in rows:
        ax.annotate(f"{r['ratio']:.2f}x", (r["prefixes"], r["ours_s"]), textcoords="offset points", xytext=(4, -12),
                    fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(x, [f"{r['prefixes']} x {r['docs_per_prefix']:,}\n{r['samples']:,} samples" for r in rows], fontsize=8)
    ax.minorticks_off()
    ax.set_xlabel("prefixes x documents per prefix")
    ax.set_ylabel("cold build, median seconds (log)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    quiet = ("titan_recipes", "megatron")  # per-shard draw notes and megatron's INFO lines: not timed I/O
    levels = {name: logging.getLogger(name).level for name in quiet}  # restored at the end: main() may run
    for name in quiet:  # inside another program (the bench test runs it in pytest's process)
        logging.getLogger(name).setLevel(logging.ERROR)
    import megatron.core  # noqa: F401  (its ~3 s import is not part of a build)

    tmp = tempfile.TemporaryDirectory(prefix="bench-blend-") if args.data is None else None
    data = Path(tmp.name) if tmp else args.data
    _init_process_group(data)
    rows, table_rows = [], []
    try:
        for setting in args.settings:
            prefixes, docs = (int(v) for v in setting.lower().split("x"))
            root = data / setting
            t0 = time.perf_counter()
            file_list, blend, nbytes = write_shards(root, prefixes, docs, tuple(args.doc_len), args.corpora)
            print(f"[{setting}] wrote {prefixes} prefixes ({nbytes / 2**20:.0f} MiB) in {time.perf_counter() - t0:.1f} s",
                  file=sys.stderr)
            ours = lambda cache: build_ours(file_list, cache, args.seq_len, args.split)  # noqa: E731
            _, size = _timed(ours, root / "cache-ours")  # warm-up: both then read the files from the page cache
            theirs = lambda cache: build_megatron(blend, cache, args.seq_len, args.split, size)  # noqa: E731
            _, megatron_size = _timed(theirs, root / "cache-megatron")
            times: dict[str, list[float]] = {"ours": [], "megatron": []}
            for _ in range(args.repeats):
                times["ours"].append(_timed(ours, root / "cache-ours")[0])
                times["megatron"].append(_timed(theirs, root / "cache-megatron")[0])
            ours_s, megatron_s = statistics.median(times["ours"]), statistics.median(times["megatron"])
            row = {
                "setting": setting, "prefixes": prefixes, "docs_per_prefix": docs, "token_bytes": nbytes,
                "samples": size, "megatron_samples": megatron_size, "ours_s": ours_s, "megatron_s": megatron_s,
                "ratio": ours_s / megatron_s, "pass": ours_s <= megatron_s, "runs": times,
            }
            rows.append(row)
            table_rows.append([setting, size, ours_s * 1e3, megatron_s * 1e3, f"{row['ratio']:.2f}",
                               "PASS" if row["pass"] else "FAIL"])
            shutil.rmtree(root, ignore_errors=True)
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
        if tmp:
            tmp.cleanup()
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)

    table = format_table(["prefixes x docs", "samples", "ours ms", "megatron-core ms", "ours / megatron",
                          "target <= 1"], table_rows)
    print(table)
    env = environment()
    result = {
        "benchmark": "blend_index",
        "settings": {"settings": args.settings, "doc_len": args.doc_len, "seq_len": args.seq_len, "split": args.split,
                     "corpora": args.corpora, "repeats": args.repeats, "statistic": "median"},
        "environment": env,
        "results": rows,
        "table": table,
    }
    result["json"] = str(args.out / "blend_index.json")
    result["png"] = str(plot(args.out / "blend_index.png", rows,
                             f"Cold blend-index build, seq {args.seq_len}, split {args.split}; "
                             f"{env['cpu_count']} CPU cores (labels: ours / megatron)"))
    write_json(args.out / "blend_index.json", result)
    print(f"results: {result['json']}, {result['png']}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
