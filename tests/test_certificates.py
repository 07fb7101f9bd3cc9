"""Certificates: the maths (norm inversion, preprocessing norms, float error) and soundness under attack."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lipsim_metric import LipSim
from lipsim_metric.certificates import FLOAT_TOLERANCE, invert_norm_bound
from lipsim_metric.preprocess import input_operator_norm, resize_operator_norm


@pytest.fixture(scope="module")
def metric(small_weights: str) -> LipSim:
    return LipSim(weights=small_weights)


def h(eps: torch.Tensor, r: torch.Tensor, c: float = 1.0) -> torch.Tensor:
    return eps / torch.clamp(r - eps, min=c)


def test_invert_norm_bound_is_the_inverse() -> None:
    rho = torch.tensor([0.0, 0.01, 0.1, 0.5, 1.0, 3.0, 0.2, 0.2])
    r = torch.tensor([1.0, 1.0, 2.0, 5.0, 1.5, 10.0, 1.1, 30.0])
    eps = invert_norm_bound(rho, r)
    assert torch.allclose(h(eps, r), rho, atol=1e-6)  # exactly the largest eps with h(eps) <= rho
    assert torch.all(eps >= rho - 1e-7)  # never worse than the global 1-Lipschitz bound
    # "normalize" (paper protocol): no certificate below norm 1, and never beyond r - 1
    e2 = invert_norm_bound(rho, torch.tensor([0.5, 1.0, 2.0, 5.0, 1.5, 10.0, 1.1, 30.0]), "normalize")
    assert e2[0] == 0 and e2[1] == 0 and torch.all(e2[2:] <= torch.tensor([1.0, 4.0, 0.5, 9.0, 0.1, 29.0]) + 1e-6)


@pytest.mark.parametrize("hw", [(100, 37), (512, 300), (224, 97), (31, 31)])
def test_resize_norm_bounds_the_real_operator(hw: tuple[int, int]) -> None:
    h_, w_ = hw
    bound = resize_operator_norm(h_, w_, 224)
    op = lambda z: F.interpolate(z, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)  # noqa
    v = torch.randn(1, 1, h_, w_, dtype=torch.float64)
    for _ in range(200):  # power iteration on R^T R
        _, vjp = torch.func.vjp(op, v)
        (v,) = vjp(op(v))
        v = v / v.norm()
    sigma = op(v).norm().item()
    assert sigma <= bound
    assert sigma >= 0.98 * bound  # and the bound is not loose
    assert input_operator_norm(h_, w_, 1, 224, "[-1,1]") == pytest.approx(0.5 * 3**0.5 * bound)
    assert resize_operator_norm(224, 224, 224) == 1.0


def test_float32_distance_error_is_within_tolerance(metric: LipSim, small_weights: str) -> None:
    x, y = torch.rand(4, 3, 64, 64), torch.rand(4, 3, 64, 64)
    double = LipSim(weights=small_weights).double()
    err = (metric(x, y).double() - double(x.double(), y.double())).abs().max().item()
    assert err < FLOAT_TOLERANCE / 10


def _triplets(n: int, seed: int, size: int = 64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ref = torch.rand(n, 3, size, size, generator=g)
    # candidates: the reference plus noise of different strengths, so the judgements have varied margins
    x0 = (ref + 0.15 * torch.randn(n, 3, size, size, generator=g)).clamp(0, 1)
    x1 = (ref + 0.25 * torch.randn(n, 3, size, size, generator=g)).clamp(0, 1)
    return ref, x0, x1


def l2_pgd_on_reference(metric: LipSim, ref, x0, x1, eps: torch.Tensor, steps: int = 25, restarts: int = 2):
    """Strongest simple attack we can afford: l2 PGD with random starts pushing the 2AFC margin towards a flip.

    Returns the best (most flipped) signed margin found, sign(d0 - d1) * (d0 - d1) at the perturbed reference,
    and the perturbed references. Inputs stay in [0, 1] (projection then clipping keeps ||delta|| <= eps).
    """
    with torch.no_grad():
        sign = torch.sign(metric(ref, x0) - metric(ref, x1))
    best = torch.full_like(eps, float("inf"))
    best_x = ref.clone()
    shape = (-1, 1, 1, 1)
    for restart in range(restarts):
        g = torch.Generator().manual_seed(restart)
        delta = torch.randn(ref.shape, generator=g)
        start = torch.rand(len(eps), 1, 1, 1, generator=g)
        delta = delta / delta.flatten(1).norm(dim=1).view(shape) * eps.view(shape) * start
        for _ in range(steps):
            delta.requires_grad_(True)
            adv = (ref + delta).clamp(0, 1)
            signed = sign * (metric(adv, x0) - metric(adv, x1))
            grad, = torch.autograd.grad(signed.sum(), delta)
            with torch.no_grad():
                lr = 2.5 * eps / steps
                delta = delta - lr.view(shape) * grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(shape)
                delta = (ref + delta).clamp(0, 1) - ref
                norm = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
                delta = delta * torch.clamp(eps / norm, max=1.0).view(shape)
        with torch.no_grad():
            adv = (ref + delta).clamp(0, 1)
            assert torch.all((adv - ref).flatten(1).norm(dim=1) <= eps * (1 + 1e-5))
            signed = sign * (metric(adv, x0) - metric(adv, x1))
            better = signed < best
            best = torch.where(better, signed, best)
            best_x[better] = adv[better]
    return best, best_x


def test_no_attack_flips_a_certified_2afc_decision(metric: LipSim) -> None:
    ref, x0, x1 = _triplets(6, seed=1)
    cert = metric.certify_2afc(ref, x0, x1)
    assert torch.all(cert.radius > 0)
    start = (cert.d0 - cert.d1).abs()
    best, _ = l2_pgd_on_reference(metric, ref, x0, x1, 0.999 * cert.radius)
    assert torch.all(best > 0), "a certified 2AFC decision was flipped inside its radius"
    # the attack is real: it spends a visible part of what the certificate allows
    assert torch.all(best < start - 0.02 * start)


def test_attack_beyond_the_radius_makes_progress(metric: LipSim) -> None:
    ref, x0, x1 = _triplets(4, seed=2)
    cert = metric.certify_2afc(ref, x0, x1)
    best_small, _ = l2_pgd_on_reference(metric, ref, x0, x1, 0.5 * cert.radius, steps=15, restarts=1)
    best_large, _ = l2_pgd_on_reference(metric, ref, x0, x1, 20 * cert.radius, steps=15, restarts=1)
    assert torch.all(best_large < best_small)


def test_no_attack_moves_a_distance_across_its_certified_threshold(metric: LipSim) -> None:
    ref, x0, _ = _triplets(4, seed=3)
    res = metric(x0, ref, return_radius=True)
    eps = 0.999 * res.radius  # threshold 0: the distance cannot reach zero
    delta = torch.zeros_like(x0, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=0.01)
    for _ in range(30):  # minimise d(x0 + delta, ref) within the ball
        opt.zero_grad()
        metric((x0 + delta).clamp(0, 1), ref).sum().backward()
        opt.step()
        with torch.no_grad():
            n = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
            delta.mul_(torch.clamp(eps / n, max=1.0).view(-1, 1, 1, 1))
    with torch.no_grad():
        d_adv = metric((x0 + delta).clamp(0, 1), ref)
    assert torch.all(d_adv > 0)
    # and the distance moved by no more than the Lipschitz bound allows (global bound: eps in input units)
    assert torch.all((res.distance - d_adv) <= eps * metric.input_norm(x0) + 1e-5)


def test_radius_scales_with_input_units(metric: LipSim) -> None:
    ref, x0, x1 = _triplets(2, seed=4, size=64)
    r64 = metric.certify_2afc(ref, x0, x1).radius
    up = lambda t: F.interpolate(t, size=(128, 128), mode="nearest")  # noqa: E731
    r128 = metric.certify_2afc(up(ref), up(x0), up(x1))
    # a larger input spreads a perturbation over more pixels: the radius in input units grows
    assert torch.all(r128.radius > r64)
