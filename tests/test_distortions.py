"""Tests for lipsim_metric.train.distortions: determinism, range/shape, identity, monotone strength, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lipsim_metric.train.distortions import Distortion, list_families, sample_distortion

FAMILIES = list_families()


def _photo_like(size: int = 64, seed: int = 0) -> torch.Tensor:
    """Smooth, colourful random image with some texture: correlations decay over ~size/6 pixels."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 6, 6, generator=g)
    smooth = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    fine = F.interpolate(torch.rand(1, 3, size // 4, size // 4, generator=g), size=(size, size), mode="bilinear")
    return (0.8 * smooth + 0.2 * fine).clamp(0.05, 0.95)[0]


def _mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b) ** 2).mean())


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return _photo_like()


def test_list_families_is_stable_and_complete() -> None:
    assert FAMILIES == list_families()
    assert len(FAMILIES) == len(set(FAMILIES)) == 12
    for name in ("blur", "noise", "jpeg", "brightness", "contrast", "saturation", "gamma", "translate",
                 "rotate_scale", "pixelate", "sharpen", "color_shift"):
        assert name in FAMILIES


@pytest.mark.parametrize("family", FAMILIES)
def test_same_rng_state_gives_same_distortion_and_output(family: str, image: torch.Tensor) -> None:
    d1 = sample_distortion(np.random.default_rng(7), families=[family])
    d2 = sample_distortion(np.random.default_rng(7), families=[family])
    assert d1 == d2
    assert torch.equal(d1.apply(image), d2.apply(image))


def test_sampling_without_families_is_deterministic_and_varied(image: torch.Tensor) -> None:
    a = [sample_distortion(np.random.default_rng(3)) for _ in range(2)]
    assert a[0] == a[1]
    rng = np.random.default_rng(0)
    drawn = [sample_distortion(rng) for _ in range(200)]
    names = {d.name for d in drawn}
    assert set(FAMILIES) <= {f for d in drawn for f in d.families}, "every family is drawn"
    combos = [d for d in drawn if len(d.families) == 2]
    assert 15 < len(combos) < 70, "about 20% two-family combinations by default"
    assert all(d.families[0] != d.families[1] for d in combos)
    assert len(names) > 20
    # A whole-batch application is reproducible too (JPEG and noise included).
    outs = [torch.stack([d.apply(image) for d in drawn[:30]]) for _ in range(2)]
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("family", FAMILIES)
def test_output_shape_dtype_and_range(family: str, image: torch.Tensor) -> None:
    d = sample_distortion(np.random.default_rng(1), strength=1.0, families=[family])
    single = d.apply(image)
    assert single.shape == image.shape and single.dtype == image.dtype
    assert single.min() >= 0 and single.max() <= 1
    batch = torch.stack([image, _photo_like(seed=1)])
    out = d.apply(batch)
    assert out.shape == batch.shape and 0 <= out.min() and out.max() <= 1
    if family != "noise":  # noise draws one pattern for the whole batch shape
        assert torch.allclose(out[0], single, atol=1e-6), "batch application equals per-image application"
    assert torch.equal(image, _photo_like()), "the input is not modified in place"


@pytest.mark.parametrize("family", FAMILIES)
def test_strength_zero_is_identity(family: str, image: torch.Tensor) -> None:
    d = sample_distortion(np.random.default_rng(2), strength=0.0, families=[family])
    assert torch.equal(d.apply(image), image)


@pytest.mark.parametrize("family", FAMILIES)
def test_effect_grows_with_strength(family: str, image: torch.Tensor) -> None:
    errors = []
    for strength in (0.25, 0.5, 1.0):
        d = sample_distortion(np.random.default_rng(5), strength=strength, families=[family])
        errors.append(_mse(d.apply(image), image))
    assert errors[0] > 1e-5, f"{family} changes the image at strength 0.25"
    assert errors[0] < errors[1] < errors[2], f"{family}: MSE {errors} not increasing with strength"


def test_combination_applies_both_families(image: torch.Tensor) -> None:
    rng = np.random.default_rng(0)
    d = sample_distortion(rng, strength=0.8, families=["blur", "brightness"], combine_probability=1.0)
    assert set(d.families) == {"blur", "brightness"}
    assert all(d.params[f]["strength"] == pytest.approx(0.8 * 0.7) for f in d.families)
    blur_only = Distortion(("blur",), {"blur": d.params["blur"]}, strength=0.56)
    assert _mse(d.apply(image), image) > _mse(blur_only.apply(image), image)


def test_to_dict_round_trip_through_json(image: torch.Tensor) -> None:
    rng = np.random.default_rng(11)
    for _ in range(30):
        d = sample_distortion(rng)
        back = Distortion.from_dict(json.loads(json.dumps(d.to_dict())))
        assert back == d
        assert torch.equal(back.apply(image), d.apply(image))


def test_translate_moves_content_by_the_stated_shift() -> None:
    img = _photo_like(32)
    d = Distortion(("translate",), {"translate": {"dx": 3, "dy": -2}}, strength=0.2)
    out = d.apply(img)
    # Pixel (y, x) of the output shows input pixel (y + 2, x - 3) away from the reflected border.
    assert torch.equal(out[:, 5:20, 5:20], img[:, 7:22, 2:17])


def test_invalid_arguments_raise_clear_errors(image: torch.Tensor) -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="unknown distortion family"):
        sample_distortion(rng, families=["swirl"])
    with pytest.raises(ValueError, match=r"strength must lie in \[0, 1\]"):
        sample_distortion(rng, strength=1.5)
    with pytest.raises(TypeError, match="numpy.random.Generator"):
        sample_distortion(np.random.RandomState(0))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="families is empty"):
        sample_distortion(rng, families=[])
    with pytest.raises(ValueError, match="two different families"):
        Distortion(("blur", "blur"), {"blur": {"sigma": 1.0}}, strength=0.3)
    with pytest.raises(ValueError, match="params has no entry"):
        Distortion(("blur",), {}, strength=0.3)
    d = sample_distortion(rng, strength=0.5, families=["blur"])
    with pytest.raises(TypeError, match="float image"):
        d.apply((image * 255).to(torch.uint8))
    with pytest.raises(ValueError, match="RGB image"):
        d.apply(image[:1])
    with pytest.raises(ValueError, match=r"values must lie in \[0, 1\]"):
        d.apply(image * 2 - 1)
    with pytest.raises(TypeError, match="torch.Tensor"):
        d.apply(image.numpy())  # type: ignore[arg-type]
