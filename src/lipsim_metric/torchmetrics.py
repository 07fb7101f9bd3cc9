"""LipSim as ``torchmetrics`` metrics (optional extra: ``pip install "lipsim-metric[torchmetrics]"``).

* :class:`LipSimMetric` -- in the style of ``torchmetrics.image.LearnedPerceptualImagePatchSimilarity``:
  ``update(img1, img2)`` accumulates LipSim distances, ``compute()`` reduces them (``reduction`` ``"mean"``,
  ``"sum"`` or ``"none"``); states are synchronised across DDP processes by torchmetrics.
* :class:`LipSim2AFC` -- 2AFC agreement with human (or any) judgements: ``update(ref, x0, x1, target)`` with
  ``target`` the share of judges who found ``x1`` closer (0/1 for hard labels); ``compute()`` returns the natural
  2AFC score (share of judges agreeing with LipSim, 0.5 on a tie) and the certified score at each l2 budget (a
  triplet counts only if LipSim's choice is certified for every perturbation of the reference of that norm; Table 1
  of Ghazanfari et al., ICLR 2024).

The core package never imports this module or torchmetrics.

Example:
    >>> import torch
    >>> from lipsim_metric import LipSim
    >>> from lipsim_metric.torchmetrics import LipSimMetric
    >>> metric = LipSimMetric(net=LipSim(pretrained=False))     # LipSimMetric() uses the shipped weights
    >>> g = torch.Generator().manual_seed(0)
    >>> metric.update(torch.rand(2, 3, 32, 32, generator=g), torch.rand(2, 3, 32, 32, generator=g))
    >>> metric.compute().shape
    torch.Size([])
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor

try:
    from torchmetrics import Metric
    from torchmetrics.utilities.data import dim_zero_cat
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("lipsim_metric.torchmetrics needs torchmetrics: pip install \"lipsim-metric[torchmetrics]\" "
                      "(or pip install torchmetrics)") from exc

from .metric import LipSim

__all__ = ["LipSimMetric", "LipSim2AFC", "PAPER_BUDGETS"]

#: Certified budgets of the LipSim paper: l2 36/255, 72/255, 108/255 in [0,1] pixel units at 224x224.
PAPER_BUDGETS = (36 / 255, 72 / 255, 108 / 255)
Reduction = Literal["mean", "sum", "none"]


def _network(net: LipSim | None, weights: str | os.PathLike[str] | None, input_range: str) -> LipSim:
    if net is not None:
        if not isinstance(net, LipSim):
            raise TypeError(f"net must be a lipsim_metric.LipSim, got {type(net).__name__}")
        if weights is not None:
            raise ValueError("pass either net= or weights=, not both")
        if net.input_range != input_range:
            raise ValueError(f"net has input_range {net.input_range!r} but input_range={input_range!r} was asked for; "
                             "build the LipSim with the range you pass")
        return net
    return LipSim(weights=weights, input_range=input_range) if weights is not None else LipSim(input_range=input_range)


def _budget_key(eps: float) -> str:
    k = eps * 255
    text = f"{eps:g}"
    return f"certified@{round(k)}/255" if len(text) > 6 and abs(k - round(k)) < 1e-6 else f"certified@{text}"


class LipSimMetric(Metric):
    """LipSim distance between two batches of images, accumulated over ``update`` calls.

    Args:
        weights: LipSim weights (registered name or ``.safetensors`` path); default: the shipped default.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` (all distances, concatenated in update order; under
            DDP in rank order).
        input_range: ``"[0,1]"`` (default) or ``"[-1,1]"`` (LPIPS' convention; torchmetrics' LPIPS uses
            ``normalize=False`` for it).
        net: a ready :class:`~lipsim_metric.LipSim` instead of ``weights`` (its parameters are frozen either way).
        **kwargs: passed to ``torchmetrics.Metric`` (``sync_on_compute``, ``dist_sync_fn``...).

    Raises:
        ValueError: an unknown ``reduction``, or both ``net`` and ``weights``.
    """

    is_differentiable = True
    higher_is_better = False
    full_state_update = False
    scores: list[Tensor]
    sum_scores: Tensor
    total: Tensor

    def __init__(self, weights: str | os.PathLike[str] | None = None, reduction: Reduction = "mean",
                 input_range: str = "[0,1]", net: LipSim | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        self.reduction = reduction
        self.net = _network(net, weights, input_range)
        self.net.requires_grad_(False)
        if reduction == "none":
            self.add_state("scores", default=[], dist_reduce_fx="cat")
        else:
            self.add_state("sum_scores", default=torch.tensor(0.0), dist_reduce_fx="sum")
            self.add_state("total", default=torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, img1: Tensor, img2: Tensor) -> None:
        """Add the distances of a batch of pairs ``(N, C, H, W)`` (validated by :class:`~lipsim_metric.LipSim`)."""
        distance = self.net(img1, img2)
        if self.reduction == "none":
            self.scores.append(distance)
        else:
            self.sum_scores = self.sum_scores + distance.sum()
            self.total = self.total + distance.numel()

    def compute(self) -> Tensor:
        """The mean or sum of all distances so far, or all of them (``reduction="none"``)."""
        if self.reduction == "none":
            # a list before a sync, one concatenated tensor after it
            if isinstance(self.scores, list) and not self.scores:
                return torch.zeros(0, device=self.device)
            return dim_zero_cat(self.scores)
        if self.reduction == "sum":
            return self.sum_scores
        return self.sum_scores / self.total


class LipSim2AFC(Metric):
    """Natural and certified 2AFC agreement of LipSim with judgements ``target`` (share who chose ``x1``).

    Args:
        budgets: l2 budgets (caller units) for the certified scores; default the paper's 36/255, 72/255, 108/255.
        weights, input_range, net: as in :class:`LipSimMetric`.
        **kwargs: passed to ``torchmetrics.Metric``.

    ``compute()`` returns ``{"natural": ..., "certified@36/255": ..., ...}`` (0-dim tensors in [0, 1]).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    natural_sum: Tensor
    certified_sum: Tensor
    total: Tensor

    def __init__(self, budgets: Sequence[float] = PAPER_BUDGETS, weights: str | os.PathLike[str] | None = None,
                 input_range: str = "[0,1]", net: LipSim | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        values = [float(b) for b in budgets]
        if not values or any(not b >= 0 for b in values):
            raise ValueError(f"budgets must be a non-empty list of l2 budgets >= 0, got {list(budgets)}")
        self.budgets = values
        self.net = _network(net, weights, input_range)
        self.net.requires_grad_(False)
        self.add_state("natural_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("certified_sum", default=torch.zeros(len(values), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, ref: Tensor, x0: Tensor, x1: Tensor, target: Tensor) -> None:
        """Add a batch of triplets; ``target`` ``(N,)`` in [0, 1] is the share of judges who found ``x1`` closer."""
        target = torch.as_tensor(target, device=ref.device)
        if not target.is_floating_point():
            target = target.float()
        if target.shape != (ref.shape[0],) or not bool(((target >= 0) & (target <= 1)).all()):
            raise ValueError(f"target must be (N,) = ({ref.shape[0]},) shares in [0, 1], got shape "
                             f"{tuple(target.shape)}; for hard labels pass 1 where x1 is the closer image, else 0")
        cert = self.net.certify_2afc(ref, x0, x1)
        t = target.double()
        score = torch.where(cert.d1 < cert.d0, t, torch.where(cert.d0 < cert.d1, 1 - t, torch.full_like(t, 0.5)))
        budgets = torch.tensor(self.budgets, device=score.device, dtype=torch.float64)
        certified = (cert.radius.double()[:, None] > budgets[None, :]) * score[:, None]
        self.natural_sum = self.natural_sum + score.sum()
        self.certified_sum = self.certified_sum + certified.sum(0)
        self.total = self.total + score.numel()

    def compute(self) -> dict[str, Tensor]:
        """``{"natural", "certified@<budget>"...}``: shares of the judgements so far."""
        out = {"natural": (self.natural_sum / self.total).float()}
        for i, eps in enumerate(self.budgets):
            out[_budget_key(eps)] = (self.certified_sum[i] / self.total).float()
        return out
