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

With ``compile.enable``, adding and removing hooks inside compiled blocks makes a monitored step
recompile them (untested; ignore the compiled block types or monitor rarely). Metrics go to
``trainer.metrics_processor.logger`` on rank 0 (TensorBoard, W&B, ``metrics.jsonl``) as
their own row for the step, and a one-line summary to the console. Pipeline parallelism is rejected by
``validate_monitor`` (a stage sees part of the model).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

from .config import ConfigError, validate_monitor

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


# -- optimizer monitor ---------------------------------------------------------------------------------


class OptimizerMonitor:
    """Gradient, parameter and update norms and optimizer-state statistics every ``interval`` steps.

    ``optimizer`` is torchtitan's ``OptimizersContainer`` (its ``.optimizers`` hold the state) or any
    ``torch.optim.Optimizer``; ``step_fn`` returns the step being trained (the Trainer's ``step``, which
    it increments before the step's forward pass).
    """

    def __init__(
        self,
        model_parts: list[nn.Module],
        optimizer: torch.optim.Optimizer,
        *,
        interval: int,
        step_fn: Callable[[], int],
        report: Report,
        only_global: bool = True,
        log_metrics: bool = True,
    ):
        if interval < 1:
            raise ConfigError(f"monitor.optimizer_monitor_interval must be >= 1 to build the monitor, got {interval}.")
        self.interval, self.step_fn, self.report = interval, step_fn, report
        self.only_global, self.log_metrics = only_global, log_metrics
        self.params = [(clean_name(n), p) for m in model_parts for n, p in m.named_parameters() if p.requires_grad]
        inner = getattr(optimizer, "optimizers", None) or [optimizer]
        self._owner = {p: opt for opt in inner for g in opt.param_groups for p in g["params"]}
        self._step: int | None = None  # the monitored step between the pre- and the post-hook
        self._before: list[torch.Tensor] = []  # local parameter shards before the step
        self._pre_sums: list[torch.Tensor] = []  # per parameter: [grad sum of squares, param sum of squares]
        self.last: dict[str, float] = {}
        """The metrics of the last monitored step (what ``report`` received)."""
        self._handles = [optimizer.register_step_pre_hook(self._pre_step),
                         optimizer.register_step_post_hook(self._post_step)]

    def remove(self) -> None:
        for h in self._handles:
            h.remove()

    @torch.no_grad()
    def _pre_step(self, optimizer, args, kwargs) -> None:
        step = self.step_fn()
        if step % self.interval:
            return
        self._step = step
        self._pre_sums, self._before = [], []
        for _, p in self.params:
            local = _local(p).detach()
            g = p.grad
            g2 = _local(g).float().square().sum() if g is not None else local.new_zeros((), dtype=torch.float32)
            self._pre_sums.append(torch.stack([g2, local.float().square().sum()]).double())
            if self.log_metrics:
                self._before.append(local.clone())

    @torch.no_grad()
    def _post_step(self, optimizer, args, kwargs) -> None:
        if self._step is None:
            return
        step, self._step = self._step, None
        state_keys = self._state_keys() if self.log_metrics else []
        sums, maxes, keys = [], [], []
        for i, (_, p) in enumerate(self.params):
            row = [self._pre_sums[i]]
            ext = []
            if self.log_metrics:
                local = _local(p).detach()
                row.append((local.float() - self._before[i].float()).square().sum().double().reshape(1))
                state = self._owner[p].state.get(p, {}) if p in self._owner else {}
                for key in state_keys:
                    s = state.get(key)
                    if not isinstance(s, torch.Tensor):  # a parameter without this state: counts 0
                        s = local.new_empty(0)
                    s = _local(s).detach().float()
                    row.append(torch.stack([s.square().sum(), s.sum()]).double())
                    row.append(torch.full((1,), float(s.numel()), dtype=torch.float64, device=s.device))
                    ext.append(_max_negmin(s))
            sums.append(torch.cat(row))
            maxes.append(torch.cat(ext) if ext else sums[-1].new_zeros(0))
            keys.append(_shard_groups(p))
        self._before, self._pre_sums = [], []
        sums_t, maxes_t = torch.stack(sums), torch.stack(maxes)
        for groups in dict.fromkeys(keys):  # one reduction per distinct sharding, in model order
            rows = [i for i, k in enumerate(keys) if k == groups]
            if groups:
                s, m = sums_t[rows], maxes_t[rows]
                _reduce(s, m, groups)
                sums_t[rows], maxes_t[rows] = s, m
        metrics = self._metrics(sums_t.tolist(), maxes_t.tolist(), state_keys)
        self.last = metrics
        self.report(metrics, step)

    def _state_keys(self) -> list[str]:
        """Parameter-shaped optimizer state tensors (Adam: exp_avg, exp_avg_sq), in a stable order."""
        keys: set[str] = set()
        for _, p in self.params:
            opt = self._owner.get(p)
            for k, v in (opt.state.get(p, {}) if opt is not None else {}).items():
                if isinstance(v, torch.Tensor) and v.shape == p.shape and v.dim() > 0:
                    keys.add(k)
        return sorted(keys)

    def _metrics(self, sums: list[list[float]], maxes: list[list[float]], state_keys: list[str]) -> dict[str, float]:
        out: dict[str, float] = {}
        total = [0.0] * len(sums[0])
        total_ext = [-math.inf] * (2 * len(state_keys))
        rows = [(name, s, m) for (name, _), s, m in zip(self.params, sums, maxes)]
        for _, s, m in rows:
            total = [a + b for a, b in zip(total, s)]
            total_ext = [max(a, b) for a, b in zip(total_ext, m)]
        entries = [("global", total, total_ext)] + ([] if self.only_global else rows)
        for name, s, m in entries:
            out[f"optim/grad_norm/{name}"] = math.sqrt(s[0])
            if not self.log_metrics:
                continue
            param, update = math.sqrt(s[1]), math.sqrt(s[2])
            out[f"optim/param_norm/{name}"] = param
            out[f"optim/update_norm/{name}"] = update
            out[f"optim/update_ratio/{name}"] = update / param if param > 0 else math.nan
            for j, key in enumerate(state_keys):
                sq, sm, n = s[3 + 3 * j: 6 + 3 * j]
                out[f"optim/{key}_norm/{name}"] = math.sqrt(sq)
                out[f"optim/{key}_max/{name}"] = m[2 * j] if n else math.nan
                out[f"optim/{key}_min/{name}"] = -m[2 * j + 1] if n else math.nan
                out[f"optim/{key}_mean/{name}"] = sm / n if n else math.nan
        return out


# -- activation monitor --------------------------------------------------------------------------------


def moment_sums(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``([n, sum x, sum x^2, sum x^3, sum x^4], [max, -min])`` of all elements, float64 on x's device.

    Summed around the tensor's own mean in float32, in chunks, then shifted to power sums about zero in
    float64 (see the module docstring), so that they add up across micro-batches and ranks."""
    flat = x.detach().reshape(-1)
    n = flat.numel()
    if n == 0:
        return torch.zeros(5, dtype=torch.float64, device=x.device), _max_negmin(flat)
    c = flat.mean(dtype=torch.float32)
    central = torch.zeros(4, dtype=torch.float64, device=x.device)
    for chunk in flat.split(_CHUNK):
        d = chunk.float() - c
        d2 = d * d
        central += torch.stack([d.sum(), d2.sum(), (d2 * d).sum(), (d2 * d2).sum()]).double()
    c = c.double()
    m1, m2, m3, m4 = central.unbind()
    sums = torch.stack([
        torch.full((), float(n), dtype=torch.float64, device=x.device),  # a fill, not a host copy
        m1 + n * c,
        m2 + 2 * c * m1 + n * c**2,
        m3 + 3 * c * m2 + 3 * c**2 * m1 + n * c**3,
        m4 + 4 * c * m3 + 6 * c**2 * m2 + 4 * c**3 * m1 + n * c**4,
    ])
    return sums, _max_negmin(flat)


def activation_stats(sums: list[float], ext: list[float]) -> dict[str, float]:
    """l2_norm, max, min, mean, var, skew and kurtosis of power sums ``[n, s1, s2, s3, s4]`` and
    ``[max, -min]`` (definitions in the module docstring)."""
    n, s1, s2, s3, s4 = sums
    mean, e2, e3, e4 = s1 / n, s2 / n, s3 / n, s4 / n
    var = max(e2 - mean**2, 0.0)
    m3 = e3 - 3 * mean * e2 + 2 * mean**3
    m4 = e4 - 4 * mean * e3 + 6 * mean**2 * e2 - 3 * mean**4
    return {
        "l2_norm": math.sqrt(max(s2, 0.0)),
        "max": ext[0],
        "min": -ext[1],
        "mean": mean,
        "var": var,
        "skew": m3 / var**1.5 if var > 0 else math.nan,
        "kurtosis": m4 / var**2 - 3 if var > 0 else math.nan,
    }


def _first_float(args: tuple, kwargs: dict | None = None) -> torch.Tensor | None:
    for a in (*args, *(kwargs or {}).values()):
        if isinstance(a, torch.Tensor) and a.is_floating_point():
            return _local(a)
    return None


def _type_names(module: nn.Module) -> list[str]:
    return [f"{c.__module__}.{c.__qualname__}" for c in type(module).__mro__]


class ActivationMonitor:
    """Input/output statistics of every module (except ignored types) every ``interval`` steps,
    reported after the step's optimizer step (a post-hook on ``optimizer``) and reduced over
    ``group`` (the DP x CP process group; None: one rank)."""

    def __init__(
        self,
        model_parts: list[nn.Module],
        optimizer: torch.optim.Optimizer,
        *,
        interval: int,
        step_fn: Callable[[], int],
        report: Report,
        ignore_module_types: list[str] = (),
        group: dist.ProcessGroup | None = None,
    ):
        if interval < 1:
            raise ConfigError(f"monitor.activation_monitor_interval must be >= 1, got {interval}.")
        self.interval, self.step_fn, self.report, self.group = interval, step_fn, report, group
        all_modules = [(n, m) for part in model_parts for n, m in part.named_modules()]
        types = {t for _, m in all_modules for t in _type_names(m)}
        unknown = [s for s in ignore_module_types if not any(s in t for t in types)]
        if unknown:
            present = sorted({type(m).__name__ for _, m in all_modules})
            raise ConfigError(
                f"monitor.activation_monitor_ignore_module_types: {unknown} match no module type of the model "
                f"(its module classes: {present}); fix the entries or remove them."
            )
        self._part_modules: dict[int, list[tuple[str, nn.Module]]] = {}  # id(part) -> its monitored modules
        seen: set[str] = set()
        for part in model_parts:
            chosen = self._part_modules.setdefault(id(part), [])
            for name, m in part.named_modules():
                cname = clean_name(name)
                if cname in seen or any(s in t for s in ignore_module_types for t in _type_names(m)):
                    continue  # a wrapper and its wrapped module share a clean name: keep the outer one
                seen.add(cname)
                chosen.append((cname, m))
        self.modules = [nm for mods in self._part_modules.values() for nm in mods]
        self.keys = [(name, io) for name, _ in self.modules for io in ("input", "output")]
        self._step: int | None = None  # the monitored step whose statistics are being collected
        self._reported: int | None = None
        self._acc: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}
        self._step_handles: list[Any] = []
        self.last: dict[str, float] = {}
        """The metrics of the last monitored step (what ``report`` received)."""
        self._handles = [h for part in model_parts for h in (
            part.register_forward_pre_hook(self._root_pre), part.register_forward_hook(self._root_post))]
        self._handles.append(optimizer.register_step_post_hook(self._post_step))

    def remove(self) -> None:
        for h in (*self._handles, *self._step_handles):
            h.remove()

    def _root_pre(self, module, args) -> None:
        if not module.training:
            return
        step = self.step_fn()
        if step % self.interval or step == self._reported:
            return
        if self._step != step:
            self._step, self._acc = step, {}
        for name, m in self._part_modules[id(module)]:
            if m is module:  # this call's pre-hooks are already being run: record the root's input here
                self._add((name, "input"), _first_float(args))
            else:
                self._step_handles.append(m.register_forward_pre_hook(self._input_hook(name), with_kwargs=True))
            # prepend: on the root this hook runs before _root_post (registered earlier) removes it
            self._step_handles.append(m.register_forward_hook(self._output_hook(name), prepend=True))

    def _root_post(self, module, args, output) -> None:
        if self._step_handles:
            for h in self._step_handles:
                h.remove()
            self._step_handles = []

    def _input_hook(self, name: str):
        def hook(module, args, kwargs):
            self._add((name, "input"), _first_float(args, kwargs))
        return hook

    def _output_hook(self, name: str):
        def hook(module, args, output):
            self._add((name, "output"), _first_float(output if isinstance(output, tuple) else (output,)))
        return hook

    @torch.no_grad()
    def _add(self, key: tuple[str, str], x: torch.Tensor | None) -> None:
        if x is None:
            return
        sums, ext = moment_sums(x)
        if key in self._acc:
            s0, e0 = self._acc[key]
            sums, ext = s0 + sums, torch.maximum(e0, ext)
        self._acc[key] = (sums, ext)

    @torch.no_grad()
    def _post_step(self, optimizer, args, kwargs) -> None:
        if self._step is None:
            return
        step, acc = self._step, self._acc
        self._step, self._acc, self._reported = None, {}, step
        device = next(iter(acc.values()))[0].device if acc else torch.device("cpu")
        empty = (torch.zeros(5, dtype=torch.float64, device=device),
                 torch.full((2,), -math.inf, dtype=torch.float64, device=device))
        sums = torch.stack([acc.get(k, empty)[0] for k in self.keys])
        maxes = torch.stack([acc.get(k, empty)[1] for k in self.keys])
        _reduce(sums, maxes, [self.group])
        metrics = {}
        for (name, io), s, m in zip(self.keys, sums.tolist(), maxes.tolist()):
            if s[0] > 0:  # a module input without floating-point tensors (token ids) is not reported
                for stat, value in activation_stats(s, m).items():
                    metrics[f"act/{name}/{io}/{stat}"] = value
        self.last = metrics
        self.report(metrics, step)


# -- wiring into the Trainer ---------------------------------------------------------------------------


def _trainer_report(trainer) -> Report:
    rank0 = not dist.is_initialized() or dist.get_rank() == 0

    def report(metrics: dict[str, float], step: int) -> None:
        if not rank0 or not metrics:
            return
        trainer.metrics_processor.logger.log(metrics, step)
        if "optim/grad_norm/global" in metrics:
            summary = " ".join(f"{k.split('/')[1]} {metrics[k]:.4g}" for k in (
                "optim/grad_norm/global", "optim/param_norm/global", "optim/update_ratio/global") if k in metrics)
            logger.info("monitor step %d: %s (%d optim metrics)", step, summary, len(metrics))
        else:
            logger.info("monitor step %d: %d activation metrics", step, len(metrics))

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
    return monitors
