"""Certified order of rated pairs: the share of pairs of distorted images whose LipSim order no l2 budget can swap.

Setting (a full-reference IQA set): distorted images ``a`` of references ``R(a)``, LipSim distances
``d_a = d(R(a), a)`` and human quality scores ``q_a``. An attacker may change **every distorted image** by at most
``eps`` in l2 (the references stay as they are). Perturbing ``a`` by ``delta`` moves its embedding by at most
``h_a(eps) = h_{r_a}(||A_a|| eps)`` (key lemma of ``docs/certificates.md``: ``r_a = ||g(a)||``, ``||A_a||`` the
operator norm of the preprocessing for the image's shape), so it moves ``d_a = 1 - <e(R(a)), e(a)>`` by at most
``h_a(eps)`` (Cauchy-Schwarz with a unit ``e(R(a))``; :func:`lipsim_metric.certificates.distance_radius` rests on the
same bound). Hence the order of two pairs cannot be swapped when

    |d_a - d_b| - 2 tau > h_a(eps) + h_b(eps)          (tau = FLOAT_TOLERANCE, the float allowance per distance)

and this holds whether ``a`` and ``b`` share a reference or not. Reported for pairs with different human scores,
over the pairs of the same reference and pooled over all pairs:

* ``concordant``: share ordered as the humans order them (natural; ``(1 + tau_a) / 2`` restricted to these pairs);
* ``certified@eps``: share whose order is certified (right or wrong);
* ``certified_concordant@eps``: share ordered as the humans order them **and** certified: a proven lower bound on
  ``concordant`` under any such attack -- the certified counterpart of a rank correlation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

from ..certificates import FLOAT_TOLERANCE, Projection

__all__ = ["distance_shift_bound", "certified_order_shares"]

_CHUNK = 1024


def distance_shift_bound(eps: float, norm: ArrayLike, input_norm: ArrayLike, projection: Projection = "append",
                         constant: float = 1.0) -> np.ndarray:
    """``h_r(||A|| eps)``: how far perturbing an image by l2 ``eps`` (caller units) can move its LipSim distances.

    The forward form of :func:`lipsim_metric.certificates.invert_norm_bound`: ``"append"``:
    ``t / max(c, r - t)``; ``"normalize"``: ``t / (r - t)`` while ``r - t >= 1``, otherwise no bound (``inf``).

    Args:
        eps: l2 budget in the image's own units (``>= 0``).
        norm: ``r = ||g(x)||`` per image.
        input_norm: ``||A||`` per image (:meth:`lipsim_metric.LipSim.input_norm`).
        projection, constant: the metric's.
    """
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    r = np.asarray(norm, dtype=np.float64)
    t = eps * np.asarray(input_norm, dtype=np.float64)
    if projection == "append":
        return t / np.maximum(constant, r - t)
    if projection == "normalize":
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(r - t >= 1.0, t / (r - t), np.inf)
    raise ValueError(f"projection must be 'append' or 'normalize', got {projection!r}")


def _shares(d: np.ndarray, q: np.ndarray, h: list[np.ndarray], rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Counts ``[pairs, concordant, (certified, certified_concordant) per budget]`` over ``rows x cols`` (i < j)."""
    gap = d[rows, None] - d[None, cols]
    human = np.sign(q[rows, None] - q[None, cols])
    upper = rows[:, None] < cols[None, :]
    used = upper & (human != 0)
    # smaller distance = better predicted quality, so the metric agrees with the humans when sign(-gap) == human
    concordant = used & (np.sign(-gap) == human)
    counts = [used.sum(), concordant.sum()]
    for bound in h:
        certified = used & (np.abs(gap) - 2 * FLOAT_TOLERANCE > bound[rows, None] + bound[None, cols])
        counts += [certified.sum(), (certified & concordant).sum()]
    return np.array(counts, dtype=np.int64)


def certified_order_shares(distance: ArrayLike, quality: ArrayLike, norm: ArrayLike,
                           input_norm: ArrayLike, groups: Sequence[str], budgets: Sequence[float],
                           projection: Projection = "append", constant: float = 1.0,
                           labels: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """Natural and certified shares of correctly ordered pairs, within each reference and pooled.

    Args:
        distance: LipSim distance of each distorted image to its reference.
        quality: human quality, oriented higher = better.
        norm: ``||g(x)||`` of each distorted image.
        input_norm: preprocessing operator norm for each distorted image's shape.
        groups: the reference of each image (pairs of the same reference form the ``same_reference`` figures).
        budgets: l2 budgets ``eps`` (caller units).
        projection, constant: the metric's.
        labels: how each budget is named in the keys (default ``f"{eps:g}"``).

    Returns:
        ``{"same_reference": {...}, "pooled": {...}}``, each with ``pairs`` (with distinct human scores),
        ``concordant``, ``certified@<label>`` and ``certified_concordant@<label>`` (shares in [0, 1]).
    """
    names = [f"{e:g}" for e in budgets] if labels is None else [str(label) for label in labels]
    if len(names) != len(budgets):
        raise ValueError(f"got {len(names)} labels for {len(budgets)} budgets")
    d, q = np.asarray(distance, dtype=np.float64), np.asarray(quality, dtype=np.float64)
    h = [distance_shift_bound(float(e), np.asarray(norm), np.asarray(input_norm), projection, constant)
         for e in budgets]
    n = len(d)
    pooled = np.zeros(2 + 2 * len(h), dtype=np.int64)
    everything = np.arange(n)
    for start in range(0, n, _CHUNK):
        pooled += _shares(d, q, h, everything[start:start + _CHUNK], everything)
    same = np.zeros_like(pooled)
    refs = np.asarray([str(g) for g in groups])
    for ref in np.unique(refs):
        members = np.flatnonzero(refs == ref)
        same += _shares(d, q, h, members, members)

    def as_shares(counts: np.ndarray) -> dict[str, float]:
        total = int(counts[0])
        out: dict[str, float] = {"pairs": float(total),
                                 "concordant": counts[1] / total if total else float("nan")}
        for i, eps in enumerate(names):
            out[f"certified@{eps}"] = counts[2 + 2 * i] / total if total else float("nan")
            out[f"certified_concordant@{eps}"] = counts[3 + 2 * i] / total if total else float("nan")
        return {k: float(v) for k, v in out.items()}

    return {"same_reference": as_shares(same), "pooled": as_shares(pooled)}
