"""Per-step loss terms of the training stages (:mod:`lipsim_metric.train.engine` runs the loop).

* :func:`signed_radius` and :func:`ranking_hinge`: the certified 2AFC hinge of stage 2 (``finetune``), also the radius
  term of stage ``pairs``;
* :func:`pair_terms`: the whole loss of a stage-``pairs`` batch (correlation, pooled ranking, radius hinge; see
  :mod:`lipsim_metric.train.pair_objective`), with mined hard pairs appended when given
  (:mod:`lipsim_metric.train.hard_pairs`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ..certificates import cosine_distance, invert_norm_bound

if TYPE_CHECKING:
    from .engine import TrainConfig

__all__ = ["signed_radius", "ranking_hinge", "pair_terms"]


def signed_radius(e_ref: torch.Tensor, r_ref: torch.Tensor, e0: torch.Tensor, e1: torch.Tensor,
                  projection: str = "append", constant: float = 1.0) -> torch.Tensor:
    """Differentiable signed certified radius of the 2AFC judgement ``(ref, x0, x1)``, in backbone-input units.

    Positive when ``x1`` is closer (``d0 > d1``), negative otherwise; its absolute value is exactly the radius of
    :func:`lipsim_metric.certificates.certify_2afc_embeddings` before the float allowance and the input-size factor:
    ``invert_norm_bound(|d0 - d1| / ||e0 - e1||, r)``. Broadcasts over leading dimensions (``e_*``: ``(..., D)``,
    ``r_ref``: ``(...)``).
    """
    gap = ((e_ref * e1).sum(-1) - (e_ref * e0).sum(-1))  # d0 - d1
    rho = gap / torch.linalg.vector_norm(e0 - e1, dim=-1).clamp_min(1e-8)
    radius = invert_norm_bound(rho.abs(), r_ref.expand_as(rho), projection, constant)  # type: ignore[arg-type]
    return torch.sign(rho) * radius


def ranking_hinge(d_student: torch.Tensor, d_teacher: torch.Tensor, margin: float,
                   min_gap: float, gaps: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Hinge over all pairs of copies of each reference, on pairs every teacher orders the same way.

    ``d_student``: ``(B, K)`` student distances from each reference to its ``K`` copies; ``d_teacher``: ``(T, B, K)``
    for ``T`` teachers. For copies ``k < l`` the teachers say ``l`` is closer when ``d_teacher[:, k] > d_teacher[:, l]``
    (``y = +1``). A pair is used only if all teachers agree on ``y`` (the NIGHT idea of unanimous votes) and the
    teachers' mean gap, in units of each teacher's spread over the batch, exceeds ``min_gap``. Loss:
    ``max(0, m - y (dS_k - dS_l))``. ``gaps`` (``(B, K, K)``, antisymmetric) replaces ``dS_k - dS_l`` when given
    (the signed certified radius, :func:`signed_radius`); the loss is then divided by ``m`` so its scale does not
    depend on the radius unit. Returns the mean loss and the fraction of used pairs the student orders correctly.
    """
    ds = d_student[:, :, None] - d_student[:, None, :] if gaps is None else gaps
    dt = d_teacher[:, :, :, None] - d_teacher[:, :, None, :]  # (T, B, K, K)
    signs = torch.sign(dt)
    unanimous = (signs == signs[:1]).all(0) & (signs[0] != 0)
    scale = d_teacher.flatten(1).std(dim=1).clamp_min(1e-8)[:, None, None, None]
    gap = (dt / scale).mean(0).abs()
    upper = torch.triu(torch.ones_like(ds, dtype=torch.bool), diagonal=1)
    use = upper & unanimous & (gap > min_gap)
    y = signs[0]
    if not use.any():
        return d_student.sum() * 0.0, torch.tensor(float("nan"))
    loss = F.relu(margin - y * ds)[use]
    if gaps is not None:
        loss = loss / margin
    agree = ((y * ds) > 0)[use].float()
    return loss.mean(), agree.mean()


def pair_terms(cfg: TrainConfig, emb: torch.Tensor, norms: torch.Tensor, distances: torch.Tensor,
                consensus: Any, b: int, k: int, logs: dict[str, torch.Tensor],
                hard: tuple[torch.Tensor, torch.Tensor] | None = None,
                within_columns: list[int] | None = None) -> torch.Tensor:
    """Loss of stage "pairs" (see :mod:`lipsim_metric.train.pair_objective`) for ``b`` references x ``k`` copies.

    ``hard``: ``(embeddings (2H, D), teacher distances (H, T))`` of ``H`` mined pairs (references then mined images),
    appended to the batch's pairs in the correlation and pooled-ranking terms. ``within_columns``: the teachers (columns
    of ``T``) of the within-group term of ``hard_within_weight`` (``None``: all).
    """
    from .pair_objective import correlation_loss, pooled_ranking_loss

    e = emb.view(b, k + 1, -1)
    d_student = cosine_distance(e[:, :1].expand(-1, k, -1).flatten(0, 1), e[:, 1:].flatten(0, 1)).view(b, k)
    score = (d_student + 1e-6).log()
    teacher = consensus.standardised(distances)  # (b, T, k)
    z = teacher.mean(dim=1)  # the consensus, (b, k): consensus(distances) without standardising twice
    loss = d_student.new_zeros(())
    if hard is not None:
        e_h, dist_h = hard
        h = dist_h.shape[0]
        d_h = cosine_distance(e_h[:h], e_h[h:])
        t_h = consensus.standardised(dist_h.to(e_h)[:, :, None])[:, :, 0]  # (H, T)
        score_h = (d_h + 1e-6).log()
        logs["hard_score"], logs["hard_z"] = score_h.detach().mean(), t_h.mean(1).mean()
        logs["hard_score_rank"] = (score_h.detach()[:, None] > score.detach().flatten()[None]).float().mean()
        logs["hard_z_rank"] = (t_h.mean(1)[:, None] > z.flatten()[None]).float().mean()
        if cfg.hard_within_weight > 0:  # groups (noisy crop, denoiser output): lipsim_metric.train.denoiser_adversary
            from .denoiser_adversary import within_group_ranking

            t_w = t_h if within_columns is None else t_h[:, within_columns]
            within, agree_w = within_group_ranking(score_h, t_w, cfg.rank_temperature)
            loss = loss + cfg.hard_within_weight * within
            logs["within"], logs["within_agreement"] = within.detach(), agree_w
        teacher = torch.cat([teacher.transpose(0, 1).reshape(teacher.shape[1], -1), t_h.t()], dim=1)  # (T, P)
        score = torch.cat([score.flatten(), score_h])
        z = torch.cat([z.flatten(), t_h.mean(1)])
    if cfg.corr_weight > 0:
        corr = correlation_loss(score, z)
        loss = loss + cfg.corr_weight * corr
        logs["corr"] = 1.0 - corr.detach()
    if cfg.pool_rank_weight > 0:
        rank, agree = pooled_ranking_loss(score, z, teacher, cfg.rank_temperature, cfg.min_teacher_gap)
        loss = loss + cfg.pool_rank_weight * rank
        logs["rank"], logs["pooled_agreement"] = rank.detach(), agree
    if cfg.radius_weight > 0:
        ek = e[:, 1:]
        gaps = signed_radius(e[:, :1, None], norms.view(b, k + 1)[:, :1, None], ek[:, :, None], ek[:, None, :],
                             cfg.projection, cfg.constant)
        hinge, agree2 = ranking_hinge(d_student, distances.transpose(0, 1), cfg.radius_margin, 0.0, gaps)
        loss = loss + cfg.radius_weight * hinge
        logs["hinge"], logs["pair_agreement"] = hinge.detach(), agree2
    return loss
