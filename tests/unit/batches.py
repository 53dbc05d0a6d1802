"""Helpers the loader tests share: take micro-batches, compare them, name their samples."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def write_jsonl(path: Path, docs: list[str]) -> Path:
    """One ``{"text": ..., "id": i}`` line per document."""
    path.write_text("".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs)), encoding="utf-8")
    return path


def take(loader, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The next ``n`` micro-batches of a fresh iterator as (inputs, labels); checks the input keys."""
    it = iter(loader)
    out = []
    for _ in range(n):
        inputs, labels = next(it)
        assert set(inputs) == {"input"}
        out.append((inputs["input"], labels))
    return out


def take_ranks(loaders, n: int) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    """``n`` micro-batches of every rank, stepped together: result[step][rank]."""
    return [list(step) for step in zip(*(take(loader, n) for loader in loaders))]


def concat_ranks(step) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.cat([x for x, _ in step]), torch.cat([y for _, y in step])


def assert_batches_equal(actual, expected) -> None:
    assert len(actual) == len(expected)
    for i, ((xa, ya), (xe, ye)) in enumerate(zip(actual, expected)):
        assert torch.equal(xa, xe), f"inputs of batch {i} differ"
        assert torch.equal(ya, ye), f"labels of batch {i} differ"


def flat_ids(corpus, batches) -> list[int]:
    """Sample indices of every row of ``batches``, in order (see conftest.Corpus.sample_ids)."""
    return [k for x, y in batches for k in corpus.sample_ids(x, y)]
