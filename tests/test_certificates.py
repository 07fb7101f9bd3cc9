"""Certificates: the maths (norm inversion, preprocessing norms, float error) and soundness under attack."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import SMALL_BACKBONE
from lipsim_metric import LipSim, create_backbone
from lipsim_metric.certificates import FLOAT_TOLERANCE, invert_norm_bound
from lipsim_metric.evaluation.attacks import attack_2afc, signed_margin
from lipsim_metric.preprocess import input_operator_norm, resize_operator_norm
from lipsim_metric.pretrained import save_weights
from lipsim_metric.testing import assert_one_lipschitz
from soundness_fixtures import tight_lipsim, triplets


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
    # "normalize" (paper protocol): the exact inverse of eps / (r - eps) where r >= 1, nothing below norm 1
    r2 = torch.tensor([0.5, 1.0, 2.0, 5.0, 1.5, 10.0, 1.1, 30.0])
    e2 = invert_norm_bound(rho, r2, "normalize")
    assert e2[0] == 0 and torch.all(e2 < r2)
    assert torch.allclose((e2 / (r2 - e2))[1:], rho[1:], atol=1e-6)


def test_normalize_radius_is_not_capped_at_r_minus_one() -> None:
    # issue 14, defect 6: eps / (r - eps) bounds the move of f / ||f|| for every eps < r, so the radius is
    # r rho / (1 + rho); the old cap min(., r - 1) threw most of it away for embeddings of norm just above 1
    rho, r = torch.tensor([1.0, 3.0]), torch.tensor([1.5, 1.2])
    eps = invert_norm_bound(rho, r, "normalize")
    assert torch.allclose(eps, r * rho / (1 + rho))
    assert torch.all(eps > r - 1)  # beyond the old cap


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
    """l2 PGD with random restarts on the reference (the shared implementation, ``lipsim_metric.evaluation.attacks``).

    Returns the smallest signed margin found for the clean judgement (negative: flipped) and the perturbed references,
    which stay in [0, 1] and inside ``eps``.
    """
    clean = metric.certify_2afc(ref, x0, x1)
    adv = attack_2afc(metric, ref, x0, x1, eps, "l2", "pgd", steps=steps, restarts=restarts, target=clean.prediction)
    assert torch.all((adv - ref).flatten(1).norm(dim=1) <= eps * (1 + 1e-5) + 1e-6)
    after = metric.certify_2afc(adv, x0, x1)
    return signed_margin(after.d0, after.d1, clean.prediction), adv


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


def test_bf16_autocast_first_call_does_not_change_certificates() -> None:
    # issue 14, defect 1: the first call (which fills the folded-weight cache) under bf16 autocast used to poison the
    # cache that certify_2afc reuses; on this tight network the backbone became 1.03-Lipschitz
    ref, x0, x1 = triplets(4, seed=5)
    first_bf16, first_fp32 = tight_lipsim(), tight_lipsim()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        first_bf16(ref, x0)
    first_fp32(ref, x0)
    a, b = first_bf16.certify_2afc(ref, x0, x1), first_fp32.certify_2afc(ref, x0, x1)
    assert torch.equal(a.radius, b.radius) and torch.equal(a.prediction, b.prediction)
    pa, pb = first_bf16(x0, x1, return_radius=True), first_fp32(x0, x1, return_radius=True)
    assert torch.equal(pa.radius_x0, pb.radius_x0)
    assert_one_lipschitz(first_bf16.backbone, points=1, power_iters=6, steps=6)


def test_a_bf16_metric_certifies_its_own_rounded_weights(small_weights: str) -> None:
    # LipSim().to(torch.bfloat16): certificates are computed in float32 (t in float64) from the bf16 values, i.e. they
    # are exactly those of the float32 metric whose weights are the bf16-rounded ones, which is the network evaluated
    ref, x0, x1 = _triplets(3, seed=6)
    low = LipSim(weights=small_weights).to(torch.bfloat16)
    low(ref.bfloat16(), x0.bfloat16())  # the first call, in bf16, fills the cache
    rounded = LipSim(weights=small_weights).to(torch.bfloat16).float()
    a, b = low.certify_2afc(ref, x0, x1), rounded.certify_2afc(ref, x0, x1)
    assert a.radius.dtype == torch.float32
    assert torch.equal(a.radius, b.radius) and torch.equal(a.d0, b.d0)
    tight = tight_lipsim(1.0546875).to(torch.bfloat16)  # exact in bf16; its t computed in bf16 rounds up by 1%
    tight(ref.bfloat16(), x0.bfloat16())
    assert_one_lipschitz(tight.backbone, points=1, power_iters=6, steps=6)


@pytest.mark.parametrize("bad", ["nan", "overflow"])
def test_non_finite_weights_are_refused(bad: str, tmp_path) -> None:
    # issue 14, defect 5: a NaN in a weights file gave NaN radii; a float64 1e300 becomes inf when cast to float32
    backbone = create_backbone("lipsim-fast", **SMALL_BACKBONE)
    if bad == "overflow":
        backbone = backbone.double()
    with torch.no_grad():
        backbone.linear[0].weight[0, 0] = float("nan") if bad == "nan" else 1e300
    path = save_weights(backbone, tmp_path / "bad.safetensors", "lipsim-fast", backbone_kwargs=SMALL_BACKBONE)
    with pytest.raises(ValueError, match=r"non-finite values \(NaN or Inf\) in 1 tensor\(s\): linear\.0\.weight"):
        LipSim(weights=path)


@pytest.mark.slow
def test_reviewer_reproducer_bf16_first_call_then_pgd() -> None:
    # The end-to-end reproducer: on today's main one of these 8 certified decisions flips (APGD ensemble,
    # 100 steps); with the float64 cache none does
    ref, x0, x1 = triplets(8, seed=0)
    metric = tight_lipsim()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        metric(ref, x0)
    cert = metric.certify_2afc(ref, x0, x1)
    adv = attack_2afc(metric, ref, x0, x1, 0.999 * cert.radius, "l2", "ensemble", steps=100, restarts=2,
                      target=cert.prediction)
    assert torch.equal(metric.certify_2afc(adv, x0, x1).prediction, cert.prediction)
