"""The command line of ``python -m titan_recipes.train``: our config module added when no one names
it, and a ``{TOML only}`` flag for each key the command line cannot express."""

from __future__ import annotations

import json
from typing import Any

from .toml import config_file_from_args, load_toml

CUSTOM_CONFIG_MODULE = "titan_recipes.config"
_CUSTOM_CONFIG_FLAGS = ("--job.custom_config_module", "--job.custom-config-module")


def with_config_module(args: list[str]) -> list[str]:
    """``args`` plus ``--job.custom_config_module titan_recipes.config`` unless the command line or the
    TOML file names a module. torchtitan merges our sections only when one of them does, so without it
    ``--help`` with no config file would list none of ours, and RecipeTrainer would find no
    ``[launch]``. (The same rule as :func:`titan_recipes.inject.load_job_config`.)"""
    if any(arg.split("=", 1)[0] in _CUSTOM_CONFIG_FLAGS for arg in args):
        return args
    path = config_file_from_args(args)
    job = load_toml(path).get("job", {}) if path is not None else {}
    if isinstance(job, dict) and job.get("custom_config_module"):
        return args
    return [*args, "--job.custom_config_module", CUSTOM_CONFIG_MODULE]


_toml_only_registered = False


def _mentions_any(annotation: Any) -> bool:
    from typing import get_args

    return annotation is Any or any(_mentions_any(a) for a in get_args(annotation))


def _toml_only(args: list[str]) -> Any:
    raise ValueError(
        f"this key holds nested tables or lists, which the command line cannot express (got {args[0]!r}); "
        f"set it in the TOML file, as its help text below shows."
    )


def register_toml_only_flags() -> None:
    """Give each key whose type holds ``Any`` (``mixture.query``, ``mosaic_dataloader.dataset.streams``,
    ``mosaic_tokenizer.kwargs`` ...) a ``--section.key {TOML only}`` flag, so that ``--help`` lists it
    with its docstring. tyro, torchtitan's CLI parser, cannot build such a value from a string and
    drops the field from the parser and the help without a word when it has a default; with this rule
    the flag exists and using it is an error that says to set the key in the TOML file. Registered on
    torchtitan's own tyro registry (``torchtitan.config.manager.custom_registry``, which its
    ConfigManager passes to ``tyro.cli``); idempotent."""
    global _toml_only_registered
    if _toml_only_registered:
        return
    from torchtitan.config.manager import custom_registry
    from tyro.constructors import PrimitiveConstructorSpec

    @custom_registry.primitive_rule
    def toml_only_rule(type_info):
        if not _mentions_any(type_info.type):
            return None
        return PrimitiveConstructorSpec(
            nargs=1, metavar="{TOML only}", instance_from_str=_toml_only,
            is_instance=lambda value: True, str_from_instance=lambda value: [json.dumps(value)],
        )

    _toml_only_registered = True
