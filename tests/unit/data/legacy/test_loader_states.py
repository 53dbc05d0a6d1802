"""Checkpoints written before the layout of issue 15 still load: today's loaders write exactly the states
the old ones wrote (same keys, same values), and resume from the old states to the same next batch.
The states were recorded by ``record_loader_states.py`` (its command and commit are in the JSON)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from record_loader_states import BATCHES, consumed_state, random_loader, text_loader

from titan_recipes.data import state as codec
from titan_recipes.data.random_tokens.loader import RandomTokenLoader
from titan_recipes.data.text.loader import PackedTextLoader

RECORDED = json.loads((Path(__file__).resolve().parent / "loader_states.json").read_text())


def build(kind: str, tokenizer, world: int):
    if kind == "text":
        return text_loader(PackedTextLoader, tokenizer, 0, world)
    return random_loader(RandomTokenLoader, 0, world)


@pytest.mark.parametrize("world", ["1", "2"])
@pytest.mark.parametrize("kind, key", [("text", codec.PACKED_TEXT), ("random", codec.RANDOM_TOKENS)])
def test_todays_loader_writes_the_recorded_state(kind, key, world, tokenizer):
    assert RECORDED["batches"] == BATCHES
    state = consumed_state(build(kind, tokenizer, int(world)))
    assert list(state) == [key]
    assert state == RECORDED[kind][world]


@pytest.mark.parametrize("kind", ["text", "random"])
def test_todays_loader_resumes_from_the_recorded_state(kind, tokenizer):
    going = build(kind, tokenizer, 1)
    it = iter(going)
    for _ in range(BATCHES):
        next(it)
    expected = next(it)
    resumed = build(kind, tokenizer, 1)
    resumed.load_state_dict(RECORDED[kind]["1"])
    got = next(iter(resumed))
    assert torch.equal(got[0]["input"], expected[0]["input"]) and torch.equal(got[1], expected[1])
