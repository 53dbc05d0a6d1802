"""Divergence guard: a non-finite loss or gradient norm stops the run before anything is saved.

torchtitan 0.2.2 trains on after a NaN: the loss is logged, clipping scales every gradient by NaN, the
optimizer writes NaN into the weights, and the next checkpoint stores them (issue 14: ``--optimizer.lr
1000`` exited 0, ``summary.json`` said "completed" and the NaN weights were checkpointed).

Where it hooks in (:class:`titan_recipes.trainer.RecipeTrainer`, as a :class:`~titan_recipes.extensions.TrainerExtension`): ``forward_backward_step`` hands each
micro-batch's loss to :meth:`DivergenceGuard.add_loss`; after the last micro-batch's backward (gradients
complete, before torchtitan clips them) :meth:`DivergenceGuard.add_grads` takes this rank's sum of
squared gradients; at the end of ``train_step``, before the loop calls ``checkpointer.save`` for the step,
:meth:`DivergenceGuard.check` sums ``[loss, grad sum of squares]`` over all ranks with one all-reduce of two
floats (NaN and inf survive a sum), so every rank sees the same verdict and all stop after the same step.
The loss is only all-reduced by torchtitan on logged steps, and its gradient norm never leaves
``train_step``; recomputing this rank's part costs one pass over the local gradient shards, the work
torchtitan's own clipping does, plus that all-reduce and one host sync per step.

``launch.on_nonfinite = "stop"`` (default) raises :class:`DivergenceError` there: torchtitan closes the
Trainer, ``summary.json`` gets ``exit_reason = "diverged"``, the process exits non-zero, and the step's
checkpoint is never written; earlier checkpoints stay. ``"warn"`` logs and trains on.

Independently of the mode, :func:`assert_finite_weights` runs before every checkpoint save
(:class:`titan_recipes.checkpointing.RecipeCheckpointManager`): weights can become non-finite with a
finite loss and gradient (an optimizer update that overflows), and such weights are never saved.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
import torch.distributed as dist

from .extensions import TrainerExtension

logger = logging.getLogger(__name__)

ON_NONFINITE = ("stop", "warn")


class DivergenceError(RuntimeError):
    """The loss, gradient norm or weights became NaN/inf. ``summary.json`` records ``diverged``."""

    exit_reason = "diverged"


def _local(t: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t


def _sum_of_squares(tensors: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """This rank's sum of squares of ``tensors`` (their local shards) as a float32 scalar on ``device``;
    NaN/inf when any element is, as torchtitan's gradient norm is."""
    local = [_local(t) for t in tensors]
    local = [t for t in local if t.numel()]
    if not local:
        return torch.zeros((), dtype=torch.float32, device=device)
    norm = torch.nn.utils.get_total_norm(local, 2.0, error_if_nonfinite=False, foreach=True)
    return norm.to(device=device, dtype=torch.float32).square()


def _all_sum(values: torch.Tensor) -> list[float]:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values.tolist()


def _kind(x: float) -> str:
    return "NaN" if math.isnan(x) else ("+inf" if x > 0 else "-inf")


class DivergenceGuard(TrainerExtension):
    """Per-step check of the loss and the gradient norm of one Trainer (see the module docstring)."""

    def __init__(self, trainer: Any):
        self.trainer = trainer
        self.mode = trainer.job_config.launch.on_nonfinite
        self._losses: list[torch.Tensor] = []
        self._grad_sq: torch.Tensor | None = None

    def add_loss(self, loss: torch.Tensor) -> None:
        """One micro-batch's loss; after the step's last micro-batch, also reads the gradients."""
        self._losses.append(_local(loss.detach()).float().sum())
        if len(self._losses) == self.trainer.gradient_accumulation_steps:
            self.add_grads()

    def add_grads(self) -> None:
        grads = [p.grad for m in self.trainer.model_parts for p in m.parameters() if p.grad is not None]
        self._grad_sq = _sum_of_squares(grads, self.trainer.device)

    def on_loss(self, loss: torch.Tensor) -> None:
        self.add_loss(loss)

    def on_step_end(self, step: int) -> None:
        self.check(step)

    def check(self, step: int) -> None:
        """All ranks: agree whether step ``step``'s loss or gradient norm was non-finite; stop or warn."""
        device = self.trainer.device
        loss = torch.stack(self._losses).sum().to(device) if self._losses else torch.zeros((), device=device)
        grad_sq = self._grad_sq if self._grad_sq is not None else torch.zeros((), device=device)
        self._losses, self._grad_sq = [], None
        loss_sum, grad_sum = _all_sum(torch.stack([loss.float(), grad_sq.float()]))
        bad = []
        if not math.isfinite(loss_sum):
            bad.append(f"the loss is {_kind(loss_sum)}")
        if not math.isfinite(grad_sum):
            bad.append(f"the gradient norm is {_kind(grad_sum)}")
        if not bad:
            return
        what = " and ".join(bad)
        if self.mode == "warn":
            logger.warning("Step %d: %s; training on because launch.on_nonfinite = \"warn\" (checkpoints of "
                           "non-finite weights are still skipped).", step, what)
            return
        raise DivergenceError(diverged_message(self.trainer, step, what))


def diverged_message(trainer: Any, step: int, what: str) -> str:
    from .checkpoint_steps import describe_resume_point

    cfg = trainer.job_config
    return (
        f"Training diverged at step {step}: {what} (non-finite). Stopped before saving step {step}, so no "
        f"checkpoint holds non-finite weights; {describe_resume_point(trainer.checkpointer, step)} Fixes: lower "
        f"optimizer.lr (now {cfg.optimizer.lr:g}), lengthen lr_scheduler.warmup_steps (now "
        f"{cfg.lr_scheduler.warmup_steps}), lower training.max_norm (now {cfg.training.max_norm:g}), and check "
        f"the data for corrupt or out-of-vocabulary samples around this step. launch.on_nonfinite = \"warn\" "
        f"trains on instead."
    )


def assert_finite_weights(trainer: Any, step: int) -> bool:
    """All ranks: whether every weight is finite before saving step ``step``; with
    ``launch.on_nonfinite = "stop"`` a non-finite weight raises :class:`DivergenceError` instead of
    returning False. One pass over the local weight shards and one all-reduce, at save steps only."""
    params = [p.detach() for m in trainer.model_parts for p in m.parameters()]
    (total,) = _all_sum(_sum_of_squares(params, trainer.device).reshape(1))
    if math.isfinite(total):
        return True
    what = f"the weights are {_kind(total)} after the optimizer update (the loss and gradient norm were finite)"
    if trainer.job_config.launch.on_nonfinite == "warn":
        logger.warning("Step %d: %s; not saving checkpoint step %d (launch.on_nonfinite = \"warn\" trains on).",
                       step, what, step)
        return False
    raise DivergenceError(diverged_message(trainer, step, what))
