"""``training.dataset = "random"``: uniform random token ids, the loader-costs-nothing baseline.

torchtitan 0.2.2 has no random-token dataset; its throughput anchors (57.8k tok/s for the 1B
model on one H100) were measured with one. ``scripts/bench_recipe_throughput.py`` trains a recipe once
as configured and once with this loader, so the ratio of the two is what the real loader costs.

Sample ``g`` of the global order is ``seq_len + 1`` ids drawn uniformly from ``[0, vocab)`` by a numpy
generator seeded with ``(debug.seed or 0, g)``: any rank, worker or resume computes the same sample
without reading anything, and the checkpoint state is the :class:`GlobalOrderLoader`'s consumed-sample
count. ``vocab`` is the tokenizer's size (``model.hf_assets_path``), as for real data.
"""

from __future__ import annotations

import logging
import sys

import numpy as np
from torchtitan.components.tokenizer import BaseTokenizer

from ...errors import ConfigError
from .. import state as codec
from ..global_order import GlobalOrderLoader
from ..state import fingerprint
from ..workers import training_workers

logger = logging.getLogger(__name__)


class RandomTokenLoader(GlobalOrderLoader):
    """An endless global order of random samples (no epochs: sample id = global index)."""

    state_key = codec.RANDOM_TOKENS

    def __init__(self, *, vocab_size: int, seq_len: int, seed: int, **kwargs):
        super().__init__(name="random", **kwargs)
        if vocab_size <= 0 or seq_len <= 0:
            raise ConfigError(f"random tokens need a positive vocabulary and seq_len, got {vocab_size} and {seq_len}")
        self.vocab_size, self.seq_len, self.seed = vocab_size, seq_len, seed

    @property
    def num_samples(self) -> int:
        return sys.maxsize  # never wraps into a second epoch

    @property
    def data_fingerprint(self) -> str:
        return fingerprint(kind="random", vocab_size=self.vocab_size, seq_len=self.seq_len, seed=self.seed)

    def global_index_to_sample(self, g: int) -> int:
        return g

    def epoch_order(self, epoch: int) -> np.ndarray:
        raise NotImplementedError("random tokens have no epoch order: global_index_to_sample is the identity")

    def sample(self, index: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, index])
        return rng.integers(0, self.vocab_size, size=self.seq_len + 1, dtype=np.int64)


def build_random_token_loader(dp_world_size: int, dp_rank: int, tokenizer: BaseTokenizer, job_config) -> RandomTokenLoader:
    if tokenizer is None:
        raise ConfigError("training.dataset = 'random' draws ids below the tokenizer's size; set model.hf_assets_path.")
    seed = job_config.debug.seed or 0
    vocab = tokenizer.get_vocab_size()
    logger.info("Dataset random: uniform token ids in [0, %d), seed %d (debug.seed, 0 when unset)", vocab, seed)
    return RandomTokenLoader(
        vocab_size=vocab,
        seq_len=job_config.training.seq_len,
        seed=seed,
        local_batch_size=job_config.training.local_batch_size,
        dp_rank=dp_rank,
        dp_world_size=dp_world_size,
        workers=training_workers(job_config),
    )
