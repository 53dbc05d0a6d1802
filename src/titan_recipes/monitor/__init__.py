"""Optimizer and activation monitors (``[monitor]``), reduced across data-parallel ranks.

Both are built by :func:`build_monitors` at the end of ``RecipeTrainer.__init__`` and work only through
hooks, so torchtitan's train loop is unchanged and a run with monitors trains exactly like one without:

- :class:`OptimizerMonitor` registers a step pre-hook and post-hook on torchtitan's
  ``OptimizersContainer`` (a ``torch.optim.Optimizer``; its ``step`` runs the per-model-part optimizers
  between the two hooks). On a monitored step the pre-hook reads the gradients the optimizer is about to
  use (after ``training.max_norm`` clipping; torchtitan's own ``grad_norm`` metric is the norm before
  clipping) and the parameters, and keeps a copy of the local parameter shards; the post-hook measures
  the update (new minus old parameters) and the optimizer state (Adam's ``exp_avg``/``exp_avg_sq``, or
  whatever parameter-shaped tensors another optimizer keeps).
- :class:`ActivationMonitor` registers one forward pre-hook and one forward hook on each model part
  (the root module). On a monitored step, while the model is in training mode, the root pre-hook adds
  input/output hooks to the monitored submodules and the root hook removes them again, so they see
  every micro-batch of the step but never an activation-checkpointing recompute (which runs during
  backward) nor a validation forward (eval mode). The statistics are reported by a step post-hook on
  the optimizers, once per step.

Off-interval steps cost one Python call and a modulo per hook: no tensor is touched, allocated or
synchronised. A monitored step costs a few small kernels per tensor, a copy of the local parameter
shards (optimizer monitor with ``optimizer_monitor_log_metrics``), one all-reduce SUM and one MAX per
group of tensors, and one host sync per monitor (``scripts/bench_monitors.py`` measures both).

Distributed values are those of the full tensors and the whole global batch:

- Parameters, gradients and optimizer state that are DTensors (FSDP/HSDP, TP) are measured on the local
  shard and reduced over the mesh dimensions they are sharded on: sums of squares and element sums and
  counts are summed, maxima and minima take the max/min (plain tensors, e.g. with DDP, are identical on
  all ranks and need nothing).
- Activations differ per data-parallel (and context-parallel) rank: each rank accumulates, per module
  and over its micro-batches, the element count, the raw power sums ``sum(x**k)`` for k = 1..4 and the
  max and min; these are summed (max/min-reduced) over torchtitan's ``loss`` mesh (DP x CP). With tensor
  parallelism the statistics are those of each rank's local activation tensors.

Statistics of a tensor ``x`` with ``n`` elements (population moments over all its elements; for
activations over all elements seen in the step on all DP ranks): ``l2_norm = sqrt(sum(x**2))``,
``mean = sum(x)/n``, ``var = mean((x - mean)**2)``, ``skew = mean((x - mean)**3) / var**1.5``,
``kurtosis = mean((x - mean)**4) / var**2 - 3`` (excess kurtosis, 0 for a Gaussian; skew and kurtosis are
NaN for a constant tensor). Each tensor is first summed around its own mean in float32 and converted to
power sums about zero in float64: kurtosis keeps about ``16 - 4 * log10(|mean| / std)`` digits, so
statistics stay accurate unless ``|mean|`` exceeds the standard deviation by about 1e3 or more.

Metric names (``optim/<metric>/<parameter>`` and ``act/<module>/<input|output>/<stat>``; module and
parameter names as in the unwrapped model, without activation-checkpoint or compile wrappers; the root
module is ``model``):

- ``optim/grad_norm/global`` and, with ``optimizer_monitor_log_metrics``, ``optim/param_norm``,
  ``optim/update_norm``, ``optim/update_ratio`` (update norm / norm of the parameters before the step),
  ``optim/<state>_{norm,min,max,mean}`` (``exp_avg``, ``exp_avg_sq``); ``/global`` is the whole model,
  ``/<parameter name>`` each parameter (``optimizer_monitor_only_global = false``).
- ``act/layers.0.attention/output/l2_norm``, ``.../max``, ``min``, ``mean``, ``var``, ``skew``, ``kurtosis``;
  ``input`` is the first floating-point tensor argument (integer token ids are not monitored).

With ``compile.enable`` (torchtitan compiles each ``TransformerBlock``), the activation monitor hooks
only modules outside compiled regions: each block from outside its compile wrapper (``layers.N``: the
block's input and output), the embeddings, the final norm, the output projection and the root. The
modules inside a block (``layers.N.attention``, ``.feed_forward``, their linears and norms) are not
reported: dynamo does not guard on module hooks, so hooks added there after the first compile never
run (the modules were silently missing), and hooks present at the first compile (a monitored step 1) are
traced into the graph and cost 2 recompiles. Hooked from outside, monitored steps cost no recompile
(measured: 0 on a per-block compiled llama3, ``tests/unit/test_monitor_compile.py``, and on the debug
recipe, ``tests/integration/test_compile.py``); the summary line shows dynamo's count of compiled
graphs, which stays constant. The optimizer monitor is unaffected (the optimizer is not compiled).

Metrics go to ``trainer.metrics_processor.logger`` on rank 0 (TensorBoard, W&B, ``metrics.jsonl``) as
their own row for the step, and a one-line summary to the console. Pipeline parallelism is rejected by
``validate_monitor`` (a stage sees part of the model).
"""

from __future__ import annotations

import logging

import torch.distributed as dist

from ..config import validate_monitor
from .activation import ActivationMonitor, activation_stats, moment_sums
from .optimizer import OptimizerMonitor
from .reduce import Report, clean_name

logger = logging.getLogger(__name__)


# -- wiring into the Trainer ---------------------------------------------------------------------------


def _compiled_graphs() -> str:
    """``, N compiled graphs``: dynamo's count so far (a recompile adds one), for the summary line."""
    from torch._dynamo.utils import counters

    return f", {counters['stats']['unique_graphs']} compiled graphs"


def _trainer_report(trainer) -> Report:
    rank0 = not dist.is_initialized() or dist.get_rank() == 0
    compiled = trainer.job_config.compile.enable

    def report(metrics: dict[str, float], step: int) -> None:
        if not rank0 or not metrics:
            return
        trainer.metrics_processor.logger.log(metrics, step)
        graphs = _compiled_graphs() if compiled else ""
        if "optim/grad_norm/global" in metrics:
            summary = " ".join(f"{k.split('/')[1]} {metrics[k]:.4g}" for k in (
                "optim/grad_norm/global", "optim/param_norm/global", "optim/update_ratio/global") if k in metrics)
            logger.info("monitor step %d: %s (%d optim metrics%s)", step, summary, len(metrics), graphs)
        else:
            logger.info("monitor step %d: %d activation metrics%s", step, len(metrics), graphs)

    return report


def build_monitors(trainer) -> list[OptimizerMonitor | ActivationMonitor]:
    """The monitors ``trainer.job_config.monitor`` asks for, hooked into ``trainer``'s optimizers and
    model parts. Empty (no hook at all) when both are off."""
    validate_monitor(trainer.job_config)
    cfg = trainer.job_config.monitor
    report = _trainer_report(trainer)
    monitors: list[OptimizerMonitor | ActivationMonitor] = []
    if cfg.optimizer_monitor_interval > 0:
        monitors.append(OptimizerMonitor(
            trainer.model_parts, trainer.optimizers, interval=cfg.optimizer_monitor_interval,
            step_fn=lambda: trainer.step, report=report, only_global=cfg.optimizer_monitor_only_global,
            log_metrics=cfg.optimizer_monitor_log_metrics,
        ))
        logger.info("Optimizer monitor: every %d steps (only_global=%s, log_metrics=%s)",
                    cfg.optimizer_monitor_interval, cfg.optimizer_monitor_only_global,
                    cfg.optimizer_monitor_log_metrics)
    if cfg.activation_monitor_enabled:
        mesh = trainer.parallel_dims.get_optional_mesh("loss")
        monitor = ActivationMonitor(
            trainer.model_parts, trainer.optimizers, interval=cfg.activation_monitor_interval,
            step_fn=lambda: trainer.step, report=report,
            ignore_module_types=cfg.activation_monitor_ignore_module_types,
            group=mesh.get_group() if mesh is not None else None,
        )
        monitors.append(monitor)
        logger.info("Activation monitor: every %d steps, %d modules (ignored types: %s)",
                    cfg.activation_monitor_interval, len(monitor.modules),
                    cfg.activation_monitor_ignore_module_types or "none")
        if monitor.compiled_out:
            logger.info("Activation monitor: %d modules inside torch.compile'd blocks are not monitored "
                        "(e.g. %s); each block is measured from outside", len(monitor.compiled_out),
                        monitor.compiled_out[0])
    return monitors


__all__ = ["ActivationMonitor", "OptimizerMonitor", "Report", "activation_stats", "build_monitors", "clean_name",
           "moment_sums"]
