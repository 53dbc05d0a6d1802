"""How a loader reads its micro-batches (:class:`Workers`), and how its reader processes treat the
preemption signals: they ignore them, so the trainer alone decides when to stop."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import ConfigError


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
        if self.num_workers > 0:
            check_worker_socket_dir(f"{self.setting}.num_workers = {self.num_workers}")

    @classmethod
    def from_config(cls, section: Any, setting: str) -> "Workers":
        return cls(
            num_workers=section.num_workers,
            prefetch_factor=section.prefetch_factor,
            pin_memory=section.pin_memory,
            persistent_workers=section.persistent_workers,
            setting=setting,
        )


SOCKET_PATH_MAX = 107
"""Bytes of a Unix socket path on Linux (``sun_path`` is 108 bytes with the terminating NUL)."""


def check_worker_socket_dir(what: str) -> None:
    """ConfigError when reader workers could not hand a batch over: a worker sends each batch's tensors as
    file descriptors through multiprocessing's resource sharer, whose Unix socket lives at
    ``$TMPDIR/pymp-XXXXXXXX/listener-XXXXXXXX``. When that path is longer than Linux allows, the worker's
    queue thread only prints ``OSError: AF_UNIX path too long`` and drops the batch, and the trainer then
    waits for it forever (seen with a node-local TMPDIR 80 characters long). Checked before any worker
    starts, where the fix is still a setting."""
    import os
    import tempfile
    from multiprocessing import process

    base = process.current_process()._config.get("tempdir") or os.path.join(tempfile.gettempdir(), "pymp-xxxxxxxx")
    longest = len(os.fsencode(os.path.join(base, "listener-xxxxxxxx")))
    if longest > SOCKET_PATH_MAX:
        raise ConfigError(
            f"{what}: reader workers pass batches through a Unix socket under the temporary directory "
            f"{tempfile.gettempdir()!r} (TMPDIR), and its path would be {longest} bytes, more than Linux allows "
            f"({SOCKET_PATH_MAX}); the workers would hang the trainer. Set TMPDIR to a directory with a path "
            f"of at most {SOCKET_PATH_MAX - 32} characters, or use no reader workers (num_workers = 0)."
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


def _stop_reader_workers_at_exit() -> None:
    """At interpreter exit, multiprocessing terminates daemonic children with SIGTERM and then joins them.
    Reader workers ignore SIGTERM (above), so a process that exits while a loader iterator still holds
    workers would wait for them forever. Terminate the daemonic children first, then kill those still
    alive after half a second: they only read data."""
    import multiprocessing
    import time

    children = [p for p in multiprocessing.active_children() if p.daemon]
    for p in children:
        p.terminate()
    deadline = time.monotonic() + 0.5
    for p in children:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()


_exit_handler_installed = False


def _install_exit_handler() -> None:
    """Registered on the first fork of reader workers; atexit runs it before multiprocessing's own exit
    handler (registered earlier, run later)."""
    global _exit_handler_installed
    if not _exit_handler_installed:
        import atexit

        atexit.register(_stop_reader_workers_at_exit)
        _exit_handler_installed = True


class signals_blocked:
    """Block the reader signals in this thread while reader processes are forked (``iter(loader)``): a
    child inherits the mask, so a signal that arrives before its ``worker_init_fn`` ignores it stays
    pending and is then dropped; in the trainer it is delivered when the block ends."""

    def __enter__(self) -> None:
        import signal

        _install_exit_handler()
        self._old = signal.pthread_sigmask(signal.SIG_BLOCK, reader_signals())

    def __exit__(self, *exc: Any) -> None:
        import signal

        signal.pthread_sigmask(signal.SIG_SETMASK, self._old)


def training_workers(job_config: Any) -> Workers:
    """torchtitan's ``[training.dataloader]`` worker settings (defaults if the config has none)."""
    section = getattr(job_config.training, "dataloader", None)
    return Workers() if section is None else Workers.from_config(section, "training.dataloader")
