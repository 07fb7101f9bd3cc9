"""Distilling teacher *distances* (not embeddings) into a 1-Lipschitz student, from a pair label set.

The student's distance ``d_S(x, T(x))`` should order distortion pairs as the human-calibrated teachers do (LPIPS-VGG,
fitted to BAPPS 2AFC judgements; DISTS, fitted to KADID-10k ratings), both within one reference (2AFC triplets) and
across references (a quality scale that is comparable between photos, what SRCC on IQA data measures). Targets come
from :mod:`lipsim_metric.train.labels` (computed once). Terms, all scale-free in the student's distance unit except
the last:

* **Correlation** ``1 - pearson(log d_S, z)`` over the batch's pairs, with ``z`` the teachers' consensus score: the mean
  over teachers of the standardised log distance ``(log d_T - mu_T) / sigma_T`` (statistics over the whole label set).
  It asks for a calibrated log-linear relation between student and teachers.
* **Pooled ranking** (RankNet, Burges et al. 2005): ``softplus(-y (log d_S,i - log d_S,j) / tau)`` over every pair of
  pairs in the batch on which all teachers agree (``y`` the teachers' order) and whose consensus gap exceeds
  ``min_gap`` (in ``z`` units).
* **Certified 2AFC hinge** (optional, ``radius_margin > 0``): for two copies of one reference the teachers all order
  the same way, a hinge on the signed certified radius of the student's judgement (exactly the certificate's radius,
  :func:`lipsim_metric.train.engine.signed_radius`), so the judgements the student gets right are also robust.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["ConsensusTarget", "correlation_loss", "pooled_ranking_loss"]

_LOG_FLOOR = 1e-4  # teachers' distances of near-identical pairs sit at rounding level; clamp before the log


class ConsensusTarget:
    """Standardised log teacher distances and their mean over teachers (the consensus ``z``).

    Args:
        distances: all teacher distances of the label set, ``(N, T, K)`` (or any shape with teachers on dim 1).
    """

    def __init__(self, distances: torch.Tensor) -> None:
        logs = distances.clamp_min(_LOG_FLOOR).log().transpose(0, 1).reshape(distances.shape[1], -1)
        self.mean = logs.mean(dim=1)
        self.std = logs.std(dim=1).clamp_min(1e-6)

    def standardised(self, distances: torch.Tensor) -> torch.Tensor:
        """``(B, T, K) -> (B, T, K)``: ``(log d_T - mu_T) / sigma_T``."""
        logs = distances.clamp_min(_LOG_FLOOR).log()
        shape = (1, -1, 1)
        return (logs - self.mean.to(logs).view(shape)) / self.std.to(logs).view(shape)

    def __call__(self, distances: torch.Tensor) -> torch.Tensor:
        """Consensus ``z`` of shape ``(B, K)`` for teacher distances ``(B, T, K)``."""
        return self.standardised(distances).mean(dim=1)


def correlation_loss(score: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``1 - pearson(score, target)`` over all elements (differentiable in ``score``)."""
    s = score.flatten().float()
    t = target.flatten().float()
    s = s - s.mean()
    t = t - t.mean()
    return 1.0 - (s * t).sum() / (s.norm() * t.norm()).clamp_min(1e-8)


def pooled_ranking_loss(score: torch.Tensor, target: torch.Tensor, teacher: torch.Tensor,
                        temperature: float = 0.1, min_gap: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """RankNet loss over all pairs of elements on which every teacher agrees.

    Args:
        score: student scores (``log d_S``), any shape, flattened to ``(P,)``.
        target: consensus ``z``, same shape.
        teacher: per-teacher standardised distances ``(T, P)`` (or ``(B, T, K)``, reshaped to teacher-major).
        temperature: ``tau`` in log-distance units.
        min_gap: skip element pairs whose consensus gap ``|z_i - z_j|`` is at most this.

    Returns:
        ``(loss, agreement)``: the mean loss and the fraction of used pairs the student orders like the teachers.
    """
    s, z = score.flatten().float(), target.flatten().float()
    if teacher.dim() == 3:
        teacher = teacher.transpose(0, 1).reshape(teacher.shape[1], -1)
    signs = torch.sign(teacher[:, :, None] - teacher[:, None, :])  # (T, P, P)
    unanimous = (signs == signs[:1]).all(0) & (signs[0] != 0)
    dz = z[:, None] - z[None, :]
    upper = torch.triu(torch.ones_like(dz, dtype=torch.bool), diagonal=1)
    use = upper & unanimous & (dz.abs() > min_gap)
    if not use.any():
        return s.sum() * 0.0, torch.tensor(float("nan"))
    y = signs[0][use]
    ds = (s[:, None] - s[None, :])[use]
    loss = F.softplus(-y * ds / temperature).mean()
    return loss, ((y * ds) > 0).float().mean()
