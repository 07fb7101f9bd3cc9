"""Adversarial attacks on perceptual metrics: on 2AFC judgements and on distances, in l2 and linf, inside [0, 1].

Used to measure the *empirical* robustness of LipSim and of non-robust baselines (LPIPS, DISTS, SSIM, ...), and to
check LipSim's *certified* radii: no attack may succeed inside a certificate (:func:`check_certificates`).

What is attacked:

* **2AFC judgements** (:func:`attack_2afc`). A triplet ``(ref, x0, x1)`` is judged by any distance ``d`` as a
  two-class problem with logits ``(-d(ref, x0), -d(ref, x1))``: class 1 means "``x1`` is closer". The attack perturbs
  the **reference** only (the candidates are fixed), as in LipSim's Theorem 3 and robust 2AFC evaluation (Ghazanfari
  et al., ICLR 2024, Sec. 5), and tries to change the judgement away from ``target`` (the metric's own clean
  judgement by default, or a label such as the teachers' vote).
* **Distances** (:func:`attack_distance`): maximise ``d(x + delta, y)`` (e.g. ``y = x``: how far can an invisible
  perturbation push an image away from itself -- the paper's distribution of ``d(x, x + delta)``) or minimise it
  (make two different images look identical).

Losses for 2AFC. ``"ce"``: cross-entropy of the logits above (APGD-CE). ``"margin"``: ``d(ref, x_target) -
d(ref, x_other)``, the negated signed margin (the 2-class stand-in for APGD-DLR: DLR divides by
``z_1 - z_3`` and needs at least three classes). With two classes ``CE = softplus(-margin)`` is a strictly
increasing function of the margin loss, so both have the same maximisers, the same gradient directions and the same
step-size decisions; APGD-CE and APGD-margin differ only by floating point (CE saturates for very large margins, the
margin loss does not). ``method="ensemble"`` runs APGD-CE, APGD-margin and then PGD with ``restarts`` random starts
on whatever is still unbroken: the configuration used for soundness checks.

The optimisers (APGD, PGD, their ensemble) are in :mod:`lipsim_metric.evaluation.perturbation` (why they are
written here rather than taken from ``torchattacks`` is said there); every name of that module is also importable
from this one.

Example:
    >>> import torch
    >>> from lipsim_metric.evaluation.baselines import build_metric
    >>> mse = build_metric("mse")
    >>> g = torch.Generator().manual_seed(0)
    >>> ref = torch.rand(2, 3, 32, 32, generator=g)
    >>> x0, x1 = (ref + 0.1).clamp(0, 1), (ref - 0.2).clamp(0, 1)
    >>> adv = attack_2afc(mse, ref, x0, x1, eps=1.0, norm="l2", steps=10)
    >>> bool(((adv - ref).flatten(1).norm(dim=1) <= 1.0 + 1e-5).all()), bool((adv >= 0).all() and (adv <= 1).all())
    (True, True)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..certificates import cosine_distance
from ..metric import LipSim
from .perturbation import (  # noqa: F401  (every name of the module before the split stays importable here)
    _L2_SHRINK,
    _RANGE_TOLERANCE,
    _RUNS,
    NORMS,
    OPTIMIZERS,
    Norm,
    Objective,
    PerturbationResult,
    _apgd_run,
    _ascent_direction,
    _check_images,
    _check_norm,
    _check_steps,
    _eps_tensor,
    _live_value_and_grad,
    _pgd_run,
    _project,
    _random_start,
    _value_and_grad,
    _view,
    perturb_to_maximize,
    perturbation_norm,
)

__all__ = [
    "Norm",
    "DistanceFn",
    "feature_split",
    "Objective",
    "NORMS",
    "TWO_AFC_METHODS",
    "OPTIMIZERS",
    "PerturbationResult",
    "TwoAFCModel",
    "perturbation_norm",
    "perturb_to_maximize",
    "signed_margin",
    "attack_2afc",
    "attack_distance",
    "check_certificates",
]

#: A distance ``(a, b) -> (N,)`` on image batches in [0, 1], differentiable in ``a``.
DistanceFn = Callable[[Tensor, Tensor], Tensor]

TWO_AFC_METHODS: tuple[str, ...] = ("apgd-ce", "apgd-margin", "pgd", "ensemble")


# ----------------------------------------------------------------------------------------------------------------
# 2AFC attacks
# ----------------------------------------------------------------------------------------------------------------


def _distance_to(metric_fn: DistanceFn, fixed: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
    """``(x_moving, rows) -> d(x_moving, fixed[rows])``; for LipSim the fixed side is embedded once."""
    if isinstance(metric_fn, LipSim):
        with torch.no_grad():
            e_fixed = cast(Tensor, metric_fn.embed(fixed))

        def lipsim_distance(x: Tensor, rows: Tensor) -> Tensor:
            return cosine_distance(cast(Tensor, metric_fn.embed(x)), e_fixed[rows])

        return lipsim_distance
    return lambda x, rows: metric_fn(x, fixed[rows])


def feature_split(metric_fn: DistanceFn) -> tuple[Callable[[Tensor], Any], Callable[[Any, Any], Tensor]] | None:
    """``(features, distance_from_features)`` of a metric that splits that way (LPIPS, DISTS), else None.

    Attacks and the retrieval experiment use it to compute fixed images' features once.
    """
    features = getattr(metric_fn, "features", None)
    from_features = getattr(metric_fn, "distance_from_features", None)
    if isinstance(metric_fn, LipSim) or not (callable(features) and callable(from_features)):
        return None
    return features, from_features


def _distances_to_pair(metric_fn: DistanceFn, x0: Tensor, x1: Tensor) -> Callable[[Tensor, Tensor],
                                                                                    tuple[Tensor, Tensor]]:
    """``(ref, rows) -> (d(ref, x0[rows]), d(ref, x1[rows]))`` in float32, with one metric call per evaluation.

    LipSim embeds the fixed candidates once and the reference once per call; so do metrics that split into
    ``features(x)`` and ``distance_from_features(fa, fb)`` (LPIPS, DISTS); other metrics get one batch of ``2n`` pairs
    (same work as two calls, fewer launches).
    """
    split = feature_split(metric_fn)
    if split is not None:
        features, from_features = split
        _check_images(x0, "x0")
        _check_images(x1, "x1")
        with torch.no_grad():
            f0, f1 = features(x0), features(x1)

        def cached_pair(x: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
            _check_images(x, "ref")
            fx = features(x)
            return (from_features(fx, [f[rows] for f in f0]).float(),
                    from_features(fx, [f[rows] for f in f1]).float())

        return cached_pair
    if isinstance(metric_fn, LipSim):
        with torch.no_grad():
            e0, e1 = cast(Tensor, metric_fn.embed(x0)), cast(Tensor, metric_fn.embed(x1))

        def lipsim_pair(x: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
            e = cast(Tensor, metric_fn.embed(x))
            return cosine_distance(e, e0[rows]).float(), cosine_distance(e, e1[rows]).float()

        return lipsim_pair

    def pair(x: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
        d = metric_fn(torch.cat([x, x]), torch.cat([x0[rows], x1[rows]])).float()
        return d[: len(x)], d[len(x) :]

    return pair


def signed_margin(d0: Tensor, d1: Tensor, target: Tensor) -> Tensor:
    """2AFC margin in favour of ``target``: ``d0 - d1`` where ``target == 1`` (x1 closer), else ``d1 - d0``.

    Positive means the judgement agrees with ``target`` (with ``d0 == d1`` the judgement is 0, ``x0``).
    """
    return torch.where(target == 1, d0 - d1, d1 - d0)


def _judgement(d0: Tensor, d1: Tensor) -> Tensor:
    return (d1 < d0).long()  # same rule as LipSim.certify_2afc


class TwoAFCModel(nn.Module):
    """A 2AFC judgement as a two-class classifier of the reference, for classification-attack libraries.

    ``model(ref)`` returns logits ``(-d(ref, x0), -d(ref, x1))`` (class 1: ``x1`` closer) for fixed candidates.

    Args:
        metric_fn: any distance ``(a, b) -> (N,)``.
        x0, x1: the fixed candidates ``(N, C, H, W)``; the reference batch given to ``forward`` must match them.

    Example:
        >>> import torch
        >>> from lipsim_metric.evaluation.baselines import build_metric
        >>> x0, x1 = torch.zeros(1, 3, 8, 8), torch.ones(1, 3, 8, 8)
        >>> TwoAFCModel(build_metric("mse"), x0, x1)(torch.full((1, 3, 8, 8), 0.9)).argmax(1).item()
        1
    """

    def __init__(self, metric_fn: DistanceFn, x0: Tensor, x1: Tensor) -> None:
        super().__init__()
        if x0.shape != x1.shape:
            raise ValueError(f"x0 and x1 must have the same shape, got {tuple(x0.shape)} and {tuple(x1.shape)}")
        self.metric_fn = metric_fn
        self.register_buffer("x0", x0.detach())
        self.register_buffer("x1", x1.detach())
        # torchattacks reads the device from the first parameter; a zero-size one carries it.
        self._device_anchor = nn.Parameter(torch.zeros(0, device=x0.device), requires_grad=False)

    def forward(self, ref: Tensor) -> Tensor:
        """Logits ``(N, 2)`` for references ``(N, C, H, W)``."""
        x0, x1 = cast(Tensor, self.x0), cast(Tensor, self.x1)
        if ref.shape[0] != x0.shape[0]:
            raise ValueError(f"ref has batch size {ref.shape[0]}, the candidates {x0.shape[0]}")
        return torch.stack([-self.metric_fn(ref, x0), -self.metric_fn(ref, x1)], dim=1)


def attack_2afc(
    metric_fn: DistanceFn,
    ref: Tensor,
    x0: Tensor,
    x1: Tensor,
    eps: float | Sequence[float] | Tensor,
    norm: str = "l2",
    method: str = "apgd-ce",
    steps: int = 100,
    restarts: int = 1,
    seed: int = 0,
    target: Tensor | None = None,
) -> Tensor:
    """Perturb the references to change 2AFC judgements of ``metric_fn``.

    Distances are evaluated as ``metric_fn(reference, candidate)``. A triplet counts as broken when the judgement
    ``d(ref', x1) < d(ref', x0)`` differs from ``target``; broken triplets are not attacked by later restarts.

    Args:
        metric_fn: distance ``(a, b) -> (N,)``, differentiable in ``a`` (LipSim, a teacher, a pixel metric).
        ref, x0, x1: triplets ``(N, C, H, W)`` in [0, 1].
        eps: budget on ``||ref' - ref||`` (scalar or per sample), [0, 1] pixel units.
        norm: ``"l2"`` or ``"linf"``.
        method: ``"apgd-ce"``, ``"apgd-margin"``, ``"pgd"`` (margin loss) or ``"ensemble"`` (APGD-CE, APGD-margin,
            then PGD with ``restarts`` random starts), see the module docstring.
        steps: iterations per run.
        restarts: random restarts (for ``"ensemble"``: of the PGD stage).
        seed: seed of the random starts.
        target: the judgement to defend, ``(N,)`` in {0, 1} (1: ``x1`` closer); default: ``metric_fn``'s own clean
            judgement. Triplets already judged differently from ``target`` are returned unchanged.

    Returns:
        The perturbed references ``(N, C, H, W)``: per triplet the point with the smallest margin for ``target``
        found (unchanged if no run improved on the clean reference).

    Raises:
        ValueError: shape mismatch, unknown method/norm, bad eps, or inputs outside [0, 1].
    """
    if method not in TWO_AFC_METHODS:
        raise ValueError(f"method must be one of {TWO_AFC_METHODS}, got {method!r}")
    _check_norm(norm)
    _check_steps(steps, restarts)
    ref, x0, x1 = (_check_images(t, name).detach() for t, name in ((ref, "ref"), (x0, "x0"), (x1, "x1")))
    if not ref.shape[0] == x0.shape[0] == x1.shape[0]:
        raise ValueError(f"ref, x0, x1 must have the same batch size, got {ref.shape[0]}, {x0.shape[0]}, "
                         f"{x1.shape[0]}")
    n = ref.shape[0]
    eps_t = _eps_tensor(eps, n, ref.device)
    distances = _distances_to_pair(metric_fn, x0, x1)
    rows_all = torch.arange(n, device=ref.device)
    with torch.no_grad():
        d0, d1 = distances(ref, rows_all)
    if target is None:
        target_t = _judgement(d0, d1)
    else:
        target_t = torch.as_tensor(target, device=ref.device).long().reshape(-1)
        if target_t.numel() != n or bool(((target_t != 0) & (target_t != 1)).any()):
            raise ValueError(f"target must hold {n} values in {{0, 1}} (1: x1 closer), got {target_t.tolist()}")

    def margin_of(x: Tensor, rows: Tensor) -> Tensor:
        return signed_margin(*distances(x, rows), target_t[rows])

    def margin_loss(x: Tensor, rows: Tensor) -> Tensor:
        return -margin_of(x, rows)

    def ce_loss(x: Tensor, rows: Tensor) -> Tensor:
        d0_, d1_ = distances(x, rows)
        logits = torch.stack([-d0_, -d1_], dim=1)
        return F.cross_entropy(logits, target_t[rows], reduction="none")

    plan: Sequence[tuple[str, Objective, int]] = {
        "apgd-ce": [("apgd", ce_loss, restarts)],
        "apgd-margin": [("apgd", margin_loss, restarts)],
        "pgd": [("pgd", margin_loss, restarts)],
        "ensemble": [("apgd", ce_loss, 1), ("apgd", margin_loss, 1), ("pgd", margin_loss, restarts)],
    }[method]
    # A triplet is finished once its judgement flips: cross-entropy above log 2 means the target's logit -d is
    # strictly below the other one (d strictly larger), and a negative margin means the same.
    stops: dict[Objective, float] = {ce_loss: math.log(2.0), margin_loss: 0.0}
    best_margin = signed_margin(d0, d1, target_t)
    broken = _judgement(d0, d1) != target_t
    best_x = ref.clone()
    generator = torch.Generator().manual_seed(int(seed))
    for kind, loss, runs in plan:
        for _ in range(runs):
            active = rows_all[~broken]
            if active.numel() == 0:
                return best_x
            x_run, _ = _RUNS[kind](loss, ref[active], active, eps_t[active], norm, int(steps), generator,
                                   stop_above=stops[loss])
            with torch.no_grad():
                e0, e1 = distances(x_run, active)
                m = signed_margin(e0, e1, target_t[active])
                better = m < best_margin[active]
                best_margin[active[better]] = m[better]
                best_x[active[better]] = x_run[better]
                now_broken = _judgement(e0, e1) != target_t[active]
                broken[active[now_broken]] = True
                best_x[active[now_broken]] = x_run[now_broken]
    return best_x


# ----------------------------------------------------------------------------------------------------------------
# Distance attacks
# ----------------------------------------------------------------------------------------------------------------


def attack_distance(
    metric_fn: DistanceFn,
    x: Tensor,
    y: Tensor,
    eps: float | Sequence[float] | Tensor,
    norm: str = "l2",
    maximize: bool = True,
    steps: int = 100,
    restarts: int = 1,
    seed: int = 0,
    method: str = "pgd",
) -> Tensor:
    """Perturb ``x`` to maximise (or minimise) ``d(x + delta, y)`` under ``||delta|| <= eps``.

    With ``y = x`` and ``maximize=True`` this measures how far an imperceptible perturbation can push an image away
    from itself; with ``maximize=False`` and ``y`` another image, how close it can be made to look.

    Args:
        metric_fn: distance ``(a, b) -> (N,)``, differentiable in ``a``.
        x: images to perturb ``(N, C, H, W)`` in [0, 1].
        y: fixed images, same batch size (a clone is taken, so ``y`` may be ``x``).
        eps: budget (scalar or per sample), [0, 1] pixel units.
        norm: ``"l2"`` or ``"linf"``.
        maximize: push the distance up (True) or down (False).
        steps: iterations per run.
        restarts: random restarts.
        seed: seed of the random starts.
        method: ``"pgd"``, ``"apgd"`` or ``"ensemble"`` (see :func:`perturb_to_maximize`).

    Returns:
        The perturbed ``x`` with the largest (smallest) distance found.

    Raises:
        ValueError: shape mismatch, unknown method/norm, bad eps, or inputs outside [0, 1].
    """
    x = _check_images(x, "x").detach()
    y = _check_images(y, "y").detach().clone()
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must have the same batch size, got {x.shape[0]} and {y.shape[0]}")
    dist = _distance_to(metric_fn, y)
    sign = 1.0 if maximize else -1.0
    return perturb_to_maximize(lambda z, rows: sign * dist(z, rows).float(), x, eps, norm, method, steps,
                               restarts, seed).adversarial


# ----------------------------------------------------------------------------------------------------------------
# Soundness of LipSim's certificates
# ----------------------------------------------------------------------------------------------------------------


def _check_budget(adversarial: Tensor, x: Tensor, eps: Tensor) -> None:
    size = perturbation_norm(adversarial, x, "l2")
    # Storing x + delta in float32 rounds every coordinate by up to 2^-24 (values <= 1): sqrt(dim) 2^-24 in l2.
    rounding = math.sqrt(x[0].numel()) * 2.0**-24
    if bool((size > eps * (1 + 1e-5) + rounding).any()):
        raise RuntimeError(f"internal error: an attack left its l2 ball (max excess {float((size - eps).max()):.3g})")


CERTIFICATE_CHECKS: tuple[str, ...] = ("2afc", "pair", "half")
"""The checks :func:`check_certificates` can run: the 2AFC judgement, the pair at distance 0, the pair at d/2."""


def _pair_check(metric: LipSim, x0: Tensor, x1: Tensor, distance: Tensor, threshold: Tensor, radius: Tensor,
                steps: int, restarts: int, seed: int, budget_factor: float) -> tuple[int, int, float]:
    """Minimise ``d(x0 + delta, x1)`` inside ``budget_factor * radius``; count crossings of ``threshold``."""
    idx = torch.nonzero((radius > 0) & (distance > threshold)).flatten()
    if idx.numel() == 0:
        return 0, 0, 0.0
    eps = budget_factor * radius[idx]
    adv = attack_distance(metric, x0[idx], x1[idx], eps, "l2", maximize=False, steps=steps, restarts=restarts,
                          seed=seed, method="ensemble")
    _check_budget(adv, x0[idx], eps)
    with torch.no_grad():
        d_adv = metric(adv, x1[idx])
    crossed = int((d_adv <= threshold[idx]).sum())
    used = float(((distance[idx] - d_adv) / (distance[idx] - threshold[idx])).max())
    return int(idx.numel()), crossed, used


def check_certificates(
    metric: LipSim,
    ref: Tensor,
    x0: Tensor,
    x1: Tensor,
    steps: int = 100,
    restarts: int = 2,
    seed: int = 0,
    budget_factor: float = 0.999,
    checks: Sequence[str] = CERTIFICATE_CHECKS,
) -> dict[str, Any]:
    """Attack every certified decision of ``metric`` inside its own certificate and count the successes.

    Protocol (``docs/robustness.md``):

    1. 2AFC: for each triplet with a positive radius ``r`` (:meth:`LipSim.certify_2afc`), run
       ``attack_2afc(method="ensemble")`` (APGD-CE, APGD-margin, PGD with ``restarts`` random starts) on the
       reference with the per-sample l2 budget ``budget_factor * r`` against the metric's own judgement; a changed
       judgement is a *flip*.
    2. Pair, threshold 0: for each pair with a positive radius from ``metric(x0, x1, return_radius=True)``, minimise
       ``d(x0 + delta, x1)`` (APGD then PGD restarts) inside ``budget_factor * r``; distance 0 is a *pair flip*.
    3. Pair, threshold ``d / 2``: the same with the radius LipSim certifies for ``d(x0, x1) > d / 2``
       (``threshold=`` of :meth:`LipSim.forward`); falling to ``d / 2`` is a flip. Unlike distance 0, which no
       gradient attack reaches even far outside the radius, this threshold is reachable, so the check can fail.

    With ``budget_factor < 1`` every flip count must be 0; with a factor well above 1 flips appear, which shows the
    protocol can detect a wrong certificate.

    Args:
        metric: the LipSim metric.
        ref, x0, x1: triplets ``(N, C, H, W)`` in [0, 1].
        steps: iterations per attack run.
        restarts: PGD random restarts.
        seed: seed of the random starts.
        budget_factor: budget as a fraction of each sample's own radius.
        checks: which of the three checks to run, a subset of ``("2afc", "pair", "half")`` (the skipped ones report
            0 certified and 0 flips); at scale the 2AFC check is the one that matters most and costs least per
            triplet after the pair-at-0 check, which no gradient attack comes near.

    Returns:
        A dict: ``tried`` (triplets), ``certified`` (with 2AFC radius > 0), ``flips``, ``max_margin_used`` (the
        largest share of a clean margin the attack removed; 1 = reached a tie), ``sum_margin_used`` (its sum over
        the certified triplets, for a mean over batches); ``pair_certified``, ``pair_flips``,
        ``max_distance_used`` (threshold 0; share of the clean distance removed); ``half_certified``,
        ``half_flips``, ``max_half_used`` (threshold d/2; share of ``d - d/2`` removed).

    Raises:
        TypeError: if ``metric`` is not a :class:`LipSim`.
        ValueError: if ``budget_factor <= 0`` or ``checks`` is empty or names an unknown check.
        RuntimeError: if an attack left its budget (an internal error).
    """
    if not isinstance(metric, LipSim):
        raise TypeError(f"check_certificates needs a LipSim metric (it checks its certificates), got "
                        f"{type(metric).__name__}")
    if budget_factor <= 0:
        raise ValueError(f"budget_factor must be > 0, got {budget_factor}")
    selected = set(checks)
    if not selected or not selected <= set(CERTIFICATE_CHECKS):
        raise ValueError(f"checks must be a non-empty subset of {CERTIFICATE_CHECKS}, got {tuple(checks)}")
    cert = metric.certify_2afc(ref, x0, x1)
    idx = torch.nonzero(cert.radius > 0).flatten() if "2afc" in selected else cert.radius.new_zeros(0).long()
    flips, margin_used, margin_used_sum = 0, 0.0, 0.0
    if idx.numel():
        eps = budget_factor * cert.radius[idx]
        adv = attack_2afc(metric, ref[idx], x0[idx], x1[idx], eps, "l2", "ensemble", steps, restarts, seed,
                          target=cert.prediction[idx])
        _check_budget(adv, ref[idx], eps)
        after = metric.certify_2afc(adv, x0[idx], x1[idx])
        flips = int((after.prediction != cert.prediction[idx]).sum())
        margin_after = signed_margin(after.d0, after.d1, cert.prediction[idx])
        used = 1.0 - margin_after / cert.margin[idx]
        margin_used, margin_used_sum = float(used.max()), float(used.sum())
    pair_certified = pair_flips = half_certified = half_flips = 0
    distance_used = half_used = 0.0
    if selected & {"pair", "half"}:
        with torch.no_grad():
            pair = metric(x0, x1, return_radius=True)
            half = 0.5 * pair.distance
        if "pair" in selected:
            pair_certified, pair_flips, distance_used = _pair_check(metric, x0, x1, pair.distance,
                                                                    torch.zeros_like(half), pair.radius, steps,
                                                                    restarts, seed, budget_factor)
        if "half" in selected:
            with torch.no_grad():
                half_radius = torch.cat([metric(x0[i : i + 1], x1[i : i + 1], return_radius=True,
                                                threshold=float(half[i])).radius for i in range(x0.shape[0])])
            half_certified, half_flips, half_used = _pair_check(metric, x0, x1, pair.distance, half, half_radius,
                                                                steps, restarts, seed, budget_factor)
    return {
        "tried": int(ref.shape[0]),
        "certified": int(idx.numel()),
        "flips": flips,
        "max_margin_used": margin_used,
        "sum_margin_used": margin_used_sum,
        "pair_certified": pair_certified,
        "pair_flips": pair_flips,
        "max_distance_used": distance_used,
        "half_certified": half_certified,
        "half_flips": half_flips,
        "max_half_used": half_used,
    }
