"""ADO's scipy fit and smoothing against the numpy implementation they replaced.

titan_recipes.data.mixture.ado used hand-written numpy for the Savitzky-Golay smoothing and the
power-law fit (a grid over alpha refined by golden-section search); it now calls scipy, as Mixtera's
reference does (``scipy.signal.savgol_filter``, ``scipy.optimize.minimize`` with L-BFGS-B). The old
functions are copied below, unchanged, as the reference: the new ones must reproduce their results on
the same loss histories, so runs and checkpoints made before the change keep their weights.

Tolerances (measured on 200 random histories: smoothing 3e-13 relative, fitted curves 1e-8 relative,
alpha 2e-7 absolute, eps 4e-7 and beta 1.2e-6 relative): smoothing 1e-10 relative; fitted curves 1e-6
relative; alpha 1e-5 absolute; eps 1e-5 and beta 1e-4 relative; ADO weights 1e-6 absolute.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pytest

from titan_recipes.data.mixture import ado

from test_mixture_ado import ado as make_ado, simulate

# -- the reference: the numpy implementation before scipy, copied unchanged ---------------------------
ALPHA_BOUNDS = (0.001, 0.8)
LOG_BETA_MAX = 6.5
LOG_EPS_MIN = 0.5
_ALPHA_GRID = np.linspace(*ALPHA_BOUNDS, 160)
_GOLDEN = (math.sqrt(5) - 1) / 2


def ref_savgol_smooth(y: np.ndarray, window: int, order: int = 3) -> np.ndarray:
    """Savitzky-Golay smoothing (polynomial ``order``), the window shortened to an odd length that fits
    ``y``; the ends are the values of a polynomial fitted to the first/last window (scipy's
    ``mode="interp"``). Returns ``y`` unchanged when the window is too short for the order."""
    y = np.asarray(y, dtype=np.float64)
    n = len(y)
    window = min(window, n if n % 2 else n - 1)
    if window <= order + 1:
        return y.copy()
    half = window // 2
    offsets = np.arange(-half, half + 1, dtype=np.float64)
    coeffs = np.linalg.pinv(np.vander(offsets, order + 1, increasing=True))[0]
    out = y.copy()
    out[half : n - half] = np.convolve(y, coeffs[::-1], mode="valid")
    t = np.arange(window, dtype=np.float64)
    out[:half] = np.polyval(np.polyfit(t, y[:window], order), t[:half])
    out[n - half :] = np.polyval(np.polyfit(t, y[-window:], order), t[window - half :])
    return out


def _ref_fit_linear(z: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[float, float, float]:
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


def ref_fit_power_law(x: Sequence[float], y: Sequence[float]) -> tuple[float, float, float] | None:
    """Fit ``y ~ eps + beta * x**-alpha`` (relative least squares, the paper's bounds). Returns
    ``(eps, beta, alpha)``, or None with fewer than 3 points."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    keep = (x > 0) & np.isfinite(y) & (y > 0)
    x, y = x[keep], y[keep]
    if len(x) < 3:
        return None
    w = 1.0 / (y * y)
    logx = np.log(x)

    def sse(alpha: float) -> tuple[float, float, float]:
        return _ref_fit_linear(np.exp(-alpha * logx), y, w)

    errors = [sse(a)[0] for a in _ALPHA_GRID]
    i = int(np.argmin(errors))
    lo, hi = _ALPHA_GRID[max(i - 1, 0)], _ALPHA_GRID[min(i + 1, len(_ALPHA_GRID) - 1)]
    a, b = hi - _GOLDEN * (hi - lo), lo + _GOLDEN * (hi - lo)
    fa, fb = sse(a)[0], sse(b)[0]
    for _ in range(40):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - _GOLDEN * (hi - lo)
            fa = sse(a)[0]
        else:
            lo, a, fa = a, b, fb
            b = lo + _GOLDEN * (hi - lo)
            fb = sse(b)[0]
    candidates = [(errors[i], float(_ALPHA_GRID[i])), (min(fa, fb), float(a if fa <= fb else b))]
    _, alpha = min(candidates)
    _, eps, beta = sse(alpha)
    return eps, beta, alpha


# -- the comparisons --------------------------------------------------------------------------------
def histories(n_cases: int = 60, seed: int = 0):
    """Loss curves ``(x, y)``: power laws with relative noise of 0 to 5%, 5 to 400 points."""
    rng = np.random.default_rng(seed)
    for _ in range(n_cases):
        n = int(rng.integers(5, 400))
        x = np.cumsum(rng.uniform(0.5, 2.0, n)) * float(rng.choice([1, 10, 100, 1000]))
        eps, beta, alpha = rng.uniform(1.0, 4.0), rng.uniform(0.5, 50.0), rng.uniform(0.01, 1.0)
        noise = float(rng.choice([0.0, 1e-3, 1e-2, 5e-2]))
        yield x, (eps + beta * x**-alpha) * (1 + noise * rng.standard_normal(n))


def test_savgol_filter_reproduces_the_numpy_smoothing():
    for _, y in histories():
        for window in (5, 11, 101):
            want = ref_savgol_smooth(y, window)
            np.testing.assert_allclose(ado.savgol_smooth(y, window), want, rtol=1e-10, atol=0)


def test_lbfgsb_fit_reproduces_the_numpy_fit():
    for x, y in histories():
        (eps0, beta0, alpha0), (eps, beta, alpha) = ref_fit_power_law(x, y), ado.fit_power_law(x, y)
        assert alpha == pytest.approx(alpha0, abs=1e-5)
        assert eps == pytest.approx(eps0, rel=1e-5)
        assert beta == pytest.approx(beta0, rel=1e-4, abs=1e-9)
        np.testing.assert_allclose(eps + beta * x**-alpha, eps0 + beta0 * x**-alpha0, rtol=1e-6)
    assert ado.fit_power_law([1.0, 2.0], [3.0, 2.5]) is ref_fit_power_law([1.0, 2.0], [3.0, 2.5]) is None


def test_ado_weights_match_the_numpy_implementation(monkeypatch):
    new_history, _ = simulate(make_ado(smoothing_window=11), 300)
    monkeypatch.setattr(ado, "fit_power_law", ref_fit_power_law)
    monkeypatch.setattr(ado, "savgol_smooth", ref_savgol_smooth)
    old_history, _ = simulate(make_ado(smoothing_window=11), 300)
    for new, old in zip(new_history, old_history, strict=True):
        assert new == pytest.approx(old, abs=1e-6)
