"""Rank rules: how many singular directions a factorisation keeps.

- ``energy``: the smallest rank whose singular values keep this fraction of the squared sum;
- a ratio (float in (0, 1]) of the full rank, or an absolute rank (int);
- ``"vbmf"``: empirical variational Bayesian matrix factorisation (Nakajima, Sugiyama, Babacan,
  Tomioka, "Global analytic solution of fully-observed variational Bayesian matrix
  factorization", JMLR 2013), the rule Kim et al. (ICLR 2016) use for Tucker-2 ranks of mobile
  networks and that commercial compressors ship: it estimates the noise variance of the matrix and
  keeps the singular values that the global VB solution keeps.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["energy_rank", "vbmf_rank", "ratio_rank"]


def energy_rank(singular: np.ndarray, energy: float) -> int:
    """The smallest ``r`` with ``sum(s[:r]**2) >= energy * sum(s**2)`` (at least 1)."""
    squared = np.asarray(singular, dtype=np.float64) ** 2
    total = squared.sum()
    if total == 0:
        return 1
    kept = np.cumsum(squared) / total
    return int(min(len(squared), np.searchsorted(kept, energy - 1e-12) + 1))


def ratio_rank(full: int, rank: float | int) -> int:
    """A ratio of the full rank (float), or an absolute rank (int), clipped to ``[1, full]``."""
    if isinstance(rank, float):
        return max(1, min(full, math.ceil(rank * full - 1e-9)))
    return max(1, min(full, int(rank)))


def _tau(x: np.ndarray, alpha: float) -> np.ndarray:
    """The VB solution's shrinkage factor as a function of the scaled squared singular value."""
    return 0.5 * (x - (1 + alpha) + np.sqrt(np.maximum((x - (1 + alpha)) ** 2 - 4 * alpha, 0.0)))


def _free_energy(
    sigma2: float, rows: int, cols: int, s: np.ndarray, residual: float, xubar: float
) -> float:
    """The VB free energy (up to constants) as a function of the noise variance ``sigma2``."""
    alpha = rows / cols
    x = s**2 / (cols * sigma2)
    above = x[x > xubar]
    below = x[x <= xubar]
    tau = _tau(above, alpha)
    value = np.sum(below - np.log(below)) if below.size else 0.0
    value += np.sum(above - tau) + np.sum(np.log((tau + 1) / above))
    value += alpha * np.sum(np.log(tau / alpha + 1))
    value += residual / (cols * sigma2) + (rows - len(s)) * math.log(sigma2)
    return float(value)


def _golden_min(f, lo: float, hi: float, iterations: int = 100) -> float:  # noqa: ANN001
    """Minimise a unimodal scalar function on ``[lo, hi]`` by golden-section search."""
    g = (math.sqrt(5) - 1) / 2
    a, b = lo, hi
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(iterations):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = f(d)
        if b - a < 1e-12 * max(1.0, abs(a)):
            break
    return (a + b) / 2


def vbmf_rank(matrix: np.ndarray) -> int:
    """The rank empirical VBMF keeps for ``matrix`` (noise variance estimated, at least 1)."""
    y = np.asarray(matrix, dtype=np.float64)
    if y.shape[0] > y.shape[1]:
        y = y.T
    rows, cols = y.shape  # rows <= cols
    s = np.linalg.svd(y, compute_uv=False)
    alpha = rows / cols
    tauubar = 2.5129 * math.sqrt(alpha)  # the threshold of the VB solution's phase transition
    xubar = (1 + tauubar) * (1 + alpha / tauubar)
    total = float(np.sum(y**2))
    if total == 0:
        return 1
    residual = max(total - float(np.sum(s**2)), 0.0)
    # bounds of the noise variance (Nakajima et al. 2013, section 4)
    eh_ub = int(min(math.ceil(rows / (1 + alpha)) - 1, len(s))) - 1
    upper = (float(np.sum(s**2)) + residual) / (rows * cols)
    tail = s[eh_ub + 1 :] if eh_ub + 1 < len(s) else s[-1:]
    lower = max(
        float(s[min(eh_ub + 1, len(s) - 1)] ** 2) / (cols * xubar), float(np.mean(tail**2)) / cols
    )
    lower = max(lower, upper * 1e-12)
    if lower >= upper:
        sigma2 = upper
    else:
        sigma2 = _golden_min(
            lambda v: _free_energy(v, rows, cols, s, residual, xubar), lower, upper
        )
    threshold = math.sqrt(cols * sigma2 * (1 + tauubar) * (1 + alpha / tauubar))
    return max(1, int(np.sum(s > threshold)))
