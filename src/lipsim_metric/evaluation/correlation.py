"""Rank and linear correlations between a metric's predictions and human quality scores, as IQA papers report them.

* **SRCC** -- Spearman's rank correlation: Pearson's correlation of the ranks (ties get their average rank).
* **KRCC** -- Kendall's tau-b: ``(C - D) / sqrt((n0 - n1)(n0 - n2))`` with ``C``/``D`` the concordant/discordant
  pairs, ``n0 = n(n-1)/2`` and ``n1``, ``n2`` the pairs tied in each variable (the definition of
  ``scipy.stats.kendalltau``, its default ``variant="b"``).
* **PLCC** -- Pearson's linear correlation after mapping the predictions through the 5-parameter logistic of the
  VQEG Phase-I report and Sheikh, Sabir & Bovik, "A Statistical Evaluation of Recent Full Reference Image Quality
  Assessment Algorithms", IEEE TIP 15(11), 2006, Eq. (1)::

      f(x) = b1 * (1/2 - 1 / (1 + exp(b2 (x - b3)))) + b4 x + b5

  fitted by least squares to the human scores. The fit uses ``scipy.optimize.curve_fit`` when scipy is installed and
  otherwise the Levenberg-Marquardt loop of :func:`fit_logistic5` (numpy only; the same objective, started from the
  same point). The predictions are standardised before fitting (an affine change of ``x`` that the family absorbs)
  so that one starting point works for every metric's scale. If the fit fails, PLCC is reported on the raw
  predictions and :func:`plcc` says so in its ``method``.

Nothing here needs scipy: SRCC and KRCC are exact numpy implementations (tested against scipy when it is present).

Example:
    >>> import numpy as np
    >>> x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    >>> round(srcc(x, x ** 3), 6), round(krcc(x, -x), 6)
    (1.0, -1.0)
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["rankdata", "srcc", "krcc", "pearson", "logistic5", "fit_logistic5", "PLCCResult", "plcc",
           "correlations"]

#: Rows of the pair matrix processed at once by :func:`krcc` (bounds its ``rows x n`` temporaries).
_CHUNK = 512


def _vectors(x: ArrayLike, y: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(x, dtype=np.float64).reshape(-1), np.asarray(y, dtype=np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"x and y must have the same length, got {a.size} and {b.size}")
    if a.size < 2:
        raise ValueError(f"a correlation needs at least 2 values, got {a.size}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("x and y must be finite (found NaN or Inf); drop or fix those entries first")
    return a, b


def rankdata(x: ArrayLike) -> np.ndarray:
    """Ranks ``1..n`` of ``x``, ties replaced by their average rank (``scipy.stats.rankdata(method="average")``)."""
    a = np.asarray(x, dtype=np.float64).reshape(-1)
    n = a.size
    order = np.argsort(a, kind="mergesort")
    sorted_a = a[order]
    new_group = np.r_[True, sorted_a[1:] != sorted_a[:-1]] if n else np.zeros(0, dtype=bool)
    starts = np.flatnonzero(new_group)
    counts = np.diff(np.r_[starts, n])
    average = starts + (counts - 1) / 2.0 + 1.0
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = np.repeat(average, counts)
    return ranks


def pearson(x: ArrayLike, y: ArrayLike) -> float:
    """Pearson's linear correlation; NaN when one of the inputs is constant."""
    a, b = _vectors(x, y)
    a, b = a - a.mean(), b - b.mean()
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denominator) if denominator > 0 else float("nan")


def srcc(x: ArrayLike, y: ArrayLike) -> float:
    """Spearman's rank correlation coefficient (average ranks for ties); NaN when one input is constant."""
    a, b = _vectors(x, y)
    return pearson(rankdata(a), rankdata(b))


def _tied_pairs(a: np.ndarray) -> int:
    _, counts = np.unique(a, return_counts=True)
    return int((counts * (counts - 1) // 2).sum())


def krcc(x: ArrayLike, y: ArrayLike) -> float:
    """Kendall's tau-b (exact, ``O(n^2)`` in chunks of rows); NaN when one input is constant."""
    a, b = _vectors(x, y)
    n = a.size
    total = 0  # sum over ordered pairs (i, j) of sign(a_i - a_j) sign(b_i - b_j) = 2 (C - D)
    for start in range(0, n, _CHUNK):
        sa = np.sign(a[start:start + _CHUNK, None] - a[None, :]).astype(np.int8)
        sb = np.sign(b[start:start + _CHUNK, None] - b[None, :]).astype(np.int8)
        total += int((sa.astype(np.int32) * sb).sum())
    n0 = n * (n - 1) // 2
    denominator = np.sqrt(float(n0 - _tied_pairs(a)) * float(n0 - _tied_pairs(b)))
    return float(total / 2 / denominator) if denominator > 0 else float("nan")


def logistic5(x: np.ndarray, b1: float, b2: float, b3: float, b4: float, b5: float) -> np.ndarray:
    """The 5-parameter logistic ``b1 (1/2 - 1/(1 + exp(b2 (x - b3)))) + b4 x + b5`` (Sheikh et al. 2006, Eq. 1)."""
    z = np.clip(b2 * (x - b3), -60.0, 60.0)  # exp overflow guard; the logistic is flat there anyway
    return b1 * (0.5 - 1.0 / (1.0 + np.exp(z))) + b4 * x + b5


def _jacobian(x: np.ndarray, p: np.ndarray) -> np.ndarray:
    b1, b2, b3 = p[0], p[1], p[2]
    z = np.clip(b2 * (x - b3), -60.0, 60.0)
    s = 1.0 / (1.0 + np.exp(-z))  # d/dz of -1/(1+e^z) is s (1 - s) with s = sigmoid(z)
    ds = s * (1.0 - s)
    return np.stack([0.5 - 1.0 / (1.0 + np.exp(z)), b1 * ds * (x - b3), -b1 * ds * b2, x, np.ones_like(x)], axis=1)


def _initial_parameters(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    direction = 1.0 if pearson(x, y) >= 0 else -1.0
    return np.array([direction * (y.max() - y.min()), 1.0, 0.0, 0.0, float(y.mean())])


def fit_logistic5(x: ArrayLike, y: ArrayLike, iterations: int = 200) -> np.ndarray:
    """Least-squares fit of :func:`logistic5` by Levenberg-Marquardt (numpy only; the fallback without scipy).

    Args:
        x: predictions (standardise them first for a well-conditioned fit, as :func:`plcc` does).
        y: human scores.
        iterations: at most this many accepted or rejected steps.

    Returns:
        The parameters ``(b1, b2, b3, b4, b5)``.
    """
    a, b = _vectors(x, y)
    p = _initial_parameters(a, b)
    residual = b - logistic5(a, *p)
    cost, damping = float(residual @ residual), 1e-3
    for _ in range(iterations):
        jac = _jacobian(a, p)
        normal = jac.T @ jac
        gradient = jac.T @ residual
        step = np.linalg.solve(normal + damping * np.diag(np.diag(normal) + 1e-12), gradient)
        candidate = p + step
        new_residual = b - logistic5(a, *candidate)
        new_cost = float(new_residual @ new_residual)
        if new_cost < cost:
            converged = cost - new_cost <= 1e-12 * max(cost, 1e-30)
            p, residual, cost, damping = candidate, new_residual, new_cost, max(damping / 10.0, 1e-12)
            if converged:
                break
        else:
            damping *= 10.0
            if damping > 1e12:
                break
    return p


class PLCCResult(NamedTuple):
    """Output of :func:`plcc`: the correlation, the logistic parameters (None without a fit), and how it was fitted
    (``"logistic5-scipy"``, ``"logistic5-numpy"`` or ``"linear (logistic fit failed)"``)."""

    plcc: float
    parameters: tuple[float, ...] | None
    method: str


def plcc(x: ArrayLike, y: ArrayLike, use_scipy: bool | None = None) -> PLCCResult:
    """PLCC after the 5-parameter logistic fit of the (standardised) predictions ``x`` to the scores ``y``.

    Args:
        x: predictions.
        y: human scores.
        use_scipy: force (True) or forbid (False) ``scipy.optimize.curve_fit``; None: use it when installed.

    Returns:
        A :class:`PLCCResult`. The sign follows the data: a prediction that falls as ``y`` rises gives a negative
        PLCC, as its SRCC is negative (the fitted logistic is increasing or decreasing with the data).
    """
    a, b = _vectors(x, y)
    spread = a.std()
    if spread == 0 or b.std() == 0:
        return PLCCResult(float("nan"), None, "undefined (constant input)")
    z = (a - a.mean()) / spread
    if use_scipy is None:
        try:
            import scipy.optimize  # noqa: F401

            use_scipy = True
        except ImportError:
            use_scipy = False
    try:
        if use_scipy:
            import warnings

            from scipy.optimize import OptimizeWarning, curve_fit

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", OptimizeWarning)
                params, _ = curve_fit(logistic5, z, b, p0=_initial_parameters(z, b), maxfev=20000)
            method = "logistic5-scipy"
        else:
            params, method = fit_logistic5(z, b), "logistic5-numpy"
        fitted = logistic5(z, *params)
        if not np.isfinite(fitted).all() or fitted.std() == 0:
            raise RuntimeError("degenerate fit")
    except (RuntimeError, ValueError, np.linalg.LinAlgError):
        return PLCCResult(pearson(a, b), None, "linear (logistic fit failed)")
    value = pearson(fitted, b)
    # a decreasing relation is fitted by a decreasing logistic; keep the sign the raw data have, as SRCC does
    if pearson(a, b) < 0 < value:
        value = -value
    return PLCCResult(value, tuple(float(v) for v in params), method)


def correlations(prediction: ArrayLike, quality: ArrayLike, use_scipy: bool | None = None) -> dict[str, object]:
    """``{"n", "srcc", "krcc", "plcc", "plcc_method"}`` between predictions and quality scores (no reorientation)."""
    a, b = _vectors(prediction, quality)
    fit = plcc(a, b, use_scipy)
    return {"n": int(a.size), "srcc": srcc(a, b), "krcc": krcc(a, b), "plcc": fit.plcc, "plcc_method": fit.method}
