"""Lipschitz properties of every building block and backbone (power iteration and adversarial search)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lipsim_metric.backbones import FastBackbone, PaperSmall, create_backbone, list_backbones
from lipsim_metric.layers import (
    ChannelZeroPad,
    Flatten,
    PixelUnshuffle,
    SLLConv2d,
    SLLLinear,
    SumPool2d,
    Truncate,
    check_lipschitz_declarations,
    safe_reciprocal,
)
from lipsim_metric.testing import adversarial_lipschitz_ratio, assert_one_lipschitz, jacobian_spectral_norm

TOL = 1e-4


def adversarial_ratio(f, shape, steps: int = 60, seed: int = 0) -> float:
    """The shared ratio search (lipsim_metric.testing) from uniform random points of ``shape``."""
    x = torch.rand(shape, generator=torch.Generator().manual_seed(seed))
    return adversarial_lipschitz_ratio(f, x, steps=steps, generator=torch.Generator().manual_seed(seed))


def _stress(layer: nn.Module) -> nn.Module:
    """Large, badly scaled weights and spread-out q: the bound must hold regardless of the parameters."""
    with torch.no_grad():
        for p in layer.parameters():
            p.mul_(5.0)
        if hasattr(layer, "q"):
            layer.q.copy_(torch.linspace(-3, 3, layer.q.numel()))
    return layer


@pytest.mark.parametrize("q_weighted", [True, False])
def test_sll_conv_jacobian_norm_at_most_one(q_weighted: bool) -> None:
    torch.manual_seed(0)
    layer = _stress(SLLConv2d(6, 5, 3, q_weighted=q_weighted)).double()
    for _ in range(3):
        x = torch.randn(1, 6, 9, 9, dtype=torch.double)
        assert jacobian_spectral_norm(layer, x) <= 1 + TOL


def test_sll_linear_jacobian_norm_at_most_one() -> None:
    torch.manual_seed(0)
    layer = _stress(SLLLinear(20, 13)).double()
    for _ in range(3):
        x = torch.randn(1, 20, dtype=torch.double)
        assert jacobian_spectral_norm(layer, x) <= 1 + TOL


@pytest.mark.parametrize("make", [lambda: SLLConv2d(4, 6), lambda: SLLLinear(12, 8)])
def test_sll_adversarial_ratio_at_most_one(make) -> None:
    torch.manual_seed(1)
    layer = _stress(make())
    shape = (4, 4, 6, 6) if isinstance(layer, SLLConv2d) else (4, 12)
    assert adversarial_ratio(layer, shape) <= 1 + TOL


def test_sll_bound_is_tight_enough_to_be_useful() -> None:
    # Not a soundness property: a layer whose Jacobian norm were far below 1 everywhere would waste capacity.
    torch.manual_seed(0)
    layer = SLLLinear(16, 16).double()
    x = torch.randn(1, 16, dtype=torch.double)
    assert jacobian_spectral_norm(layer, x) > 0.9


def test_zero_rows_give_finite_values_and_gradients() -> None:
    layer = SLLConv2d(3, 4)
    with torch.no_grad():
        layer.kernel[1].zero_()
    t = layer.compute_t()
    assert torch.isfinite(t).all() and t[1] == 0
    x = torch.rand(2, 3, 8, 8, requires_grad=True)
    layer(x).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())
    assert torch.isfinite(x.grad).all()
    lin = SLLLinear(5, 3)
    with torch.no_grad():
        lin.weight.zero_()
    y = torch.rand(2, 5)
    assert torch.equal(lin(y), y)  # all rows zero: the layer is the identity
    assert torch.equal(safe_reciprocal(torch.tensor([0.0, 2.0])), torch.tensor([0.0, 0.5]))


def test_eval_cache_is_reused_and_invalidated() -> None:
    torch.manual_seed(0)
    layer = SLLLinear(8, 4).eval()
    layer.requires_grad_(False)
    x = torch.randn(3, 8)
    y0 = layer(x)
    cached = layer._cache_val
    assert cached is not None
    layer(x)
    assert layer._cache_val is cached  # reused
    with torch.no_grad():
        layer.weight.mul_(2.0)  # in-place change bumps the version counter
    y1 = layer(x)
    assert layer._cache_val is not cached
    fresh = SLLLinear(8, 4)
    fresh.load_state_dict(layer.state_dict())
    assert torch.allclose(fresh.train()(x), y1, atol=1e-6)
    layer.load_state_dict(SLLLinear(8, 4).state_dict())
    assert not torch.allclose(layer(x), y1)
    layer.train()
    assert layer._cache_val is None
    assert not torch.allclose(y0, y1)


def test_cache_not_used_when_parameters_need_gradients() -> None:
    layer = SLLLinear(6, 3).eval()
    x = torch.randn(2, 6)
    layer(x).sum().backward()
    assert layer.weight.grad is not None and layer._cache_val is None


def test_norm_preserving_blocks() -> None:
    x = torch.randn(3, 3, 16, 16)
    flat = lambda t: t.flatten(1).norm(dim=1)  # noqa: E731
    assert torch.allclose(flat(ChannelZeroPad(3, 10)(x)), flat(x))
    assert torch.allclose(flat(PixelUnshuffle(4)(x)), flat(x))
    assert torch.allclose(flat(Flatten()(x)), flat(x))
    pooled = SumPool2d(4)(x)
    assert (flat(pooled) <= flat(x) + 1e-6).all()
    const = torch.ones(1, 1, 8, 8)
    assert torch.allclose(flat(SumPool2d(4)(const)), flat(const))  # the bound 1 is attained
    assert torch.allclose(Truncate(5)(x.flatten(1)), x.flatten(1)[:, :5])
    with pytest.raises(ValueError, match="cannot shrink"):
        ChannelZeroPad(4, 3)
    with pytest.raises(ValueError, match="odd"):
        SLLConv2d(3, 3, kernel_size=2)


BACKBONES = [
    (lambda: FastBackbone(input_size=64, embed_dim=64, linear_hidden=32), 64),
    (lambda: PaperSmall(input_size=32, conv_depth=3, linear_depth=2, linear_hidden=32, embed_dim=64), 32),
]


def _stressed_backbone(make) -> nn.Module:
    torch.manual_seed(0)
    net = make()
    for m in net.modules():
        if isinstance(m, (SLLConv2d, SLLLinear)):
            _stress(m)
    return net


@pytest.mark.parametrize("make,size", BACKBONES)
def test_backbone_is_one_lipschitz(make, size: int) -> None:
    # eval mode, frozen: the cached path that certificates use (the slow test below also covers train mode)
    net = _stressed_backbone(make).eval().requires_grad_(False)
    assert_one_lipschitz(net, (3, size, size), points=1, power_iters=8, steps=15)


@pytest.mark.slow
@pytest.mark.parametrize("make,size", BACKBONES)
def test_backbone_is_one_lipschitz_thorough(make, size: int) -> None:
    net = _stressed_backbone(make)
    assert_one_lipschitz(net, (3, size, size), points=2, power_iters=30, steps=60)
    assert_one_lipschitz(net.double().eval(), (3, size, size), points=1, power_iters=30, steps=40)


def test_every_block_declares_its_bound_and_undeclared_blocks_are_refused(monkeypatch) -> None:
    for cls in (SLLConv2d, SLLLinear, ChannelZeroPad, PixelUnshuffle, SumPool2d, Flatten, Truncate):
        assert cls.lipschitz_bound == 1.0
    net = FastBackbone(input_size=64, embed_dim=64, linear_hidden=32)
    check_lipschitz_declarations(net)
    net.stage1.append(nn.Conv2d(48, 48, 3, padding=1))  # a plain convolution has no Lipschitz bound at all
    with pytest.raises(TypeError, match=r"backbone\.stage1\.4 \(torch\.nn\.modules\.conv\.Conv2d\).*lipschitz_bound"):
        check_lipschitz_declarations(net)

    class Doubling(nn.Module):
        lipschitz_bound = 2.0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * x

    with pytest.raises(TypeError, match=r"lipschitz_bound=2.0, not in \[0, 1\]"):
        check_lipschitz_declarations(nn.Sequential(SumPool2d(2), Doubling()))
    with pytest.raises(TypeError, match="is the backbone but declares no lipschitz_bound"):
        check_lipschitz_declarations(nn.Sequential(SumPool2d(2)))  # a backbone must vouch for its own forward

    from lipsim_metric import backbones

    def with_plain_conv(**kwargs) -> FastBackbone:
        bad = FastBackbone(input_size=64, embed_dim=64, linear_hidden=32)
        bad.stage2.append(nn.Conv2d(192, 192, 1))
        return bad

    monkeypatch.setitem(backbones._REGISTRY, "with-plain-conv", with_plain_conv)
    with pytest.raises(TypeError, match=r"with-plain-conv\.stage2\.4 .*Conv2d.*assert_one_lipschitz"):
        create_backbone("with-plain-conv")


def _tight_linear(value: float, features: int = 8) -> SLLLinear:
    """An SLL dense layer on which Gershgorin is exact: orthogonal rows ``value * e_i`` and every ReLU active (bias 5,
    inputs near [0, 1]). In exact arithmetic it is ``x -> -x + const``, with slope exactly -1, so a ``t`` rounded up
    by any amount shows as a Lipschitz ratio above 1."""
    layer = SLLLinear(features, features)
    with torch.no_grad():
        layer.weight.copy_(value * torch.eye(features))
        layer.bias.fill_(5.0)
        layer.q.zero_()
    return layer.eval().requires_grad_(False)


def test_cache_filled_under_bf16_autocast_is_exact() -> None:
    # issue 14, defect 1: 1 + 0.99 * 2**-8 rounds to 1.0 in bf16, so a t computed under autocast is 0.8% too large
    value = 1 + 0.99 * 2**-8
    layer, fresh = _tight_linear(value), _tight_linear(value)
    x = torch.rand(4, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        layer(x)  # the first call fills the cache
    fresh(x)
    assert layer._cache_val is not None and torch.equal(layer._cache_val[0], fresh._cache_val[0])
    assert_one_lipschitz(layer, (8,), power_iters=10, steps=10)


def test_bf16_parameters_give_a_float32_exact_cache() -> None:
    # LipSim().to(torch.bfloat16): the cache is computed in float64 from the bf16 values and kept in float32, so the
    # network whose weights are the bf16 values is exactly what certificates (float32 inputs) evaluate
    layer = _tight_linear(1.0546875).to(torch.bfloat16)  # exact in bf16; its t computed in bf16 rounds up by 1%
    layer(torch.rand(4, 8).bfloat16())  # first call in bf16
    assert_one_lipschitz(layer, (8,), power_iters=10, steps=10)
    assert layer._cache_val[0].dtype == torch.float32


def test_cache_filled_in_inference_mode_serves_autograd() -> None:
    # issue 14, defect 3: a cache filled under torch.inference_mode (as the CLI does) must not break later losses
    layer = SLLConv2d(3, 4).eval().requires_grad_(False)
    with torch.inference_mode():
        layer(torch.rand(1, 3, 8, 8))
    x = torch.rand(2, 3, 8, 8, requires_grad=True)
    layer(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_refresh_after_data_edits() -> None:
    # issue 14, defect 2: edits through .data bypass the version counter the cache is keyed on; refresh() is the fix
    layer = _tight_linear(1.0)
    x = torch.rand(2, 8)
    layer(x)
    layer.weight.data.mul_(3)
    layer.refresh()
    assert layer._cache_val is None
    report = assert_one_lipschitz(layer, (8,), power_iters=10, steps=10)
    assert report.jacobian_norm > 0.99  # the rescaled layer is still tight, not merely contracted


def test_registry() -> None:
    assert {"lipsim-fast", "lipsim-paper-small"} <= set(list_backbones())
    with pytest.raises(ValueError, match="unknown backbone"):
        create_backbone("nope")
    paper = create_backbone("lipsim-paper-small")
    shapes = {k: tuple(v.shape) for k, v in paper.state_dict().items()}
    assert shapes["convs.0.kernel"] == (5, 45, 3, 3) and shapes["convs.19.q"] == (5,)
    assert shapes["linear.6.weight"] == (1024, 8820) and shapes["linear.0.bias"] == (1, 1024)
    assert paper.embed_dim == 1792
    fast = create_backbone("lipsim-fast")
    with torch.no_grad():
        assert fast(torch.rand(2, 3, 224, 224)).shape == (2, fast.embed_dim)
