"""The TOML file: torchtitan reads it before our Trainer exists, so its syntax errors are caught here
first, with the file and line."""

from __future__ import annotations

import os
import re
from typing import Any

from ..errors import ConfigError


_TOML_FLAGS = ("--job.config_file", "--job.config-file")


def config_file_from_args(args: list[str]) -> str | None:
    """The ``--job.config_file`` value in ``args``, found as torchtitan's ConfigManager finds it."""
    for i, arg in enumerate(args):
        key, eq, value = arg.partition("=")
        if eq and key in _TOML_FLAGS:
            return value
        if arg in _TOML_FLAGS and i + 1 < len(args):
            return args[i + 1]
    return None


def load_toml(path: str | os.PathLike) -> dict[str, Any]:
    """The tables of a TOML config file, or ConfigError naming the file, the line and what is wrong.

    torchtitan's ConfigManager logs a traceback and re-raises ``tomllib.TOMLDecodeError``, whose
    message ("Expected '=' after a key in a key/value pair (at line 3, column 8)") names no file."""
    import tomllib

    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(
            f"Job config file not found: '{path}' (relative paths resolve from {os.getcwd()}); check "
            f"--job.config_file or CONFIG_FILE."
        ) from None
    except IsADirectoryError:
        raise ConfigError(f"Job config file '{path}' is a directory; --job.config_file needs a .toml file.") from None
    except tomllib.TOMLDecodeError as e:
        where, text = "", ""
        m = re.search(r"\(at line (\d+), column (\d+)\)", str(e))
        if m:
            lineno = int(m.group(1))
            where = f":{lineno}:{m.group(2)}"
            with open(path, "rb") as f:
                lines = f.read().decode("utf-8", "replace").splitlines()
            if 0 < lineno <= len(lines):
                text = f"\n  line {lineno}: {lines[lineno - 1].rstrip()}"
        reason = re.sub(r"\s*\(at line \d+, column \d+\)|\s*\(at end of document\)", "", str(e))
        raise ConfigError(
            f"TOML syntax error in job config file {path}{where}: {reason}.{text}\nFix the file; "
            f"the TOML format is described at https://toml.io (strings need quotes, tables are [section])."
        ) from None


def check_config_file(args: list[str]) -> None:
    """Parse the ``--job.config_file`` named in ``args`` (if any) and raise ConfigError for a missing file
    or a TOML syntax error; train.main() calls it before torchtitan's ConfigManager reads the file."""
    path = config_file_from_args(args)
    if path is not None:
        load_toml(path)
