"""training.dataset = "random": seeded uniform token ids in one global order, exact resume, any DP."""

from __future__ import annotations

import itertools

import pytest
import torch

from titan_recipes.errors import ConfigError, FingerprintMismatchError
from titan_recipes.data.workers import Workers
from titan_recipes.data.random_tokens.loader import RandomTokenLoader, build_random_token_loader

VOCAB, SEQ, B = 50, 12, 4


def loader(dp_rank=0, dp_world_size=1, seed=7, batch=B, workers=None):
    return RandomTokenLoader(vocab_size=VOCAB, seq_len=SEQ, seed=seed, local_batch_size=batch, dp_rank=dp_rank,
                             dp_world_size=dp_world_size, workers=workers)


def take(it, n):
    return list(itertools.islice(it, n))


def test_batches_are_in_range_and_labels_shift_inputs():
    batches = take(iter(loader()), 3)
    for inputs, labels in batches:
        x = inputs["input"]
        assert x.shape == labels.shape == (B, SEQ) and x.dtype == torch.int64
        assert int(x.min()) >= 0 and int(x.max()) < VOCAB
        assert torch.equal(x[:, 1:], labels[:, :-1])
    assert not torch.equal(batches[0][0]["input"], batches[1][0]["input"])
    assert len(torch.unique(torch.cat([b[0]["input"] for b in batches]))) > VOCAB // 2  # spread over the vocab


def test_seed_decides_the_tokens():
    a, b, c = (next(iter(loader(seed=s)))[0]["input"] for s in (7, 7, 8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_two_ranks_split_the_one_rank_order_and_workers_change_nothing():
    one = take(iter(loader(batch=2 * B)), 3)
    ranks = [take(iter(loader(dp_rank=r, dp_world_size=2, workers=Workers(num_workers=2) if r else None)), 3) for r in (0, 1)]
    for step in range(3):
        both = torch.cat([ranks[0][step][0]["input"], ranks[1][step][0]["input"]])
        assert torch.equal(both, one[step][0]["input"])


def test_resume_continues_exactly_and_checks_the_fingerprint():
    first = loader()
    it = iter(first)
    take(it, 2)
    state = first.state_dict()
    expected = take(it, 2)
    resumed = loader()
    resumed.load_state_dict(state)
    got = take(iter(resumed), 2)
    assert all(torch.equal(a[0]["input"], b[0]["input"]) for a, b in zip(expected, got))
    with pytest.raises(FingerprintMismatchError, match="data fingerprint"):
        loader(seed=8).load_state_dict(state)


def test_builder_needs_a_tokenizer():
    with pytest.raises(ConfigError, match="training.dataset = 'random'.*model.hf_assets_path"):
        build_random_token_loader(1, 0, None, None)
