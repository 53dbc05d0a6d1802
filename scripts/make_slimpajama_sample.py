#!/usr/bin/env python3
"""Make the embedded SlimPajama-format sample (assets/data/slimpajama_sample) from Tiny Shakespeare.

SlimPajama cannot be downloaded here, so the mixtera_slimpajama recipe and the mixture tests train on
a small corpus in SlimPajama's exact file format: ``train/chunk1/example_train_<i>.jsonl.zst``, one
JSON object per line with ``text`` and ``meta.redpajama_set_name``, domains mixed within each file.
The text is the embedded Tiny Shakespeare, cut into documents of 8 consecutive speeches, and each
document is written in the style of one of three domains, so the domains differ in what a model
can learn from them:

- ``RedPajamaC4``: the play text as is (``Speaker:\\nline ...``);
- ``RedPajamaBook``: prose, each speech as ``"..." said Speaker.`` paragraphs;
- ``RedPajamaGithub``: Python, each scene a function of ``say("Speaker", "...")`` calls.

Documents go round-robin to the domains and, in order, to 3 files. The output is deterministic
(fixed zstd level, sorted keys): rerunning it reproduces the committed files byte for byte, which
tests/unit/data/test_slimpajama_sample.py checks.

    python scripts/make_slimpajama_sample.py [--out assets/data/slimpajama_sample]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import zstd

from titan_recipes.data.text.loader import read_documents, resolve_text_path

DOMAINS = ("RedPajamaC4", "RedPajamaBook", "RedPajamaGithub")
SPEECHES_PER_DOC = 8
FILES = 3
ZSTD_LEVEL = 19
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "assets" / "data" / "slimpajama_sample"


def _speeches(doc_speeches: list[str]) -> list[tuple[str, str]]:
    out = []
    for speech in doc_speeches:
        speaker, _, text = speech.partition(":\n")
        out.append((speaker.strip(), text.strip()) if text else ("", speech.strip()))
    return out


def as_c4(doc: list[str]) -> str:
    return "\n\n".join(doc)


def as_book(doc: list[str]) -> str:
    paragraphs = []
    for speaker, text in _speeches(doc):
        line = " ".join(text.split())
        paragraphs.append(f'"{line}" said {speaker}.' if speaker else line)
    return "\n\n".join(paragraphs)


def as_github(doc: list[str], number: int) -> str:
    lines = [f"def scene_{number}():"]
    for speaker, text in _speeches(doc):
        lines.append(f"    say({json.dumps(speaker)}, {json.dumps(' '.join(text.split()))})")
    return "\n".join(lines) + "\n"


def sample_rows() -> list[dict]:
    speeches = read_documents(resolve_text_path("tinyshakespeare", None), "\n\n")
    groups = [speeches[i : i + SPEECHES_PER_DOC] for i in range(0, len(speeches), SPEECHES_PER_DOC)]
    rows = []
    for i, group in enumerate(groups):
        domain = DOMAINS[i % len(DOMAINS)]
        text = {"RedPajamaC4": as_c4, "RedPajamaBook": as_book}.get(domain, lambda g: as_github(g, i))(group)
        rows.append({"text": text, "meta": {"redpajama_set_name": domain}})
    return rows


def write_sample(out: Path) -> list[Path]:
    rows = sample_rows()
    per_file = -(-len(rows) // FILES)
    paths = []
    for f in range(FILES):
        lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows[f * per_file : (f + 1) * per_file])
        path = out / "train" / "chunk1" / f"example_train_{f}.jsonl.zst"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(zstd.compress(lines.encode(), ZSTD_LEVEL))
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (default: %(default)s)")
    args = parser.parse_args()
    for path in write_sample(args.out):
        print(f"{path}: {path.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
