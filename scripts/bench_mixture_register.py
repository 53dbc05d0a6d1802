#!/usr/bin/env python
"""Rows/s of mixture registration against a plain DuckDB ``read_json`` of the same files, and the
start-up of ``titan-recipes mixture``.

1. Writes a synthetic SlimPajama-format corpus (``{"text", "meta": {"redpajama_set_name"}}`` lines,
   SlimPajama's seven domains in proportion to their document counts, log-normal text lengths of
   random English words around ``--mean-chars``) into ``--files`` files, cycling through
   ``--formats`` (``.jsonl.zst`` as SlimPajama ships, plain ``.jsonl``, ``.jsonl.gz``). The texts are
   shorter than SlimPajama's (~3.5 kB) so that 200k rows take seconds; rows/s falls with bytes per
   row for every reader alike, so compare the ratios, and MB/s.
2. Times, in this one process, ``--repeats`` rounds in which each reader runs once (the best run counts):

   * ``duckdb_read_json``: ``SELECT * FROM read_json(files)`` fetched as an Arrow table (DuckDB
     parses every field, its own column detection): the reference;
   * ``register_dataset``: ``SampleIndex.register_dataset`` into a fresh index, parser ``slimpajama``;
   * ``parse_file``: :func:`titan_recipes.data.mixture.bulk.parse_file` of every file in turn, to Parquet
     (what one ``titan-recipes prepare`` task does per file); then ``import_parsed`` of the results into
     a fresh index (the single-process step after the parallel ones).

   and the ratios to ``duckdb_read_json``.
3. Runs ``titan-recipes mixture --help`` and ``titan-recipes mixture register`` of a one-line file in
   subprocesses (``python -X importtime -m titan_recipes.cli``): wall seconds, and whether ``torch`` or
   ``torchtitan`` was imported (they cost seconds and registration needs neither).

Results: ``<out>/mixture_register.json``; the table is printed.

    python scripts/bench_mixture_register.py --out bench_out              # 200k rows, 8 files
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

DOMAINS: dict[str, float] = {
    "RedPajamaCommonCrawl": 0.522 / 1_200, "RedPajamaC4": 0.267 / 500, "RedPajamaGithub": 0.052 / 1_500,
    "RedPajamaBook": 0.042 / 20_000, "RedPajamaArXiv": 0.046 / 9_000, "RedPajamaWikipedia": 0.038 / 750,
    "RedPajamaStackExchange": 0.033 / 450,
}
"""SlimPajama domain -> relative document count (token share / mean document tokens)."""
_WORDS = np.array((
    "the of and to in a is that for it as was with be by on not he this are or his from at which but have an "
    "they you were her she there been one all we their has would when if so no will can more other its into "
    "time only new some could these two may first then do any like my now over such our café naïve “quoted” "
    "x = f(x) return def class import { } ( ) ; : , . ! ? \\ \" \t"
).split(" "))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, type=Path, help="directory for mixture_register.json")
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--files", type=int, default=8)
    p.add_argument("--mean-chars", type=int, default=400, help="mean text length (log-normal, sigma 1)")
    p.add_argument("--formats", default="zst,jsonl", help="file suffixes cycled over the files: zst, jsonl, gz")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--data", type=Path, default=None, help="where to write the corpus (default: a temp dir)")
    return p.parse_args(argv)


def write_corpus(out: Path, rows: int, files: int, mean_chars: int, formats: list[str], seed: int = 0) -> dict:
    """The synthetic corpus; returns its row count, decompressed bytes and file paths."""
    import zstd

    rng = np.random.default_rng(seed)
    names = list(DOMAINS)
    p = np.array(list(DOMAINS.values()))
    domains = rng.choice(len(names), size=rows, p=p / p.sum())
    n_words = (rng.lognormal(np.log(mean_chars / 5.5) - 0.5, 1.0, rows).clip(1, 50_000)).astype(np.int64)
    out.mkdir(parents=True, exist_ok=True)
    paths, raw_bytes = [], 0
    for f, ids in enumerate(np.array_split(np.arange(rows), files)):
        words = _WORDS[rng.integers(0, len(_WORDS), int(n_words[ids].sum()))].tolist()
        lines, k = [], 0
        for i in ids:
            text = " ".join(words[k : k + n_words[i]])
            k += n_words[i]
            lines.append(json.dumps({"text": text, "meta": {"redpajama_set_name": names[domains[i]]}},
                                    ensure_ascii=bool(i % 2)))
        data = ("\n".join(lines) + "\n").encode()
        raw_bytes += len(data)
        fmt = formats[f % len(formats)]
        path = out / f"example_train_{f}.jsonl{'' if fmt == 'jsonl' else '.' + fmt}"
        path.write_bytes({"zst": lambda d: zstd.compress(d, 3), "gz": lambda d: gzip.compress(d, 1),
                          "jsonl": lambda d: d}[fmt](data))
        paths.append(path)
    return {"rows": rows, "files": files, "bytes": raw_bytes, "paths": paths}


def best_of(repeats: int, fns: dict[str, Any]) -> dict[str, tuple[float, Any]]:
    """Per name, the fastest of ``repeats`` runs of ``fns[name]()`` (seconds, its last result). The
    readers take turns in each round, so a busy spell of a shared machine hits all of them alike."""
    best: dict[str, tuple[float, Any]] = {k: (float("inf"), None) for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            result = fn()
            best[name] = (min(best[name][0], time.perf_counter() - start), result)
    return best


def time_startup(tmp: Path) -> dict[str, Any]:
    """Wall seconds of ``mixture --help`` and of ``mixture register`` of one line, and torch imports."""
    data = tmp / "tiny" / "one.jsonl"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text(json.dumps({"text": "x", "meta": {"redpajama_set_name": "RedPajamaC4"}}) + "\n")
    out = {}
    for key, args in (("help", ["mixture", "--help"]),
                      ("register", ["mixture", "register", str(tmp / "tiny_index"), str(data), "--name", "t",
                                    "--no-progress"])):
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "titan_recipes.cli", *args],
                              capture_output=True, text=True, check=True)
        seconds = time.perf_counter() - start
        modules = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()
                   if line.startswith("import time:")}
        out[key] = {"seconds": seconds, "torch_imported": "torch" in modules,
                    "torchtitan_imported": "torchtitan" in modules}
    return out


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    import duckdb

    from titan_recipes.bench import format_table, write_json
    from titan_recipes.data.mixture import SampleIndex
    from titan_recipes.data.mixture.bulk import parse_file

    with tempfile.TemporaryDirectory(prefix="bench_mixture_register_") as tmp_name:
        tmp = Path(tmp_name)
        corpus = write_corpus(args.data or tmp / "data", args.rows, args.files, args.mean_chars,
                              args.formats.split(","))
        files = [str(p) for p in corpus["paths"]]
        runs = iter(range(1_000_000))

        def read_json() -> int:
            con = duckdb.connect()
            table = con.execute("SELECT * FROM read_json(?, format = 'newline_delimited')", [files]).to_arrow_table()
            con.close()
            return table.num_rows

        def register() -> int:
            with SampleIndex(tmp / f"index_{next(runs)}") as index:
                return index.register_dataset("sp", corpus["paths"][0].parent, progress=False).samples_added

        parsed: list = []

        def parse_all() -> int:
            out_dir = tmp / f"parsed_{next(runs)}"
            parsed[:] = [parse_file(p, "slimpajama", out_dir / f"{i:05d}.parquet") for i, p in enumerate(files)]
            return sum(p.rows for p in parsed)

        def import_all() -> int:
            with SampleIndex(tmp / f"index_{next(runs)}") as index:
                return index.import_parsed("sp", corpus["paths"][0].parent, "slimpajama", parsed).samples_added

        timed = {}
        fns = {"duckdb_read_json": read_json, "register_dataset": register, "parse_file": parse_all,
               "import_parsed": import_all}
        for name, (seconds, rows) in best_of(args.repeats, fns).items():
            if rows != args.rows:
                raise RuntimeError(f"{name} read {rows} rows, expected {args.rows}")
            timed[name] = {"seconds": seconds, "rows_per_s": rows / seconds,
                           "mb_per_s": corpus["bytes"] / seconds / 1e6}
        startup = time_startup(tmp)

    ref = timed["duckdb_read_json"]["rows_per_s"]
    for r in timed.values():
        r["ratio_to_read_json"] = r["rows_per_s"] / ref
    result = {
        "corpus": {k: v for k, v in corpus.items() if k != "paths"} | {"formats": args.formats.split(","),
                                                                        "mean_chars": args.mean_chars},
        "settings": {"repeats": args.repeats, "cpu_count": os.cpu_count(), "duckdb": duckdb.__version__},
        "results": timed,
        "startup": startup,
    }
    table = format_table(
        ["reader", "seconds", "rows/s", "MB/s", "x read_json"],
        [[k, round(r["seconds"], 2), r["rows_per_s"], r["mb_per_s"], round(r["ratio_to_read_json"], 3)]
         for k, r in timed.items()],
    )
    table += "\n\n" + format_table(
        ["command", "seconds", "torch imported"],
        [[f"mixture {k}", round(v["seconds"], 2), v["torch_imported"] or v["torchtitan_imported"]]
         for k, v in startup.items()],
    )
    result["table"] = table
    result["json"] = str(write_json(args.out / "mixture_register.json", result))
    print(table)
    return result


if __name__ == "__main__":
    main()
