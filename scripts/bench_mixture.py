#!/usr/bin/env python
"""Throughput of the mixture engine: registration rows/s, and tokens/s per rank embedded vs served.

1. Writes a synthetic corpus in SlimPajama's format (``{"text", "meta": {"redpajama_set_name"}}``
   lines in ``.jsonl.zst`` files) with SlimPajama's seven domains: documents per domain follow
   SlimPajama's token shares divided by a per-domain mean length, lengths are log-normal (sigma 1)
   around that mean (CommonCrawl ~1.2k tokens, C4 ~0.5k, Book ~20k, ...), the text is random English
   words. Registers it in a fresh index (``SampleIndex.register_dataset``, parser ``slimpajama``):
   rows/s and MB/s.
2. Times :class:`MixtureLoader` per rank, with tokenization on the fly (the repo's tokenizer
   ``assets/tokenizers/shakespeare-bpe-2048``, BOS/EOS per document), seq 4096 and batch 4 (the 1B
   recipe's shape), the natural mixture (weights = document shares), for each ``--ranks`` count R:

   * embedded: R rank processes, each opening the index in-process;
   * served: one ``titan-recipes mixture serve`` subprocess on 127.0.0.1 (for the whole benchmark), R
     rank processes as clients.

   With R > 1 the ranks run as concurrent processes (this script with ``--worker``) that start
   timing together (a file barrier after their warm-up). A rank's tokens/s is ``batches * batch *
   seq_len`` over its timed seconds; the first batch (planning, first chunk) is an untimed warm-up,
   and the timed batches span several chunks (``--tokens`` per rank), so chunk reads and tokenization
   are included at their average rate. Each setting runs ``--repeats`` times, embedded and served
   alternating, against one server; the table shows the median run.
3. The read rate alone (``read_texts`` of chunk-sized blocks of random ids, no tokenization), embedded
   and from the server, and from it and the text bytes per token the number of ranks one server can
   feed at the 1B demand (the server answers one request at a time).

Figures are compared with what one H100 consumes training the 1B model (57.8k tok/s, vanilla torchtitan 0.2.2 on random tokens).
On a shared machine with few cores, R concurrent ranks compete for the same cores (and with the
server): per-rank figures at R > 1 then measure the machine, not the loader.

Results: ``<out>/mixture.json`` and ``<out>/mixture.png``; the table is printed.

    python scripts/bench_mixture.py                          # 20k documents, ranks 1 and 2
    python scripts/bench_mixture.py --docs 100000 --ranks 1 2 4 --tokens 8000000
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
TOKENIZER_DIR = REPO_ROOT / "assets" / "tokenizers" / "shakespeare-bpe-2048"

DOMAINS: dict[str, tuple[float, int]] = {
    "RedPajamaCommonCrawl": (0.522, 1_200),
    "RedPajamaC4": (0.267, 500),
    "RedPajamaGithub": (0.052, 1_500),
    "RedPajamaBook": (0.042, 20_000),
    "RedPajamaArXiv": (0.046, 9_000),
    "RedPajamaWikipedia": (0.038, 750),
    "RedPajamaStackExchange": (0.033, 450),
}
"""SlimPajama domain -> (share of tokens, mean document length in tokens; Book capped at 20k)."""
MODES = ("embedded", "served")
CHARS_PER_TOKEN = 4.0
"""Synthetic characters per nominal token (GPT-2-style tokenizers on English); the repo's small BPE
tokenizer makes more tokens of them, which the loader measures as they are."""
_WORDS = (
    "the of and to in a is that for it as was with be by on not he this are or his from at which but have an "
    "they you were her she there been one all we their has would when if so no will can more other its into "
    "time only new some could these two may first then do any like my now over such our man me even most made "
    "after also did many before must through back years where much your way well down should because each just "
    "those people how too little state good very make world still own see men work long get here between both "
    "life being under never day same another know while last might us great old year off come since against go "
    "came right used take three government system program number during without place however house 1 2 3 42 "
    "2019 x = f(x) return def class import { } ( ) ; : , . ! ?"
).split()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--docs", type=int, default=20_000, help="documents in the synthetic corpus (default 20000)")
    p.add_argument("--files", type=int, default=8, help=".jsonl.zst files they are spread over (default 8)")
    p.add_argument("--seq-len", type=int, default=4096, help="training.seq_len (default 4096)")
    p.add_argument("--batch-size", type=int, default=4, help="local_batch_size (default 4)")
    p.add_argument("--chunk-size", type=int, default=1024, help="mixture.chunk_size in documents (default 1024)")
    p.add_argument("--tokens", type=int, default=4_000_000, help="timed tokens per rank (default 4M)")
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2], help="DP rank counts (default 1 2)")
    p.add_argument("--repeats", type=int, default=3, help="runs of each setting, modes alternating (default 3)")
    p.add_argument("--server", choices=["process", "thread"], default="process",
                   help="served mode's server: a `titan-recipes mixture serve` subprocess (default), or a thread of "
                        "this process (quicker to start, for tests; it shares the GIL with rank 0)")
    p.add_argument("--data", type=Path, default=None, help="corpus and index directory (default: a temporary one)")
    p.add_argument("--out", type=Path, default=Path("runs/bench"), help="result directory (default runs/bench)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # JSON settings of one rank process (internal)
    return p.parse_args(argv)


# -- corpus ------------------------------------------------------------------------------------------
def write_corpus(out: Path, docs: int, files: int, seed: int = 0) -> dict[str, Any]:
    """The synthetic SlimPajama corpus in ``out``; returns its document counts and bytes."""
    import zstd

    rng = np.random.default_rng(seed)
    names = list(DOMAINS)
    doc_weight = np.array([share / length for share, length in DOMAINS.values()])
    domains = rng.choice(len(names), size=docs, p=doc_weight / doc_weight.sum())
    sigma = 1.0
    means = np.array([length for _, length in DOMAINS.values()])[domains] * CHARS_PER_TOKEN
    chars = rng.lognormal(np.log(means) - sigma**2 / 2, sigma).clip(20, 2_000_000).astype(np.int64)
    words = np.array(_WORDS)
    word_chars = np.array([len(w) + 1 for w in _WORDS]).mean()
    out.mkdir(parents=True, exist_ok=True)
    per_file = np.array_split(np.arange(docs), files)
    raw_bytes = 0
    for f, ids in enumerate(per_file):
        lines = []
        for i in ids:
            n = max(1, int(chars[i] / word_chars))
            text = " ".join(words[rng.integers(0, len(words), n)].tolist())
            lines.append(json.dumps({"text": text, "meta": {"redpajama_set_name": names[domains[i]]}}))
        data = ("\n".join(lines) + "\n").encode()
        raw_bytes += len(data)
        (out / f"example_train_{f}.jsonl.zst").write_bytes(zstd.compress(data, 3))
    counts = {names[d]: int(n) for d, n in zip(*np.unique(domains, return_counts=True))}
    return {"docs": docs, "files": files, "bytes": raw_bytes, "domain_docs": counts}


# -- one rank ----------------------------------------------------------------------------------------
def measure_rank(cfg: dict[str, Any]) -> dict[str, Any]:
    """Time one rank's MixtureLoader (see the module docstring); ``cfg`` is JSON-able."""
    import titan_recipes  # noqa: F401  (registers the triton stand-in before torchtitan is imported)
    from torchtitan.components.tokenizer import HuggingFaceTokenizer

    from titan_recipes.bench import time_batches
    from titan_recipes.data.mixture import MixtureLoader, StaticMixture, open_index

    tokenizer = HuggingFaceTokenizer(str(TOKENIZER_DIR))
    index = open_index(cfg["index_dir"], cfg["server"])
    try:
        loader = MixtureLoader(
            index=index, mixture=StaticMixture(cfg["weights"], "redpajama_set_name"), tokenizer=tokenizer,
            seq_len=cfg["seq_len"], local_batch_size=cfg["batch_size"], dp_rank=cfg["rank"],
            dp_world_size=cfg["world"], chunk_size=cfg["chunk_size"], seed=0,
        )
        it = iter(loader)
        next(it)  # warm-up: planning and the first chunk
        if cfg["barrier"]:  # start timing together with the other ranks
            Path(cfg["barrier"], f"ready-{cfg['rank']}").touch()
            deadline = time.monotonic() + 600
            while len(list(Path(cfg["barrier"]).glob("ready-*"))) < cfg["world"]:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"rank {cfg['rank']}: the other ranks did not get ready within 600 s")
                time.sleep(0.01)
        secs = time_batches(it, warmup=0, measure=cfg["batches"], progress=cfg["progress"])
    finally:
        index.close()
    tokens = cfg["batches"] * cfg["batch_size"] * cfg["seq_len"]
    return {"rank": cfg["rank"], "seconds": secs, "tokens": tokens, "tokens_per_s": tokens / secs}


def read_capacity(index_dir: str, server: str, block: int) -> dict[str, float]:
    """Documents and MB of text per second that one reader gets from ``read_texts`` alone (no
    tokenization), in blocks of ``block`` random ids, after an untimed pass over every id (so the
    compressed files are cached, as in a long run)."""
    from titan_recipes.data.mixture import open_index

    with open_index(index_dir, server) as index:
        ids = np.random.default_rng(0).permutation(index.num_samples())
        blocks = [ids[i : i + block] for i in range(0, len(ids), block)]
        for b in blocks:
            index.read_texts(b)
        start, nbytes = time.perf_counter(), 0
        for b in blocks:
            nbytes += sum(len(t.encode()) for t in index.read_texts(b))
        secs = time.perf_counter() - start
    return {"docs_per_s": len(ids) / secs, "text_mb_per_s": nbytes / 1e6 / secs, "seconds": secs}


def text_bytes_per_token(index_dir: str, docs: int = 300) -> float:
    """UTF-8 bytes of text per token of the bench tokenizer (BOS/EOS included), over random documents."""
    from torchtitan.components.tokenizer import HuggingFaceTokenizer

    from titan_recipes.data.mixture import SampleIndex

    tokenizer = HuggingFaceTokenizer(str(TOKENIZER_DIR))
    with SampleIndex(index_dir, read_only=True) as index:
        ids = np.random.default_rng(1).choice(index.num_samples(), size=min(docs, index.num_samples()), replace=False)
        texts = index.read_texts(ids)
    tokens = sum(len(tokenizer.encode(t, add_bos=True, add_eos=True)) for t in texts)
    return sum(len(t.encode()) for t in texts) / tokens


def run_ranks(cfg: dict[str, Any], world: int, tmp: Path) -> list[dict[str, Any]]:
    """``world`` ranks: in this process for 1, else as concurrent ``--worker`` processes."""
    if world == 1:
        return [measure_rank({**cfg, "rank": 0, "world": 1, "barrier": None})]
    barrier = Path(tempfile.mkdtemp(prefix="barrier-", dir=tmp))
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--worker",
             json.dumps({**cfg, "rank": r, "world": world, "barrier": str(barrier), "progress": None})],
            stdout=subprocess.PIPE, text=True,
        )
        for r in range(world)
    ]
    results = []
    for r, proc in enumerate(procs):
        out, _ = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"rank {r} of {world} failed with exit status {proc.returncode}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


# -- server ------------------------------------------------------------------------------------------
def start_server(index_dir: Path, log: Path) -> tuple[subprocess.Popen, str]:
    """``titan-recipes mixture serve`` on a free port of 127.0.0.1; returns once it accepts connections."""
    from titan_recipes.data.mixture.spawn import free_port, spawn_server

    port = free_port()
    return spawn_server(index_dir, port, log=log, timeout=180), f"127.0.0.1:{port}"


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# -- main ----------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.worker:
        print(json.dumps(measure_rank(json.loads(args.worker))), flush=True)
        return {}
    from titan_recipes.bench import H100_1B_TOKENS_PER_S, bar_chart, environment, format_table, write_json
    from titan_recipes.data.mixture import SampleIndex, MixtureServer

    progress = not args.no_progress
    tmp = tempfile.TemporaryDirectory(prefix="bench-mixture-") if args.data is None else None
    data = Path(tmp.name) if tmp else args.data
    B, L = args.batch_size, args.seq_len
    batches = max(1, -(-args.tokens // (B * L)))
    rows, results = [], []
    try:
        t0 = time.perf_counter()
        corpus = write_corpus(data / "corpus", args.docs, args.files)
        print(f"wrote {args.docs} documents ({corpus['bytes'] / 2**20:.0f} MiB of JSONL) in "
              f"{time.perf_counter() - t0:.1f} s: {corpus['domain_docs']}", file=sys.stderr)
        index_dir = data / "index"
        t0 = time.perf_counter()
        with SampleIndex(index_dir) as index:
            report = index.register_dataset("slimpajama-synthetic", data / "corpus", "slimpajama", progress=progress)
            counts = index.domain_counts("redpajama_set_name")
        reg_s = time.perf_counter() - t0
        registration = {
            "rows": report.samples_added, "files": report.files_indexed, "seconds": reg_s,
            "rows_per_s": report.samples_added / reg_s, "mb_per_s": corpus["bytes"] / 1e6 / reg_s,
        }
        print(f"registered {report.samples_added} rows in {reg_s:.2f} s: {registration['rows_per_s']:,.0f} rows/s, "
              f"{registration['mb_per_s']:.1f} MB/s of JSONL", file=sys.stderr)

        total = sum(counts.values())
        cfg = {"index_dir": str(index_dir), "weights": {d: n / total for d, n in counts.items()}, "seq_len": L,
               "batch_size": B, "chunk_size": args.chunk_size, "batches": batches}
        reads: dict[str, Any] = {"bytes_per_token": text_bytes_per_token(str(index_dir))}
        if args.server == "thread":
            server = MixtureServer(index_dir, "127.0.0.1", 0).start()
            address = server.address
        else:
            server, address = start_server(index_dir, data / "server.log")
        try:
            for mode in MODES:
                reads[mode] = read_capacity(str(index_dir), address if mode == "served" else "", args.chunk_size)
            # Modes alternate within each repeat, so a change in the machine's load hits both alike.
            runs: dict[tuple[str, int], list[list[dict[str, Any]]]] = {}
            for world in args.ranks:
                for repeat in range(args.repeats):
                    for mode in MODES:
                        label = f"{mode} x{world} #{repeat + 1}"
                        runs.setdefault((mode, world), []).append(run_ranks(
                            {**cfg, "server": address if mode == "served" else "",
                             "progress": label if progress else None}, world, data,
                        ))
        finally:
            if isinstance(server, MixtureServer):
                server.shutdown()
            else:
                stop_server(server)
    finally:
        if tmp:
            tmp.cleanup()
    for (mode, world), repeats in runs.items():
        per_run = [float(np.mean([r["tokens_per_s"] for r in ranks])) for ranks in repeats]
        tps = float(np.median(per_run))
        slowest = min(r["tokens_per_s"] for ranks in repeats for r in ranks)
        results.append({"mode": mode, "ranks": world, "tokens_per_s_per_rank": tps, "min_tokens_per_s": slowest,
                        "runs": repeats, "ratio_1b_h100": tps / H100_1B_TOKENS_PER_S})
    for r in results:
        base = next(e for e in results if e["mode"] == "embedded" and e["ranks"] == r["ranks"])
        r["ratio_embedded"] = r["tokens_per_s_per_rank"] / base["tokens_per_s_per_rank"]
        rows.append([r["mode"], r["ranks"], r["tokens_per_s_per_rank"], r["min_tokens_per_s"], r["ratio_1b_h100"],
                     r["ratio_embedded"]])

    header = ["mode", "ranks", "tok/s per rank (median of runs)", "tok/s (slowest rank, any run)",
              "x 1B H100 (57.8k)", "x embedded"]
    table = format_table(header, rows)
    print(table)
    print(f"registration: {registration['rows_per_s']:,.0f} rows/s ({registration['mb_per_s']:.1f} MB/s)")
    # One server answers its clients one at a time (a lock around the index), so its read rate bounds
    # how many ranks it can feed: each rank needs 57.8k tok/s * bytes per token.
    reads["served_ranks_at_1b_demand"] = (
        reads["served"]["text_mb_per_s"] * 1e6 / (H100_1B_TOKENS_PER_S * reads["bytes_per_token"])
    )
    for mode in ("embedded", "served"):
        print(f"read_texts alone, {mode}: {reads[mode]['docs_per_s']:,.0f} docs/s, "
              f"{reads[mode]['text_mb_per_s']:.1f} MB/s of text")
    print(f"{reads['bytes_per_token']:.2f} bytes of text per token: one server feeds about "
          f"{reads['served_ranks_at_1b_demand']:.0f} ranks at the 1B demand (57.8k tok/s each)")
    env = environment()
    result = {
        "benchmark": "mixture",
        "settings": {"docs": args.docs, "files": args.files, "seq_len": L, "local_batch_size": B,
                     "chunk_size": args.chunk_size, "timed_batches_per_rank": batches, "ranks": args.ranks,
                     "repeats": args.repeats, "server": args.server,
                     "tokenizer": "assets/tokenizers/shakespeare-bpe-2048", "domains": DOMAINS},
        "corpus": corpus,
        "demand_tokens_per_s": {"1b_h100": H100_1B_TOKENS_PER_S},
        "environment": env,
        "registration": registration,
        "read_capacity": reads,
        "results": results,
        "table": table,
    }
    result["json"] = str(args.out / "mixture.json")
    result["png"] = str(bar_chart(
        args.out / "mixture.png", [f"{r['mode']}\n{r['ranks']} rank(s)" for r in results],
        [r["tokens_per_s_per_rank"] for r in results],
        title=f"Mixture loader tokens/s per rank (seq {L}, batch {B}, on-the-fly tokenization)\nregistration "
              f"{registration['rows_per_s']:,.0f} rows/s; {env['cpu_count']} CPU cores",
        ylabel="tokens/s per rank (log)", log=True, hlines=[(H100_1B_TOKENS_PER_S, "1B on one H100")],
    ))
    write_json(args.out / "mixture.json", result)
    print(f"results: {result['json']}, {result['png']}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
