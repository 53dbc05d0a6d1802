#!/usr/bin/env python
"""BlendCorpus data preparation: JSONL -> Megatron .bin/.idx shards, shard metadata, blend file lists.

    # 1. tokenize: one <stem>_text_document.{bin,idx} per input file, EOD appended, 4 processes
    #    (a thin wrapper of `titan-recipes prepare blendcorpus`, which also writes blend.txt and prepare.json)
    python scripts/blendcorpus.py tokenize /data/raw/web/*.jsonl.zst --output-dir /data/tok/web \\
        --tokenizer assets/tokenizers/shakespeare-bpe-2048 --tokenizer-backend hf --workers 4
    # 2. metadata: documents and tokens per shard, as JSON
    python scripts/blendcorpus.py metadata /data/tok/web /data/tok/books --output meta.json
    # 3. file-list: "<weight> <path-prefix> <corpus>" per shard for training.dataset_path
    python scripts/blendcorpus.py file-list --corpus web=/data/tok/web --corpus books=/data/tok/books \\
        --epochs books=3 --output blend.txt

Input: JSONL (``.jsonl``, ``.jsonl.gz``, ``.jsonl.zst``), one document per line in the ``--text-key``
field. A file list names shards by absolute path prefix and weighs each by its token count times its
corpus's epochs (default 1), so a corpus with ``--epochs 3`` is drawn three times as often per token
as one with 1. Each corpus gets its own epochs (upstream BlendCorpus applied the last corpus's value
to every row).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tqdm import tqdm

from titan_recipes.errors import DataError
from titan_recipes.data.blendcorpus.megatron_format import MegatronShard, idx_path


def cmd_tokenize(args) -> int:
    """A thin wrapper of ``titan-recipes prepare blendcorpus`` (same prefixes, byte for byte; tested)."""
    from titan_recipes.errors import ConfigError
    from titan_recipes.prepare.executors import check_plan, run_local
    from titan_recipes.prepare.sources import find_input_files
    from titan_recipes.prepare.tasks import PrepareSpec, prefix_name

    files = find_input_files(args.inputs)
    if len({prefix_name(f) for f in files}) != len(files):
        raise SystemExit("error: two input files map to the same output prefix; tokenize them into separate dirs")
    backend = {"sptoken": "sp", "sentencepiece": "sp", "sp": "sp", "spm": "sp", "hf": "hf", "huggingface": "hf"}.get(
        args.tokenizer_backend.lower())
    if backend is None:
        raise SystemExit(f"error: --tokenizer-backend {args.tokenizer_backend}: use sptoken or hf")
    out = Path(args.output_dir).resolve()
    spec = PrepareSpec(kind="blendcorpus", files=files, out=str(out), tokenizer=str(Path(args.tokenizer).resolve()),
                       tokenizer_backend=backend, text_field=args.text_key, append_eod=not args.no_append_eod,
                       progress=not args.quiet, extra={"corpus": out.name, "epochs": 1.0})
    try:
        check_plan(spec, overwrite=False)
        manifest = run_local(spec, args.workers)
    except ConfigError as e:
        raise DataError(str(e)) from None
    t = manifest["totals"]
    print(f"wrote {len(files)} shards to {out}: {t['documents']:,} documents, {t['tokens']:,} tokens")
    return 0


def find_prefixes(paths: list[str]) -> list[Path]:
    prefixes: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            prefixes.extend(sorted(i.with_suffix("") for i in p.glob("*.idx")))
        elif idx_path(p).is_file():
            prefixes.append(p)
        else:
            raise DataError(f"{p} is neither a directory of .idx files nor a shard prefix ({idx_path(p)} missing)")
    return prefixes


def shard_metadata(prefix: Path) -> dict:
    shard = MegatronShard(prefix)
    return {"documents": len(shard), "tokens": shard.num_tokens, "dtype": str(shard.dtype)}


def cmd_metadata(args) -> int:
    meta = {str(p): shard_metadata(p) for p in tqdm(find_prefixes(args.paths), desc="metadata", unit="shard",
                                                    disable=args.quiet)}
    text = json.dumps(meta, indent=2)
    if args.output:
        Path(args.output).write_text(text + "\n", encoding="utf-8")
    else:
        print(text)
    return 0


def _pairs(values: list[str], flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for v in values:
        name, sep, rest = v.partition("=")
        if not sep or not name or not rest:
            raise SystemExit(f"error: {flag} expects NAME=VALUE, got '{v}'")
        if name in out:
            raise SystemExit(f"error: {flag} names '{name}' twice")
        out[name] = rest
    return out


def file_list_lines(corpora: dict[str, str], epochs: dict[str, float], quiet: bool = True) -> list[str]:
    unknown = set(epochs) - set(corpora)
    if unknown:
        raise DataError(f"--epochs names corpora {sorted(unknown)} that no --corpus defines ({sorted(corpora)})")
    lines = []
    for name, directory in corpora.items():
        e = epochs.get(name, 1.0)
        if e <= 0:
            raise DataError(f"--epochs {name}={e}: epochs must be positive")
        prefixes = find_prefixes([directory])
        if not prefixes:
            raise DataError(f"corpus {name}: no .idx shards in {directory}")
        for p in tqdm(prefixes, desc=f"file-list {name}", unit="shard", disable=quiet):
            tokens = MegatronShard(p).num_tokens
            if not tokens:
                print(f"note: {p} has no tokens; left out of the file list", file=sys.stderr)
            else:
                # Absolute: the loader resolves relative prefixes from the list's directory, not the cwd.
                lines.append(f"{tokens * e:.10g} {p.resolve()} {name}")
    return lines


def cmd_file_list(args) -> int:
    corpora = _pairs(args.corpus, "--corpus")
    epochs = {k: float(v) for k, v in _pairs(args.epochs, "--epochs").items()}
    text = "\n".join(file_list_lines(corpora, epochs, quiet=args.quiet)) + "\n"
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("tokenize", help="JSONL (.jsonl/.gz/.zst) -> Megatron .bin/.idx, one shard per file")
    t.add_argument("inputs", nargs="+", help="JSONL files")
    t.add_argument("--output-dir", required=True)
    t.add_argument("--tokenizer", required=True, help="SentencePiece .model (or dir) or HF tokenizer dir")
    t.add_argument("--tokenizer-backend", default="sptoken", help="sptoken|sentencepiece|sp|spm (default), hf|huggingface")
    t.add_argument("--text-key", default="text")
    t.add_argument("--workers", type=int, default=1, help="processes (datatrove tasks, one per file)")
    t.add_argument("--no-append-eod", action="store_true", help="do not append the EOS id after each document")
    t.set_defaults(func=cmd_tokenize)

    m = sub.add_parser("metadata", help="documents/tokens per shard as JSON")
    m.add_argument("paths", nargs="+", help="directories of shards or shard prefixes")
    m.add_argument("--output", help="JSON file (default: stdout)")
    m.set_defaults(func=cmd_metadata)

    f = sub.add_parser("file-list", help="'<weight> <prefix> <corpus>' lines, weight = tokens x corpus epochs")
    f.add_argument("--corpus", action="append", required=True, metavar="NAME=DIR")
    f.add_argument("--epochs", action="append", default=[], metavar="NAME=EPOCHS", help="per corpus, default 1")
    f.add_argument("--output", help="file list to write (default: stdout)")
    f.set_defaults(func=cmd_file_list)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
