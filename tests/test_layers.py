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
    safe_reciprocal,
)

TOL = 1e-4


def jacobian_spectral_norm(f, x: torch.Tensor, iters: int = 60) -> float:
    """Largest singular value of the Jacobian of f at x, by power iteration on J^T J (autograd jvp/vjp)."""
    v = torch.randn_like(x)
    v /= v.norm()
    sigma = 0.0
    for _ in range(iters):
        _, jv = torch.func.jvp(f, (x,), (v,))
        _, vjp = torch.func.vjp(f, x)
        (jtjv,) = vjp(jv)
        sigma = jv.norm().item()
        v = jtjv / jtjv.norm().clamp_min(1e-30)
    return sigma


def adversarial_ratio(f, shape, steps: int = 60, seed: int = 0) -> float:
    """Gradient ascent on ||f(x) - f(y)|| / ||x - y|| over pairs (x, y); returns the best ratio found."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g).requires_grad_(True)
    y = (x.detach() + 0.05 * torch.randn(shape, generator=g)).requires_grad_(True)
    opt = torch.optim.Adam([x, y], lr=1e-2)
    best = 0.0
    for _ in range(steps):
        num = (f(x) - f(y)).flatten(1).norm(dim=1)
        den = (x - y).flatten(1).norm(dim=1).clamp_min(1e-8)
        ratio = num / den
        best = max(best, ratio.max().item())
        opt.zero_grad()
        (-ratio.sum()).backward()
        opt.step()
    return best


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


@pytest.mark.parametrize(
    "make,size",
    [
        (lambda: FastBackbone(input_size=64, embed_dim=64, linear_hidden=32), 64),
        (lambda: PaperSmall(input_size=32, conv_depth=3, linear_depth=2, linear_hidden=32, embed_dim=64), 32),
    ],
)
def test_backbone_is_one_lipschitz(make, size: int) -> None:
    torch.manual_seed(0)
    net = make()
    for m in net.modules():
        if isinstance(m, (SLLConv2d, SLLLinear)):
            _stress(m)
    assert adversarial_ratio(net, (2, 3, size, size), steps=40) <= 1 + TOL
    x = torch.rand(1, 3, size, size, dtype=torch.double)
    assert jacobian_spectral_norm(net.double(), x, iters=30) <= 1 + TOL


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
