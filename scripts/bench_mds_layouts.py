#!/usr/bin/env python
"""Throughput per rank of the MDS loader on llm-foundry's layouts, against the 1B demand and in-run baselines.

Writes one corpus (Tiny Shakespeare's documents, repeated with a document number so no two are equal,
to ``--docs`` documents) with streaming's own ``MDSWriter`` in four layouts:

* ``text``: ``{'text': 'str'}`` (llm-foundry without ``--concat_tokens``), tokenized on the fly;
* ``tokens``: ``{'tokens': 'ndarray:int32'}``, one tokenized document per sample (packed by the loader);
* ``bytes``: ``{'tokens': 'bytes'}``, int64 ids (older llm-foundry, ``token_encoding_type`` int64);
* ``windows``: ``scripts/mds_convert.py``'s own output (``ndarray:int32:<seq_len+1>``), read as it is:
  the baseline of the token layouts.

For each it times (1) building the loader on a cold token-count cache (the one pass over every sample
that packing needs, :mod:`titan_recipes.data.mds.packing`), and (2) reading ``--batches`` micro-batches
of ``--batch-size x --seq-len`` with 0 and 2 workers, as DP rank 0 of 1 and of ``--dp`` ranks (each rank
reads only its own windows, so the per-rank rate should not fall with the DP degree). The text layout
is also compared with the bare tokenizer's ``encode_batch`` over the same documents in the same run (the
ceiling of any on-the-fly tokenization here).

Ratios: ``x 1B`` = tokens/s per rank / 57.8k (one H100 training the 1B model, torchtitan's compiled
random-token anchor); ``x baseline`` = against ``windows`` (token layouts) or ``encode_batch`` (text).
Results: ``<out>/mds_layouts.json`` and ``.png``; the table is printed.

    python scripts/bench_mds_layouts.py                  # defaults: 10,000 documents, seq 4096, batch 4
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from titan_recipes.bench import H100_1B_TOKENS_PER_S, bar_chart, environment, format_table, time_batches, write_json
from titan_recipes.data.mds import MDSLoader, StreamSpec
from titan_recipes.data.mds.compat import import_streaming
from titan_recipes.data.mds.layouts import encode_documents
from titan_recipes.data.text.loader import read_documents, resolve_text_path
from titan_recipes.data.workers import Workers
from titan_recipes.tokenizer.sentencepiece import build_tokenizer_for_backend

REPO = Path(__file__).resolve().parents[1]
TOKENIZER = REPO / "assets" / "tokenizers" / "shakespeare-bpe-2048"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--docs", type=int, default=10_000, help="documents (default 10,000)")
    p.add_argument("--seq-len", type=int, default=4096, help="training.seq_len (default 4096)")
    p.add_argument("--batch-size", type=int, default=4, help="local_batch_size (default 4, the 1B recipe's)")
    p.add_argument("--batches", type=int, default=40, help="timed micro-batches per setting (default 40)")
    p.add_argument("--warmup", type=int, default=3, help="untimed micro-batches first (default 3)")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="worker counts (default 0 2)")
    p.add_argument("--dp", type=int, default=8, help="the larger DP degree to read as rank 0 of (default 8)")
    p.add_argument("--out", type=Path, default=Path("runs/bench"), help="result directory (default runs/bench)")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def corpus(n: int) -> list[str]:
    base = read_documents(resolve_text_path("tinyshakespeare", None), "\n\n")
    return [f"{i}. {base[i % len(base)]}" for i in range(n)]


def write_layouts(root: Path, docs: list[str], tokenizer, seq_len: int) -> tuple[dict[str, Path], float, int]:
    """The four datasets, the seconds the tokenization of ``docs`` took, and their token count."""
    import_streaming()
    from streaming.base.format.mds.writer import MDSWriter

    t0 = time.perf_counter()
    ids = encode_documents(tokenizer, docs)
    encode_s = time.perf_counter() - t0
    stream = np.concatenate(ids).astype(np.int32)
    layouts = {
        "text": ({"text": "str"}, ({"text": d} for d in docs)),
        "tokens": ({"tokens": "ndarray:int32"}, ({"tokens": t.astype(np.int32)} for t in ids)),
        "bytes": ({"tokens": "bytes"}, ({"tokens": t.astype(np.int64).tobytes()} for t in ids)),
        "windows": ({"tokens": f"ndarray:int32:{seq_len + 1}"},
                    ({"tokens": stream[k * seq_len: k * seq_len + seq_len + 1]} for k in range((len(stream) - 1) // seq_len))),
    }
    out = {}
    for name, (columns, samples) in layouts.items():
        with MDSWriter(out=str(root / name), columns=columns, size_limit="32mb") as writer:
            for sample in samples:
                writer.write(sample)
        out[name] = root / name
    return out, encode_s, int(len(stream))


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("titan_recipes.data.global_order").setLevel(logging.ERROR)  # epochs wrap often on purpose
    tokenizer = build_tokenizer_for_backend("hf", TOKENIZER)
    docs = corpus(args.docs)
    B, L = args.batch_size, args.seq_len
    per_batch = B * L
    rows, results = [], []
    with tempfile.TemporaryDirectory(prefix="bench-layouts-") as tmp:
        dirs, encode_s, n_tokens = write_layouts(Path(tmp), docs, tokenizer, L)
        ceiling = n_tokens / encode_s
        print(f"corpus: {len(docs):,} documents, {n_tokens:,} tokens; encode_batch {ceiling:,.0f} tok/s", file=sys.stderr)
        results.append({"layout": "text", "what": "bare encode_batch (ceiling)", "tokens_per_s": ceiling})
        rows.append(["text", "encode_batch (same docs)", "-", "-", ceiling, ceiling / H100_1B_TOKENS_PER_S, 1.0])
        baseline = {}
        for name in ("windows", "tokens", "bytes", "text"):
            spec = [StreamSpec(name, str(dirs[name]), setting="bench.local")]
            common = dict(streams=spec, seq_len=L, local_batch_size=B, tokenizer=tokenizer, progress=False)
            t0 = time.perf_counter()
            MDSLoader(dp_rank=0, dp_world_size=1, **common)
            build_s = time.perf_counter() - t0
            if name != "windows":
                rate = n_tokens / build_s
                results.append({"layout": name, "what": "first build (count tokens of every sample)",
                                "seconds": build_s, "tokens_per_s": rate})
                rows.append([name, "first build: counting pass", "-", "-", rate, rate / H100_1B_TOKENS_PER_S,
                             rate / ceiling if name == "text" else None])
            for dp in (1, args.dp):
                for nw in args.workers:
                    loader = MDSLoader(dp_rank=0, dp_world_size=dp, workers=Workers(num_workers=nw, setting="bench"), **common)
                    label = f"{name} dp={dp} w={nw}"
                    secs = time_batches((x for x, _ in loader), warmup=args.warmup, measure=args.batches,
                                        progress=None if args.no_progress else label)
                    tps = args.batches * per_batch / secs
                    if name == "windows":
                        baseline[(dp, nw)] = tps
                    ref = ceiling if name == "text" else baseline[(dp, nw)]
                    results.append({"layout": name, "what": "read", "dp_world_size": dp, "num_workers": nw,
                                    "tokens_per_s": tps, "ratio_1b_h100": tps / H100_1B_TOKENS_PER_S,
                                    "ratio_baseline": tps / ref})
                    rows.append([name, "read", dp, nw, tps, tps / H100_1B_TOKENS_PER_S, tps / ref])
    header = ["layout", "what", "DP ranks", "workers", "tok/s per rank", "x 1B H100 (57.8k)",
              "x baseline (windows | encode_batch)"]
    table = format_table(header, rows)
    print(table)
    result = {
        "benchmark": "mds_layouts",
        "settings": {"docs": args.docs, "tokens": n_tokens, "seq_len": L, "local_batch_size": B,
                     "batches": args.batches, "workers": args.workers, "dp": args.dp, "tokenizer": TOKENIZER.name},
        "environment": environment(), "results": results, "table": table,
    }
    reads = [r for r in results if r["what"] == "read"]
    result["png"] = str(bar_chart(
        args.out / "mds_layouts.png", [f"{r['layout']}\ndp{r['dp_world_size']} w{r['num_workers']}" for r in reads],
        [r["tokens_per_s"] for r in reads],
        title=f"MDS layouts: tokens/s per rank (seq {L}, batch {B}); {environment()['cpu_count']} CPU cores",
        ylabel="tokens/s (log)", log=True,
        hlines=[(H100_1B_TOKENS_PER_S, "1B on one H100"), (ceiling, "encode_batch ceiling")],
    ))
    write_json(args.out / "mds_layouts.json", result)
    print(f"results: {args.out / 'mds_layouts.json'}, {result['png']}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
