"""``[mixture]`` and ``[mixture.ado]``: the config sections of the mixture source, and the objects they
describe (:func:`mixture_from_config`, :func:`query_from_config`).

Plain dataclasses: the package imports this module with the config, so it imports neither numpy nor
duckdb at module level (the builders import the mixture classes when called).
"""
# No ``from __future__ import annotations`` here: torchtitan reads these field types at run time
# (``ConfigManager._dict_to_dataclass`` builds nested sections from TOML tables by ``is_dataclass(f.type)``).

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ...errors import ConfigError

if TYPE_CHECKING:
    from .mixture import Mixture as MixtureWeights
    from .query import Query


@dataclass
class Ado:
    """``[mixture.ado]``: Adaptive Data Optimization (Jiang et al. 2024, arXiv 2410.11820), as in Mixtera's
    ``AdoDynamicMixing``. Each step the trainer reduces the per-domain loss sums and token counts over
    the DP ranks; ADO fits a power law ``L_k(n) = eps_k + beta_k * n**-alpha_k`` per domain and moves
    the weights toward the domains whose loss still falls fastest. ``mixture.weights`` is the prior
    (the first weights). See titan_recipes/data/mixture/ado.py for the update and its differences to
    the paper."""

    enable: bool = False
    """Adapt the weights during training (needs ``mixture.weights``, not ``schedule``, and
    ``mixture.per_domain_loss = true``)."""

    warmup_steps: int = 500
    """Steps whose losses are not used for fitting (Mixtera: ``ignore_initial_steps``); the prior
    holds until ``warmup_steps + fit_interval`` steps have passed."""

    fit_interval: int = 1000
    """Steps between two power-law fits (Mixtera: ``scaling_law_update_interval``). Between fits the
    weights still change every step through the smoothing below."""

    subsample: int = 10
    """Use every n-th point of a domain's loss curve for the fit (Mixtera: ``subsampling_interval``)."""

    smoothing_window: int = 101
    """Savitzky-Golay window (cubic) applied to each domain's loss curve before fitting; odd, shortened
    to the data available; 0 or 1 disables it (Mixtera: ``savgol``, window 101)."""

    gamma1: float = 0.1
    """Smoothing of the credit-assignment score ``h(t) = gamma1 * pi(t) + (1 - gamma1) * h(t-1)``."""

    gamma2: float = 0.1
    """Smoothing of the policy ``pi(t) = gamma2 * rho(t) + (1 - gamma2) * pi_bar(t-1)``."""

    s: float = 0.5
    """Exponent of the credit-assignment score in ``rho_k ~ mu_k * h_k**s * (-dL_k/dn)``."""

    min_weight: float = 0.01
    """Every domain keeps at least this weight (Mixtera: ``delta_min``); needs ``min_weight * domains <= 1``."""

    count_normalizer: int = 1024
    """Token counts are divided by this before fitting (the paper's bounds assume samples of 1024
    tokens; Mixtera's ``count_normalizer``)."""


@dataclass
class Mixture:
    """``[mixture]``: the Mixtera-style mixture engine (titan_recipes/data/mixture), used when
    ``training.dataset = "mixture"``. Samples come from a registered DuckDB sample index, in chunks
    whose per-domain counts follow the weights. Each key is honoured or rejected with ConfigError."""

    index_dir: str = ""
    """Directory holding ``index.duckdb`` (written by ``SampleIndex.register_dataset``). Required;
    opened read-only."""

    property: str = ""
    """The property whose values are the domains, e.g. ``"redpajama_set_name"``. Required."""

    weights: dict[str, float] = field(default_factory=dict)
    """Static mixture: ``{domain value: weight}``, positive, summing to 1. Set this or ``schedule``.
    TOML only: ``[mixture.weights]`` with ``RedPajamaC4 = 0.6`` ... (quote values with odd characters)."""

    schedule: dict[str, dict[str, float]] = field(default_factory=dict)
    """Scheduled mixture: ``[mixture.schedule.<start_step>]`` tables of weights, e.g. ``[mixture.schedule.0]``
    and ``[mixture.schedule.1000]``; the first must start at step 0. Steps are counted in chunks
    planned: chunk ``k`` belongs to step ``k * chunk_size // (local_batch_size * dp degree)`` (one
    document per row; the loader packs documents, so this is the document position, not exactly the
    optimizer step). Set this or ``weights``. TOML only."""

    query: list[list[list[Any]]] = field(default_factory=list)
    """Which samples take part: a list of groups (OR), each a list of ``[property, op, value]`` clauses
    (AND), ops ``== != < > <= >= in`` (``in`` takes a list). Empty: all samples. Example:
    ``query = [[["quality", ">=", 0.5]], [["redpajama_set_name", "==", "RedPajamaBook"]]]``. TOML only."""

    chunk_size: int = 1024
    """Documents per chunk; each chunk follows the weights exactly (largest remainder) and is split
    among the DP ranks. Must be at least the DP degree. Part of the data fingerprint."""

    seed: int = 1234
    """Seed of the per-domain permutations and chunk shuffles. Part of the data fingerprint."""

    server: str = ""
    """Served mode: ``"host:port"`` of a ``titan-recipes mixture serve INDEX_DIR`` process that serves
    the index (queries and sample texts) over TCP; ``index_dir`` is then only used in messages. Empty:
    embedded mode (the index is opened in this process). Both give the same batches and checkpoints."""

    per_domain_loss: bool = True
    """Report each domain's mean loss and token count every logged step (metrics ``loss_domain/<d>``,
    ``tokens_domain/<d>``, ``mixture_weight/<d>``); ADO needs it. The training loss is then computed
    per token (cross-entropy with ``reduction="none"``, summed), which can differ from torchtitan's
    summed loss in the last float bits. Not available with pipeline or context parallelism, or with
    loss parallelism (set ``parallelism.disable_loss_parallel = true`` under tensor parallelism)."""

    ado: Ado = field(default_factory=Ado)

    def validate(self, job_config: Any) -> None:
        """For ``training.dataset = "mixture"``: the checks that need no index (the weights or schedule,
        ADO's settings, the query's shape, ``chunk_size``); the loader checks the rest when it opens
        the index."""
        if getattr(getattr(job_config, "training", None), "dataset", None) != "mixture":
            return
        mixture_from_config(self)
        query_from_config(self.query)
        if self.chunk_size <= 0:
            raise ConfigError(f"mixture.chunk_size must be positive, got {self.chunk_size}.")


# -- building from the config -------------------------------------------------------------------------
def mixture_from_config(section: Mixture) -> "MixtureWeights":
    """The StaticMixture / ScheduleMixture of ``[mixture]`` (ConfigError naming the key otherwise)."""
    from .ado import AdoMixture
    from .mixture import ScheduleMixture, StaticMixture

    if not section.property:
        raise ConfigError("mixture.property is not set: name the property whose values are the domains "
                          "(e.g. 'redpajama_set_name').")
    if bool(section.weights) == bool(section.schedule):
        raise ConfigError("Set exactly one of mixture.weights (a static mixture) and mixture.schedule "
                          f"(weights by start step); got weights={section.weights!r}, schedule={section.schedule!r}.")
    if section.ado.enable and not section.weights:
        raise ConfigError("mixture.ado.enable = true needs the prior as mixture.weights (not mixture.schedule).")
    if section.weights:
        try:
            static = StaticMixture(section.weights, section.property)
        except ConfigError as e:
            raise ConfigError(f"mixture.weights: {e}") from None
        if not section.ado.enable:
            return static
        if not section.per_domain_loss:
            raise ConfigError("mixture.ado.enable = true needs mixture.per_domain_loss = true: ADO adapts the "
                              "weights from the per-domain losses.")
        settings = {k: v for k, v in dataclasses.asdict(section.ado).items() if k != "enable"}
        return AdoMixture(static, **settings)
    stages = []
    for key, weights in section.schedule.items():
        try:
            start = int(key)
        except ValueError:
            raise ConfigError(f"mixture.schedule: table key {key!r} is not a start step (an integer).") from None
        try:
            stages.append((start, StaticMixture(weights, section.property)))
        except ConfigError as e:
            raise ConfigError(f"mixture.schedule.{key}: {e}") from None
    try:
        return ScheduleMixture(sorted(stages, key=lambda s: s[0]))
    except ConfigError as e:
        raise ConfigError(f"mixture.schedule: {e}") from None


def query_from_config(groups: Any) -> "Query | None":
    """``[mixture] query`` (a list of groups of ``[property, op, value]``) as a Query; None when empty."""
    from .query import Query

    if not groups:
        return None
    if not isinstance(groups, list) or not all(isinstance(g, list) for g in groups):
        raise ConfigError(f"mixture.query must be a list of groups, each a list of [property, op, value]; "
                          f"got {groups!r}.")
    try:
        return Query(*groups)
    except ConfigError as e:
        raise ConfigError(f"mixture.query: {e}") from None
