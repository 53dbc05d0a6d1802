"""ADO: Adaptive Data Optimization (Jiang et al. 2024, arXiv 2410.11820), a dynamic mixture.

ADO fits a power law ``L_k(n) = eps_k + beta_k * n**-alpha_k`` to each domain's training loss as a
function of the tokens ``n`` the model has seen, and samples more from the domains whose loss is
predicted to keep falling fastest. Mixtera implements it as ``AdoDynamicMixing``
(mixtera/core/algo/ado/ado.py); this module follows that implementation and keeps its names, and uses
scipy as it does (``savgol_filter``, ``minimize`` with L-BFGS-B). Per step ``t``, with ``mu`` the prior
(``mixture.weights``):

1. record each domain's mean loss ``loss_k(t)`` (sum / tokens, reduced over the DP ranks by the
   trainer; a domain without tokens this step repeats its last value) and its count increment: as in
   the paper ("same step size"), every domain sampled so far advances by the step's total tokens;
2. during ``warmup_steps + fit_interval`` steps: keep the prior;
3. every ``fit_interval`` steps after that: fit the power laws (below);
4. ``dL_k/dn = -alpha_k * beta_k * n_k**(-alpha_k - 1)`` at the domain's count ``n_k``;
5. preference ``rho_k ~ mu_k * h_k**s * max(-dL_k/dn, 0)`` (normalised; the prior if all are 0);
6. policy ``pi = gamma2 * rho + (1 - gamma2) * pi_bar``, normalised, then every weight raised to at
   least ``min_weight`` (an exact projection: the others shrink proportionally, so the minimum holds
   after normalisation, unlike Mixtera's clip-then-renormalise);
7. credit assignment ``h = gamma1 * pi + (1 - gamma1) * h`` and the running average
   ``pi_bar = (rho + t * pi_bar) / (t + 1)``;
8. ``pi`` becomes the mixture's weights (see "Where the weights apply").

The fit, per domain: x = cumulative count / ``count_normalizer``, y = the loss curve smoothed by a
cubic Savitzky-Golay filter (``smoothing_window``; ``scipy.signal.savgol_filter``, ``mode="interp"``),
points after ``warmup_steps``, every ``subsample``-th. Mixtera minimises a Huber loss in log space with
L-BFGS from a grid of starts; here, for each ``alpha`` on a grid of 160 values in [0.001, 0.8] (the
best one refined by L-BFGS-B, ``scipy.optimize.minimize``), ``eps`` and ``beta`` are the weighted
least-squares solution of the linear problem ``eps + beta * x**-alpha ~ y`` with weights ``1 / y**2``
(relative errors, as a log-space fit), within the paper's bounds ``alpha <= 0.8``, ``log beta <= 6.5``, ``log eps >= 0.5``. The result is
deterministic: every rank computes the same weights from the same reduced statistics (and the
trainer broadcasts rank 0's weights anyway).

Where the weights apply: every DP rank plans the chunks itself and ranks pack documents at different
speeds, so "the weights at step t" would give different chunks on different ranks. Instead, an update
made after step ``t`` applies from chunk ``M``, the first chunk no rank has planned yet (the trainer
all-reduces the planners' positions with MAX): chunk ``k`` uses the last update with ``start <= k``.
The updates are kept (:meth:`AdoMixture.state_dict`), so a resumed rank re-plans its current chunk
with the weights it had. The checkpoint holds the whole state (history of losses and counts, the
fitted parameters, ``h``, ``pi``, ``pi_bar``, the weight updates); a resume is exact.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Sequence

import numpy as np
from scipy.optimize import minimize
from scipy.signal import savgol_filter

from ...errors import ConfigError
from .mixture import Mixture, StaticMixture

logger = logging.getLogger(__name__)

ALPHA_BOUNDS = (0.001, 0.8)
LOG_BETA_MAX = 6.5
LOG_EPS_MIN = 0.5
_ALPHA_GRID = np.linspace(*ALPHA_BOUNDS, 160)


# -- the power-law fit ------------------------------------------------------------------------------
def savgol_smooth(y: np.ndarray, window: int, order: int = 3) -> np.ndarray:
    """Savitzky-Golay smoothing (polynomial ``order``; ``scipy.signal.savgol_filter`` with
    ``mode="interp"``, as Mixtera), the window shortened to an odd length that fits ``y``; the ends are
    the values of a polynomial fitted to the first/last window. Returns ``y`` unchanged when the window
    is too short for the order."""
    y = np.asarray(y, dtype=np.float64)
    n = len(y)
    window = min(window, n if n % 2 else n - 1)
    if window <= order + 1:
        return y.copy()
    return savgol_filter(y, window, order, mode="interp")


def _fit_linear(z: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[float, float, float]:
    """``eps, beta`` minimising ``sum w (eps + beta z - y)^2`` within the bounds; returns (sse, eps, beta)."""
    eps_min, beta_max = math.exp(LOG_EPS_MIN), math.exp(LOG_BETA_MAX)
    sw, sz, sy = w.sum(), (w * z).sum(), (w * y).sum()
    szz, szy = (w * z * z).sum(), (w * z * y).sum()
    det = sw * szz - sz * sz
    if det > 1e-12 * max(sw * szz, 1e-300):
        eps = (szz * sy - sz * szy) / det
        beta = (sw * szy - sz * sy) / det
    else:  # z nearly constant: the curve is flat over the data
        eps, beta = sy / sw, 0.0
    if eps < eps_min:
        eps = eps_min
        beta = (w * z * (y - eps)).sum() / szz if szz > 0 else 0.0
    if beta < 0 or beta > beta_max:
        beta = min(max(beta, 0.0), beta_max)
        eps = max(eps_min, (w * (y - beta * z)).sum() / sw)
    sse = float((w * (eps + beta * z - y) ** 2).sum())
    return sse, float(eps), float(beta)


def fit_power_law(x: Sequence[float], y: Sequence[float]) -> tuple[float, float, float] | None:
    """Fit ``y ~ eps + beta * x**-alpha`` (relative least squares, the paper's bounds). Returns
    ``(eps, beta, alpha)``, or None with fewer than 3 points.

    For a given ``alpha`` the best ``eps, beta`` solve a linear problem (:func:`_fit_linear`), so only
    ``alpha`` is searched: the best of a grid, then ``scipy.optimize.minimize`` (L-BFGS-B, as Mixtera)
    within the grid cells around it, with the exact derivative of the error in ``alpha``."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    keep = (x > 0) & np.isfinite(y) & (y > 0)
    x, y = x[keep], y[keep]
    if len(x) < 3:
        return None
    w = 1.0 / (y * y)
    logx = np.log(x)

    def sse(alpha: float) -> tuple[float, float, float]:
        return _fit_linear(np.exp(-alpha * logx), y, w)

    errors = [sse(a)[0] for a in _ALPHA_GRID]
    i = int(np.argmin(errors))
    lo, hi = _ALPHA_GRID[max(i - 1, 0)], _ALPHA_GRID[min(i + 1, len(_ALPHA_GRID) - 1)]
    scale = errors[i] if errors[i] > 0 else 1.0  # L-BFGS-B's tolerances are absolute below 1

    def objective(p: np.ndarray) -> tuple[float, np.ndarray]:
        alpha = float(p[0])
        z = np.exp(-alpha * logx)
        err, eps, beta = _fit_linear(z, y, w)
        # d err / d alpha at the optimal (eps, beta): their own derivatives drop out (envelope theorem).
        grad = float((2.0 * w * (eps + beta * z - y) * beta * -logx * z).sum())
        return err / scale, np.array([grad / scale])

    result = minimize(objective, np.array([_ALPHA_GRID[i]]), jac=True, method="L-BFGS-B", bounds=[(lo, hi)],
                      options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 200})
    refined = float(np.clip(result.x[0], lo, hi))
    candidates = [(errors[i], float(_ALPHA_GRID[i])), (sse(refined)[0], refined)]
    _, alpha = min(candidates)
    _, eps, beta = sse(alpha)
    return eps, beta, alpha


def project_min_weight(p: np.ndarray, minimum: float) -> np.ndarray:
    """The weights ``p`` (summing to 1) with every entry at least ``minimum``: entries below it are set
    to it and the others shrink proportionally, repeated until none is below."""
    p = np.asarray(p, dtype=np.float64) / p.sum()
    fixed = np.zeros(len(p), dtype=bool)
    for _ in range(len(p)):
        low = (p < minimum) & ~fixed
        if not low.any():
            break
        fixed |= low
        free = ~fixed
        rest = 1.0 - minimum * fixed.sum()
        p = np.where(fixed, minimum, p * rest / p[free].sum() if free.any() else 0.0)
    return p


# -- the mixture --------------------------------------------------------------------------------------
class AdoMixture(Mixture):
    """A dynamic mixture over the domains of ``prior`` (see the module docstring).

    The trainer calls :meth:`observe` once per step with the DP-reduced per-domain loss sums and token
    counts; it returns new weights (or None during warm-up), which the trainer applies with
    :meth:`apply` from the first chunk no rank has planned. :meth:`weights_for_chunk` gives the
    planner the weights of any chunk.
    """

    dynamic = True

    def __init__(
        self,
        prior: StaticMixture,
        *,
        warmup_steps: int = 500,
        fit_interval: int = 1000,
        subsample: int = 10,
        smoothing_window: int = 101,
        gamma1: float = 0.1,
        gamma2: float = 0.1,
        s: float = 0.5,
        min_weight: float = 0.01,
        count_normalizer: int = 1024,
    ):
        if not isinstance(prior, StaticMixture):
            raise ConfigError(f"ADO needs static prior weights (mixture.weights), got {type(prior).__name__}.")
        self.prior = prior
        self.property = prior.property
        self._domains = prior.domains
        k = len(self._domains)
        checks = {
            "warmup_steps": (warmup_steps, warmup_steps >= 0),
            "fit_interval": (fit_interval, fit_interval >= 1),
            "subsample": (subsample, subsample >= 1),
            "smoothing_window": (smoothing_window, smoothing_window >= 0),
            "gamma1": (gamma1, 0 < gamma1 <= 1),
            "gamma2": (gamma2, 0 < gamma2 <= 1),
            "s": (s, s >= 0),
            "min_weight": (min_weight, 0 <= min_weight and min_weight * k <= 1),
            "count_normalizer": (count_normalizer, count_normalizer >= 1),
        }
        bad = {name: value for name, (value, ok) in checks.items() if not ok}
        if bad:
            raise ConfigError(
                f"mixture.ado: invalid value(s) {bad}: warmup_steps >= 0, fit_interval >= 1, subsample >= 1, "
                f"smoothing_window >= 0, 0 < gamma1, gamma2 <= 1, s >= 0, count_normalizer >= 1, and "
                f"0 <= min_weight <= 1 / number of domains (= 1/{k})."
            )
        self.config = dict(
            warmup_steps=int(warmup_steps), fit_interval=int(fit_interval), subsample=int(subsample),
            smoothing_window=int(smoothing_window), gamma1=float(gamma1), gamma2=float(gamma2), s=float(s),
            min_weight=float(min_weight), count_normalizer=int(count_normalizer),
        )
        self.mu = np.array([prior.weights[d] for d in self._domains], dtype=np.float64)
        self._reset()

    def _reset(self) -> None:
        self.steps = 0
        self.losses: list[list[float]] = []  # per step, per domain: mean loss (nan: no tokens yet)
        self.increments: list[list[float]] = []  # per step, per domain: count increment (tokens)
        self.seen = np.zeros(len(self._domains), dtype=bool)
        self.params: list[list[float] | None] | None = None  # per domain [eps, beta, alpha] or None
        self.h: np.ndarray | None = None
        self.pi: np.ndarray | None = None
        self.pi_bar: np.ndarray | None = None
        self.rho: np.ndarray | None = None
        self.updates: list[tuple[int, list[float]]] = [(0, self.mu.tolist())]

    # -- Mixture interface -------------------------------------------------------------------------
    @property
    def domains(self) -> list[Any]:
        return list(self._domains)

    def at(self, step: int) -> StaticMixture:
        """The latest weights (ADO weights follow chunks, not steps: see :meth:`weights_for_chunk`)."""
        return self._static(self.updates[-1][1])

    def weights_for_chunk(self, chunk: int, step: int) -> dict[Any, float]:
        weights = self.updates[0][1]
        for start, w in self.updates:
            if start > chunk:
                break
            weights = w
        return {d: w for d, w in zip(self._domains, weights) if w > 0}  # min_weight = 0 can zero one

    def to_dict(self) -> dict[str, Any]:
        return {"property": self.property, "ado": {"prior": self.prior.to_dict()["weights"], **self.config}}

    def _static(self, weights: Sequence[float]) -> StaticMixture:
        w = np.asarray(weights, dtype=np.float64)
        return StaticMixture(dict(zip(self._domains, (w / w.sum()).tolist())), self.property)

    @property
    def weights(self) -> dict[Any, float]:
        """The weights of the latest update."""
        return dict(zip(self._domains, self.updates[-1][1]))

    # -- the update --------------------------------------------------------------------------------
    def observe(self, loss_sums: Sequence[float], token_counts: Sequence[float]) -> np.ndarray | None:
        """Record one step's per-domain loss sums and token counts (reduced over the DP ranks, in the
        order of :attr:`domains`); return the new weights, or None while the prior holds."""
        sums = np.asarray(loss_sums, dtype=np.float64)
        counts = np.asarray(token_counts, dtype=np.float64)
        if sums.shape != (len(self._domains),) or counts.shape != sums.shape:
            raise ValueError(f"expected {len(self._domains)} loss sums and counts, got {sums.shape}, {counts.shape}")
        self.steps += 1
        previous = self.losses[-1] if self.losses else [math.nan] * len(sums)
        mean = np.where(counts > 0, sums / np.maximum(counts, 1), previous)
        self.losses.append(mean.tolist())
        self.seen |= counts > 0
        self.increments.append(np.where(self.seen, counts.sum(), 0.0).tolist())
        cfg = self.config
        if self.steps <= cfg["warmup_steps"] + cfg["fit_interval"]:
            return None
        if self.h is None:
            self.h = self.mu.copy()
        if self.params is None or (self.steps - cfg["warmup_steps"] - 1) % cfg["fit_interval"] == 0:
            self.fit()
        rho_num = self.mu * self.h ** cfg["s"] * np.maximum(-self.loss_derivative(), 0.0)
        self.rho = rho_num / rho_num.sum() if rho_num.sum() > 0 else self.mu.copy()
        pi_bar = self.pi_bar if self.pi_bar is not None else self.mu.copy()
        pi = cfg["gamma2"] * self.rho + (1 - cfg["gamma2"]) * pi_bar
        self.pi = project_min_weight(pi / pi.sum(), cfg["min_weight"])
        self.h = cfg["gamma1"] * self.pi + (1 - cfg["gamma1"]) * self.h
        avg = 1.0 / (self.steps + 1.0)
        pi_bar = avg * self.rho + (1 - avg) * pi_bar
        self.pi_bar = pi_bar / pi_bar.sum()
        return self.pi.copy()

    def counts_seen(self) -> np.ndarray:
        """Each domain's count ``n_k`` (tokens, same step size) divided by ``count_normalizer``."""
        if not self.increments:
            return np.zeros(len(self._domains))
        return np.asarray(self.increments, dtype=np.float64).sum(0) / self.config["count_normalizer"]

    def fit(self) -> None:
        """Fit each domain's power law to its loss curve (see the module docstring)."""
        cfg = self.config
        losses = np.asarray(self.losses, dtype=np.float64)
        x_all = np.cumsum(np.asarray(self.increments, dtype=np.float64), axis=0) / cfg["count_normalizer"]
        steps = np.arange(1, len(losses) + 1)
        params: list[list[float] | None] = []
        for k, domain in enumerate(self._domains):
            y, x = losses[:, k], x_all[:, k]
            valid = np.isfinite(y)
            y, x, t = y[valid], x[valid], steps[valid]
            if cfg["smoothing_window"] > 1 and len(y):
                y = savgol_smooth(y, cfg["smoothing_window"])
            keep = (x > 0) & (t > cfg["warmup_steps"])
            x, y = x[keep][:: cfg["subsample"]], y[keep][:: cfg["subsample"]]
            fitted = fit_power_law(x, y)
            params.append(list(fitted) if fitted is not None else None)
            if fitted is None:
                logger.warning("ADO: too few points to fit domain %r at step %d; it gets no preference signal.",
                               domain, self.steps)
        self.params = params
        logger.info(
            "ADO step %d: fitted L(n) = eps + beta * n^-alpha per domain: %s", self.steps,
            {str(d): None if p is None else {"eps": round(p[0], 4), "beta": round(p[1], 4), "alpha": round(p[2], 4)}
             for d, p in zip(self._domains, params)},
        )

    def loss_derivative(self) -> np.ndarray:
        """``dL_k/dn`` of each domain's fitted law at its current count (0 without a fit or count)."""
        n = self.counts_seen()
        out = np.zeros(len(self._domains))
        for k, p in enumerate(self.params or []):
            if p is not None and n[k] > 0:
                _, beta, alpha = p
                out[k] = -alpha * beta * n[k] ** (-alpha - 1.0)
        return out

    def apply(self, weights: Sequence[float], from_chunk: int) -> None:
        """Use ``weights`` (in the order of :attr:`domains`) for chunks ``from_chunk`` on. ``from_chunk``
        must be a chunk no rank has planned yet (the trainer's MAX over the planners)."""
        w = [float(v) for v in weights]
        last_start = self.updates[-1][0]
        if from_chunk < last_start:
            raise ValueError(f"ADO update for chunk {from_chunk} comes after one for chunk {last_start}")
        if from_chunk == last_start:
            self.updates[-1] = (from_chunk, w)
        else:
            self.updates.append((from_chunk, w))

    # -- checkpointing -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        def arr(a: np.ndarray | None) -> list[float] | None:
            return None if a is None else a.tolist()

        return {
            "mixture_id": self.mixture_id, "steps": self.steps, "losses": self.losses,
            "increments": self.increments, "seen": self.seen.tolist(), "params": self.params,
            "h": arr(self.h), "pi": arr(self.pi), "pi_bar": arr(self.pi_bar), "rho": arr(self.rho),
            "updates": [[s, w] for s, w in self.updates],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("mixture_id") != self.mixture_id:
            raise ConfigError(
                f"ADO state in the checkpoint belongs to mixture {state.get('mixture_id')}, this run configures "
                f"{self.mixture_id} (prior weights or [mixture.ado] settings changed); resuming would continue "
                f"another adaptation. Restore the settings or start a fresh run directory."
            )

        def arr(a: list[float] | None) -> np.ndarray | None:
            return None if a is None else np.asarray(a, dtype=np.float64)

        self.steps = int(state["steps"])
        self.losses = [list(map(float, row)) for row in state["losses"]]
        self.increments = [list(map(float, row)) for row in state["increments"]]
        self.seen = np.asarray(state["seen"], dtype=bool)
        self.params = state["params"]
        self.h, self.pi, self.pi_bar, self.rho = (arr(state[k]) for k in ("h", "pi", "pi_bar", "rho"))
        self.updates = [(int(s), [float(v) for v in w]) for s, w in state["updates"]]

    def __repr__(self) -> str:
        return f"AdoMixture(prior={self.prior.weights}, {self.config})"
