"""Metadata parsers: which properties a dataset's samples carry, and how to read them from a record.

A parser declares its properties (column name -> DuckDB type) and turns one JSONL record into their
values. The index adds one column per declared property to its ``samples`` table, so queries and
mixtures can filter and weight by them. Built-ins: :class:`SlimPajamaParser`
(``meta.redpajama_set_name``) and :class:`PileParser` (``meta.pile_set_name``); ``PARSERS`` maps
their names. A custom parser subclasses :class:`MetadataParser`::

    class LanguageParser(MetadataParser):
        name = "language"
        properties = {"language": "VARCHAR", "quality": "DOUBLE"}

        def parse(self, record):
            return {"language": record["lang"], "quality": float(record["score"])}

``parse`` raises ``KeyError``/``TypeError``/``ValueError`` for a record it cannot read; the index turns
that into a :class:`~titan_recipes.errors.DataError` naming ``file:line``.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from typing import Any, ClassVar

from ...errors import ConfigError

PROPERTY_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")
"""Property (column) names: lower-case SQL identifiers, so they need no quoting rules of their own."""

RESERVED_COLUMNS = frozenset({"id", "dataset_id", "file_id", "line", "byte_offset", "n_bytes"})
"""Columns of ``samples`` that every index has; a property may not take these names."""

PROPERTY_TYPES = frozenset({"VARCHAR", "BIGINT", "INTEGER", "DOUBLE", "BOOLEAN"})
"""DuckDB types a property column may have."""


class MetadataParser(ABC):
    """Reads the metadata properties of one JSONL record. Subclasses set ``name`` (stored with the
    dataset: re-registering a dataset with another parser is an error), ``properties`` (column name
    -> DuckDB type, one of ``PROPERTY_TYPES``) and implement :meth:`parse`."""

    name: ClassVar[str]
    properties: ClassVar[dict[str, str]]
    text_field: ClassVar[str] = "text"
    """Field holding the sample's text; a record without a string there is a DataError."""

    @abstractmethod
    def parse(self, record: dict[str, Any]) -> dict[str, Any]:
        """The values of (a subset of) ``properties`` for ``record``; a property left out is NULL."""

    def validate(self) -> None:
        """Raise ConfigError if the declared properties cannot become columns."""
        if not getattr(self, "name", ""):
            raise ConfigError(f"Metadata parser {type(self).__name__} has no `name`.")
        if not self.properties:
            raise ConfigError(f"Metadata parser {self.name!r} declares no properties.")
        for prop, typ in self.properties.items():
            if not PROPERTY_NAME.match(prop) or prop in RESERVED_COLUMNS:
                raise ConfigError(
                    f"Metadata parser {self.name!r}: property name {prop!r} must match {PROPERTY_NAME.pattern} "
                    f"and not be one of the index's own columns {sorted(RESERVED_COLUMNS)}."
                )
            if typ.upper() not in PROPERTY_TYPES:
                raise ConfigError(
                    f"Metadata parser {self.name!r}: property {prop!r} has type {typ!r}; "
                    f"use one of {sorted(PROPERTY_TYPES)}."
                )


def dotted_get(record: dict[str, Any], path: str) -> Any:
    """``record["a"]["b"]`` for ``path = "a.b"``; KeyError naming the missing path otherwise."""
    value: Any = record
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            raise KeyError(f"record has no '{path}'")
        value = value[key]
    return value


class FieldParser(MetadataParser):
    """A parser whose properties are string fields at fixed (dotted) paths of the record."""

    fields: ClassVar[dict[str, str]]
    """Property name -> dotted path in the record."""

    def parse(self, record: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for prop, path in self.fields.items():
            value = dotted_get(record, path)
            if not isinstance(value, str):
                raise TypeError(f"'{path}' must be a string, got {type(value).__name__}")
            out[prop] = value
        return out


class SlimPajamaParser(FieldParser):
    """SlimPajama / RedPajama JSONL: ``{"text": ..., "meta": {"redpajama_set_name": "RedPajamaC4"}}``."""

    name = "slimpajama"
    properties = {"redpajama_set_name": "VARCHAR"}
    fields = {"redpajama_set_name": "meta.redpajama_set_name"}


class PileParser(FieldParser):
    """The Pile JSONL: ``{"text": ..., "meta": {"pile_set_name": "Pile-CC"}}``."""

    name = "pile"
    properties = {"pile_set_name": "VARCHAR"}
    fields = {"pile_set_name": "meta.pile_set_name"}


PARSERS: dict[str, type[MetadataParser]] = {p.name: p for p in (SlimPajamaParser, PileParser)}
"""Built-in parsers by name, for ``register_dataset(..., parser="slimpajama")``."""


def resolve_parser(parser: str | MetadataParser) -> MetadataParser:
    """A parser instance from a built-in name or an instance; ConfigError for an unknown name."""
    if isinstance(parser, str):
        if parser not in PARSERS:
            raise ConfigError(
                f"Unknown metadata parser {parser!r}; built-ins are {sorted(PARSERS)}, or pass a "
                f"MetadataParser instance."
            )
        parser = PARSERS[parser]()
    if not isinstance(parser, MetadataParser):
        raise ConfigError(f"parser must be a built-in name or a MetadataParser, got {type(parser).__name__}.")
    parser.validate()
    return parser
