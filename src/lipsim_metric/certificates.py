"""Embedding projection, cosine distance and certified radii (the functional core of LipSim).

Notation (proofs in ``docs/certificates.md``): ``f`` is the 1-Lipschitz backbone, ``g(x) = [f(x); c]`` appends the
constant ``c > 0`` so that ``||g(x)|| >= c``, and ``e(x) = g(x) / ||g(x)||`` is the unit-norm embedding. The
distance is ``d(x, y) = 1 - <e(x), e(y)>`` (Ghazanfari et al., ICLR 2024, Sec. 4).

Key lemma: if ``||g(x)|| = r`` and ``||delta|| <= eps`` then ``||e(x + delta) - e(x)|| <= h_r(eps)`` with
``h_r(eps) = eps / max(c, r - eps)``. With ``c = 1`` this is never worse than the global bound ``eps``
(normalisation outside the unit ball is the projection onto it, which is non-expansive) and is up to ``r`` times
tighter for embeddings far from the ball. All radii are the largest ``eps`` with ``h_r(eps) * L < margin``.

Floating point: margins are reduced by ``FLOAT_TOLERANCE`` before inverting, which covers the float32 error of the
distances (measured below 1e-6 in ``tests/test_certificates.py`` against float64).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch

__all__ = [
    "Projection",
    "FLOAT_TOLERANCE",
    "project_embedding",
    "cosine_distance",
    "invert_norm_bound",
    "TwoAFCCertificate",
    "certify_2afc_embeddings",
    "distance_radius",
]

Projection = Literal["append", "normalize"]

#: Absolute allowance subtracted from every margin before computing a radius (float32 rounding of distances).
FLOAT_TOLERANCE = 1e-5


def project_embedding(
    features: torch.Tensor, projection: Projection = "append", constant: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Map backbone features ``(N, D)`` to unit-norm embeddings, computed in float32 at least.

    Args:
        features: backbone outputs ``f(x)``.
        projection: ``"append"`` (default, always certifiable): append ``constant`` then normalise, output
            ``(N, D + 1)``; ``"normalize"``: the paper's evaluation protocol, plain normalisation, output ``(N, D)``,
            certifiable only where ``||f(x)|| >= 1``.
        constant: the appended coordinate ``c`` (``"append"`` only).

    Returns:
        ``(embedding, norm)`` with ``embedding`` unit-norm and ``norm = ||g(x)||`` of shape ``(N,)``.
    """
    g = features.float() if features.dtype in (torch.float16, torch.bfloat16) else features
    if projection == "append":
        g = torch.cat([g, torch.full_like(g[:, :1], constant)], dim=1)
    elif projection != "normalize":
        raise ValueError(f"projection must be 'append' or 'normalize', got {projection!r}")
    norm = torch.linalg.vector_norm(g, dim=1)
    # clamp only matters for "normalize" with f(x) = 0, where no direction exists; avoids NaN.
    return g / norm.clamp_min(1e-12)[:, None], norm


def cosine_distance(e0: torch.Tensor, e1: torch.Tensor) -> torch.Tensor:
    """``1 - <e0, e1>`` for unit-norm rows, clamped to ``[0, 2]`` against rounding; shape ``(N,)``."""
    return (1.0 - (e0 * e1).sum(dim=1)).clamp(0.0, 2.0)


def invert_norm_bound(rho: torch.Tensor, norm: torch.Tensor, projection: Projection = "append",
                      constant: float = 1.0) -> torch.Tensor:
    """Largest ``eps`` with ``h_r(eps) <= rho``, i.e. the radius in backbone-input units.

    For ``"append"``: ``h_r(eps) = eps / max(c, r - eps)`` is increasing; its inverse is ``r rho / (1 + rho)`` when that
    keeps ``r - eps >= c`` (i.e. ``rho <= (r - c) / c``), else ``c rho``. For ``"normalize"`` (no constant) the bound
    ``h_r(eps) = eps / (r - eps)`` holds for every ``eps < r`` (the projection argument of Claim 2 works for any ball
    radius ``r - eps > 0``), so the radius is ``r rho / (1 + rho)``, always below ``r``. It is reported only where
    ``r >= 1``, and is zero below: the float32 error of ``f / ||f||`` grows like ``1 / r``, and ``r >= 1`` keeps it
    within the same allowance (``FLOAT_TOLERANCE``) as for ``"append"``.

    Args:
        rho: required bound on ``||e(x + delta) - e(x)||`` (``>= 0``), shape ``(N,)``.
        norm: ``r = ||g(x)||`` of the perturbed input, shape ``(N,)``.
        projection: as in :func:`project_embedding`.
        constant: ``c``.
    """
    rho = rho.clamp_min(0.0)
    tight = norm * rho / (1.0 + rho)
    if projection == "append":
        return torch.where(rho <= (norm - constant) / constant, tight, constant * rho)
    return torch.where(norm >= 1.0, tight, torch.zeros_like(rho))


class TwoAFCCertificate(NamedTuple):
    """Result of :meth:`LipSim.certify_2afc`; every field has shape ``(N,)``.

    Attributes:
        prediction: 1 if ``x1`` is closer to the reference than ``x0`` (``d1 < d0``), else 0.
        margin: ``|d0 - d1|``.
        radius: certified l2 radius in the caller's input units: the prediction is the same for every perturbation
            of the reference with norm strictly below it (0 when nothing is certified).
        d0: ``d(ref, x0)``.
        d1: ``d(ref, x1)``.
    """

    prediction: torch.Tensor
    margin: torch.Tensor
    radius: torch.Tensor
    d0: torch.Tensor
    d1: torch.Tensor


def certify_2afc_embeddings(
    e_ref: torch.Tensor,
    e0: torch.Tensor,
    e1: torch.Tensor,
    ref_norm: torch.Tensor,
    input_norm: float | torch.Tensor = 1.0,
    projection: Projection = "append",
    constant: float = 1.0,
) -> TwoAFCCertificate:
    """2AFC certificate from embeddings (Ghazanfari et al., Thm. 3, tightened with the embedding norm).

    ``d0 - d1 = <e_ref, e1 - e0>``; a perturbation moving ``e_ref`` by at most ``h`` changes it by at most
    ``h ||e0 - e1||``. So the decision is certified while ``h_r(eps) < |d0 - d1| / ||e0 - e1||``; the radius in caller
    units divides the backbone-input radius by ``input_norm`` (the operator norm of the preprocessing).
    """
    e_ref, e0, e1 = e_ref.float(), e0.float(), e1.float()
    d0, d1 = cosine_distance(e_ref, e0), cosine_distance(e_ref, e1)
    margin = (d0 - d1).abs()
    spread = torch.linalg.vector_norm(e0 - e1, dim=1)
    rho = (margin - FLOAT_TOLERANCE).clamp_min(0.0) / spread.clamp_min(1e-12)
    radius = invert_norm_bound(rho, ref_norm.float(), projection, constant) / input_norm
    radius = torch.where(margin > FLOAT_TOLERANCE, radius, torch.zeros_like(radius))
    return TwoAFCCertificate((d1 < d0).long(), margin, radius, d0, d1)


def distance_radius(
    distance: torch.Tensor,
    norm: torch.Tensor,
    threshold: float = 0.0,
    input_norm: float | torch.Tensor = 1.0,
    projection: Projection = "append",
    constant: float = 1.0,
) -> torch.Tensor:
    """Certified radius for the decision ``d(x0, x1) > threshold`` (or ``<``) under a perturbation of ``x0``.

    ``|d(x0 + delta, x1) - d(x0, x1)| = |<e(x0) - e(x0 + delta), e(x1)>| <= h_r(||delta||)``, so the side of
    ``threshold`` cannot change while ``h_r(eps) < |d - threshold|``. With ``threshold = 0`` the radius is a lower
    bound on how far ``x0`` must move before LipSim could call it identical to ``x1``. ``norm`` is ``||g(x0)||``.
    By symmetry the same holds for perturbing ``x1`` with its own norm.
    """
    gap = ((distance.float() - threshold).abs() - FLOAT_TOLERANCE).clamp_min(0.0)
    return invert_norm_bound(gap, norm.float(), projection, constant) / input_norm
