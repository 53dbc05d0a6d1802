"""Pieces shared by the loaders: the global sample order, its checkpoint state, fingerprints.

The data-loader contract (DESIGN.md): batches are ``({"input": LongTensor[B, L]}, labels)``; the state
is GLOBAL (consumed samples + fingerprint), so a resume with any data-parallel degree continues the
same global sample order with nothing lost or repeated; a fingerprint mismatch refuses to resume.
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
import logging
from abc import abstractmethod
from dataclasses import dataclass, field
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


def open_text(path: Path):
    """A UTF-8 text file for reading; ``.gz`` is decompressed as it is read, ``.zst`` in memory at once
    (the pinned ``zstd`` module has no streaming reader)."""
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    if path.name.endswith(".zst"):
        import io

        import zstd

        return io.StringIO(zstd.decompress(path.read_bytes()).decode("utf-8"))
    return open(path, encoding="utf-8")


def iter_jsonl_texts(path: Path, field: str = "text") -> Iterator[str]:
    """The ``field`` (default ``text``) of each non-blank line of a JSONL (.jsonl, .jsonl.gz or
    .jsonl.zst) file, streamed. A line that is not a JSON object with a string ``field`` is a DataError
    naming ``file:line``."""
    if not path.is_file():
        raise DataError(f"Input file not found: {path}")
    with open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                text = json.loads(line)[field]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise DataError(
                    f"{path}:{lineno}: not a JSON object with a '{field}' field ({type(e).__name__}: {e})"
                ) from None
            if not isinstance(text, str):
                raise DataError(f"{path}:{lineno}: '{field}' must be a string, got {type(text).__name__}")
            yield text


def fingerprint(**parts: Any) -> str:
    """A short stable hash of everything that determines a sample order (JSON-serialisable parts)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@dataclass(frozen=True)
class Workers:
    """How a loader reads its micro-batches: in the training process (``num_workers = 0``) or in
    ``num_workers`` worker processes of a ``torch.utils.data.DataLoader``. torchtitan's
    ``[training.dataloader]`` names and meanings."""

    num_workers: int = 0
    prefetch_factor: int | None = None
    """Micro-batches each worker reads ahead (torch's default 2 when None). Needs num_workers > 0."""
    pin_memory: bool = False
    """Pin batches in page-locked memory for faster host-to-GPU copies; has no effect without CUDA."""
    persistent_workers: bool = False
    """Accepted for torchtitan compatibility. The training loader is iterated once per launch, so its
    workers live for the whole launch either way."""
    setting: str = field(default="training.dataloader", compare=False)
    """The config table these came from, for error messages."""

    def __post_init__(self) -> None:
        from ..config import ConfigError

        if self.num_workers < 0:
            raise ConfigError(f"{self.setting}.num_workers must be >= 0, got {self.num_workers}.")
        if self.num_workers == 0 and (self.prefetch_factor is not None or self.persistent_workers):
            raise ConfigError(
                f"{self.setting}.prefetch_factor / persistent_workers need num_workers > 0 (got "
                f"prefetch_factor = {self.prefetch_factor}, persistent_workers = {self.persistent_workers} "
                f"with num_workers = 0), as in torch's DataLoader."
            )
        if self.prefetch_factor is not None and self.prefetch_factor < 1:
            raise ConfigError(f"{self.setting}.prefetch_factor must be >= 1, got {self.prefetch_factor}.")

    @classmethod
    def from_config(cls, section: Any, setting: str) -> "Workers":
        return cls(
            num_workers=section.num_workers,
            prefetch_factor=section.prefetch_factor,
            pin_memory=section.pin_memory,
            persistent_workers=section.persistent_workers,
            setting=setting,
        )


# -- reader processes and preemption signals -----------------------------------------------------------
# Slurm signals every process of a job step (and torchrun forwards SIGTERM/SIGINT/SIGHUP/SIGQUIT, and
# SIGUSR1 with --signals-to-handle, to its workers' process group). A torch DataLoader worker dies of
# them (torch's worker SIGTERM handler re-raises unless the signal came from its parent), and the trainer
# then raises "DataLoader worker (pid N) is killed by signal" before it can save. Reader processes
# therefore ignore these signals: the trainer alone decides (at a step boundary), and its workers end
# when it shuts their iterator down or exits (torch's workers watch their parent).
READER_IGNORED_SIGNALS: tuple[str, ...] = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")
"""Signals reader worker processes ignore, plus the trainer's ``launch.signals`` (see
:func:`set_preemption_signals`)."""

_preemption_signals: tuple[str, ...] = ()


def set_preemption_signals(names: Any) -> None:
    """Called by the trainer with ``launch.signals``: reader workers ignore these too."""
    global _preemption_signals
    _preemption_signals = tuple(str(n) for n in names)


def reader_signals() -> list[Any]:
    """The ``signal.Signals`` reader workers ignore (those of this platform)."""
    import signal

    names = dict.fromkeys((*READER_IGNORED_SIGNALS, *_preemption_signals))
    return [getattr(signal, n) for n in names if hasattr(signal, n) and n not in ("SIGKILL", "SIGSTOP")]


def ignore_reader_signals(*_: Any) -> None:
    """In a reader worker process: ignore the preemption signals, then unblock them (they were blocked
    across the fork by :func:`signals_blocked`, so one sent while the worker started is dropped)."""
    import signal

    sigs = reader_signals()
    for s in sigs:
        signal.signal(s, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, sigs)


class _IgnoreSignalsThen:
    """``worker_init_fn`` that ignores the reader signals, then calls the loader's own (picklable)."""

    def __init__(self, then: Any = None):
        self.then = then

    def __call__(self, worker_id: int) -> None:
        ignore_reader_signals()
        if self.then is not None:
            self.then(worker_id)


def reader_worker_init_fn(then: Any = None) -> Any:
    """A ``worker_init_fn`` for a torch DataLoader: ignore the preemption signals, then run ``then``."""
    return then if isinstance(then, _IgnoreSignalsThen) else _IgnoreSignalsThen(then)


def protect_workers(loader: Any) -> Any:
    """Make the worker processes of a ``torch.utils.data.DataLoader`` (or a subclass, such as torchdata's
    StatefulDataLoader) ignore the preemption signals, keeping its own ``worker_init_fn``. Other
    objects are returned unchanged."""
    if isinstance(loader, torch.utils.data.DataLoader) and loader.num_workers > 0:
        loader.worker_init_fn = reader_worker_init_fn(loader.worker_init_fn)
    return loader


class signals_blocked:
    """Block the reader signals in this thread while reader processes are forked (``iter(loader)``): a
    child inherits the mask, so a signal that arrives before its ``worker_init_fn`` ignores it stays
    pending and is then dropped; in the trainer it is delivered when the block ends."""

    def __enter__(self) -> None:
        import signal

        self._old = signal.pthread_sigmask(signal.SIG_BLOCK, reader_signals())

    def __exit__(self, *exc: Any) -> None:
        import signal

        signal.pthread_sigmask(signal.SIG_SETMASK, self._old)


def training_workers(job_config: Any) -> Workers:
    """torchtitan's ``[training.dataloader]`` worker settings (defaults if the config has none)."""
    section = getattr(job_config.training, "dataloader", None)
    return Workers() if section is None else Workers.from_config(section, "training.dataloader")


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
    vocab_size: int | None = None
    """The tokenizer's size, set by ``data.build_dataloader``: loaders that read token ids from disk (MDS,
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
        epoch = self.rank_indices(self.consumed_samples)[0] // self.num_samples
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
            last = self.rank_indices(self.consumed_samples)[-1] // self.num_samples
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
