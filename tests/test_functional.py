"""lipsim_metric.functional and ``reduction=``: thin calls of the model's own methods, same numbers."""

from __future__ import annotations

import pytest
import torch

from lipsim_metric import LipSim
from lipsim_metric import functional as LF


@pytest.fixture(scope="module")
def model(small_weights: str) -> LipSim:
    return LipSim(weights=small_weights)


@pytest.fixture(scope="module")
def images() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(3, 3, 64, 64, generator=g)
    return ref, (ref + 0.1 * torch.randn(3, 3, 64, 64, generator=g)).clamp(0, 1), torch.rand(3, 3, 64, 64, generator=g)


def test_distance_is_the_model_call_and_reduces(model: LipSim, images: tuple[torch.Tensor, ...]) -> None:
    ref, near, far = images
    expected = model(ref, far)
    assert torch.equal(LF.distance(model, ref, far), expected)
    torch.testing.assert_close(LF.distance(model, ref, far, reduction="mean"), expected.mean())
    torch.testing.assert_close(LF.distance(model, ref, far, reduction="sum"), expected.sum())
    torch.testing.assert_close(model(ref, far, reduction="mean"), expected.mean())
    assert model(ref, far, reduction="sum").shape == () and torch.equal(model(ref, far, reduction="none"), expected)


def test_distance_as_a_loss_gives_image_gradients_only(model: LipSim, images: tuple[torch.Tensor, ...]) -> None:
    ref, near, _ = images
    x = near.clone().requires_grad_(True)
    LF.distance(model, ref, x, reduction="mean").backward()
    assert x.grad is not None and bool(x.grad.abs().sum() > 0)
    assert all(p.grad is None for p in model.parameters())


def test_certify_2afc_and_pair_radius_match_the_model(model: LipSim, images: tuple[torch.Tensor, ...]) -> None:
    ref, near, far = images
    cert, expected = LF.certify_2afc(model, ref, far, near), model.certify_2afc(ref, far, near)
    for got, want in zip(cert, expected, strict=True):
        assert torch.equal(got, want)
    assert torch.equal(cert.prediction, torch.ones(3, dtype=cert.prediction.dtype))  # near is closer to ref
    for threshold in (0.0, 0.05):
        full = model(ref, far, return_radius=True, threshold=threshold)
        assert torch.equal(LF.pair_radius(model, ref, far, threshold=threshold), full.radius)
        assert torch.equal(full.radius, torch.minimum(full.radius_x0, full.radius_x1))


def test_errors(model: LipSim, images: tuple[torch.Tensor, ...]) -> None:
    ref, near, _ = images
    with pytest.raises(TypeError, match="must be a lipsim_metric.LipSim"):
        LF.distance(torch.nn.Identity(), ref, near)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must be a lipsim_metric.LipSim"):
        LF.pair_radius("lipsim", ref, near)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="reduction must be one of"):
        LF.distance(model, ref, near, reduction="avg")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="reduction must be one of"):
        model(ref, near, reduction=None)  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="radii are per pair"):
        model(ref, near, return_radius=True, reduction="mean")  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="threshold"):
        LF.pair_radius(model, ref, near, threshold=3.0)
