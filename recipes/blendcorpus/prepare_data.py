"""Write the blendcorpus recipe's demo JSONL corpora from the embedded Tiny Shakespeare text.

usage:  python recipes/blendcorpus/prepare_data.py OUT_DIR

The corpus's documents (blank-line separated, as ``titan_recipes.data.text.read_documents`` reads them)
are cut, in order, into two "corpora": ``first_half`` (documents [0, n/2), written as two JSONL files,
so the corpus has two shards) and ``second_half`` (documents [n/2, n), one file). Deterministic: every
machine writes byte-identical files. run_train.sh then tokenizes them with scripts/blendcorpus.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from titan_recipes.data.text.loader import read_documents

CORPUS = Path(__file__).resolve().parents[2] / "assets" / "data" / "tinyshakespeare.txt"


def main(out: str) -> int:
    docs = read_documents(CORPUS, "\n\n")
    half = len(docs) // 2
    quarter = half // 2
    files = {
        Path(out) / "first_half" / "part0.jsonl": docs[:quarter],
        Path(out) / "first_half" / "part1.jsonl": docs[quarter:half],
        Path(out) / "second_half" / "part0.jsonl": docs[half:],
    }
    for path, part in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            for d in part:
                f.write(json.dumps({"text": d}) + "\n")
        print(f"wrote {path}: {len(part)} documents")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1]))
