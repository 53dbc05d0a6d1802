"""The optimizer monitor: gradient, parameter and update norms and optimizer-state statistics on monitored steps."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch
from torch import nn

from ..errors import ConfigError
from .reduce import Report, _local, _max_negmin, _reduce, _shard_groups, clean_name

logger = logging.getLogger(__name__)


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
