"""Type checks of a parsed JobConfig: torchtitan rejects unknown TOML keys itself, but not a value of
the wrong type (a TOML ``steps = "10"`` would reach the Trainer as a string)."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from typeguard import TypeCheckError, check_type

from ..errors import ConfigError


def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # a merged dataclass can mix modules; fall back to the raw annotations
        return {f.name: f.type for f in dataclasses.fields(cls)}


def validate_job_config(config: Any, prefix: str = "") -> None:
    """Raise ConfigError for the first value whose type does not match its field annotation."""
    hints = _hints(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            validate_job_config(value, prefix=f"{key}.")
            continue
        annotation = hints.get(f.name, f.type)
        if isinstance(annotation, str):
            continue
        # TOML has no int/float distinction for whole numbers written as "1.0" vs "1"; accept ints
        # where floats are expected, as Python does.
        if annotation is float and isinstance(value, int) and not isinstance(value, bool):
            continue
        try:
            if isinstance(value, bool) and annotation in (int, float):
                raise TypeCheckError("bool is not a number here")
            check_type(value, annotation)
        except TypeCheckError:
            raise ConfigError(
                f"Config key `{key}` has the wrong type: expected {_type_name(annotation)}, got "
                f"{type(value).__name__} {value!r}. Fix it in the [{key.rsplit('.', 1)[0]}] table of the "
                f"TOML file or override it with --{key}."
            ) from None


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")
