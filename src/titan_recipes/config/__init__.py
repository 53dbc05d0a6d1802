"""Our extension of torchtitan's JobConfig, loaded through ``[job] custom_config_module``.

Every recipe TOML sets::

    [job]
    custom_config_module = "titan_recipes.config"

so the TOML alone reproduces the run. torchtitan merges :data:`JobConfig` into its own
(``ConfigManager._merge_configs``); each section is a TOML table and a ``--section.key`` CLI flag.

The sections are ours (``[launch]``, ``[monitor]``, keys added to ``[model]``: one module each here)
plus those of every data source (``data/<source>/config.py``, collected through
:func:`titan_recipes.data.registry.config_sections`), so a new source brings its table with it.
Each section's ``validate(job_config)`` sits beside its fields; :func:`validate_config` runs them all
after the type checks of :func:`validate_job_config` and the range checks of :func:`validate_values`.
"""

from __future__ import annotations

from dataclasses import field, make_dataclass
from typing import Any

from ..data.registry import config_sections, validate_sections
from ..errors import ConfigError
from .launch import Launch, validate_launch
from .model import Model
from .monitor import Monitor, validate_monitor
from .toml import check_config_file, config_file_from_args, load_toml
from .devices import validate_device_options
from .types import validate_job_config
from .values import validate_values

OWN_SECTIONS: dict[str, type] = {"model": Model, "launch": Launch, "monitor": Monitor}
"""Sections that are not a data source's: TOML table -> dataclass."""


def build_job_config_class() -> type:
    """The JobConfig dataclass torchtitan merges: our sections, then each registered data source's."""
    sections = {**OWN_SECTIONS, **config_sections()}
    cls = make_dataclass("JobConfig", [(name, c, field(default_factory=c)) for name, c in sections.items()])
    cls.__module__ = __name__
    return cls


JobConfig = build_job_config_class()
"""Sections titan-recipes adds to torchtitan's JobConfig (built when this module is imported)."""


def validate_config(config: Any) -> None:
    """Every check of a parsed config that needs no model: types, CUDA-only options on a machine without
    CUDA, ranges, then each section's own
    ``validate(config)`` (ours: [launch], [monitor]; then every data source's)."""
    validate_job_config(config)
    validate_device_options(config)  # float8 / async TP / CUDA memory snapshot without a GPU
    validate_values(config)  # ranges: steps, seq_len, checkpoint.interval ... (before validate_launch divides)
    for table in OWN_SECTIONS:
        check = getattr(getattr(config, table, None), "validate", None)
        if check is not None:
            check(config)
    validate_sections(config)


__all__ = [
    "ConfigError", "JobConfig", "Launch", "Model", "Monitor", "build_job_config_class", "check_config_file",
    "config_file_from_args", "load_toml", "validate_config", "validate_job_config", "validate_launch",
    "validate_monitor", "validate_values",
]
