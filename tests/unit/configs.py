"""Real job configs for unit tests: torchtitan's JobConfig merged with titan-recipes' sections (as a run
gets it), with every default, then the sections a test sets. One helper instead of hand-made
``SimpleNamespace`` configs, which drift from the real config as the code grows."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import titan_recipes  # noqa: F401  (triton stand-in before torchtitan)


@functools.cache
def merged_class() -> type:
    from torchtitan.config import ConfigManager, JobConfig

    from titan_recipes.config import build_job_config_class

    return ConfigManager._merge_configs(JobConfig, build_job_config_class())


def job_config(**sections: Any) -> Any:
    """A merged JobConfig with defaults; each keyword is a section: a dataclass instance replaces it, a dict
    sets the named fields (nested dataclass fields by dict too), e.g.
    ``job_config(training={"dataset": "mds", "seq_len": 16}, mosaic_dataloader=MosaicDataloader(...))``."""
    config = merged_class()()
    for name, value in sections.items():
        if not hasattr(config, name):
            raise AttributeError(f"the job config has no section {name!r}")
        if isinstance(value, dict):
            _update(getattr(config, name), value, name)
        else:
            setattr(config, name, value)
    return config


def _update(section: Any, values: dict[str, Any], where: str) -> None:
    for key, value in values.items():
        if not hasattr(section, key):
            raise AttributeError(f"section {where} has no field {key!r}")
        current = getattr(section, key)
        if isinstance(value, dict) and dataclasses.is_dataclass(current):
            _update(current, value, f"{where}.{key}")
        else:
            setattr(section, key, value)
