"""The pixel branch of ``lipsim-fast`` (``pixel_weight``): ``[sqrt(1 - a^2) F(x); a (x - mu)]``."""

from __future__ import annotations

import math

import pytest
import torch

from lipsim_metric import LipSim
from lipsim_metric.backbones import create_backbone
from lipsim_metric.pretrained import save_weights
from lipsim_metric.testing import assert_one_lipschitz

KW = {"input_size": 64, "pooling": "mean_std", "channel_scale": True, "linear_depth": 0, "embed_dim": None}


def _pair(a: float) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    plain = create_backbone("lipsim-fast", **KW).eval()
    branched = create_backbone("lipsim-fast", pixel_weight=a, **KW).eval()
    branched.load_state_dict(plain.state_dict())  # the branch has no parameters
    return plain, branched


def test_output_is_scaled_features_then_scaled_shifted_pixels() -> None:
    plain, branched = _pair(0.3)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        f, out = plain(x), branched(x)
    assert branched.embed_dim == plain.embed_dim + 3 * 64 * 64 == out.shape[1]
    assert branched.feature_dim == plain.embed_dim
    torch.testing.assert_close(out[:, : f.shape[1]], math.sqrt(1 - 0.09) * f)
    mu = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    torch.testing.assert_close(out[:, f.shape[1]:], 0.3 * (x - mu).flatten(1))


def test_pixel_branch_is_one_lipschitz() -> None:
    _, branched = _pair(0.6)  # a large weight, so the pixel part's share of a violation would show
    report = assert_one_lipschitz(branched, points=2, power_iters=15, steps=15)
    assert report.ratio <= 1.0 + 1e-4


def test_differences_split_exactly_into_the_two_parts() -> None:
    # ||B(x) - B(y)||^2 = (1 - a^2) ||F(x) - F(y)||^2 + a^2 ||x - y||^2: equal outputs force x = y (injective)
    plain, branched = _pair(0.2)
    g = torch.Generator().manual_seed(2)
    x, y = torch.rand(3, 3, 64, 64, generator=g), torch.rand(3, 3, 64, 64, generator=g)
    with torch.no_grad():
        lhs = (branched(x) - branched(y)).square().sum(1)
        rhs = 0.96 * (plain(x) - plain(y)).square().sum(1) + 0.04 * (x - y).square().flatten(1).sum(1)
    torch.testing.assert_close(lhs, rhs, rtol=1e-4, atol=1e-4)
    assert (lhs >= 0.04 * (x - y).square().flatten(1).sum(1) * (1 - 1e-5)).all()


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5])
def test_pixel_weight_out_of_range_is_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="pixel_weight"):
        create_backbone("lipsim-fast", pixel_weight=bad, **KW)


def test_weights_with_a_pixel_branch_load_and_certify(tmp_path) -> None:
    _, branched = _pair(0.1)
    path = save_weights(branched, tmp_path / "pix.safetensors", "lipsim-fast",
                        backbone_kwargs={**KW, "pixel_weight": 0.1})
    metric = LipSim(weights=path)
    assert metric.backbone.pixel_weight == 0.1
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    d = metric(x, x.flip(0))
    assert (d > 0).all() and metric(x, x).abs().max() < 1e-6


def test_the_appended_constant_travels_with_the_weights(tmp_path) -> None:
    _, branched = _pair(0.1)
    kw = {**KW, "pixel_weight": 0.1}
    path = save_weights(branched, tmp_path / "c25.safetensors", "lipsim-fast", backbone_kwargs=kw, constant=25.0)
    assert LipSim(weights=path).constant == 25.0 and LipSim(weights=path).pretrained_cfg.constant == 25.0
    assert LipSim(weights=path, constant=2.0).constant == 2.0  # an explicit argument wins
    plain = save_weights(branched, tmp_path / "plain.safetensors", "lipsim-fast", backbone_kwargs=kw)
    assert LipSim(weights=plain).constant == 1.0
    bad = save_weights(branched, tmp_path / "bad.safetensors", "lipsim-fast", backbone_kwargs=kw, constant="big")
    with pytest.raises(ValueError, match="constant"):
        LipSim(weights=bad)
    with pytest.raises(ValueError, match="constant"):
        LipSim(weights=path, constant=0.0)


def test_pair_agreement_refuses_a_non_positive_constant_before_any_work(tmp_path, capsys) -> None:
    from lipsim_metric.evaluation import pair_agreement

    with pytest.raises(SystemExit) as exc:  # argparse's usage error, before the label set is even opened
        pair_agreement.main(["--labels", str(tmp_path / "none"), "--images", str(tmp_path), "--constant", "-1",
                             "--out", str(tmp_path / "out")])
    assert exc.value.code == 2 and "--constant must be > 0" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def _spectrum_ends(f: torch.nn.Module, shape: tuple[int, ...], iters: int = 300) -> tuple[float, float]:
    """Largest and smallest eigenvalue of a symmetric linear map with spectrum in [0, 1], by power iteration on
    ``f`` and on ``I - f``."""
    g = torch.Generator().manual_seed(0)
    hi, lo = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    for _ in range(iters):
        hi = f(hi)
        hi = hi / hi.norm()
        lo = lo - f(lo)
        lo = lo / lo.norm()
    return float(f(hi).norm()), float(f(lo).norm())


@pytest.mark.parametrize("w,order", [(0.2, 8), (0.05, 3), (0.5, 1)])
def test_low_frequency_damp_spectrum_lies_in_w_to_1(w: float, order: int) -> None:
    from lipsim_metric.layers import LowFrequencyDamp

    f = LowFrequencyDamp(w, order)
    with torch.no_grad():
        top, bottom = _spectrum_ends(f, (1, 3, 24, 20))
        # symmetric: <f(x), y> = <x, f(y)>
        g = torch.Generator().manual_seed(1)
        x, y = torch.randn(2, 3, 24, 20, generator=g), torch.randn(2, 3, 24, 20, generator=g)
        torch.testing.assert_close((f(x) * y).sum(), (x * f(y)).sum(), rtol=1e-5, atol=1e-4)
    assert 0.98 < top <= 1.0 + 1e-5  # high frequencies pass at full weight, never more
    assert w - 1e-5 <= bottom < w + 0.1  # injective; smooth images are turned down to about w


def test_low_frequency_damp_keeps_noise_and_turns_down_a_brightness_shift() -> None:
    from lipsim_metric.layers import LowFrequencyDamp

    f = LowFrequencyDamp(0.2, 32)
    noise = 0.1 * torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    shift = torch.full((1, 3, 224, 224), 0.1)
    with torch.no_grad():
        assert float(f(noise).norm() / noise.norm()) > 0.98
        assert float(f(shift).norm() / shift.norm()) < 0.25
    assert LowFrequencyDamp(1.0)(noise) is noise
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="low_weight"):
            LowFrequencyDamp(bad)


def test_filtered_pixel_branch_is_one_lipschitz_and_has_no_new_parameters() -> None:
    torch.manual_seed(0)
    plain = create_backbone("lipsim-fast", **KW).eval()
    filtered = create_backbone("lipsim-fast", pixel_weight=0.6, pixel_low_weight=0.2, pixel_low_order=4, **KW).eval()
    filtered.load_state_dict(plain.state_dict())  # strict: the filter is a fixed, non-persistent buffer
    report = assert_one_lipschitz(filtered, points=2, power_iters=15, steps=15)
    assert report.ratio <= 1.0 + 1e-4
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        lhs = (filtered(x) - filtered(x.flip(0))).square().sum(1)
    assert (lhs >= 0.36 * 0.04 * (x - x.flip(0)).square().flatten(1).sum(1) * (1 - 1e-5)).all()  # injective
