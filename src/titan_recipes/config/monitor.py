"""``[monitor]``: the optimizer and activation monitors' settings (titan_recipes/monitor/)."""
# No ``from __future__ import annotations`` here: torchtitan reads these field types at run time
# (``ConfigManager._dict_to_dataclass`` builds nested sections from TOML tables by ``is_dataclass(f.type)``).

from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError


@dataclass
class Monitor:
    """``[monitor]``: the optimizer and activation monitors (titan_recipes/monitor/). The keys keep the
    names of the FL seed fork, where they were top-level JobConfig fields; torchtitan 0.2.2 reads TOML
    tables only, so they live in this one table (``[monitor] optimizer_monitor_interval = 10``,
    ``--monitor.optimizer_monitor_interval 10``). Monitored steps are those with ``step % interval == 0``
    (steps count from 1); other steps cost one Python call per hook. Metrics go to torchtitan's metric
    logger (TensorBoard, W&B, ``metrics.jsonl``) from rank 0, and a one-line summary to the console."""

    optimizer_monitor_interval: int = 0
    """Every this many steps, log gradient, parameter and update norms and the optimizer state's
    statistics (``optim/...``), computed over the full tensors (FSDP shards are reduced). 0 (default):
    off, no hook is registered. The seed's default was 10; here monitoring is opt-in."""

    optimizer_monitor_only_global: bool = True
    """Log only the whole-model values (``optim/<metric>/global``). False adds one value per parameter
    (``optim/grad_norm/layers.0.attention.wq.weight``): about 10 metrics per parameter tensor."""

    optimizer_monitor_log_metrics: bool = True
    """Log parameter norms, update norms and ratios and the optimizer moments as well. False: gradient
    norms only (no parameter snapshot is taken, so a monitored step needs no extra memory)."""

    activation_monitor_enabled: bool = False
    """Collect statistics of module inputs and outputs (``act/<module>/<input|output>/<stat>``: L2 norm,
    max, min, mean, variance, skew, excess kurtosis) during the forward passes of monitored steps."""

    activation_monitor_interval: int = 25
    """Every this many steps when ``activation_monitor_enabled``; must then be >= 1."""

    activation_monitor_ignore_module_types: list[str] = field(default_factory=list)
    """Skip modules whose class matches one of these substrings, compared with the qualified class
    names of the module's type and its bases (``"Dropout"``, ``"RMSNorm"``,
    ``"torch.nn.modules.linear"``), as the key's name says (the seed's help text spoke of module
    names). An entry that matches no module of the model is a ConfigError (a typo would otherwise
    monitor everything). Command line: ``--monitor.activation_monitor_ignore_module_types RMSNorm,Embedding``."""

    def validate(self, job_config: Any) -> None:
        validate_monitor(job_config)


def validate_monitor(config: Any) -> None:
    """Checks of ``[monitor]`` that need no model (titan_recipes.monitor checks the ignore list against
    the model's modules)."""
    mon = config.monitor
    for key in ("optimizer_monitor_interval", "activation_monitor_interval"):
        if getattr(mon, key) < 0:
            raise ConfigError(f"monitor.{key} must be >= 0 (0: off), got {getattr(mon, key)}.")
    if mon.activation_monitor_enabled and mon.activation_monitor_interval == 0:
        raise ConfigError(
            "monitor.activation_monitor_enabled = true with monitor.activation_monitor_interval = 0 would "
            "collect nothing; set the interval to a step count >= 1 or disable the monitor."
        )
    bad = [t for t in mon.activation_monitor_ignore_module_types if not t.strip()]
    if bad:
        raise ConfigError(
            f"monitor.activation_monitor_ignore_module_types has empty entries "
            f"({mon.activation_monitor_ignore_module_types}); an empty substring would match every module."
        )
    enabled = mon.optimizer_monitor_interval > 0 or mon.activation_monitor_enabled
    if enabled and config.parallelism.pipeline_parallel_degree > 1:
        raise ConfigError(
            f"[monitor] does not support pipeline parallelism yet (parallelism.pipeline_parallel_degree = "
            f"{config.parallelism.pipeline_parallel_degree}): its global values would cover one stage only. "
            f"Set monitor.optimizer_monitor_interval = 0 and monitor.activation_monitor_enabled = false."
        )
    if mon.optimizer_monitor_interval > 0 and config.optimizer.early_step_in_backward:
        raise ConfigError(
            "monitor.optimizer_monitor_interval > 0 needs optimizer.early_step_in_backward = false: with "
            "the optimizer stepping inside backward there is no optimizer step to observe."
        )
