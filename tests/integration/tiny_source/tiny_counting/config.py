"""``[tiny_counting]``: the tiny source's config section, validated beside its fields."""
# No ``from __future__ import annotations`` here: torchtitan reads these field types at run time
# (``ConfigManager._dict_to_dataclass`` builds nested sections from TOML tables by ``is_dataclass(f.type)``).

from dataclasses import dataclass
from typing import Any

from titan_recipes.errors import ConfigError


@dataclass
class TinyCounting:
    """``[tiny_counting]``: counting samples, for ``training.dataset = "tiny_counting"``."""

    stride: int = 7
    """Sample ``k`` starts at token ``k * stride`` (modulo the vocabulary). Part of the fingerprint."""

    samples: int = 64
    """Samples per epoch; epochs repeat in a seeded order."""

    seed: int = 0
    """Seed of the epoch order. Part of the fingerprint."""

    def validate(self, job_config: Any) -> None:
        if job_config.training.dataset != "tiny_counting":
            return
        if self.stride < 1 or self.samples < 1:
            raise ConfigError(
                f"tiny_counting.stride and tiny_counting.samples must be >= 1, got {self.stride} and {self.samples}."
            )
