#!/usr/bin/env python
"""Throughput of ``titan-recipes prepare`` against the bare tokenizer, and the SlimPajama-627B projection.

Writes a SlimPajama-format corpus (``--mb`` MB of JSONL in ``--files`` files: Tiny Shakespeare's words,
``meta.redpajama_set_name`` with SlimPajama's real domain names), then, in the same run:

* ``encode_batch K threads``: the tokenizer's own ``encode_batch`` over every document, already in
  memory, with ``RAYON_NUM_THREADS=K`` (a fresh process per K): the ceiling, nothing read or written;
* ``prepare mds/blendcorpus --workers K``: the whole command in a fresh process, wall clock from start to
  exit (interpreter start, imports, reading, JSON, tokenizing, packing, hashing, writing, final step).

Ratios: ``x encode_batch`` = tokens/s of the command / tokens/s of ``encode_batch`` with as many threads as
the command has workers (target >= 0.8); ``2 vs 1 workers`` (target >= 1.7 on 2 cores). Each is the
fastest of ``--repeats`` interleaved runs. The command's fixed start-up (the same command on a one-document
corpus: interpreter, imports -- torch through streaming for ``mds`` --, executor, final step) is reported
too, with the ratio it leaves for the per-token work. Then the
projection: hours to prepare SlimPajama's 627B tokens on 1, 8 and 64 nodes of 64 cores, from the
measured per-core rate of ``prepare mds`` with 1 worker, scaled by the measured 2-vs-1 efficiency (capped at 1: no superlinear projection)
(the per-core rate depends on the tokenizer: this one is a 2,048-entry BPE; a 128k-entry Llama-3
tokenizer is slower per token, so measure yours with ``--tokenizer``).

Results: ``<out>/prepare.json`` and ``prepare.png`` (tokens/s vs workers, and the projection); the
table is printed.

    python scripts/bench_prepare.py --out runs/bench            # defaults: 54 MB in 8 files, 1 and 2 workers
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DOMAINS = ("RedPajamaCommonCrawl", "RedPajamaC4", "RedPajamaGithub", "RedPajamaBook", "RedPajamaArXiv",
           "RedPajamaWikipedia", "RedPajamaStackExchange")
SLIMPAJAMA_TOKENS = 627e9
NODE_CORES = 64

ENCODE_BASELINE = r"""
import json, os, sys, time
from pathlib import Path
sys.path.insert(0, os.environ["SRC"])
from titan_recipes.prepare.encoder import DocumentEncoder
enc = DocumentEncoder(sys.argv[1])
texts = [json.loads(l)["text"] for f in sorted(Path(sys.argv[2]).glob("*.jsonl")) for l in open(f) if l.strip()]
enc.encode_batch(texts[:200])
begin = time.perf_counter()
tokens = 0
for i in range(0, len(texts), 1000):
    batch = enc.tok.encode_batch(texts[i:i + 1000])
    tokens += sum(len(e.ids) for e in batch) + 2 * len(batch)  # + BOS/EOS, as prepare counts
print(json.dumps({"tokens": tokens, "seconds": time.perf_counter() - begin}))
"""


def write_corpus(directory: Path, mb: float, files: int, seed: int = 0) -> int:
    words = (REPO / "assets" / "data" / "tinyshakespeare.txt").read_text().split()
    rng = np.random.default_rng(seed)
    per_file = int(mb * 1e6 / files)
    docs = 0
    for f in range(files):
        size = 0
        with open(directory / f"chunk_{f}.jsonl", "w") as out:
            while size < per_file:
                n = int(rng.lognormal(6.0, 0.8))  # SlimPajama-like lengths: median ~400 words, long tail
                text = " ".join(words[j] for j in rng.integers(0, len(words), size=max(n, 5)))
                line = json.dumps({"text": text, "meta": {"redpajama_set_name": DOMAINS[int(rng.integers(len(DOMAINS)))]}})
                out.write(line + "\n")
                size += len(line) + 1
                docs += 1
    return docs


def baseline(tokenizer: str, corpus: Path, threads: int) -> dict:
    env = {**os.environ, "RAYON_NUM_THREADS": str(threads), "SRC": str(REPO / "src")}
    out = subprocess.run([sys.executable, "-c", ENCODE_BASELINE, tokenizer, str(corpus)], env=env, check=True,
                         capture_output=True, text=True).stdout
    r = json.loads(out.strip().splitlines()[-1])
    return {"tokens": r["tokens"], "seconds": r["seconds"], "tokens_per_s": r["tokens"] / r["seconds"]}


def run_prepare(kind: str, corpus: Path, out: Path, tokenizer: str, workers: int, seq_len: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "titan_recipes.cli", "prepare", kind, str(corpus), "--out", str(out),
           "--tokenizer", tokenizer, "--workers", str(workers), "--no-progress"]
    if kind == "mds":
        cmd += ["--seq-len", str(seq_len)]
    begin = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - begin
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    manifest = json.loads((out / "prepare.json").read_text())
    tokens = manifest["totals"]["tokens"]
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
            "content_fingerprint": manifest["content_fingerprint"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(REPO / "runs" / "bench"))
    p.add_argument("--mb", type=float, default=54.0, help="corpus size in MB of JSONL (default 54, as the issue measured)")
    p.add_argument("--files", type=int, default=8, help="input files = tasks (default 8)")
    p.add_argument("--workers", default="1,2", help="worker counts to measure (default 1,2)")
    p.add_argument("--tokenizer", default=str(REPO / "assets" / "tokenizers" / "shakespeare-bpe-2048"))
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--kinds", default="mds,blendcorpus")
    p.add_argument("--repeats", type=int, default=2, help="runs of each measurement, the fastest kept (default 2: "
                                                          "the 2 cores here are shared, single runs vary by ~10%%)")
    args = p.parse_args(argv)
    sys.path.insert(0, str(REPO / "src"))
    from titan_recipes.bench import format_table, write_json

    workers = [int(w) for w in args.workers.split(",")]
    kinds = args.kinds.split(",")
    tmp = Path(tempfile.mkdtemp(prefix="bench_prepare_"))
    try:
        corpus = tmp / "corpus"
        corpus.mkdir()
        docs = write_corpus(corpus, args.mb, args.files)
        result: dict = {"corpus": {"mb": args.mb, "files": args.files, "documents": docs}, "tokenizer": args.tokenizer,
                        "cpu_count": os.cpu_count(), "baseline": {}, "prepare": {k: {} for k in kinds}}
        fastest = lambda runs: min(runs, key=lambda r: r["seconds"])  # noqa: E731
        for k in workers:  # repeats interleaved, so a slow spell of the machine hits every candidate alike
            base_runs, prep_runs = [], {kind: [] for kind in kinds}
            for _ in range(args.repeats):
                base_runs.append(baseline(args.tokenizer, corpus, k))
                for kind in kinds:
                    prep_runs[kind].append(run_prepare(kind, corpus, tmp / f"{kind}_{k}", args.tokenizer, k, args.seq_len))
            result["baseline"][k] = fastest(base_runs)
            for kind in kinds:
                r = result["prepare"][kind][k] = fastest(prep_runs[kind])
                r["x_encode_batch"] = r["tokens_per_s"] / result["baseline"][k]["tokens_per_s"]
        # The fixed start-up (interpreter, imports, executor, final step): the same command on one document.
        tiny = tmp / "tiny"
        tiny.mkdir()
        (tiny / "one.jsonl").write_text(json.dumps({"text": "a few words of text"}) + "\n")
        result["startup_seconds"] = {kind: {k: min(run_prepare(kind, tiny, tmp / f"tiny_{kind}", args.tokenizer, k, 4)["seconds"]
                                                   for _ in range(args.repeats)) for k in workers} for kind in kinds}
        for kind in kinds:
            for k in workers:
                r = result["prepare"][kind][k]
                steady = r["tokens"] / max(r["seconds"] - result["startup_seconds"][kind][k], 1e-9)
                r["x_encode_batch_without_startup"] = steady / result["baseline"][k]["tokens_per_s"]
        rows = []
        for k in workers:
            b = result["baseline"][k]
            rows.append([f"encode_batch {k} thread(s)", f"{b['tokens_per_s'] / 1e6:.2f}M", f"{b['seconds']:.1f}", "1.00", "", "", ""])
            for kind in kinds:
                r = result["prepare"][kind][k]
                vs1 = r["tokens_per_s"] / result["prepare"][kind][workers[0]]["tokens_per_s"] if k != workers[0] else None
                rows.append([f"prepare {kind} --workers {k}", f"{r['tokens_per_s'] / 1e6:.2f}M", f"{r['seconds']:.1f}",
                             f"{r['x_encode_batch']:.2f}", f"{vs1:.2f}" if vs1 else "",
                             f"{result['startup_seconds'][kind][k]:.1f}", f"{r['x_encode_batch_without_startup']:.2f}"])
        fps = {kind: {r["content_fingerprint"] for r in result["prepare"][kind].values()} for kind in kinds}
        result["same_fingerprint_for_all_worker_counts"] = all(len(v) == 1 for v in fps.values())
        # The projection, from the measured per-core rate of prepare mds with 1 worker.
        base = result["prepare"]["mds" if "mds" in kinds else kinds[0]]
        per_core = base[workers[0]]["tokens_per_s"] / workers[0]
        efficiency = min(1.0, (base[workers[-1]]["tokens_per_s"] / base[workers[0]]["tokens_per_s"]) / (workers[-1] / workers[0])) \
            if len(workers) > 1 else 1.0
        projection = {n: SLIMPAJAMA_TOKENS / (per_core * NODE_CORES * n * efficiency) / 3600 for n in (1, 8, 64)}
        bytes_per_token = args.mb * 1e6 / base[workers[0]]["tokens"]
        read_gb_s = {n: per_core * NODE_CORES * n * efficiency * bytes_per_token / 1e9 for n in (1, 8, 64)}
        result["projection"] = {"per_core_tokens_per_s": per_core, "parallel_efficiency": efficiency,
                                "node_cores": NODE_CORES, "tokens": SLIMPAJAMA_TOKENS, "hours_by_nodes": projection,
                                "input_bytes_per_token": bytes_per_token, "input_read_gb_per_s_by_nodes": read_gb_s,
                                "assumes": "the per-core rate holds at scale: storage delivers the input read rate "
                                           "given, and the tokenizer is this one"}
        print(format_table(["what", "tok/s", "s", "x encode_batch", "x 1 worker", "start-up s", "x encode_batch w/o start-up"], rows))
        print(f"same content fingerprint for every worker count: {result['same_fingerprint_for_all_worker_counts']}")
        print(format_table(["nodes (64 cores)", "hours for SlimPajama-627B", "input read GB/s needed"],
                           [[n, f"{h:.2f}", f"{read_gb_s[n]:.2f}"] for n, h in projection.items()]))
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "prepare.json", result)
        plot(result, workers, kinds, out / "prepare.png")
        print(f"wrote {out / 'prepare.json'} and {out / 'prepare.png'}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def plot(result: dict, workers: list[int], kinds: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    a.plot(workers, [result["baseline"][k]["tokens_per_s"] / 1e6 for k in workers], "k--o", label="encode_batch (ceiling)")
    for kind in kinds:
        a.plot(workers, [result["prepare"][kind][k]["tokens_per_s"] / 1e6 for k in workers], "-o", label=f"prepare {kind}")
    first = result["prepare"][kinds[0]][workers[0]]["tokens_per_s"] / 1e6
    a.plot(workers, [first * k / workers[0] for k in workers], ":", color="gray", label="linear from 1 worker")
    a.set_xlabel("workers / threads (this machine)")
    a.set_ylabel("M tokens/s")
    a.set_xticks(workers)
    a.set_title("measured, same run")
    a.legend(fontsize=8)
    nodes = [1, 2, 4, 8, 16, 32, 64]
    p = result["projection"]
    hours = [p["tokens"] / (p["per_core_tokens_per_s"] * p["node_cores"] * n * p["parallel_efficiency"]) / 3600 for n in nodes]
    b.loglog(nodes, hours, "-o")
    for n in (1, 8, 64):
        b.annotate(f"{p['hours_by_nodes'][n]:.2g} h", (n, p["hours_by_nodes"][n]), textcoords="offset points", xytext=(5, 5))
    b.set_xlabel(f"nodes of {p['node_cores']} cores")
    b.set_ylabel("hours")
    b.set_title("projection: SlimPajama-627B, prepare mds")
    b.margins(0.15)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
