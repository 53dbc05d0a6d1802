"""Enroot environment definition files (EDF, ``env/titan-recipes.edf.toml``), expanded as the engine does.

Standard library only (see the package docstring: nox loads this by file path).
"""

from __future__ import annotations

import re
from pathlib import Path

from . import ContainerError

EDF_VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}")


def expand_variables(value: str, env: dict[str, str], where: str = "") -> str:
    """The container engine's expansion of EDF strings: ``${VAR}``, ``${VAR:-default}``, ``$$`` -> ``$``.
    An undefined ``${VAR}`` is an error, as it is for the engine."""

    def one(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name, has_default, default = m.group(1), m.group(2), m.group(3)
        if name in env and (env[name] or not has_default):
            return env[name]
        if has_default is not None:
            return default
        raise ContainerError(f"{where}: ${{{name}}} is not set; export {name}=... before starting the job "
                             f"(or write ${{{name}:-}} for an empty default).")

    return EDF_VARIABLE.sub(one, value)


def render_edf(path: Path, env: dict[str, str]) -> dict:
    """An EDF (TOML) with every string expanded from ``env``, as the container engine sees it."""
    import tomllib

    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ContainerError(f"{path} is not valid TOML: {e}") from None

    def walk(node, where):
        if isinstance(node, dict):
            return {k: walk(v, f"{where}.{k}" if where else k) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, f"{where}[{i}]") for i, v in enumerate(node)]
        return expand_variables(node, env, f"{path} {where}") if isinstance(node, str) else node

    return walk(data, "")
