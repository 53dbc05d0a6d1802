"""ADO (data/mixture/ado.py): the power-law fit, the smoothing, the minimum weight, the update on
synthetic power-law losses, and an exact state round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest

from titan_recipes.errors import ConfigError
from titan_recipes.data.mixture.ado import AdoMixture, fit_power_law, project_min_weight, savgol_smooth
from titan_recipes.data.mixture.mixture import StaticMixture, chunk_counts

TOKENS_PER_STEP = 8192


def test_fit_recovers_a_power_law():
    x = np.linspace(1, 800, 300)
    eps, beta, alpha = fit_power_law(x, 2.0 + 3.0 * x**-0.4)
    assert eps == pytest.approx(2.0, rel=1e-6)
    assert beta == pytest.approx(3.0, rel=1e-6)
    assert alpha == pytest.approx(0.4, rel=1e-6)


def test_fit_stays_in_the_papers_bounds_and_needs_three_points():
    x = np.linspace(1, 100, 50)
    eps, beta, alpha = fit_power_law(x, 1.0 + 2.0 * x**-0.95)  # eps below e^0.5, alpha above 0.8
    assert eps >= np.exp(0.5) - 1e-12 and 0.001 <= alpha <= 0.8 and 0 <= beta <= np.exp(6.5)
    assert fit_power_law([1.0, 2.0], [3.0, 2.5]) is None


def test_savgol_keeps_cubics_and_is_a_local_cubic_fit():
    t = np.arange(40, dtype=float)
    cubic = 0.01 * t**3 - 0.2 * t**2 + t - 4
    np.testing.assert_allclose(savgol_smooth(cubic, 11), cubic, atol=1e-8)  # ends included
    noisy = np.random.default_rng(0).normal(size=40).cumsum()
    smooth = savgol_smooth(noisy, 11)
    for i in (5, 17, 34):  # interior point = value at the centre of a cubic least-squares fit
        window = np.arange(i - 5, i + 6)
        assert smooth[i] == pytest.approx(np.polyval(np.polyfit(window, noisy[window], 3), i), abs=1e-9)
    assert np.array_equal(savgol_smooth(noisy[:4], 11), noisy[:4])  # too short for a cubic window


def test_min_weight_projection_is_exact():
    p = project_min_weight(np.array([0.9, 0.095, 0.004, 0.001]), 0.05)
    assert p.sum() == pytest.approx(1.0)
    assert p[2] == p[3] == 0.05
    assert p[0] / p[1] == pytest.approx(0.9 / 0.095)  # the others shrink proportionally


LAWS = {  # domain: (eps, beta, alpha) of its true loss curve over the tokens it has seen / 1024
    "fast": (2.0, 6.0, 0.35),  # still improving a lot
    "slow": (2.5, 3.0, 0.35),  # improving half as fast at the same count
    "flat": (3.0, 0.0, 0.3),  # nothing left to learn
}


def simulate(mixture: AdoMixture, steps: int, start_tokens=None):
    """Train a fake model: each step reads TOKENS_PER_STEP tokens split by the current weights; each
    domain's loss follows its law at the tokens it has seen. Returns per-step weights and the tokens."""
    seen = dict(start_tokens or {d: 0.0 for d in LAWS})
    history = []
    for _ in range(steps):
        w = mixture.weights
        counts = np.array([w[d] * TOKENS_PER_STEP for d in mixture.domains])
        for d, c in zip(mixture.domains, counts):
            seen[d] += c
        losses = np.array([e + b * (seen[d] / 1024) ** -a for d, (e, b, a) in ((d, LAWS[d]) for d in mixture.domains)])
        new = mixture.observe(losses * counts, counts)
        if new is not None:
            mixture.apply(new, mixture.updates[-1][0] + 1)
        history.append(dict(mixture.weights))
    return history, seen


def ado(**kw):
    prior = StaticMixture({"fast": 1 / 3, "slow": 1 / 3, "flat": 1 / 3}, "set")
    settings = dict(warmup_steps=5, fit_interval=20, subsample=1, smoothing_window=0, min_weight=0.05) | kw
    return AdoMixture(prior, **settings)


def test_ado_moves_weight_to_the_improving_domain_and_respects_the_minimum():
    mixture = ado()
    history, _ = simulate(mixture, 600)
    assert history[0] == pytest.approx({"fast": 1 / 3, "slow": 1 / 3, "flat": 1 / 3})  # prior during warm-up
    assert history[24] == history[0]  # warmup_steps + fit_interval steps of the prior
    assert history[25] != history[0]
    final = history[-1]
    assert sum(final.values()) == pytest.approx(1.0)
    assert final["fast"] > final["slow"] > final["flat"]
    assert final["fast"] > 0.5
    assert final["flat"] == pytest.approx(0.05)  # no loss left to gain: held at the minimum
    assert all(w >= 0.05 - 1e-12 for h in history for w in h.values())
    # The fit is over the "same step size" count (all tokens since the domain was first sampled), not
    # the domain's own tokens, so it does not recover LAWS; it must still describe the observed curve.
    k = mixture.domains.index("fast")
    eps, beta, alpha = mixture.params[k]
    n = mixture.counts_seen()[k]
    assert eps + beta * n**-alpha == pytest.approx(mixture.losses[-1][k], rel=1e-2)  # fitted <= 20 steps ago


def test_ado_state_round_trip_is_exact():
    a = ado()
    simulate(a, 120)
    b = ado()
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    tokens = {d: 1e6 for d in LAWS}
    assert simulate(a, 80, tokens)[0] == simulate(b, 80, tokens)[0]
    with pytest.raises(ConfigError, match="belongs to mixture"):
        ado(gamma1=0.2).load_state_dict(a.state_dict())


def test_weights_apply_from_the_given_chunk():
    m = ado()
    m.apply([0.6, 0.2, 0.2], 4)
    m.apply([0.5, 0.25, 0.25], 9)
    m.apply([0.7, 0.2, 0.1], 9)  # a second update before chunk 9 is planned replaces the first
    assert m.weights_for_chunk(3, 0) == pytest.approx({d: 1 / 3 for d in m.domains})
    assert m.weights_for_chunk(4, 0) == dict(zip(m.domains, [0.6, 0.2, 0.2]))
    assert m.weights_for_chunk(100, 0) == dict(zip(m.domains, [0.7, 0.2, 0.1]))
    assert chunk_counts(m.weights_for_chunk(9, 0), 10) == dict(zip(m.domains, [7, 2, 1]))
    with pytest.raises(ValueError, match="comes after"):
        m.apply([0.5, 0.25, 0.25], 5)


@pytest.mark.parametrize(
    "kw, match",
    [({"min_weight": 0.5}, "min_weight"), ({"fit_interval": 0}, "fit_interval"), ({"gamma1": 0}, "gamma1")],
)
def test_bad_ado_settings_are_config_errors(kw, match):
    with pytest.raises(ConfigError, match=match):
        ado(**kw)
