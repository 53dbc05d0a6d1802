"""The one door for a data source: ``training.dataset`` name -> :class:`~.source.DataSource`.

:data:`SOURCES` maps each source name to the package that exports its ``SOURCE``; adding a source is
its folder plus one line here (``docs/adding-a-data-source.md``). Packages are imported when first
asked for, and import only their config sections, so a run pays for the loader it uses alone (no
duckdb or pyarrow for an MDS run). A source outside this package (a plugin, a test) registers with
:func:`register_source` before the config module is loaded.
"""

from __future__ import annotations

import importlib
from typing import Any

from ..errors import ConfigError
from .source import DataSource

SOURCES: dict[str, str] = {
    "text": "titan_recipes.data.text",
    "random": "titan_recipes.data.random_tokens",
    "mds": "titan_recipes.data.mds",
    "blendcorpus": "titan_recipes.data.blendcorpus",
    "mixture": "titan_recipes.data.mixture",
}
"""Source name -> package exporting ``SOURCE``. Order is the order of their sections in ``--help``."""

_loaded: dict[str, DataSource] = {}


def register_source(module: str) -> DataSource:
    """Add the source exported by ``module`` (its ``SOURCE``). Call it before ``titan_recipes.config``
    is imported if the source adds config sections. Idempotent for the same module; a name taken by
    another module is an error."""
    source = _import(module)
    other = SOURCES.get(source.name)
    if other is not None and other != module:
        raise ConfigError(f"data source '{source.name}' of {module} is already registered by {other}.")
    SOURCES[source.name] = module
    _loaded[source.name] = source
    return source


def _import(module: str) -> DataSource:
    source = getattr(importlib.import_module(module), "SOURCE", None)
    if not isinstance(source, DataSource):
        raise TypeError(f"{module} does not export SOURCE = DataSource(...) (got {type(source).__name__}).")
    return source


def _source(name: str) -> DataSource:
    """The registered source ``name``, its package imported on first use (config sections only)."""
    if name not in _loaded:
        source = _import(SOURCES[name])
        if source.name != name:
            raise TypeError(f"SOURCES['{name}'] = {SOURCES[name]} exports a source named '{source.name}'.")
        _loaded[name] = source
    return _loaded[name]


def all_sources() -> list[DataSource]:
    """Every registered source, imported (config sections only)."""
    return [_source(name) for name in SOURCES]


def find_source(dataset: str) -> DataSource | None:
    """The source serving ``training.dataset = dataset`` (its name or an alias), or None (a dataset of
    torchtitan's own, such as ``c4_test``)."""
    if dataset in SOURCES:
        return _source(dataset)
    for source in all_sources():
        if dataset in source.aliases:
            return source
    return None


def source_names() -> list[str]:
    """Every ``training.dataset`` name our sources serve."""
    return [n for s in all_sources() for n in (s.name, *s.aliases)]


def config_sections() -> dict[str, type]:
    """TOML table name -> dataclass, over every source; two sources may not claim one table."""
    sections: dict[str, type] = {}
    owner: dict[str, str] = {}
    for source in all_sources():
        for table, cls in source.sections.items():
            if table in sections:
                raise TypeError(f"config table [{table}] is claimed by data sources '{owner[table]}' and '{source.name}'.")
            sections[table], owner[table] = cls, source.name
    return sections


def validate_sections(job_config: Any) -> None:
    """Call ``validate(job_config)`` of every source section present in ``job_config``."""
    for table in config_sections():
        section = getattr(job_config, table, None)
        check = getattr(section, "validate", None)
        if check is not None:
            check(job_config)


def build_dataloader(dp_world_size: int, dp_rank: int, tokenizer: Any, job_config: Any) -> Any:
    """torchtitan's ``build_dataloader_fn`` slot: the loader of the source ``training.dataset`` names.

    Names no source serves go to torchtitan's own HF datasets (``c4``, ``c4_test``, ...) unchanged.
    """
    name = job_config.training.dataset
    source = find_source(name)
    if source is not None:
        loader = source.loader_builder()(dp_world_size, dp_rank, tokenizer, job_config)
        if tokenizer is not None and hasattr(loader, "vocab_size"):
            loader.vocab_size = tokenizer.get_vocab_size()  # token ids read from disk are checked against it
        return loader
    from torchtitan.hf_datasets.text_datasets import DATASETS, build_text_dataloader

    if name.lower() in DATASETS:
        return build_text_dataloader(dp_world_size, dp_rank, tokenizer, job_config)
    raise ConfigError(
        f"training.dataset = '{name}' is not a known dataset. titan-recipes sources: {source_names()}; "
        f"torchtitan HF datasets: {sorted(DATASETS)}."
    )


def validation_builder(dataset: str) -> Any:
    """The validation loader builder of the source serving ``validation.dataset = dataset``, or None
    (torchtitan's HF validation path)."""
    source = find_source(dataset)
    return None if source is None else source.validation_builder()
