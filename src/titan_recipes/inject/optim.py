"""Optimizer and LR scheduler containers around objects the user built, with torchtitan's
checkpoint contract (see titan_recipes.inject)."""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch.nn as nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau
from torchtitan.components.lr_scheduler import LRSchedulersContainer
from torchtitan.components.optimizer import OptimizersContainer

from .model import _name

logger = logging.getLogger(__name__)

_FLAT = StateDictOptions(flatten_optimizer_state_dict=True)


def check_unique_fqns(model_parts: Sequence[nn.Module]) -> list[list[tuple[str, nn.Parameter]]]:
    """Each part's trainable ``(fqn, parameter)`` pairs; ValueError if a name occurs in two parts,
    since the optimizer state is keyed by FQN."""
    named = [[(n, p) for n, p in part.named_parameters() if p.requires_grad] for part in model_parts]
    owner: dict[str, int] = {}
    clashes: list[str] = []
    for i, pairs in enumerate(named):
        for fqn, _ in pairs:
            if fqn in owner:
                clashes.append(f"{fqn} (parts {owner[fqn]} and {i})")
            owner.setdefault(fqn, i)
    if clashes:
        raise ValueError(
            f"Parameter names are not unique across the {len(model_parts)} model parts: {clashes[:5]}"
            f"{' ...' if len(clashes) > 5 else ''}. The optimizer checkpoint is keyed by fully qualified "
            f"name, so the states would overwrite each other; give each part's modules distinct names."
        )
    return named


class InjectedOptimizers(OptimizersContainer):
    """torchtitan's optimizer container around optimizers the user built.

    ``factory(named_params)`` is called once per model part with that part's trainable
    ``(fqn, parameter)`` pairs (parameters are DTensors under FSDP/TP) and returns one optimizer, or
    several (e.g. Muon for matrices and AdamW for the rest) that together hold each parameter exactly
    once. Checkpoint state is torchtitan's: flattened and keyed by FQN.
    """

    def __init__(self, model_parts: list[nn.Module], factory: Callable[[list[tuple[str, nn.Parameter]]], Any]):
        self.model_parts = model_parts
        self.groups: list[list[Optimizer]] = []
        all_params: list[nn.Parameter] = []
        for i, pairs in enumerate(check_unique_fqns(model_parts)):
            made = factory(list(pairs))
            optimizers = [made] if isinstance(made, Optimizer) else list(made) if isinstance(made, Iterable) else [made]
            bad = [type(o).__name__ for o in optimizers if not isinstance(o, Optimizer)]
            if not optimizers or bad:
                raise TypeError(
                    f"optimizer factory {_name(factory)} returned {bad or 'nothing'} for model part {i}: it "
                    f"must return a torch.optim.Optimizer or a list of them."
                )
            _check_coverage(pairs, optimizers, i)
            self.groups.append(optimizers)
            all_params.extend(p for _, p in pairs)
        self.optimizers = [o for group in self.groups for o in group]
        logger.info("inject: optimizers %s", [type(o).__name__ for o in self.optimizers])
        self._post_init(all_params, {})  # Optimizer.__init__: the step hooks the Trainer registers

    def state_dict(self) -> dict[str, Any]:
        return {k: v for part, group in zip(self.model_parts, self.groups)
                for k, v in get_optimizer_state_dict(part, group, options=_FLAT).items()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for part, group in zip(self.model_parts, self.groups):
            set_optimizer_state_dict(part, group, optim_state_dict=state_dict, options=_FLAT)


def _check_coverage(pairs: list[tuple[str, nn.Parameter]], optimizers: list[Optimizer], part: int) -> None:
    names = {id(p): n for n, p in pairs}
    count: dict[int, int] = {}
    foreign = 0
    for opt in optimizers:
        for group in opt.param_groups:
            for p in group["params"]:
                if id(p) in names:
                    count[id(p)] = count.get(id(p), 0) + 1
                else:
                    foreign += 1
    missing = [n for i, n in names.items() if i not in count]
    twice = [names[i] for i, c in count.items() if c > 1]
    if foreign or missing or twice:
        raise ValueError(
            f"The optimizers of model part {part} must hold each trainable parameter exactly once: "
            f"{foreign} parameters are not trainable parameters of this part (build the optimizer from the "
            f"named_params it is given, not from a model of your own), missing {missing[:5]}, twice "
            f"{twice[:5]}. To freeze a parameter, set requires_grad=False in the model factory."
        )


class InjectedLRSchedulers(LRSchedulersContainer):
    """torchtitan's LR scheduler container around any ``torch.optim.lr_scheduler.LRScheduler``.

    ``factory(optimizer)`` is called once per optimizer. The checkpoint holds one entry per scheduler,
    ``scheduler_<i>``: its class name and pickled ``state_dict()`` (schedulers keep lists, nested
    scheduler states and callables' placeholders, which DCP would otherwise try to traverse). Loading
    a state written by another scheduler class is an error.
    """

    def __init__(self, optimizers: OptimizersContainer, factory: Callable[[Optimizer], LRScheduler]):
        self.schedulers = []
        for i, optimizer in enumerate(optimizers):
            scheduler = factory(optimizer)
            if isinstance(scheduler, ReduceLROnPlateau):
                raise TypeError(
                    "ReduceLROnPlateau cannot be injected: torchtitan's Trainer calls lr_schedulers.step() "
                    "after every optimizer step without a metric. Use a step-based scheduler (e.g. "
                    "CosineAnnealingLR, OneCycleLR, SequentialLR)."
                )
            if not isinstance(scheduler, LRScheduler):
                raise TypeError(
                    f"lr_scheduler factory {_name(factory)} returned {type(scheduler).__name__}, not a "
                    f"torch.optim.lr_scheduler.LRScheduler."
                )
            if scheduler.optimizer is not optimizer:
                raise ValueError(
                    f"lr_scheduler factory {_name(factory)} returned a scheduler of another optimizer than the "
                    f"one it was given (optimizer {i}); build it on its argument."
                )
            self.schedulers.append(scheduler)
        logger.info("inject: LR schedulers %s", [type(s).__name__ for s in self.schedulers])

    def state_dict(self) -> dict[str, Any]:
        return {f"scheduler_{i}": pickle.dumps({"class": type(s).__name__, "state": s.state_dict()})
                for i, s in enumerate(self.schedulers)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for i, scheduler in enumerate(self.schedulers):
            key = f"scheduler_{i}"
            if key not in state_dict:
                raise ValueError(
                    f"The checkpoint has no LR scheduler state '{key}' (it has {sorted(state_dict)}): this run "
                    f"has {len(self.schedulers)} optimizers, the checkpointed run had fewer."
                )
            saved = pickle.loads(state_dict[key])
            if saved["class"] != type(scheduler).__name__:
                raise ValueError(
                    f"The checkpoint's LR scheduler {i} is a {saved['class']}, this run's is a "
                    f"{type(scheduler).__name__}: resuming would continue a different schedule. Inject the same "
                    f"scheduler class, or exclude it with checkpoint.exclude_from_loading = [\"lr_scheduler\"]."
                )
            scheduler.load_state_dict(saved["state"])
