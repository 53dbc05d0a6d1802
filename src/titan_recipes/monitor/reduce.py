"""Shared pieces of the monitors: metric names, and sums/maxima reduced over the shards of FSDP/TP tensors."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

logger = logging.getLogger(__name__)

Report = Callable[[dict[str, float], int], None]
"""Receives one step's metrics: ``report(metrics, step)``."""

_WRAPPER_PARTS = frozenset({"_checkpoint_wrapped_module", "_orig_mod", "_fsdp_wrapped_module"})
_CHUNK = 1 << 24
"""Elements per chunk when summing an activation: bounds the float32 temporaries to a few 64 MiB."""


def clean_name(name: str) -> str:
    """A module or parameter name without the wrapper segments activation checkpointing and
    torch.compile insert (``layers.0._checkpoint_wrapped_module.attention`` -> ``layers.0.attention``)."""
    return ".".join(p for p in name.split(".") if p not in _WRAPPER_PARTS) or "model"


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if isinstance(t, DTensor) else t


def _shard_groups(t: torch.Tensor) -> tuple[dist.ProcessGroup, ...]:
    """Process groups of the mesh dimensions a DTensor is sharded on (empty for a plain tensor)."""
    if not isinstance(t, DTensor):
        return ()
    mesh = t.device_mesh
    return tuple(mesh.get_group(i) for i, p in enumerate(t.placements) if p.is_shard())


def _reduce(sums: torch.Tensor, maxes: torch.Tensor, groups: Iterable[dist.ProcessGroup | None]) -> None:
    """In place: SUM ``sums`` and MAX ``maxes`` over each group in turn (a product of mesh dimensions)."""
    for group in groups:
        if group is None or dist.get_world_size(group) == 1:
            continue
        dist.all_reduce(sums, op=dist.ReduceOp.SUM, group=group)
        if maxes.numel():  # none with optimizer_monitor_log_metrics = false
            dist.all_reduce(maxes, op=dist.ReduceOp.MAX, group=group)


def _max_negmin(x: torch.Tensor) -> torch.Tensor:
    """``[max(x), -min(x)]`` in float64; ``-inf`` for an empty tensor (an empty FSDP shard)."""
    if x.numel() == 0:
        return torch.full((2,), -math.inf, dtype=torch.float64, device=x.device)
    return torch.stack([x.max(), -x.min()]).double()
