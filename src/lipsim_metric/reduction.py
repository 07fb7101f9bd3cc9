"""Batch reduction of per-image distances (``reduction="none" | "mean" | "sum"``), the torchmetrics / piq convention.

One helper, used by :meth:`lipsim_metric.LipSim.forward` and :mod:`lipsim_metric.functional`. Certified radii are
never reduced: a radius belongs to one pair (the mean of radii certifies nothing).
"""

from __future__ import annotations

from typing import Literal, get_args

import torch

__all__ = ["Reduction", "REDUCTIONS", "check_reduction", "reduce_distances"]

Reduction = Literal["none", "mean", "sum"]
REDUCTIONS: tuple[str, ...] = get_args(Reduction)


def check_reduction(reduction: object) -> Reduction:
    """Return ``reduction`` if it is one of :data:`REDUCTIONS`.

    Raises:
        ValueError: otherwise (names the valid values).
    """
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {list(REDUCTIONS)}, got {reduction!r}. Use 'none' for one "
                         "distance per pair, 'mean' or 'sum' for a scalar (e.g. a loss).")
    return reduction  # type: ignore[return-value]


def reduce_distances(distances: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    """Reduce per-pair distances ``(N,)``: unchanged (``"none"``), their mean or their sum (0-dim tensors).

    Example:
        >>> import torch
        >>> reduce_distances(torch.tensor([0.25, 0.75]), "mean")
        tensor(0.5000)
    """
    reduction = check_reduction(reduction)
    if reduction == "mean":
        return distances.mean()
    if reduction == "sum":
        return distances.sum()
    return distances
