"""The evaluation tasks shipped with the repository and the lm-eval TaskManager that finds them.

Both read the last :data:`HELDOUT_DOCS` documents of the debug recipe's corpus, with no network:

- ``shakespeare_heldout`` (``assets/eval/tasks/shakespeare_heldout/``), ``loglikelihood_rolling``: the
  perplexity of a model over those documents (word and byte perplexity, bits per byte);
- ``shakespeare_cloze`` (``assets/eval/tasks/shakespeare_cloze/``), ``multiple_choice`` as hellaswag
  and arc_easy are: given a speech without its last line, pick that line among 4 (the others are last
  lines of other speeches, drawn with a fixed seed); ``acc`` and ``acc_norm``, chance is 0.25. It runs
  the same lm-eval code path as the cluster's benchmarks, which cannot be downloaded here.

Documents are cut exactly as the text loader cuts the file (blank-line separated), so a document here
is a document there. The debug recipe does not hold them out of training (its loader reads the whole
file, about 389k tokens, in shuffled windows); its 20 steps of 8 x 256 tokens see about a tenth of
them, so the scores track learning but are not clean held-out numbers.

Run ``python -m titan_recipes.eval.tasks`` to rewrite both JSONL files after changing the cut.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
TASKS_DIR = REPO_ROOT / "assets" / "eval" / "tasks"
"""Passed to lm-eval as ``TaskManager(include_path=...)``: every task YAML under it is found by name."""
HELDOUT_TASK = "shakespeare_heldout"
HELDOUT_SOURCE = REPO_ROOT / "assets" / "data" / "tinyshakespeare.txt"
HELDOUT_FILE = TASKS_DIR / HELDOUT_TASK / f"{HELDOUT_TASK}.jsonl"
HELDOUT_DOCS = 200
CLOZE_TASK = "shakespeare_cloze"
CLOZE_FILE = TASKS_DIR / CLOZE_TASK / f"{CLOZE_TASK}.jsonl"
CLOZE_CHOICES = 4
CLOZE_SEED = 17
DOCUMENT_SEPARATOR = "\n\n"
"""The text loader's default ``text_data.document_separator``."""


def heldout_documents(source: Path = HELDOUT_SOURCE, n: int = HELDOUT_DOCS) -> list[str]:
    """The last ``n`` non-blank documents of ``source``, split as the text loader splits it."""
    docs = [d for d in source.read_text(encoding="utf-8").split(DOCUMENT_SEPARATOR) if d.strip()]
    return docs[-n:]


def heldout_jsonl(docs: list[str]) -> str:
    """One ``{"text": ...}`` object per line (the task's ``doc_to_target`` reads ``text``)."""
    return "".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs)


def cloze_items(docs: list[str], choices: int = CLOZE_CHOICES, seed: int = CLOZE_SEED) -> list[dict]:
    """``{"context", "choices", "label"}`` per document of two or more lines: the document without its
    last line, and that line among ``choices - 1`` last lines of other documents (seeded, so the file
    is reproducible; the gold position is drawn too, so no position is always right)."""
    rng = random.Random(seed)
    split = [d.strip().split("\n") for d in docs]
    split = [lines for lines in split if len(lines) >= 2]
    endings = [lines[-1] for lines in split]
    items = []
    for i, lines in enumerate(split):
        others = [e for j, e in enumerate(endings) if j != i and e != lines[-1]]
        options = rng.sample(others, choices - 1)
        label = rng.randrange(choices)
        options.insert(label, lines[-1])
        items.append({"context": "\n".join(lines[:-1]), "choices": options, "label": label})
    return items


def task_manager(include_path: Path = TASKS_DIR):
    """lm-eval's TaskManager over its own tasks plus the repository's (imports lm-eval)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(include_path))


if __name__ == "__main__":
    docs = heldout_documents()
    HELDOUT_FILE.write_text(heldout_jsonl(docs), encoding="utf-8")
    items = cloze_items(docs)
    CLOZE_FILE.write_text("".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items), encoding="utf-8")
    print(f"wrote {HELDOUT_FILE} ({len(docs)} documents) and {CLOZE_FILE} ({len(items)} items)")
