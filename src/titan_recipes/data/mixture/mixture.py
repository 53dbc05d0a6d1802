"""Mixtures: weights over the values of one property, fixed or changing with the training step.

A domain is one value of the mixture's property (e.g. ``redpajama_set_name = "RedPajamaC4"``).
:class:`StaticMixture` holds one weight per domain; :class:`ScheduleMixture` switches between static
mixtures at given steps. :func:`chunk_counts` turns weights into exact per-chunk sample counts with the
largest-remainder method, so every chunk of ``chunk_size`` samples follows the mixture as closely as
whole samples allow, and the same weights always give the same counts.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from fractions import Fraction
from typing import Any, Mapping, Sequence

from ...errors import ConfigError
from ..state import fingerprint

WEIGHT_SUM_TOLERANCE = 1e-6


class Mixture(ABC):
    """Weights over the values (domains) of ``property``, as a function of the training step."""

    property: str
    dynamic = False
    """True for mixtures that change from training feedback (ADO): their state is checkpointed."""

    @abstractmethod
    def at(self, step: int) -> "StaticMixture":
        """The weights in force at ``step`` (0-based)."""

    def weights_for_chunk(self, chunk: int, step: int) -> dict[Any, float]:
        """The weights of chunk ``chunk``, which starts in training step ``step`` (what the planner asks)."""
        return self.at(step).weights

    def state_dict(self) -> dict[str, Any]:
        """What a resume needs beyond :meth:`to_dict` (nothing for static and scheduled mixtures)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    @property
    @abstractmethod
    def domains(self) -> list[Any]:
        """Every domain with a positive weight at some step, sorted by name."""

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description; equal descriptions mean equal mixtures."""

    @property
    def mixture_id(self) -> str:
        """A short hash of :meth:`to_dict`, stored in loader state to refuse resuming another mixture."""
        return fingerprint(**self.to_dict())


def _domain_key(domain: Any) -> str:
    return str(domain)


class StaticMixture(Mixture):
    """Fixed weights ``{property value: weight}``. Weights must be finite and positive (leave a domain
    out instead of giving it 0) and sum to 1 within ``WEIGHT_SUM_TOLERANCE``."""

    def __init__(self, weights: Mapping[Any, float], property: str):
        if not property:
            raise ConfigError("A mixture needs the `property` its weights refer to (e.g. 'redpajama_set_name').")
        if not weights:
            raise ConfigError(f"Mixture over {property!r} has no weights.")
        bad = {k: w for k, w in weights.items() if not isinstance(w, (int, float)) or not math.isfinite(w) or w <= 0}
        if bad:
            raise ConfigError(
                f"Mixture over {property!r}: weights must be positive numbers; bad: {bad}. Leave a domain "
                f"out instead of giving it weight 0."
            )
        total = math.fsum(weights.values())
        if abs(total - 1.0) > WEIGHT_SUM_TOLERANCE:
            raise ConfigError(
                f"Mixture over {property!r}: weights sum to {total!r}, not 1 (tolerance {WEIGHT_SUM_TOLERANCE}): "
                f"{dict(weights)}. Normalise them (divide each by {total!r})."
            )
        self.property = property
        self.weights: dict[Any, float] = {k: float(weights[k]) for k in sorted(weights, key=_domain_key)}

    def at(self, step: int) -> "StaticMixture":
        return self

    @property
    def domains(self) -> list[Any]:
        return list(self.weights)

    def to_dict(self) -> dict[str, Any]:
        return {"property": self.property, "weights": [[k, w] for k, w in self.weights.items()]}

    def __repr__(self) -> str:
        return f"StaticMixture({self.weights}, property={self.property!r})"


class ScheduleMixture(Mixture):
    """Static mixtures by step: ``[(0, m0), (1000, m1), ...]`` uses ``m0`` for steps 0-999, then ``m1``.
    The first stage starts at step 0, starts strictly increase, and all stages weight the same property."""

    def __init__(self, stages: Sequence[tuple[int, StaticMixture]]):
        if not stages:
            raise ConfigError("A schedule mixture needs at least one (start_step, StaticMixture) stage.")
        starts = [int(s) for s, _ in stages]
        if starts[0] != 0 or any(b <= a for a, b in zip(starts, starts[1:])):
            raise ConfigError(
                f"Schedule mixture stages must start at step 0 and increase strictly; got start steps {starts}."
            )
        props = {m.property for _, m in stages}
        if len(props) != 1:
            raise ConfigError(f"All stages of a schedule mixture must weight one property; got {sorted(props)}.")
        for _, m in stages:
            if not isinstance(m, StaticMixture):
                raise ConfigError(f"Schedule stages are StaticMixtures, got {type(m).__name__}.")
        self.stages: list[tuple[int, StaticMixture]] = [(s, m) for s, (_, m) in zip(starts, stages)]
        self.property = props.pop()

    def at(self, step: int) -> StaticMixture:
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        current = self.stages[0][1]
        for start, mixture in self.stages:
            if start > step:
                break
            current = mixture
        return current

    @property
    def domains(self) -> list[Any]:
        return sorted({d for _, m in self.stages for d in m.domains}, key=_domain_key)

    def to_dict(self) -> dict[str, Any]:
        return {"property": self.property, "stages": [[s, m.to_dict()["weights"]] for s, m in self.stages]}

    def __repr__(self) -> str:
        return f"ScheduleMixture({self.stages})"


def chunk_counts(weights: Mapping[Any, float], chunk_size: int) -> dict[Any, int]:
    """Samples per domain in a chunk of ``chunk_size``: the largest-remainder (Hamilton) method.

    Each domain first gets ``floor(w * chunk_size)``; the samples left over go one each to the domains
    with the largest fractional parts, ties broken by domain name (ascending). Weights are read as
    the nearest fractions with denominators up to 1e9 (so 0.3 is exactly 3/10 and 1/3 ties exactly)
    and normalised by their sum. The counts sum to ``chunk_size``; a domain may get 0 when
    ``w * chunk_size < 1``. Examples: ``{a: .5, b: .3, c: .2}``, 10 -> ``{a: 5, b: 3, c: 2}``;
    ``{a: 1/3, b: 1/3, c: 1/3}``, 10 -> ``{a: 4, b: 3, c: 3}``.
    """
    if chunk_size <= 0:
        raise ConfigError(f"chunk_size must be positive, got {chunk_size}.")
    if not weights or any(w <= 0 for w in weights.values()):
        raise ConfigError(f"chunk_counts needs positive weights, got {dict(weights)}.")
    exact = {k: Fraction(w).limit_denominator(10**9) for k, w in weights.items()}
    total = sum(exact.values())
    quotas = {k: w / total * chunk_size for k, w in exact.items()}
    counts = {k: math.floor(q) for k, q in quotas.items()}
    left = chunk_size - sum(counts.values())
    by_remainder = sorted(quotas, key=lambda k: (-(quotas[k] - counts[k]), _domain_key(k)))
    for k in by_remainder[:left]:
        counts[k] += 1
    return {k: counts[k] for k in sorted(counts, key=_domain_key)}
