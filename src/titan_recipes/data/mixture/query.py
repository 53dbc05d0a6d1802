"""Property filters over the sample index, compiled to parameterized SQL.

A :class:`Query` is an OR of groups, each group an AND of clauses ``(property, op, value)``::

    # (redpajama_set_name == "RedPajamaC4")  OR  (redpajama_set_name in [...] AND quality > 0.5)
    Query([("redpajama_set_name", "==", "RedPajamaC4")],
          [("redpajama_set_name", "in", ["RedPajamaGithub", "RedPajamaBook"]), ("quality", ">", 0.5)])
    # the same, built step by step
    Query().where("redpajama_set_name", "==", "RedPajamaC4").or_where(
        "redpajama_set_name", "in", ["RedPajamaGithub", "RedPajamaBook"]).where("quality", ">", 0.5)

``Query()`` selects every sample. Values always travel as SQL parameters; property names are checked
against the index's columns before any SQL is built. A sample that lacks a property (its column is
NULL, e.g. a SlimPajama sample under a ``pile_set_name`` clause) matches no clause on it, ``!=``
included (SQL comparison semantics).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from ...errors import ConfigError

OPS: dict[str, str] = {"==": "=", "!=": "<>", "<": "<", ">": ">", "<=": "<=", ">=": ">=", "in": "IN"}
"""Query operators and their SQL."""

Scalar = str | int | float | bool


@dataclass(frozen=True)
class Clause:
    """One filter ``property op value``; for ``in`` the value is a non-empty list of scalars."""

    property: str
    op: str
    value: Any

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ConfigError(
                f"Query clause on {self.property!r}: unknown operator {self.op!r}; use one of {list(OPS)}."
            )
        if self.op == "in":
            if isinstance(self.value, (str, bytes)) or not isinstance(self.value, Iterable):
                raise ConfigError(
                    f"Query clause {self.property!r} in ...: the value must be a list of values, got {self.value!r}."
                )
            values = tuple(self.value)
            if not values:
                raise ConfigError(f"Query clause {self.property!r} in []: the list is empty, so nothing matches.")
            for v in values:
                _check_scalar(self.property, self.op, v)
            object.__setattr__(self, "value", values)
        else:
            _check_scalar(self.property, self.op, self.value)

    def to_sql(self, columns: Mapping[str, str]) -> tuple[str, list[Any]]:
        if self.property not in columns:
            raise ConfigError(
                f"Query on unknown property {self.property!r}; the index knows {sorted(columns)} "
                f"(properties come from the metadata parsers of the registered datasets)."
            )
        if self.op == "in":
            marks = ", ".join("?" for _ in self.value)
            return f'"{self.property}" IN ({marks})', list(self.value)
        return f'"{self.property}" {OPS[self.op]} ?', [self.value]

    def __str__(self) -> str:
        return f"{self.property} {self.op} {list(self.value) if self.op == 'in' else self.value!r}"


def _check_scalar(prop: str, op: str, value: Any) -> None:
    if value is None or not isinstance(value, (str, int, float, bool)):
        raise ConfigError(
            f"Query clause {prop!r} {op}: values must be strings, numbers or booleans, got {value!r}."
        )


ClauseLike = Clause | tuple[str, str, Any] | Sequence[Any]


def _clause(c: ClauseLike) -> Clause:
    if isinstance(c, Clause):
        return c
    if len(c) != 3:
        raise ConfigError(f"A query clause is (property, op, value); got {c!r}.")
    return Clause(str(c[0]), str(c[1]), c[2])


class Query:
    """An OR of AND-groups of :class:`Clause`; immutable (``where``/``or_where`` return new queries)."""

    def __init__(self, *groups: Iterable[ClauseLike]):
        self.groups: tuple[tuple[Clause, ...], ...] = tuple(tuple(_clause(c) for c in g) for g in groups)
        for i, g in enumerate(self.groups):
            if not g:
                raise ConfigError(f"Query group {i} is empty; drop it (an empty query selects every sample).")

    def where(self, prop: str, op: str, value: Any) -> "Query":
        """AND a clause into the last group (a first group if there is none)."""
        clause = Clause(prop, op, value)
        if not self.groups:
            return Query([clause])
        return Query(*self.groups[:-1], (*self.groups[-1], clause))

    def or_where(self, prop: str, op: str, value: Any) -> "Query":
        """Start a new group (OR) with this clause."""
        return Query(*self.groups, [Clause(prop, op, value)])

    def compile(self, columns: Mapping[str, str]) -> tuple[str, list[Any]]:
        """SQL boolean expression over ``samples`` columns and its parameters. ``columns`` are the
        known properties (name -> type); an unknown property is a ConfigError listing them."""
        if not self.groups:
            return "TRUE", []
        parts, params = [], []
        for group in self.groups:
            sqls = []
            for clause in group:
                sql, p = clause.to_sql(columns)
                sqls.append(sql)
                params.extend(p)
            parts.append("(" + " AND ".join(sqls) + ")")
        return " OR ".join(parts), params

    def to_list(self) -> list[list[list[Any]]]:
        """A JSON-able description (``[[[prop, op, value], ...], ...]``) for fingerprints and logs."""
        return [[[c.property, c.op, list(c.value) if c.op == "in" else c.value] for c in g] for g in self.groups]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Query) and self.groups == other.groups

    def __hash__(self) -> int:
        return hash(self.groups)

    def __str__(self) -> str:
        if not self.groups:
            return "<all samples>"
        return " OR ".join("(" + " AND ".join(str(c) for c in g) + ")" for g in self.groups)

    def __repr__(self) -> str:
        return f"Query({self})"
