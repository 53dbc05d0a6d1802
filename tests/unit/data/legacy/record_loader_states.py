"""Record the checkpoint states the loaders wrote before the layout of issue 15, so the test beside it can
check that today's loaders write and read exactly the same ones.

Run once with the package of the commit to record on the path (the command and commit go into the JSON):

    git worktree add ../old 0f6dd91
    PYTHONPATH=../old/src python tests/unit/data/legacy/record_loader_states.py 0f6dd91
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import titan_recipes  # noqa: F401  (triton stand-in before torchtitan)
from torchtitan.components.tokenizer import HuggingFaceTokenizer

REPO = Path(__file__).resolve().parents[4]
OUT = Path(__file__).resolve().parent / "loader_states.json"
BATCHES = 3


def text_loader(cls, tokenizer, dp_rank: int, dp_world_size: int):
    return cls(path=REPO / "assets" / "data" / "tinyshakespeare.txt", tokenizer=tokenizer, seq_len=64, local_batch_size=4,
               dp_rank=dp_rank, dp_world_size=dp_world_size, shuffle=True, seed=1234, name="tinyshakespeare")


def random_loader(cls, dp_rank: int, dp_world_size: int):
    return cls(vocab_size=2048, seq_len=32, seed=7, local_batch_size=4, dp_rank=dp_rank, dp_world_size=dp_world_size)


def consumed_state(loader) -> dict:
    it = iter(loader)
    for _ in range(BATCHES):
        next(it)
    return loader.state_dict()


def record(commit: str) -> dict:
    try:  # the layout before issue 15
        from titan_recipes.data.random_tokens import RandomTokenLoader
        from titan_recipes.data.text import PackedTextLoader
    except ImportError:
        from titan_recipes.data.random_tokens.loader import RandomTokenLoader
        from titan_recipes.data.text.loader import PackedTextLoader
    tokenizer = HuggingFaceTokenizer(str(REPO / "assets" / "tokenizers" / "shakespeare-bpe-2048"))
    return {
        "commit": commit,
        "command": f"PYTHONPATH=<worktree at {commit}>/src python tests/unit/data/legacy/record_loader_states.py {commit}",
        "batches": BATCHES,
        "text": {str(w): consumed_state(text_loader(PackedTextLoader, tokenizer, 0, w)) for w in (1, 2)},
        "random": {str(w): consumed_state(random_loader(RandomTokenLoader, 0, w)) for w in (1, 2)},
    }


if __name__ == "__main__":
    OUT.write_text(json.dumps(record(sys.argv[1]), indent=1, sort_keys=True) + "\n")
    print(f"wrote {OUT}")
