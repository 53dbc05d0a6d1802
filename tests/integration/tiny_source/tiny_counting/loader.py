"""The tiny source's loader: a GlobalOrderLoader, so it inherits global state, exact resume and workers."""

from __future__ import annotations

import numpy as np

from titan_recipes.data.global_order import GlobalOrderLoader
from titan_recipes.data.state import fingerprint
from titan_recipes.data.workers import training_workers

STATE_KEY = "tiny_counting"


class TinyCountingLoader(GlobalOrderLoader):
    state_key = STATE_KEY

    def __init__(self, *, vocab: int, seq_len: int, stride: int, samples: int, seed: int, **kwargs):
        super().__init__(name="tiny_counting", **kwargs)
        self.vocab, self.seq_len, self.stride, self.samples, self.seed = vocab, seq_len, stride, samples, seed

    @property
    def num_samples(self) -> int:
        return self.samples

    @property
    def data_fingerprint(self) -> str:
        return fingerprint(kind="tiny_counting", vocab=self.vocab, seq_len=self.seq_len, stride=self.stride,
                           samples=self.samples, seed=self.seed)

    def epoch_order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.samples)

    def sample(self, index: int) -> np.ndarray:
        return (index * self.stride + np.arange(self.seq_len + 1, dtype=np.int64)) % self.vocab


def build_tiny_counting_loader(dp_world_size: int, dp_rank: int, tokenizer, job_config) -> TinyCountingLoader:
    section = job_config.tiny_counting
    return TinyCountingLoader(
        vocab=tokenizer.get_vocab_size(), seq_len=job_config.training.seq_len, stride=section.stride,
        samples=section.samples, seed=section.seed, local_batch_size=job_config.training.local_batch_size,
        dp_rank=dp_rank, dp_world_size=dp_world_size, workers=training_workers(job_config),
    )
