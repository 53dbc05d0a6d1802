"""What a data source is: one folder ``data/<source>/`` that exports one :class:`DataSource`.

A source's package ``__init__`` imports only its config section (plain dataclasses) and defines
``SOURCE``; its loader, and whatever the loader needs (torch, duckdb, streaming), is imported when a
builder is called. :mod:`titan_recipes.data.registry` lists the sources; the trainer, the validator,
the tokenizer router and the per-domain loss ask the descriptor and never test for a source by name
or class. The guide ``docs/adding-a-data-source.md`` walks through a new one.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, runtime_checkable

LoaderBuilder = Callable[..., Any]
"""``(dp_world_size, dp_rank, tokenizer, job_config) -> BaseDataLoader``, torchtitan's builder signature."""


def resolve(ref: str | Callable[..., Any]) -> Callable[..., Any]:
    """``"package.module:attribute"`` imported on demand; a callable is returned as it is."""
    if callable(ref):
        return ref
    module, _, attribute = ref.partition(":")
    return getattr(importlib.import_module(module), attribute)


@dataclass(frozen=True)
class DataSource:
    """The one descriptor a data source exports (``SOURCE`` in its package)."""

    name: str
    """The ``training.dataset`` value that selects it."""

    build_loader: str | LoaderBuilder
    """The training loader builder, ``"module:function"`` (imported on first use) or a callable."""

    build_validation_loader: str | LoaderBuilder | None = None
    """The builder for ``validation.dataset = <name>`` (one finite pass per validation run); None: the
    source serves no validation data."""

    sections: Mapping[str, type] = field(default_factory=dict)
    """Config sections it adds to the JobConfig: TOML table name -> dataclass. A section may define
    ``validate(self, job_config)``; it is called for every run (so a section can say it is set but
    its source is not selected)."""

    tokenizer_path: str | Callable[[Any], tuple[str | None, str] | None] | None = None
    """Optional ``(job_config) -> (path, setting) | None``: where this source wants the tokenizer read
    from (``[mosaic_tokenizer] name`` for mds). None, or a None result: ``model.hf_assets_path``."""

    build_tokenizer: str | Callable[[Any], Any] | None = None
    """Optional ``"module:function"`` (or callable) ``(job_config) -> BaseTokenizer``: builds the run's
    tokenizer when ``tokenizer_path`` gives an override (mds: ``AutoTokenizer`` for ``[mosaic_tokenizer]``).
    None: the override is read by ``model.tokenizer_backend``, like ``model.hf_assets_path``."""

    has_domains: bool = False
    """Its training loader may yield per-token domain ids (a :class:`DomainLoader`); the per-domain
    loss and ADO attach to it."""

    aliases: tuple[str, ...] = ()
    """Further ``training.dataset`` names it serves (the embedded text datasets)."""

    summary: str = ""
    """One line for ``titan-recipes`` listings and the README table."""

    def loader_builder(self) -> LoaderBuilder:
        return resolve(self.build_loader)

    def validation_builder(self) -> LoaderBuilder | None:
        return None if self.build_validation_loader is None else resolve(self.build_validation_loader)

    def tokenizer_override(self, job_config: Any) -> tuple[str | None, str] | None:
        return None if self.tokenizer_path is None else resolve(self.tokenizer_path)(job_config)

    def tokenizer_builder(self) -> Callable[[Any], Any] | None:
        return None if self.build_tokenizer is None else resolve(self.build_tokenizer)


def lazy_exports(package: str, table: Mapping[str, tuple[str, ...]]) -> tuple[Callable[[str], Any], list[str]]:
    """A source package's module ``__getattr__`` serving the public names of its submodules (``table``:
    submodule -> names) on first access, and those names for ``__all__``. The package itself then
    imports only its config section, and ``from titan_recipes.data.mds import write_mds`` still works."""
    where = {name: module for module, names in table.items() for name in names}

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{module}"), name)

    return __getattr__, list(where)


@runtime_checkable
class DomainLoader(Protocol):
    """A training loader of a source with ``has_domains``: what the per-domain loss reads from it."""

    emit_domain_ids: bool
    """Whether batches carry ``domain_ids`` (off: the source trains without per-domain loss)."""

    domains: list[Any]
    """Domain values, in domain-id order."""

    mixture: Any
    """The mixture (``weights_for_chunk``, ``dynamic``, ``observe``), updated from the reduced losses."""

    planned_chunks: int
    """Chunks this rank has planned; new weights apply from the first chunk no rank has planned."""

    def apply_weights(self, weights: Any, from_chunk: int) -> None:
        """Use ``weights`` (in the order of ``domains``) for chunks ``from_chunk`` on."""
