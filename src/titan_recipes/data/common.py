"""Pieces shared by the loaders: the global sample order, its checkpoint state, fingerprints.

The data-loader contract (DESIGN.md): batches are ``({"input": LongTensor[B, L]}, labels)``; the state
is GLOBAL (consumed samples + fingerprint), so a resume with any data-parallel degree continues the
same global sample order with nothing lost or repeated; a fingerprint mismatch refuses to resume.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
from abc import abstractmethod
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torchtitan.components.dataloader import BaseDataLoader

logger = logging.getLogger(__name__)


class DataError(RuntimeError):
    """Input data is missing, corrupt or inconsistent with the configuration."""


class FingerprintMismatchError(DataError):
    """A checkpoint was written for other data (or another data order) than the configured one."""


def iter_jsonl_texts(path: Path) -> Iterator[str]:
    """The ``text`` field of each non-blank line of a JSONL (or .jsonl.gz) file, streamed.
    A line that is not a JSON object with a string ``text`` is a DataError naming ``file:line``."""
    if not path.is_file():
        raise DataError(f"Input file not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                text = json.loads(line)["text"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise DataError(f"{path}:{lineno}: not a JSON object with a 'text' field ({e})") from None
            if not isinstance(text, str):
                raise DataError(f"{path}:{lineno}: 'text' must be a string, got {type(text).__name__}")
            yield text


def fingerprint(**parts: Any) -> str:
    """A short stable hash of everything that determines a sample order (JSON-serialisable parts)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


class GlobalOrderLoader(BaseDataLoader):
    """Micro-batches cut from one global sample order ``g = 0, 1, 2, ...`` shared by all DP ranks.

    Each ``next()`` is one micro-batch: the ``dp_world_size`` ranks together consume
    ``dp_world_size * local_batch_size`` consecutive global indices, and rank ``r`` takes the
    ``r``-th contiguous block of ``local_batch_size``. Global index ``g`` maps to epoch
    ``g // num_samples`` and position ``g % num_samples`` of that epoch's order. Going past the end
    of an epoch wraps into the next epoch (a new order when shuffling) and logs a warning.

    Checkpoint state (identical on every rank, so DCP stores it once and any DP degree can load it)::

        {"<state_key>": {"consumed_samples": 4096, "fingerprint": "9f2c...", "num_samples": 1517}}

    Subclasses provide :meth:`num_samples`, :meth:`epoch_order` and :meth:`sample`.
    """

    state_key = "global_order"

    def __init__(self, *, name: str, local_batch_size: int, dp_rank: int, dp_world_size: int):
        if local_batch_size <= 0:
            raise ValueError(f"local batch size must be positive, got {local_batch_size}")
        if not 0 <= dp_rank < dp_world_size:
            raise ValueError(f"dp_rank {dp_rank} out of range for dp_world_size {dp_world_size}")
        self.name = name
        self.local_batch_size = local_batch_size
        self.dp_rank = dp_rank
        self.dp_world_size = dp_world_size
        self.consumed_samples = 0
        self._order_epoch = -1
        self._order: np.ndarray | None = None

    # -- what subclasses define ------------------------------------------------------------------
    @property
    @abstractmethod
    def num_samples(self) -> int:
        """Samples per epoch."""

    @property
    @abstractmethod
    def data_fingerprint(self) -> str:
        """Hash of the data and every setting that shapes the order."""

    @abstractmethod
    def epoch_order(self, epoch: int) -> np.ndarray:
        """A permutation of ``range(num_samples)`` for ``epoch``; deterministic."""

    @abstractmethod
    def sample(self, index: int) -> np.ndarray:
        """Tokens of sample ``index`` (length ``seq_len + 1``)."""

    # -- the global order ------------------------------------------------------------------------
    def global_index_to_sample(self, g: int) -> int:
        epoch, pos = divmod(g, self.num_samples)
        if epoch != self._order_epoch:
            if epoch > 0:
                logger.warning(
                    "Dataset %s: entering epoch %d (%d samples per epoch); data will repeat.",
                    self.name, epoch, self.num_samples,
                )
            self._order = self.epoch_order(epoch)
            self._order_epoch = epoch
        return int(self._order[pos])

    def rank_indices(self, consumed: int) -> range:
        """Global indices this rank reads for the micro-batch that starts at ``consumed``."""
        start = consumed + self.dp_rank * self.local_batch_size
        return range(start, start + self.local_batch_size)

    def __iter__(self) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        if self.consumed_samples:
            logger.info(
                "Dataset %s resumes at global sample %d (epoch %d).",
                self.name, self.consumed_samples, self.consumed_samples // self.num_samples,
            )
        while True:
            rows = [self.sample(self.global_index_to_sample(g)) for g in self.rank_indices(self.consumed_samples)]
            batch = torch.from_numpy(np.stack(rows).astype(np.int64))
            # Advance before yielding: a checkpoint taken after this batch was consumed records it.
            self.consumed_samples += self.local_batch_size * self.dp_world_size
            yield {"input": batch[:, :-1]}, batch[:, 1:]

    # -- checkpointing ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            self.state_key: {
                "consumed_samples": self.consumed_samples,
                "fingerprint": self.data_fingerprint,
                "num_samples": self.num_samples,
            }
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        if self.state_key not in state_dict:
            raise DataError(
                f"Checkpoint has no '{self.state_key}' data-loader state (keys: {sorted(state_dict)}): it "
                f"was written by another loader. Start a fresh run directory, or set "
                f"checkpoint.exclude_from_loading = ['dataloader'] to restart the data from the beginning."
            )
        state = state_dict[self.state_key]
        if state["fingerprint"] != self.data_fingerprint:
            raise FingerprintMismatchError(
                f"Dataset {self.name}: the checkpoint's data fingerprint {state['fingerprint']} does not "
                f"match the configured data ({self.data_fingerprint}): the data, tokenizer, seq_len or "
                f"order settings changed since it was written. Resuming would train on a different "
                f"sample order. Restore the original settings, or set "
                f"checkpoint.exclude_from_loading = ['dataloader'] to restart the data deliberately."
            )
        self.consumed_samples = int(state["consumed_samples"])
