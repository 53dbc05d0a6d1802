"""Micro-batches cut from one global sample order shared by every DP rank (:class:`GlobalOrderLoader`),
and the one-pass validation variant (:class:`FinitePass`).

The data-loader contract (DESIGN.md): batches are ``({"input": LongTensor[B, L]}, labels)``; the state
is GLOBAL (consumed samples + fingerprint, encoded by :mod:`titan_recipes.data.state`), so a resume with
any data-parallel degree continues the same global sample order with nothing lost or repeated; a
fingerprint mismatch refuses to resume.
"""

from __future__ import annotations

import itertools
import logging
from abc import abstractmethod
from typing import Any, Iterator

import numpy as np
import torch
from torchtitan.components.dataloader import BaseDataLoader

from ..errors import DataError
from . import state as codec
from .workers import Workers, reader_worker_init_fn, signals_blocked

logger = logging.getLogger(__name__)


class _MicroBatches(torch.utils.data.Dataset):
    """Map-style view of a loader for torch's DataLoader: item ``consumed`` is this rank's micro-batch
    that starts at global sample ``consumed``, as a (rows, sample ids) pair of arrays."""

    def __init__(self, loader: "GlobalOrderLoader"):
        self.loader = loader

    def __getitem__(self, consumed: int) -> tuple[np.ndarray, np.ndarray]:
        return self.loader.read_micro_batch(consumed)


class _CountFrom(torch.utils.data.Sampler):
    """``start, start + step, start + 2 * step, ...`` without end: the micro-batch starts of a run."""

    def __init__(self, start: int, step: int):
        self.start, self.step = start, step

    def __iter__(self) -> Iterator[int]:
        return itertools.count(self.start, self.step)


class GlobalOrderLoader(BaseDataLoader):
    """Micro-batches cut from one global sample order ``g = 0, 1, 2, ...`` shared by all DP ranks.

    Each ``next()`` is one micro-batch: the ``dp_world_size`` ranks together consume
    ``dp_world_size * local_batch_size`` consecutive global indices, and rank ``r`` takes the
    ``r``-th contiguous block of ``local_batch_size``. Global index ``g`` maps to epoch
    ``g // num_samples`` and position ``g % num_samples`` of that epoch's order. Going past the end
    of an epoch wraps into the next epoch (a new order when shuffling) and logs a warning.

    With ``workers.num_workers > 0`` the micro-batches are read by a ``torch.utils.data.DataLoader``
    whose sampler counts micro-batch starts from ``consumed_samples``; each worker computes the
    epoch order itself and reads its micro-batches, and batches arrive in order. The state still
    counts only batches handed to the trainer (not those prefetched), so a checkpoint and its resume
    are the same with any number of workers.

    Checkpoint state (identical on every rank, so DCP stores it once and any DP degree can load it)::

        {"<state_key>": {"consumed_samples": 4096, "fingerprint": "9f2c...", "num_samples": 1517}}

    Subclasses provide :meth:`num_samples`, :meth:`epoch_order` and :meth:`sample`.
    """

    state_key = "global_order"
    """The checkpoint key (:mod:`titan_recipes.data.state` holds each loader's)."""
    vocab_size: int | None = None
    """The tokenizer's size, set by ``data.registry.build_dataloader``: loaders that read token ids from disk (MDS,
    BlendCorpus) raise DataError for an id outside it (``integrity.check_token_ids``). None: unchecked."""

    def __init__(
        self, *, name: str, local_batch_size: int, dp_rank: int, dp_world_size: int, workers: Workers | None = None
    ):
        if local_batch_size <= 0:
            raise ValueError(f"local batch size must be positive, got {local_batch_size}")
        if not 0 <= dp_rank < dp_world_size:
            raise ValueError(f"dp_rank {dp_rank} out of range for dp_world_size {dp_world_size}")
        self.name = name
        self.local_batch_size = local_batch_size
        self.dp_rank = dp_rank
        self.dp_world_size = dp_world_size
        self.consumed_samples = 0
        self.workers = workers or Workers()
        self.last_sample_ids: np.ndarray | None = None
        """Sample ids (``epoch_order`` values) of the rows of the batch yielded last."""
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
            self._order = self.epoch_order(epoch)
            self._order_epoch = epoch
        return int(self._order[pos])

    def epoch_of_index(self, g: int) -> int:
        """The epoch global index ``g`` falls in (for log lines)."""
        return g // self.num_samples

    def rank_indices(self, consumed: int) -> range:
        """Global indices this rank reads for the micro-batch that starts at ``consumed``."""
        start = consumed + self.dp_rank * self.local_batch_size
        return range(start, start + self.local_batch_size)

    def read_micro_batch(self, consumed: int) -> tuple[np.ndarray, np.ndarray]:
        """This rank's rows ``[local_batch_size, seq_len + 1]`` (int64) of the micro-batch that starts
        at global sample ``consumed``, and their sample ids. Runs in a worker when there are workers."""
        ids = np.asarray([self.global_index_to_sample(g) for g in self.rank_indices(consumed)], np.int64)
        rows = np.stack([self.sample(int(i)) for i in ids]).astype(np.int64)
        return rows, ids

    def on_batch(self, ids: np.ndarray) -> None:
        """Called with the sample ids of each micro-batch as it is handed out (training process)."""
        self.last_sample_ids = ids

    def before_batch(self, consumed: int) -> None:
        """Called in the training process before the micro-batch at ``consumed`` is read (or, with
        workers, before it is handed out). Subclasses use it to prepare data ahead; a no-op here."""

    def _micro_batches(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        step = self.local_batch_size * self.dp_world_size
        w = self.workers
        if w.num_workers == 0:
            for consumed in itertools.count(self.consumed_samples, step):
                self.before_batch(consumed)
                yield self.read_micro_batch(consumed)
            return
        import torch.utils.data

        loader = torch.utils.data.DataLoader(
            _MicroBatches(self),
            batch_size=None,
            sampler=_CountFrom(self.consumed_samples, step),
            num_workers=w.num_workers,
            prefetch_factor=w.prefetch_factor,
            pin_memory=w.pin_memory and torch.cuda.is_available(),
            persistent_workers=w.persistent_workers,
            multiprocessing_context="fork" if "fork" in torch.multiprocessing.get_all_start_methods() else None,
            worker_init_fn=reader_worker_init_fn(),  # workers ignore preemption signals: the trainer decides
        )
        logger.info(
            "Dataset %s: reading with %d worker process(es), prefetch_factor %s, pin_memory %s",
            self.name, w.num_workers, w.prefetch_factor or 2, w.pin_memory and torch.cuda.is_available(),
        )
        with signals_blocked():  # the workers are forked here
            batches = iter(loader)
        for consumed, (rows, ids) in zip(itertools.count(self.consumed_samples, step), batches):
            self.before_batch(consumed)
            yield rows.numpy() if isinstance(rows, torch.Tensor) else rows, ids.numpy() if isinstance(ids, torch.Tensor) else ids

    def __iter__(self) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        epoch = self.epoch_of_index(self.rank_indices(self.consumed_samples)[0])
        if self.consumed_samples:
            logger.info(
                "Dataset %s resumes at global sample %d (epoch %d of this rank's order).",
                self.name, self.consumed_samples, epoch,
            )
        first = True
        for rows, ids in self._micro_batches():
            if first:  # names this rank's data: TP/CP/PP ranks of one DP rank print the same ids
                logger.info(
                    "Dataset %s: dp_rank %d of %d reads %d samples per step from global sample %d; "
                    "first sample ids %s", self.name, self.dp_rank, self.dp_world_size, self.local_batch_size,
                    self.consumed_samples, ids[:8].tolist(),
                )
                first = False
            last = self.epoch_of_index(self.rank_indices(self.consumed_samples)[-1])
            if last > epoch:
                epoch = last
                logger.warning(
                    "Dataset %s: entering epoch %d (%d samples per epoch); data will repeat.",
                    self.name, epoch, self.num_samples,
                )
            self.on_batch(ids)
            # Advance before yielding: a checkpoint taken after this batch was consumed records it.
            self.consumed_samples += self.local_batch_size * self.dp_world_size
            batch = torch.from_numpy(rows)
            yield {"input": batch[:, :-1]}, batch[:, 1:]

    # -- checkpointing ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        position = {"consumed_samples": self.consumed_samples, "num_samples": self.num_samples}
        return codec.encode(self.state_key, position, fingerprint=self.data_fingerprint)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = codec.decode(state_dict, self.state_key, fingerprint=self.data_fingerprint, what=f"Dataset {self.name}")
        if state is not None:
            self.consumed_samples = int(state["consumed_samples"])


class FinitePass:
    """Mixin that turns a :class:`GlobalOrderLoader` subclass into a validation loader: one finite pass.

    Each ``iter()`` starts at global sample 0 and yields ``steps = num_samples // (dp_world_size *
    local_batch_size)`` micro-batches on every rank, cut like training (rank ``r`` takes the ``r``-th
    block), so all ranks stop together (torchtitan's ``validation.steps = -1`` would hang on uneven
    counts) and every validation run sees the same samples. The remainder is left out, and logged.
    No checkpoint state. List it first: ``class V(FinitePass, SomeLoader)``; call
    :meth:`init_finite_pass` at the end of ``__init__``.
    """

    steps: int

    def init_finite_pass(self, what: str, fix: str) -> None:
        """``what`` names the data in messages; ``fix`` says what to change when there is no batch."""
        global_batch = self.local_batch_size * self.dp_world_size
        self.steps = self.num_samples // global_batch
        if self.steps == 0:
            raise DataError(
                f"{what} has {self.num_samples} samples, fewer than one global batch of {global_batch} "
                f"(validation.local_batch_size {self.local_batch_size} x {self.dp_world_size} DP ranks). {fix}"
            )
        left = self.num_samples - self.steps * global_batch
        if left:
            logger.warning(
                "%s: %d batches of %d samples per pass; the last %d of %d samples are not used (every rank "
                "must run the same number of batches).", what, self.steps, global_batch, left, self.num_samples,
            )

    def __iter__(self) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        global_batch = self.local_batch_size * self.dp_world_size
        for step in range(self.steps):
            rows, ids = self.read_micro_batch(step * global_batch)
            self.on_batch(ids)
            batch = torch.from_numpy(rows)
            yield {"input": batch[:, :-1]}, batch[:, 1:]

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        return None
