"""Functional interface (torchmetrics / piq style): image-level LipSim functions over a given model.

Each function is a thin call of the model's own method -- the distance, the radii and the 2AFC certificate are
computed by :class:`~lipsim_metric.LipSim` (``forward`` / ``certify_2afc``) and :mod:`lipsim_metric.certificates`,
never re-derived here -- so ``functional.distance(model, x0, x1)`` is exactly ``model(x0, x1)``.

Reference: Ghazanfari et al., "LipSim: A Provably Robust Perceptual Similarity Metric", ICLR 2024,
https://arxiv.org/abs/2310.18274 (certificates: ``docs/certificates.md``).

Example:
    >>> import torch
    >>> from lipsim_metric import LipSim
    >>> from lipsim_metric import functional as LF
    >>> _ = torch.manual_seed(0)
    >>> model = LipSim(pretrained=False)  # LipSim() loads the shipped weights
    >>> x0, x1 = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    >>> LF.distance(model, x0, x1).shape
    torch.Size([2])
    >>> LF.distance(model, x0, x1, reduction="mean").shape
    torch.Size([])
"""

from __future__ import annotations

from typing import Any

import torch

from .certificates import TwoAFCCertificate
from .metric import LipSim
from .reduction import Reduction, check_reduction, reduce_distances

__all__ = ["distance", "certify_2afc", "pair_radius"]


def _check_model(model: Any) -> LipSim:
    if not isinstance(model, LipSim):
        raise TypeError(f"model must be a lipsim_metric.LipSim, got {type(model).__name__}; build one with "
                        "LipSim() (shipped weights) or LipSim(weights=...).")
    return model


def distance(model: LipSim, x0: torch.Tensor, x1: torch.Tensor, reduction: Reduction = "none") -> torch.Tensor:
    """LipSim distance ``1 - cos(e(x0), e(x1))`` of corresponding images, ``model(x0, x1)``.

    Differentiable with respect to the images (usable as a loss with ``reduction="mean"``).

    Args:
        model: the metric.
        x0: images ``(N, C, H, W)`` in ``model.input_range``.
        x1: images with the same ``N`` (``H, W`` may differ).
        reduction: ``"none"`` (default: ``(N,)`` distances), ``"mean"`` or ``"sum"`` (a 0-dim tensor).

    Returns:
        Distances in ``[0, 2]``, reduced as asked.

    Raises:
        TypeError: if ``model`` is not a :class:`~lipsim_metric.LipSim`.
        ValueError: for an unknown ``reduction`` or invalid images (see :meth:`LipSim.forward`).

    Example:
        >>> import torch
        >>> from lipsim_metric import LipSim
        >>> model = LipSim(pretrained=False)
        >>> x = torch.rand(2, 3, 64, 64)
        >>> bool(distance(model, x, x).abs().max() < 1e-5)  # d(x, x) = 0
        True
    """
    reduction = check_reduction(reduction)
    return reduce_distances(_check_model(model)(x0, x1), reduction)


def certify_2afc(model: LipSim, ref: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor) -> TwoAFCCertificate:
    """2AFC judgement "is ``x1`` closer to ``ref`` than ``x0``?" with its certified radius, ``model.certify_2afc``.

    Args:
        model: the metric.
        ref: reference images ``(N, C, H, W)``.
        x0: first candidates, same ``N``.
        x1: second candidates, same ``N``.

    Returns:
        A :class:`~lipsim_metric.TwoAFCCertificate`: ``prediction`` (1 if ``x1`` is closer), ``margin``, ``radius``
        (l2, in ``ref``'s input units: no perturbation of ``ref`` smaller than it changes ``prediction``), ``d0``,
        ``d1``.

    Raises:
        TypeError: if ``model`` is not a :class:`~lipsim_metric.LipSim`.
        ValueError: for invalid images or mismatched batch sizes.

    Example:
        >>> import torch
        >>> from lipsim_metric import LipSim
        >>> model = LipSim(pretrained=False)
        >>> ref = torch.rand(1, 3, 64, 64)
        >>> cert = certify_2afc(model, ref, torch.rand(1, 3, 64, 64), ref.clone())
        >>> int(cert.prediction), bool(cert.radius > 0)  # x1 = ref is closer, with a positive radius
        (1, True)
    """
    return _check_model(model).certify_2afc(ref, x0, x1)


def pair_radius(model: LipSim, x0: torch.Tensor, x1: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
    """Certified l2 radius of the decision ``d(x0, x1) > threshold`` (or ``<``) for each pair.

    ``model(x0, x1, return_radius=True, threshold=threshold).radius``: the smaller of the two per-side radii, valid
    for a perturbation of either image, in that image's input units. With ``threshold=0`` (default) an image must
    change by at least this much before LipSim could consider the two identical. For the per-side radii call the
    model with ``return_radius=True`` (a :class:`~lipsim_metric.DistanceResult`). Radii are never reduced.

    Args:
        model: the metric.
        x0: images ``(N, C, H, W)``.
        x1: images with the same ``N``.
        threshold: the decision threshold in ``[0, 2]``.

    Returns:
        Radii ``(N,)``, ``>= 0`` (computed in float32, autocast disabled).

    Raises:
        TypeError: if ``model`` is not a :class:`~lipsim_metric.LipSim`.
        ValueError: for invalid images or a threshold outside ``[0, 2]``.

    Example:
        >>> import torch
        >>> from lipsim_metric import LipSim
        >>> model = LipSim(pretrained=False)
        >>> x = torch.rand(3, 3, 64, 64)
        >>> r = pair_radius(model, x, torch.rand(3, 3, 64, 64))
        >>> r.shape, bool((r >= 0).all())
        (torch.Size([3]), True)
    """
    result = _check_model(model)(x0, x1, return_radius=True, threshold=threshold)
    return result.radius
