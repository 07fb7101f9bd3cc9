"""LipSim as a metric and a loss: distance properties, gradients, precision, and every bad-input path."""

from __future__ import annotations

import pytest
import torch

from lipsim_metric import LipSim


@pytest.fixture(scope="module")
def metric() -> LipSim:
    torch.manual_seed(0)
    return LipSim(pretrained=False)


def imgs(n: int = 2, size: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_distance_properties(metric: LipSim) -> None:
    x, y = imgs(3, seed=1), imgs(3, seed=2)
    d = metric(x, y)
    assert d.shape == (3,)
    assert torch.all(d >= 0) and torch.all(d <= 2)
    assert torch.allclose(metric(x, x), torch.zeros(3), atol=1e-6)
    assert torch.allclose(metric(y, x), d, atol=1e-6)
    # batch invariance: each item's distance does not depend on its batch-mates
    single = torch.cat([metric(x[i : i + 1], y[i : i + 1]) for i in range(3)])
    assert torch.allclose(single, d, atol=1e-5)


def test_embed_is_unit_norm_with_constant_coordinate(metric: LipSim) -> None:
    out = metric.embed(imgs(), return_norm=True)
    assert torch.allclose(out.embedding.norm(dim=1), torch.ones(2), atol=1e-6)
    assert out.embedding.shape[1] == metric.backbone.embed_dim + 1
    assert torch.all(out.augmented_norm >= 1.0)


def test_input_range_and_grayscale_equivalence(metric: LipSim) -> None:
    x, y = imgs(seed=3), imgs(seed=4)
    signed = LipSim(pretrained=False, input_range="[-1,1]")
    signed.backbone.load_state_dict(metric.backbone.state_dict())
    assert torch.allclose(signed(2 * x - 1, 2 * y - 1), metric(x, y), atol=1e-6)
    r01 = metric(x, y, return_radius=True).radius
    r11 = signed(2 * x - 1, 2 * y - 1, return_radius=True).radius
    assert torch.allclose(r11, 2 * r01, rtol=1e-4)  # a [-1,1] unit is half a [0,1] unit
    g0, g1 = x[:, :1], y[:, :1]
    assert torch.allclose(metric(g0, g1), metric(g0.expand(-1, 3, -1, -1), g1.expand(-1, 3, -1, -1)), atol=1e-6)


def test_gradients_reach_inputs_and_not_parameters(metric: LipSim) -> None:
    x = imgs(seed=5).requires_grad_(True)
    y = imgs(seed=6)
    metric(x, y).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in metric.parameters())


def test_no_nan_gradient_at_identical_inputs(metric: LipSim) -> None:
    x = imgs(seed=7).requires_grad_(True)
    metric(x, x.detach().clone()).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_train_mode_of_parent_keeps_metric_frozen(metric: LipSim) -> None:
    parent = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1), metric)
    parent.train()
    assert metric.training and not metric.backbone.training


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_distances_and_fp32_certificates(metric: LipSim, dtype: torch.dtype) -> None:
    x, y = imgs(seed=8), imgs(seed=9)
    ref = metric(x, y)
    with torch.autocast("cpu", dtype=dtype):
        low = metric(x, y)
        cert = metric(x, y, return_radius=True)
    assert low.dtype == torch.float32 and torch.isfinite(low).all()
    assert torch.allclose(low, ref, atol=5e-2)
    exact = metric(x, y, return_radius=True)
    assert torch.equal(cert.radius, exact.radius)  # certificates ignore autocast


def test_half_precision_inputs(metric: LipSim) -> None:
    x, y = imgs(seed=10), imgs(seed=11)
    half = LipSim(pretrained=False)
    half.backbone.load_state_dict(metric.backbone.state_dict())
    half = half.to(torch.bfloat16)
    d = half(x.bfloat16(), y.bfloat16())
    assert torch.allclose(d.float(), metric(x, y), atol=5e-2)


def test_any_size_and_mixed_sizes(metric: LipSim) -> None:
    x = torch.rand(2, 3, 100, 37)
    y = torch.rand(2, 3, 224, 224)
    assert metric(x, y).shape == (2,)


BAD_INPUTS = [
    (lambda: [[0.0]], TypeError, "torch.Tensor"),
    (lambda: torch.zeros(1, 3, 32, 32, dtype=torch.uint8), TypeError, "255"),
    (lambda: torch.rand(3, 32, 32), ValueError, "unsqueeze"),
    (lambda: torch.rand(1, 4, 32, 32), ValueError, "alpha"),
    (lambda: torch.rand(0, 3, 32, 32), ValueError, "empty"),
    (lambda: torch.rand(1, 3, 4, 32), ValueError, "at least"),
    (lambda: torch.full((1, 3, 32, 32), 255.0), ValueError, "x / 255"),
    (lambda: torch.full((1, 3, 32, 32), -0.5), ValueError, "input_range"),
    (lambda: torch.full((1, 3, 32, 32), float("nan")), ValueError, "NaN"),
    (lambda: torch.full((1, 3, 32, 32), float("inf")), ValueError, "NaN or Inf|infinite"),
]


@pytest.mark.parametrize("make,exc,match", BAD_INPUTS)
def test_bad_inputs(metric: LipSim, make, exc, match) -> None:
    good = torch.rand(1, 3, 32, 32)
    with pytest.raises(exc, match=match):
        metric(make(), good)
    with pytest.raises(exc, match=match):
        metric.certify_2afc(good, good, make())


def test_mismatched_batches(metric: LipSim) -> None:
    with pytest.raises(ValueError, match="same batch size"):
        metric(torch.rand(2, 3, 32, 32), torch.rand(3, 3, 32, 32))
    with pytest.raises(ValueError, match="same batch size"):
        metric.certify_2afc(torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32), torch.rand(1, 3, 32, 32))


def test_constructor_errors() -> None:
    with pytest.raises(ValueError, match="input_range"):
        LipSim(pretrained=False, input_range="0-255")
    with pytest.raises(ValueError, match="projection"):
        LipSim(pretrained=False, projection="sphere")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pretrained=False"):
        LipSim(pretrained=False, weights="x.safetensors")
    with pytest.raises(ValueError, match="unknown backbone"):
        LipSim(pretrained=False, variant="resnet")
    with pytest.raises(ValueError, match="neither a registered name"):
        LipSim(weights="no-such-weights")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        LipSim(weights="/nonexistent/w.safetensors")


def test_per_side_radii_and_grayscale_units(metric: LipSim) -> None:
    x, y = imgs(seed=12), imgs(seed=13, size=128)
    res = metric(x, y, return_radius=True)
    d, radius = res  # still unpacks as (distance, radius)
    assert torch.equal(radius, torch.minimum(res.radius_x0, res.radius_x1))
    # each side is the pair certificate of that side alone: swapping the images swaps the radii
    swapped = metric(y, x, return_radius=True)
    assert torch.allclose(swapped.radius_x0, res.radius_x1) and torch.allclose(swapped.radius_x1, res.radius_x0)
    # a 128x128 image is downsampled (||A|| < 1), so perturbing it alone is allowed more than perturbing x (64x64)
    assert torch.all(res.radius_x1 > res.radius_x0)
    # grayscale: the radius is in the 1-channel file's own units, sqrt(3) below the replicated RGB image's radius
    g0, g1 = x[:, :1], y[:, :1]
    gray = metric(g0, g1, return_radius=True)
    rgb = metric(g0.expand(-1, 3, -1, -1), g1.expand(-1, 3, -1, -1), return_radius=True)
    assert torch.allclose(gray.radius_x0 * 3**0.5, rgb.radius_x0, rtol=1e-5)
    assert torch.allclose(gray.radius_x1 * 3**0.5, rgb.radius_x1, rtol=1e-5)


def test_parent_train_eval_keeps_the_weight_cache() -> None:
    metric = LipSim(pretrained=False)
    x = imgs(1, seed=14)
    metric(x, x)
    layer = metric.backbone.linear[0]
    cached = layer._cache_val
    parent = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1), metric)
    parent.train()
    parent.eval()
    parent.train()
    metric(x, x)
    assert cached is not None and layer._cache_val is cached
    assert not metric.backbone.training


def test_inference_mode_call_then_loss_and_refresh() -> None:
    metric = LipSim(pretrained=False)
    x, y = imgs(seed=15), imgs(seed=16)
    with torch.inference_mode():  # as the CLI does; fills the weight cache
        before = metric(x, y)
    xg = x.clone().requires_grad_(True)
    metric(xg, y).sum().backward()  # issue 14, defect 3: used to raise "Inference tensors cannot be saved"
    assert torch.isfinite(xg.grad).all()
    # .data edits are invisible to the cache; refresh() reaches every cached layer of the backbone
    for p in metric.backbone.parameters():
        p.data.mul_(1.5)
    metric.refresh()
    fresh = LipSim(pretrained=False)
    fresh.backbone.load_state_dict(metric.backbone.state_dict())
    assert torch.allclose(metric(x, y), fresh(x, y), atol=1e-6)
    assert not torch.allclose(metric(x, y), before, atol=1e-4)


def test_a_backbone_with_an_undeclared_block_is_refused() -> None:
    metric = LipSim(pretrained=False)
    with pytest.raises(TypeError, match=r"backbone\.0 \(torch\.nn\.modules\.conv\.Conv2d\).*lipschitz_bound"):
        metric.backbone = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 3))  # type: ignore[assignment]
