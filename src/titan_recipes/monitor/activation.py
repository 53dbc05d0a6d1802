"""The activation monitor: statistics of module inputs and outputs during the forward passes of monitored steps."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..errors import ConfigError
from .reduce import _CHUNK, Report, _local, _max_negmin, _reduce, clean_name

logger = logging.getLogger(__name__)


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


def compiled_regions(root: nn.Module) -> list[str]:
    """Name prefixes (``layers.0._orig_mod``) of the modules that run inside a ``torch.compile`` wrapper.

    Dynamo does not guard on module hooks (``torch._dynamo.config.skip_nnmodule_hook_guards``, on by
    default), so a hook added inside a compiled region after its first compile never runs, and hooks present
    at the first compile (a monitored step 1) are traced into the graph and cost recompiles. The
    monitor therefore hooks only modules outside those regions: the wrapper itself (torchtitan's compiled
    ``TransformerBlock``; its hooks run eagerly around the compiled call) and uncompiled modules. Neither
    costs a recompile (``tests/unit/test_monitor_compile.py``)."""
    from torch._dynamo.eval_frame import OptimizedModule

    return [f"{name}._orig_mod" if name else "_orig_mod"
            for name, m in root.named_modules() if isinstance(m, OptimizedModule)]


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
        self.compiled_out: list[str] = []
        """Modules inside torch.compile'd regions, not monitored (see :func:`compiled_regions`)."""
        seen: set[str] = set()
        for part in model_parts:
            chosen = self._part_modules.setdefault(id(part), [])
            inside = compiled_regions(part)
            for name, m in part.named_modules():
                cname = clean_name(name)
                if any(name == r or name.startswith(r + ".") for r in inside):
                    if cname not in seen:  # the wrapped block itself shares the wrapper's (monitored) name
                        self.compiled_out.append(cname)
                    continue
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
