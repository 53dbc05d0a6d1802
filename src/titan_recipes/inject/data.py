"""Injected data loaders in torchtitan's checkpoint contract: :class:`ResumableLoader` for a plain
DataLoader, per-rank state for other Stateful loaders, and the policy for loaders without state
(see titan_recipes.inject)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch
from torch.distributed.checkpoint.stateful import Stateful
from torchtitan.components.dataloader import BaseDataLoader

from ..data import state as codec
from ..data.workers import protect_workers, signals_blocked

logger = logging.getLogger(__name__)

UNSTATEFUL_LOADER_POLICIES = ("error", "restart")


class ResumableLoader(Stateful):
    """Makes a re-iterable batch source (e.g. a plain ``torch.utils.data.DataLoader``) resumable.

    Yields the loader's batches epoch after epoch (``infinite=False``: one epoch). Before each epoch it
    calls ``set_epoch(epoch)`` on the sampler or batch sampler when they have it (``DistributedSampler``).
    The checkpoint holds ``{"epoch", "batches", "generators"}``: the epoch, the batches of it already
    handed out, and the states of the loader's ``torch.Generator`` objects (``DataLoader(generator=)``,
    a sampler's ``generator``) at the epoch's start. A resume restores those, iterates the same epoch
    again and skips ``batches`` batches (they are loaded and dropped: a resume late in a long epoch costs
    that much reading; a loader with its own ``state_dict``, such as torchdata's ``StatefulDataLoader``,
    resumes without reading). That is exact when an epoch's order depends only on the epoch number and
    those generators, so a ``RandomSampler`` without a generator is refused here. Like any Stateful
    loader, the Trainer checkpoints it per data-parallel rank (pickled under ``dp_rank_<r>``).
    """

    def __init__(self, loader: Iterable, *, infinite: bool = True):
        sampler = getattr(loader, "sampler", None)
        if isinstance(sampler, torch.utils.data.RandomSampler) and sampler.generator is None:
            raise ValueError(
                "ResumableLoader: the DataLoader shuffles with torch's global RNG (shuffle=True and no "
                "generator), so a resumed run would see another order. Pass "
                "generator=torch.Generator().manual_seed(seed) to the DataLoader, or use a DistributedSampler "
                "with a seed."
            )
        self.loader, self.infinite = protect_workers(loader), infinite  # workers ignore preemption signals
        self.epoch, self.batches = 0, 0
        self._epoch_generator_states: list[torch.Tensor] = []
        self._resume = False

    def _generators(self) -> list[torch.Generator]:
        found: list[torch.Generator] = []
        for holder in (self.loader, getattr(self.loader, "sampler", None),
                       getattr(getattr(self.loader, "batch_sampler", None), "sampler", None)):
            g = getattr(holder, "generator", None)
            if isinstance(g, torch.Generator) and all(g is not h for h in found):
                found.append(g)
        return found

    def _start_epoch(self) -> None:
        for holder in (getattr(self.loader, "sampler", None), getattr(self.loader, "batch_sampler", None)):
            if callable(getattr(holder, "set_epoch", None)):
                holder.set_epoch(self.epoch)
        generators = self._generators()
        if self._resume:
            if len(generators) != len(self._epoch_generator_states):
                raise ValueError(
                    f"ResumableLoader: the checkpoint holds {len(self._epoch_generator_states)} generator states, "
                    f"this loader has {len(generators)} generators; resume with the loader that wrote it."
                )
            for g, state in zip(generators, self._epoch_generator_states):
                g.set_state(state)
        else:
            self._epoch_generator_states = [g.get_state() for g in generators]

    def __iter__(self):
        while True:
            self._start_epoch()
            skip, self._resume = (self.batches, False) if self._resume else (0, False)
            with signals_blocked():  # worker processes are forked here
                iterator = iter(self.loader)
            if skip:
                logger.info("ResumableLoader: resuming epoch %d after batch %d (reading and skipping %d batches)",
                            self.epoch, skip, skip)
            for n in range(skip):
                try:
                    next(iterator)
                except StopIteration:
                    raise ValueError(
                        f"ResumableLoader: the checkpoint is {skip} batches into epoch {self.epoch}, but this "
                        f"loader's epoch has only {n}: the data or batch size changed since it was written."
                    ) from None
            self.batches = skip
            for batch in iterator:
                self.batches += 1
                yield batch
            self.epoch, self.batches = self.epoch + 1, 0
            if not self.infinite:
                return

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "batches": self.batches, "generators": list(self._epoch_generator_states)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.epoch, self.batches = int(state_dict["epoch"]), int(state_dict["batches"])
        self._epoch_generator_states = list(state_dict["generators"])
        self._resume = True
        logger.info("ResumableLoader: will resume at epoch %d, batch %d", self.epoch, self.batches)


class _RankStateLoader(BaseDataLoader):
    """A Stateful user loader, its state kept under ``dp_rank_<r>`` (pickled, as torchtitan's
    ParallelAwareDataloader does): DCP writes one copy of equal keys, so unkeyed per-rank states would
    collapse into rank 0's."""

    def __init__(self, loader: Stateful, dp_rank: int, dp_world_size: int):
        self.loader, self.dp_rank, self.dp_world_size = loader, dp_rank, dp_world_size

    def __iter__(self):
        with signals_blocked():  # worker processes are forked here
            return iter(self.loader)

    def state_dict(self) -> dict[str, Any]:
        return codec.encode_per_rank(self.dp_rank, self.dp_world_size, self.loader.state_dict())

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = codec.decode_per_rank(state_dict, self.dp_rank, self.dp_world_size,
                                      what=f"The injected data loader {type(self.loader).__name__}")
        if state is not None:
            self.loader.load_state_dict(state)


class _RestartingLoader(BaseDataLoader):
    """A loader without state, accepted with ``on_unstateful_loader="restart"``: checkpoints hold
    nothing for it, and a resume starts it again from its first batch."""

    def __init__(self, loader: Iterable):
        self.loader = loader

    def __iter__(self):
        with signals_blocked():  # worker processes are forked here
            return iter(self.loader)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        logger.warning("inject: the data loader %s has no state: this resumed run reads its data again from the "
                       "first batch (on_unstateful_loader='restart').", type(self.loader).__name__)


def _is_loader_factory(obj: Any) -> bool:
    return callable(obj) and not hasattr(obj, "__iter__")


def wrap_loader(loader: Any, *, dp_rank: int, dp_world_size: int, checkpointing: bool,
                on_unstateful_loader: str = "error") -> BaseDataLoader:
    """The Trainer's data loader for an injected one: a BaseDataLoader as is, another Stateful loader
    keyed by rank, a plain iterable per ``on_unstateful_loader``."""
    if on_unstateful_loader not in UNSTATEFUL_LOADER_POLICIES:
        raise ValueError(f"on_unstateful_loader must be one of {UNSTATEFUL_LOADER_POLICIES}, got {on_unstateful_loader!r}.")
    if not hasattr(loader, "__iter__"):
        raise TypeError(f"dataloader must be iterable (yielding ({{'input': x}}, labels)), got {type(loader).__name__}.")
    protect_workers(loader)  # a torch DataLoader's workers ignore the preemption signals: the trainer decides
    if isinstance(loader, BaseDataLoader):
        return loader
    if isinstance(loader, Stateful):
        return _RankStateLoader(loader, dp_rank, dp_world_size)
    name = type(loader).__name__
    if checkpointing and on_unstateful_loader == "error":
        raise ValueError(
            f"The data loader ({name}) is not Stateful (no state_dict/load_state_dict), so a checkpoint cannot "
            f"record its position and a resumed run would read the data again from the start. Wrap it: "
            f"titan_recipes.inject.ResumableLoader(loader), use torchdata's StatefulDataLoader, pass "
            f"on_unstateful_loader='restart' to accept restarting the data, or set checkpoint.enable = false."
        )
    if checkpointing:
        logger.warning("inject: the data loader %s is not Stateful: checkpoints do not record its position, a "
                       "resume restarts the data from its first batch (on_unstateful_loader='restart').", name)
    return _RestartingLoader(loader)
