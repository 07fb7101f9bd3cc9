"""Perturbation optimisers: maximise a per-sample objective over ``x + delta`` in ``[0, 1]`` with ``||delta|| <= eps``.

:func:`perturb_to_maximize` is the one entry point; the attacks of :mod:`lipsim_metric.evaluation.attacks` (2AFC
judgements, distances, certificate checks) are objectives given to it. It needs only torch and the core package, so
the core's tests may use it without the training extra.

Optimisers (all keep ``x + delta`` in ``[0, 1]`` and ``||delta|| <= eps``, eps per sample allowed):

* **APGD** -- Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
  parameter-free attacks", ICML 2020, https://arxiv.org/abs/2003.01690 (Algorithm 1; reference code
  github.com/fra31/auto-attack): step size ``2 eps`` halved at checkpoints ``0.22, 0.06 ... x steps`` when the
  objective oscillates (fewer than 75 % increasing steps) or stalls, restart from the best point, momentum 0.75,
  random start on the eps-sphere.
* **PGD** -- Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018,
  https://arxiv.org/abs/1706.06083: fixed step ``2.5 eps / steps``, normalised gradient (l2) or its sign (linf),
  uniform random start; ``restarts`` independent starts.

Why written here rather than with ``torchattacks``: its APGD takes one scalar ``eps`` per batch (certificate checks
need one budget per sample), seeds the global torch RNG (``torch.random.manual_seed``), provides DLR only for three
or more classes, returns unsuccessful points unchanged instead of the strongest point found, and the package pins
``requests~=2.25.1``, which would downgrade the environment.
:class:`lipsim_metric.evaluation.attacks.TwoAFCModel` exposes the 2-class view as an ``nn.Module`` for use with such
libraries; ``tests/test_attacks.py`` compares the two APGD implementations when ``torchattacks`` is installed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, NamedTuple

import torch
from torch import Tensor

__all__ = ["Norm", "Objective", "NORMS", "OPTIMIZERS", "PerturbationResult", "perturbation_norm",
           "perturb_to_maximize"]

Norm = Literal["l2", "linf"]
#: ``objective(x_adv, rows) -> (n,)``: the value to maximise for the ``n`` perturbed inputs; ``rows`` are their
#: indices in the full batch (so an objective can look up per-sample data such as the fixed candidates).
Objective = Callable[[Tensor, Tensor], Tensor]

NORMS: tuple[str, ...] = ("l2", "linf")
OPTIMIZERS: tuple[str, ...] = ("apgd", "pgd", "ensemble")

# Relative slack kept inside the l2 ball so that float rounding of ``x + delta`` never leaves it.
_L2_SHRINK = 1.0 - 1e-6
_RANGE_TOLERANCE = 1e-4


class PerturbationResult(NamedTuple):
    """Output of :func:`perturb_to_maximize`.

    Attributes:
        adversarial: the best perturbed inputs found, same shape as the inputs, in ``[0, 1]``.
        value: the objective at ``adversarial``, shape ``(N,)``.
    """

    adversarial: Tensor
    value: Tensor



# ----------------------------------------------------------------------------------------------------------------
# Validation and geometry
# ----------------------------------------------------------------------------------------------------------------


def _check_norm(norm: str) -> None:
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


def _check_images(x: object, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (N, C, H, W) in [0, 1], got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a float tensor in [0, 1], got {x.dtype}; use x.float() / 255 for uint8")
    if x.ndim != 4 or x.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty batch (N, C, H, W), got shape {tuple(x.shape)}")
    values = x.detach()
    if not bool(torch.isfinite(values).all()):
        raise ValueError(f"{name} contains NaN or Inf values")
    lo, hi = float(values.min()), float(values.max())
    if lo < -_RANGE_TOLERANCE or hi > 1.0 + _RANGE_TOLERANCE:
        raise ValueError(f"{name} must be in [0, 1] (attacks keep inputs in the image box), got values in "
                         f"[{lo:.4g}, {hi:.4g}]; rescale with (x + 1) / 2 or x / 255")
    return x


def _check_steps(steps: int, restarts: int) -> None:
    if int(steps) < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if int(restarts) < 1:
        raise ValueError(f"restarts must be >= 1, got {restarts}")


def _eps_tensor(eps: float | Sequence[float] | Tensor, n: int, device: torch.device) -> Tensor:
    """Per-sample budgets ``(n,)`` in float32 from a scalar or a length-``n`` sequence/tensor."""
    e = torch.as_tensor(eps, dtype=torch.float32).detach().to(device).reshape(-1)
    if e.numel() == 1:
        e = e.expand(n).clone()
    if e.numel() != n:
        raise ValueError(f"eps must be a scalar or have one value per sample ({n}), got {e.numel()} values")
    if not bool(torch.isfinite(e).all()) or bool((e < 0).any()):
        raise ValueError(f"eps must be finite and >= 0, got min {float(e.min()):.4g}")
    return e


def _view(values: Tensor, like: Tensor) -> Tensor:
    return values.reshape(-1, *([1] * (like.ndim - 1)))


def perturbation_norm(adversarial: Tensor, x: Tensor, norm: str = "l2") -> Tensor:
    """Per-sample size of ``adversarial - x``: l2 norm or max-abs, shape ``(N,)``.

    Args:
        adversarial: perturbed batch.
        x: clean batch of the same shape.
        norm: ``"l2"`` or ``"linf"``.

    Returns:
        ``||adversarial - x||`` per sample.
    """
    _check_norm(norm)
    delta = (adversarial - x).flatten(1)
    return delta.norm(dim=1) if norm == "l2" else delta.abs().amax(dim=1)


def _project(x_adv: Tensor, x: Tensor, eps: Tensor, norm: str) -> Tensor:
    """Project onto the eps-ball around ``x``, then clip to [0, 1].

    Clipping after the ball projection keeps the budget: ``x`` is in [0, 1], so clipping moves every coordinate of
    ``delta`` towards 0 and can only shrink ``|delta_i|`` (hence both norms).
    """
    delta = x_adv - x
    ev = _view(eps, x)
    if norm == "l2":
        size = _view(delta.flatten(1).norm(dim=1), x).clamp_min(1e-12)
        delta = delta * torch.clamp(ev * _L2_SHRINK / size, max=1.0)
    else:
        delta = torch.maximum(torch.minimum(delta, ev), -ev)
    return (x + delta).clamp(0.0, 1.0)


def _random_start(x: Tensor, eps: Tensor, norm: str, generator: torch.Generator, on_sphere: bool) -> Tensor:
    """A random point of the eps-ball around ``x`` (on its boundary if ``on_sphere``), clipped to [0, 1].

    Noise is drawn on the CPU from ``generator`` (reproducible on every device, global RNG untouched).
    """
    shape = x.shape
    ev = _view(eps, x)
    if norm == "linf":
        noise = (2.0 * torch.rand(shape, generator=generator) - 1.0).to(x.device, x.dtype)
        if on_sphere:  # APGD reference code: scale so that the largest coordinate reaches eps
            noise = noise / _view(noise.flatten(1).abs().amax(dim=1), x).clamp_min(1e-12)
        delta = noise * ev
    else:
        noise = torch.randn(shape, generator=generator).to(x.device, x.dtype)
        noise = noise / _view(noise.flatten(1).norm(dim=1), x).clamp_min(1e-12)
        radius = torch.ones(shape[0]) if on_sphere else torch.rand(shape[0], generator=generator)
        delta = noise * ev * _view(radius.to(x.device, x.dtype), x)
    return _project(x + delta, x, eps, norm)


def _ascent_direction(grad: Tensor, norm: str) -> Tensor:
    if norm == "linf":
        return grad.sign()
    return grad / _view(grad.flatten(1).norm(dim=1), grad).clamp_min(1e-12)


def _value_and_grad(objective: Objective, x_adv: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
    x_adv = x_adv.detach().requires_grad_(True)
    with torch.enable_grad():
        value = objective(x_adv, rows)
        if value.shape != (x_adv.shape[0],):
            raise ValueError(f"the objective must return one value per sample, shape ({x_adv.shape[0]},), got "
                             f"{tuple(value.shape)}")
        (grad,) = torch.autograd.grad(value.sum(), x_adv)
    # A metric evaluated exactly at a non-differentiable point (e.g. a square root at 0) can give NaN gradients;
    # a zero direction there is harmless (the random start or the next step moves away from it).
    return value.detach().float(), torch.nan_to_num(grad.detach(), nan=0.0, posinf=0.0, neginf=0.0)


# ----------------------------------------------------------------------------------------------------------------
# Optimisers (one run each; maximise a per-sample objective)
# ----------------------------------------------------------------------------------------------------------------


def _live_value_and_grad(objective: Objective, x_adv: Tensor, rows: Tensor, best_value: Tensor,
                         stop_above: float | None) -> tuple[Tensor, Tensor] | None:
    """:func:`_value_and_grad` on the samples not yet past ``stop_above``; the others get their best value and a zero
    gradient (they are finished: their best point already achieves the goal, and nothing is computed for them).
    None when every sample is finished."""
    if stop_above is None:
        return _value_and_grad(objective, x_adv, rows)
    live = ~(best_value > stop_above)
    n_live = int(live.sum())
    if n_live == 0:
        return None
    if n_live == live.numel():
        return _value_and_grad(objective, x_adv, rows)
    value, grad = best_value.clone(), torch.zeros_like(x_adv)
    value[live], grad[live] = _value_and_grad(objective, x_adv[live], rows[live])
    return value, grad


def _apgd_run(objective: Objective, x: Tensor, rows: Tensor, eps: Tensor, norm: str, steps: int,
              generator: torch.Generator, rho: float = 0.75,
              stop_above: float | None = None) -> tuple[Tensor, Tensor]:
    """One APGD run (Croce & Hein 2020, Alg. 1); returns the best point and value per sample.

    ``stop_above``: a sample whose best value exceeds it is finished (e.g. its judgement already flipped) and is
    no longer evaluated; the other samples follow the trajectory they would have followed without it (up to float
    rounding of batched kernels).
    """
    n = x.shape[0]
    x_adv = _random_start(x, eps, norm, generator, on_sphere=True)
    value, grad = _value_and_grad(objective, x_adv, rows)
    best_value, x_best, grad_best = value.clone(), x_adv.clone(), grad.clone()
    step = 2.0 * _view(eps, x).clone()
    x_prev = x_adv.clone()
    # Checkpoint schedule of the reference code: first after 22 % of the steps, then periods shrinking by 3 % of
    # the steps down to 6 %.
    period = max(int(0.22 * steps), 1)
    min_period, shrink = max(int(0.06 * steps), 1), max(int(0.03 * steps), 1)
    since_check = 0
    increases = torch.zeros(n, device=x.device)
    best_at_check = best_value.clone()
    reduced_at_check = torch.ones(n, dtype=torch.bool, device=x.device)
    last_value = value
    for i in range(steps):
        with torch.no_grad():
            z = _project(x_adv + step * _ascent_direction(grad, norm), x, eps, norm)
            momentum = 1.0 if i == 0 else 0.75
            x_new = _project(x_adv + momentum * (z - x_adv) + (1.0 - momentum) * (x_adv - x_prev), x, eps, norm)
            x_prev, x_adv = x_adv, x_new
        evaluated = _live_value_and_grad(objective, x_adv, rows, best_value, stop_above)
        if evaluated is None:
            break
        value, grad = evaluated
        with torch.no_grad():
            increases += (value > last_value).float()
            last_value = value
            improved = value > best_value
            best_value = torch.where(improved, value, best_value)
            x_best[improved] = x_adv[improved]
            grad_best[improved] = grad[improved]
            since_check += 1
            if since_check == period:
                oscillating = increases <= period * rho  # condition 1: too few increasing steps
                stalled = ~reduced_at_check & (best_at_check >= best_value)  # condition 2: no progress, no cut
                reduce = oscillating | stalled
                reduced_at_check, best_at_check = reduce, best_value.clone()
                if bool(reduce.any()):
                    step[reduce] = step[reduce] / 2.0
                    x_adv[reduce] = x_best[reduce]
                    x_prev[reduce] = x_best[reduce]  # no momentum across a restart from the best point
                    grad[reduce] = grad_best[reduce]
                    last_value = torch.where(reduce, best_value, last_value)
                increases.zero_()
                since_check = 0
                period = max(period - shrink, min_period)
    return x_best, best_value


def _pgd_run(objective: Objective, x: Tensor, rows: Tensor, eps: Tensor, norm: str, steps: int,
             generator: torch.Generator, stop_above: float | None = None) -> tuple[Tensor, Tensor]:
    """One PGD run from a uniform random start (Madry et al. 2018); returns the best point and value per sample.

    ``stop_above``: as in :func:`_apgd_run`.
    """
    x_adv = _random_start(x, eps, norm, generator, on_sphere=False)
    step = _view(2.5 * eps / steps, x)
    best_value = torch.full((x.shape[0],), -float("inf"), device=x.device)
    x_best = x_adv.clone()
    for i in range(steps + 1):
        evaluated = _live_value_and_grad(objective, x_adv, rows, best_value, stop_above)
        if evaluated is None:
            break
        value, grad = evaluated
        with torch.no_grad():
            improved = value > best_value
            best_value = torch.where(improved, value, best_value)
            x_best[improved] = x_adv[improved]
            if i < steps:
                x_adv = _project(x_adv + step * _ascent_direction(grad, norm), x, eps, norm)
    return x_best, best_value


_RUNS: dict[str, Callable[..., tuple[Tensor, Tensor]]] = {"apgd": _apgd_run, "pgd": _pgd_run}


def perturb_to_maximize(
    objective: Objective,
    x: Tensor,
    eps: float | Sequence[float] | Tensor,
    norm: str = "l2",
    method: str = "apgd",
    steps: int = 100,
    restarts: int = 1,
    seed: int = 0,
    done: Callable[[Tensor], Tensor] | None = None,
    stop_above: float | None = None,
) -> PerturbationResult:
    """Maximise a per-sample objective over ``x + delta`` with ``||delta|| <= eps`` and ``x + delta`` in [0, 1].

    The generic engine behind :func:`attack_2afc`, :func:`attack_distance` and the retrieval attack.

    Args:
        objective: ``objective(x_adv, rows) -> (n,)``; samples must be independent (no batch statistics).
        x: clean inputs ``(N, C, H, W)`` in [0, 1].
        eps: budget, a scalar or one per sample (``(N,)``), in the units of ``x`` (``[0, 1]`` pixel values).
        norm: ``"l2"`` or ``"linf"``.
        method: ``"apgd"``, ``"pgd"`` or ``"ensemble"`` (one APGD run, then ``restarts`` PGD runs).
        steps: iterations per run.
        restarts: runs from independent random starts (for ``"ensemble"``: the PGD runs); the best point is kept.
        seed: seed of the random starts (a private generator; the global RNG is not touched).
        done: optional ``done(best_values) -> bool mask``; samples marked done are not attacked by later runs.
        stop_above: a sample whose objective exceeds this value is finished: it is no longer evaluated in the current
            run, nor attacked by later runs.

    Returns:
        A :class:`PerturbationResult` (best points and their objective values).

    Raises:
        ValueError: unknown ``norm``/``method``, bad ``eps``, ``steps`` or ``restarts``, or inputs outside [0, 1].
    """
    _check_norm(norm)
    if method not in OPTIMIZERS:
        raise ValueError(f"method must be one of {OPTIMIZERS}, got {method!r}")
    _check_steps(steps, restarts)
    x = _check_images(x, "x").detach()
    n = x.shape[0]
    eps_t = _eps_tensor(eps, n, x.device)
    runs = ["apgd"] + ["pgd"] * restarts if method == "ensemble" else [method] * restarts
    generator = torch.Generator().manual_seed(int(seed))
    rows_all = torch.arange(n, device=x.device)
    best_value = torch.full((n,), -float("inf"), device=x.device)
    x_best = x.clone()
    for kind in runs:
        finished = torch.zeros(n, dtype=torch.bool, device=x.device) if done is None else done(best_value)
        if stop_above is not None:
            finished |= best_value > stop_above
        active = rows_all[~finished]
        if active.numel() == 0:
            break
        x_run, v_run = _RUNS[kind](objective, x[active], active, eps_t[active], norm, int(steps), generator,
                                   stop_above=stop_above)
        better = v_run > best_value[active]
        best_value[active[better]] = v_run[better]
        x_best[active[better]] = x_run[better]
    return PerturbationResult(x_best, best_value)
