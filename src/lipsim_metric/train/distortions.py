"""Seeded image distortions for generating two-alternative forced-choice (2AFC) triplets.

A 2AFC triplet is a reference image and two distorted copies; a perceptual metric is right when it calls the
copy that humans (or teacher metrics) judge closer to the reference the closer one. The families below follow
the "traditional" distortions of BAPPS (Zhang et al., "The Unreasonable Effectiveness of Deep Features as a
Perceptual Metric", CVPR 2018, https://arxiv.org/abs/1801.03924, Sec. 2.1: photometric, noise, blur, spatial
shift, compression) and the augmentation families of DreamSim/LipSim training (Fu et al., NeurIPS 2023,
https://arxiv.org/abs/2306.09344; Ghazanfari et al., ICLR 2024, https://arxiv.org/abs/2310.18274).

Every family is driven by one ``strength`` in [0, 1]; strength 0 is the identity (exactly: the input is returned
unchanged) and the family's effect grows monotonically with strength. Ranges assume images of roughly 224 px;
pixel quantities are absolute, not relative to the image size.

====================  =====================================  ==============  =================  =======================
family                parameter                              strength 0      strength 1         drawn from the rng
====================  =====================================  ==============  =================  =======================
``blur``              Gaussian sigma (px)                    0               3.0                --
``noise``             additive Gaussian std (per channel)    0               0.15               noise ``seed``
``jpeg``              PIL JPEG quality (4:2:0)               identity [1]_   5                  --
``brightness``        multiplicative factor                  1               1 +- 0.5           sign
``contrast``          factor (blend with mean grey)          1               1 +- 0.5           sign
``saturation``        factor (blend with greyscale)          1               1 +- 0.8           sign
``color_shift``       per-channel offset, l2 norm over RGB   0               0.25               unit direction in RGB
``gamma``             exponent ``x ** gamma``                1               2 ** (+-1.2)       sign
``translate``         shift (px), reflect padding            0               16                 direction angle
``rotate_scale``      angle (deg), zoom factor               0, 1            +-10, 1 +- 0.15    two signs
``pixelate``          downsample factor, then upsample       1               8                  nearest or bilinear up
``sharpen``           unsharp-mask amount (sigma 1.5 px)     0               4.0                --
====================  =====================================  ==============  =================  =======================

Recipe 2 (``list_families(recipe="2")``) adds families modelled on what full-reference IQA sets rate (TID2013,
KADID-10k, CSIQ, LIVE: several noise types, blur kinds, wavelet compression, quantisation, ringing, colour,
transmission errors):

====================  =====================================  ==============  =================  =======================
family                parameter                              strength 0      strength 1         drawn from the rng
====================  =====================================  ==============  =================  =======================
``noise_gray``        Gaussian std, same on R, G, B          0               0.15               noise ``seed``
``noise_impulse``     salt-and-pepper pixel fraction         0               0.08               noise ``seed``
``noise_poisson``     signal-dependent std ``a sqrt(x)``     a = 0           a = 0.2            noise ``seed``
``noise_pink``        spatially correlated (blur 1.5 px)     0               0.12               noise ``seed``
``noise_speckle``     multiplicative ``x (1 + std n)``       0               0.4                noise ``seed``
``blur_motion``       line kernel length (px)                0               15                 angle
``blur_defocus``      disk kernel radius (px)                0               5                  --
``jpeg2000``          Haar wavelet (4 levels) quant. step    0               0.5                --
``quantize``          levels ``2 ** (8 - 6.4 sqrt(s))``      256 (identity)  3                  --
``ringing``           ideal low-pass cut-off (of Nyquist)    1 (identity)    0.08               --
``hue``               hue rotation (fraction of the circle)  0               +-0.15             sign
``block_loss``        fraction of 16x16 blocks replaced      0               0.15               ``seed``
====================  =====================================  ==============  =================  =======================

Recipe 3 (``list_families(recipe="3")``, the *photometric stress* recipe) draws from ``exposure`` and three noise
families only (``noise``, ``noise_gray``, ``noise_pink``), so that about half its pairs combine a strong exposure
change with noise. It labels what recipe 2 holds only at moderate strength: a denoiser trained with a metric that
under-charges large photometric shifts learns to brighten, saturate and clip the image to hide its noise.

====================  =====================================  ==============  =================  =======================
family                parameter                              strength 0      strength 1         drawn from the rng
====================  =====================================  ==============  =================  =======================
``exposure``          gain ``(1 + 2 s)`` or ``1 / (1 + s)``  1, 1, 0         3 or 0.5, 2.2,     sign (2/3 brighter),
                      (then clipped), saturation             (identity)      0.3                unit direction in RGB
                      ``1 + 1.2 s``, RGB cast (l2 norm)
====================  =====================================  ==============  =================  =======================

``jpeg2000`` is a JPEG2000-like stand-in (orthonormal Haar wavelets with a dead-zone uniform quantiser), not the
JPEG2000 codec: it produces the same kind of blur-plus-ringing-plus-blocking artefacts. ``block_loss`` stands in for
the transmission errors of TID2013/LIVE: each lost block is concealed by a copy of the block 16 px away in a drawn
direction.

.. [1] JPEG quality is ``round(95 - 90 * strength)``; at strength exactly 0 the round trip is skipped, since even
   quality 95 is lossy.

Combinations: with probability ``combine_probability`` :func:`sample_distortion` draws two *different* families
and applies them in the drawn order, each at strength ``COMBINATION_SCALE * strength`` (0.7, so the two effects
together are of the order of one family at ``strength`` when their squared distances add).

Size: this module is longer than the project's ~600-line guide on purpose: it is one registry (the two tables above)
of 24 small sampler/applier pairs plus the sampling logic, and the tables document exactly what is in this file.

Determinism: :func:`sample_distortion` draws a fixed number of values from the ``numpy.random.Generator`` whatever
the strength, and stores every random choice (including a seed for the noise pattern) in ``Distortion.params``,
so ``Distortion.apply`` is a pure function of the image. The same rng state therefore gives the same distortion
and the same output image, JPEG included (PIL's libjpeg encoder is deterministic for a fixed quality and
subsampling). A :class:`Distortion` round-trips through JSON with :meth:`Distortion.to_dict` /
:meth:`Distortion.from_dict`, so a triplet set can be stored as specs plus images.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode

__all__ = [
    "COMBINATION_SCALE",
    "RECIPE_VERSION",
    "RECIPES",
    "Distortion",
    "list_families",
    "sample_distortion",
]

#: Version of the families/ranges table above; bump it whenever a range or an applier changes, since stored
#: triplet sets record it and their images would no longer match re-rendered specs. Recipe "1" is the first
#: table (the families of ``val-v1``); recipe "2" adds the IQA-style families of the second table. Families of
#: recipe 1 are unchanged in recipe 2, so ``RECIPE_VERSION`` stays "1" for sets drawn from them.
RECIPE_VERSION = "1"
#: Recipes and the families each draws from (:func:`list_families`).
RECIPES = ("1", "2", "3")

#: Each component of a two-family combination is applied at this fraction of the combination's strength.
COMBINATION_SCALE = 0.7

# Maximum parameter values (strength 1); the module docstring's table is the documentation of these.
_BLUR_MAX_SIGMA = 3.0
_NOISE_MAX_STD = 0.15
_JPEG_MAX_QUALITY = 95
_JPEG_MIN_QUALITY = 5
_BRIGHTNESS_MAX_DELTA = 0.5
_CONTRAST_MAX_DELTA = 0.5
_SATURATION_MAX_DELTA = 0.8
_COLOR_SHIFT_MAX_NORM = 0.25
_GAMMA_MAX_LOG2 = 1.2
_TRANSLATE_MAX_PX = 16.0
_ROTATE_MAX_DEG = 10.0
_SCALE_MAX_DELTA = 0.15
_PIXELATE_MAX_FACTOR = 8.0
_SHARPEN_MAX_AMOUNT = 4.0
_SHARPEN_SIGMA = 1.5
# recipe 2
_NOISE_GRAY_MAX_STD = 0.15
_IMPULSE_MAX_FRACTION = 0.08
_POISSON_MAX_GAIN = 0.2
_PINK_MAX_STD = 0.12
_PINK_SIGMA = 1.5
_SPECKLE_MAX_STD = 0.4
_MOTION_MAX_LENGTH = 15.0
_DEFOCUS_MAX_RADIUS = 5.0
_WAVELET_MAX_STEP = 0.5
_WAVELET_LEVELS = 4
_QUANTIZE_MAX_LOG2_DROP = 6.4
_RINGING_MIN_CUTOFF = 0.08
_HUE_MAX_SHIFT = 0.15
_BLOCK_LOSS_MAX_FRACTION = 0.15
_BLOCK_SIZE = 16
# recipe 3
_EXPOSURE_MAX_GAIN = 2.0  # brighter: gain 1 + 2 s; darker: 1 / (1 + s)
_EXPOSURE_MAX_SATURATION = 1.2
_EXPOSURE_MAX_CAST = 0.3


def _sign(u: float) -> float:
    return 1.0 if u < 0.5 else -1.0


# ---------------------------------------------------------------------------------------------------------------
# Parameter samplers: (rng, strength) -> params. Each draws the same number of rng values for every strength so
# that two distortions sampled from equal rng states differ only in magnitude (the monotonicity tests rely on it).
# ---------------------------------------------------------------------------------------------------------------


def _params_blur(rng: np.random.Generator, s: float) -> dict[str, Any]:
    return {"sigma": _BLUR_MAX_SIGMA * s}


def _params_noise(rng: np.random.Generator, s: float) -> dict[str, Any]:
    return {"std": _NOISE_MAX_STD * s, "seed": int(rng.integers(0, 2**31 - 1))}


def _params_jpeg(rng: np.random.Generator, s: float) -> dict[str, Any]:
    quality = int(round(_JPEG_MAX_QUALITY - (_JPEG_MAX_QUALITY - _JPEG_MIN_QUALITY) * s))
    return {"quality": quality, "skip": s == 0.0}


def _params_brightness(rng: np.random.Generator, s: float) -> dict[str, Any]:
    return {"factor": 1.0 + _sign(rng.random()) * _BRIGHTNESS_MAX_DELTA * s}


def _params_contrast(rng: np.random.Generator, s: float) -> dict[str, Any]:
    return {"factor": 1.0 + _sign(rng.random()) * _CONTRAST_MAX_DELTA * s}


def _params_saturation(rng: np.random.Generator, s: float) -> dict[str, Any]:
    return {"factor": 1.0 + _sign(rng.random()) * _SATURATION_MAX_DELTA * s}


def _params_color_shift(rng: np.random.Generator, s: float) -> dict[str, Any]:
    direction = rng.standard_normal(3)
    direction /= max(float(np.linalg.norm(direction)), 1e-12)
    return {"offset": [float(v) for v in direction * _COLOR_SHIFT_MAX_NORM * s]}


def _params_gamma(rng: np.random.Generator, s: float) -> dict[str, Any]:
    return {"gamma": float(2.0 ** (_sign(rng.random()) * _GAMMA_MAX_LOG2 * s))}


def _params_translate(rng: np.random.Generator, s: float) -> dict[str, Any]:
    angle = rng.uniform(0.0, 2.0 * math.pi)
    radius = _TRANSLATE_MAX_PX * s
    return {"dx": int(round(radius * math.cos(angle))), "dy": int(round(radius * math.sin(angle)))}


def _params_rotate_scale(rng: np.random.Generator, s: float) -> dict[str, Any]:
    return {
        "angle": _sign(rng.random()) * _ROTATE_MAX_DEG * s,
        "scale": 1.0 + _sign(rng.random()) * _SCALE_MAX_DELTA * s,
    }


def _params_pixelate(rng: np.random.Generator, s: float) -> dict[str, Any]:
    return {
        "factor": 1.0 + (_PIXELATE_MAX_FACTOR - 1.0) * s,
        "upsample": "nearest" if rng.random() < 0.5 else "bilinear",
    }


def _params_sharpen(rng: np.random.Generator, s: float) -> dict[str, Any]:
    return {"amount": _SHARPEN_MAX_AMOUNT * s, "sigma": _SHARPEN_SIGMA}


def _seeded(rng: np.random.Generator, **values: Any) -> dict[str, Any]:
    return {**values, "seed": int(rng.integers(0, 2**31 - 1))}


def _params_noise_gray(rng: np.random.Generator, s: float) -> dict[str, Any]:
    return _seeded(rng, std=_NOISE_GRAY_MAX_STD * s)


def _params_noise_impulse(rng: np.random.Generator, s: float) -> dict[str, Any]:
    return _seeded(rng, fraction=_IMPULSE_MAX_FRACTION * s)


def _params_noise_poisson(rng: np.random.Generator, s: float) -> dict[str, Any]:
    return _seeded(rng, gain=_POISSON_MAX_GAIN * s)


def _params_noise_pink(rng: np.random.Generator, s: float) -> dict[str, Any]:
    return _seeded(rng, std=_PINK_MAX_STD * s)


def _params_noise_speckle(rng: np.random.Generator, s: float) -> dict[str, Any]:
    return _seeded(rng, std=_SPECKLE_MAX_STD * s)


def _params_blur_motion(rng: np.random.Generator, s: float) -> dict[str, Any]:
    return {"length": _MOTION_MAX_LENGTH * s, "angle": float(rng.uniform(0.0, 180.0))}


def _params_blur_defocus(rng: np.random.Generator, s: float) -> dict[str, Any]:
    return {"radius": _DEFOCUS_MAX_RADIUS * s}


def _params_jpeg2000(rng: np.random.Generator, s: float) -> dict[str, Any]:
    return {"step": _WAVELET_MAX_STEP * s}


def _params_quantize(rng: np.random.Generator, s: float) -> dict[str, Any]:
    return {"levels": int(round(2.0 ** (8.0 - _QUANTIZE_MAX_LOG2_DROP * math.sqrt(s))))}


def _params_ringing(rng: np.random.Generator, s: float) -> dict[str, Any]:
    return {"cutoff": 1.0 - (1.0 - _RINGING_MIN_CUTOFF) * s}


def _params_hue(rng: np.random.Generator, s: float) -> dict[str, Any]:
    return {"shift": _sign(rng.random()) * _HUE_MAX_SHIFT * s}


def _params_block_loss(rng: np.random.Generator, s: float) -> dict[str, Any]:
    return _seeded(rng, fraction=_BLOCK_LOSS_MAX_FRACTION * s)


# ---------------------------------------------------------------------------------------------------------------
# Appliers: (images (N,3,H,W) float32 in [0,1], params) -> images. Clamping happens once, in Distortion.apply.
# ---------------------------------------------------------------------------------------------------------------


def _params_exposure(rng: np.random.Generator, s: float) -> dict[str, Any]:
    brighter = bool(rng.random() < 2.0 / 3.0)
    direction = rng.standard_normal(3)
    direction /= max(float(np.linalg.norm(direction)), 1e-12)
    gain = 1.0 + _EXPOSURE_MAX_GAIN * s if brighter else 1.0 / (1.0 + s)
    return {"gain": gain, "saturation": 1.0 + _EXPOSURE_MAX_SATURATION * s,
            "cast": [float(v) for v in direction * _EXPOSURE_MAX_CAST * s]}


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(3.0 * sigma))
    # Reflect padding inside gaussian_blur needs the half-kernel to be smaller than the image.
    radius = min(radius, min(x.shape[-2:]) - 1)
    if radius < 1:
        return x
    size = 2 * radius + 1
    return TF.gaussian_blur(x, kernel_size=[size, size], sigma=[sigma, sigma])


def _apply_blur(x: torch.Tensor, p: Mapping[str, Any]) -> torch.Tensor:
    return x if p["sigma"] <= 0 else _gaussian_blur(x, float(p["sigma"]))


def _apply_noise(x: torch.Tensor, p: Mapping[str, Any]) -> torch.Tensor:
    if p["std"] <= 0:
        return x
    # Generated on the CPU so the pattern does not depend on the device the image lives on.
    generator = torch.Generator().manual_seed(int(p["seed"]))
    noise = torch.randn(x.shape, generator=generator, dtype=torch.float32)
    return x + float(p["std"]) * noise.to(x.device)


def _apply_jpeg(x: torch.Tensor, p: Mapping[str, Any]) -> torch.Tensor:
    if p["skip"]:
        return x
    out = torch.empty_like(x)
    for i in range(x.shape[0]):
        array = (x[i].clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        buffer = io.BytesIO()
        # subsampling=2 is 4:2:0, PIL's default, written out so a change of default cannot change the data.
        Image.fromarray(array, mode="RGB").save(buffer, format="JPEG", quality=int(p["quality"]), subsampling=2)
        buffer.seek(0)
        with Image.open(buffer) as decoded:
            decoded_array = np.asarray(decoded.convert("RGB"), dtype=np.uint8).copy()
        out[i] = torch.from_numpy(decoded_array).permute(2, 0, 1).to(x.device, torch.float32) / 255.0
    return out


def _apply_brightness(x: torch.Tensor, p: Mapping[str, Any]) -> torch.Tensor:
    return x if p["factor"] == 1.0 else TF.adjust_brightness(x, float(p["factor"]))


def _apply_contrast(x: torch.Tensor, p: Mapping[str, Any]) -> torch.Tensor:
    return x if p["factor"] == 1.0 else TF.adjust_contrast(x, float(p["factor"]))


def _apply_saturation(x: torch.Tensor, p: Mapping[str, Any]) -> torch.Tensor:
    return x if p["factor"] == 1.0 else TF.adjust_saturation(x, float(p["factor"]))


def _apply_color_shift(x: torch.Tensor, p: Mapping[str, Any]) -> torch.Tensor:
    offset = torch.tensor(p["offset"], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return x + offset


def _apply_gamma(x: torch.Tensor, p: Mapping[str, Any]) -> torch.Tensor:
    return x if p["gamma"] == 1.0 else x.clamp(0, 1) ** float(p["gamma"])


def _apply_translate(x: torch.Tensor, p: Mapping[str, Any]) -> torch.Tensor:
    height, width = x.shape[-2:]
    # Reflect padding cannot exceed the image; larger shifts on tiny images are clipped.
    dx = max(-(width - 1), min(width - 1, int(p["dx"])))
    dy = max(-(height - 1), min(height - 1, int(p["dy"])))
    if dx == 0 and dy == 0:
        return x
    padded = F.pad(x, (abs(dx), abs(dx), abs(dy), abs(dy)), mode="reflect")
    # Content moves by (+dx, +dy): the output window starts |d| - d pixels into the padded image.
    top, left = abs(dy) - dy, abs(dx) - dx
    return padded[..., top : top + height, left : left + width]


def _apply_rotate_scale(x: torch.Tensor, p: Mapping[str, Any]) -> torch.Tensor:
    angle, scale = float(p["angle"]), float(p["scale"])
    if angle == 0.0 and scale == 1.0:
        return x
    height, width = x.shape[-2:]
    # Reflect-pad first so the rotated corners and the zoomed-out border show image content, not black.
    margin_h = min(height - 1, math.ceil(0.25 * height))
    margin_w = min(width - 1, math.ceil(0.25 * width))
    padded = F.pad(x, (margin_w, margin_w, margin_h, margin_h), mode="reflect")
    warped = TF.affine(
        padded,
        angle=angle,
        translate=[0.0, 0.0],
        scale=scale,
        shear=[0.0, 0.0],
        interpolation=InterpolationMode.BILINEAR,
    )
    return warped[..., margin_h : margin_h + height, margin_w : margin_w + width]


def _apply_pixelate(x: torch.Tensor, p: Mapping[str, Any]) -> torch.Tensor:
    height, width = x.shape[-2:]
    factor = float(p["factor"])
    small = (max(1, round(height / factor)), max(1, round(width / factor)))
    if small == (height, width):
        return x
    down = F.interpolate(x, size=small, mode="bilinear", align_corners=False, antialias=True)
    if p["upsample"] == "nearest":
        return F.interpolate(down, size=(height, width), mode="nearest")
    return F.interpolate(down, size=(height, width), mode="bilinear", align_corners=False)


def _apply_sharpen(x: torch.Tensor, p: Mapping[str, Any]) -> torch.Tensor:
    amount = float(p["amount"])
    if amount <= 0:
        return x
    return x + amount * (x - _gaussian_blur(x, float(p["sigma"])))


def _noise(x: torch.Tensor, seed: int, channels: int | None = None) -> torch.Tensor:
    """Standard normal noise shaped like ``x`` (or with ``channels`` channels), drawn on the CPU from ``seed``."""
    shape = x.shape if channels is None else (x.shape[0], channels, *x.shape[2:])
    generator = torch.Generator().manual_seed(int(seed))
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(x.device)


def _uniform(x: torch.Tensor, seed: int, channels: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(int(seed))
    shape = (x.shape[0], channels, *x.shape[2:])
    return torch.rand(shape, generator=generator, dtype=torch.float32).to(x.device)


def _apply_noise_gray(x: torch.Tensor, p: Mapping[str, Any]) -> torch.Tensor:
    return x if p["std"] <= 0 else x + float(p["std"]) * _noise(x, p["seed"], channels=1)


def _apply_noise_impulse(x: torch.Tensor, p: Mapping[str, Any]) -> torch.Tensor:
    fraction = float(p["fraction"])
    if fraction <= 0:
        return x
    u = _uniform(x, p["seed"], channels=1)
    out = torch.where(u < fraction / 2, torch.zeros_like(x), x)
    return torch.where(u > 1 - fraction / 2, torch.ones_like(x), out)


def _apply_noise_poisson(x: torch.Tensor, p: Mapping[str, Any]) -> torch.Tensor:
    gain = float(p["gain"])
    return x if gain <= 0 else x + gain * x.clamp_min(0).sqrt() * _noise(x, p["seed"])


def _apply_noise_pink(x: torch.Tensor, p: Mapping[str, Any]) -> torch.Tensor:
    std = float(p["std"])
    if std <= 0:
        return x
    noise = _gaussian_blur(_noise(x, p["seed"]), _PINK_SIGMA)
    noise = noise / noise.flatten(1).std(dim=1).clamp_min(1e-8).view(-1, 1, 1, 1)
    return x + std * noise


def _apply_noise_speckle(x: torch.Tensor, p: Mapping[str, Any]) -> torch.Tensor:
    std = float(p["std"])
    return x if std <= 0 else x * (1.0 + std * _noise(x, p["seed"]))


def _depthwise(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Convolve each channel with the 2-D ``kernel`` (odd size), reflect padding."""
    k = kernel.shape[-1]
    pad = min(k // 2, min(x.shape[-2:]) - 1)
    if pad < 1:
        return x
    kernel = kernel[k // 2 - pad : k // 2 + pad + 1, k // 2 - pad : k // 2 + pad + 1]
    kernel = (kernel / kernel.sum()).to(x.dtype)
    weight = kernel.expand(x.shape[1], 1, *kernel.shape).contiguous()
    return F.conv2d(F.pad(x, (pad, pad, pad, pad), mode="reflect"), weight, groups=x.shape[1])


def _apply_blur_motion(x: torch.Tensor, p: Mapping[str, Any]) -> torch.Tensor:
    length = float(p["length"])
    if length < 1.0:
        return x
    size = 2 * math.ceil(length / 2) + 1
    c = size // 2
    theta = math.radians(float(p["angle"]))
    yy, xx = torch.meshgrid(torch.arange(size) - c, torch.arange(size) - c, indexing="ij")
    along = xx * math.cos(theta) + yy * math.sin(theta)
    across = -xx * math.sin(theta) + yy * math.cos(theta)
    # A line segment of the given length, one pixel wide, with linear fall-off at its ends and sides.
    kernel = (1 - across.abs()).clamp_min(0) * (length / 2 + 0.5 - along.abs()).clamp(0, 1)
    return _depthwise(x, kernel.float())


def _apply_blur_defocus(x: torch.Tensor, p: Mapping[str, Any]) -> torch.Tensor:
    radius = float(p["radius"])
    if radius < 0.5:
        return x
    c = math.ceil(radius)
    yy, xx = torch.meshgrid(torch.arange(2 * c + 1) - c, torch.arange(2 * c + 1) - c, indexing="ij")
    kernel = (radius + 0.5 - (xx**2 + yy**2).float().sqrt()).clamp(0, 1)  # anti-aliased disk
    return _depthwise(x, kernel)


def _haar_forward(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = x[..., 0::2, 0::2], x[..., 0::2, 1::2]
    c, d = x[..., 1::2, 0::2], x[..., 1::2, 1::2]
    low = (a + b + c + d) / 2
    details = torch.stack([(a - b + c - d) / 2, (a + b - c - d) / 2, (a - b - c + d) / 2])
    return low, details


def _haar_inverse(low: torch.Tensor, details: torch.Tensor) -> torch.Tensor:
    h, v, g = details
    a, b = (low + h + v + g) / 2, (low - h + v - g) / 2
    c, d = (low + h - v - g) / 2, (low - h - v + g) / 2
    out = low.new_empty(*low.shape[:-2], 2 * low.shape[-2], 2 * low.shape[-1])
    out[..., 0::2, 0::2], out[..., 0::2, 1::2], out[..., 1::2, 0::2], out[..., 1::2, 1::2] = a, b, c, d
    return out


def _apply_jpeg2000(x: torch.Tensor, p: Mapping[str, Any]) -> torch.Tensor:
    step = float(p["step"])
    if step <= 0:
        return x
    height, width = x.shape[-2:]
    unit = 2**_WAVELET_LEVELS
    pad_h, pad_w = (-height) % unit, (-width) % unit
    low = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else x
    stack = []
    for _ in range(_WAVELET_LEVELS):
        low, details = _haar_forward(low)
        # Dead-zone uniform quantiser (JPEG2000 part 1): sign(c) floor(|c| / step), reconstructed mid-interval.
        q = torch.floor(details.abs() / step)
        stack.append(torch.sign(details) * torch.where(q > 0, (q + 0.5) * step, torch.zeros_like(q)))
    low = torch.round(low / step) * step
    for details in reversed(stack):
        low = _haar_inverse(low, details)
    return low[..., :height, :width]


def _apply_quantize(x: torch.Tensor, p: Mapping[str, Any]) -> torch.Tensor:
    levels = int(p["levels"])
    if levels >= 256:
        return x
    scale = levels - 1
    return torch.round(x.clamp(0, 1) * scale) / scale


def _apply_ringing(x: torch.Tensor, p: Mapping[str, Any]) -> torch.Tensor:
    cutoff = float(p["cutoff"])
    if cutoff >= 1.0:
        return x
    height, width = x.shape[-2:]
    spectrum = torch.fft.rfft2(x)
    fy = torch.fft.fftfreq(height, device=x.device).abs()[:, None] * 2  # in units of Nyquist
    fx = torch.fft.rfftfreq(width, device=x.device)[None, :] * 2
    keep = ((fy <= cutoff) & (fx <= cutoff)).to(spectrum.dtype)
    return torch.fft.irfft2(spectrum * keep, s=(height, width))


def _apply_hue(x: torch.Tensor, p: Mapping[str, Any]) -> torch.Tensor:
    shift = float(p["shift"])
    return x if shift == 0.0 else TF.adjust_hue(x.clamp(0, 1), shift)


def _apply_block_loss(x: torch.Tensor, p: Mapping[str, Any]) -> torch.Tensor:
    fraction = float(p["fraction"])
    height, width = x.shape[-2:]
    rows, cols = height // _BLOCK_SIZE, width // _BLOCK_SIZE
    if fraction <= 0 or rows < 2 or cols < 2:
        return x
    generator = torch.Generator().manual_seed(int(p["seed"]))
    lost = torch.rand(rows, cols, generator=generator) < fraction
    direction = torch.randint(0, 4, (rows, cols), generator=generator)
    out = x.clone()
    b = _BLOCK_SIZE
    for i, j in lost.nonzero().tolist():
        di, dj = [(-1, 0), (1, 0), (0, -1), (0, 1)][int(direction[i, j])]
        si, sj = min(max(i + di, 0), rows - 1), min(max(j + dj, 0), cols - 1)
        if (si, sj) == (i, j):
            si, sj = min(max(i - di, 0), rows - 1), min(max(j - dj, 0), cols - 1)
        out[..., i * b : (i + 1) * b, j * b : (j + 1) * b] = x[..., si * b : (si + 1) * b, sj * b : (sj + 1) * b]
    return out


def _apply_exposure(x: torch.Tensor, p: Mapping[str, Any]) -> torch.Tensor:
    if p["gain"] == 1.0 and p["saturation"] == 1.0 and not any(p["cast"]):
        return x
    cast = torch.tensor(p["cast"], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    out = (x * float(p["gain"]) * (1.0 + cast)).clamp(0.0, 1.0)  # the clipping is part of the distortion
    return TF.adjust_saturation(out, float(p["saturation"]))


_Sampler = Callable[[np.random.Generator, float], dict[str, Any]]
_Applier = Callable[[torch.Tensor, Mapping[str, Any]], torch.Tensor]

# Insertion order is the public order of list_families() and the order sample_distortion indexes into.
_FAMILIES: dict[str, tuple[_Sampler, _Applier]] = {
    "blur": (_params_blur, _apply_blur),
    "noise": (_params_noise, _apply_noise),
    "jpeg": (_params_jpeg, _apply_jpeg),
    "brightness": (_params_brightness, _apply_brightness),
    "contrast": (_params_contrast, _apply_contrast),
    "saturation": (_params_saturation, _apply_saturation),
    "color_shift": (_params_color_shift, _apply_color_shift),
    "gamma": (_params_gamma, _apply_gamma),
    "translate": (_params_translate, _apply_translate),
    "rotate_scale": (_params_rotate_scale, _apply_rotate_scale),
    "pixelate": (_params_pixelate, _apply_pixelate),
    "sharpen": (_params_sharpen, _apply_sharpen),
    # recipe 2
    "noise_gray": (_params_noise_gray, _apply_noise_gray),
    "noise_impulse": (_params_noise_impulse, _apply_noise_impulse),
    "noise_poisson": (_params_noise_poisson, _apply_noise_poisson),
    "noise_pink": (_params_noise_pink, _apply_noise_pink),
    "noise_speckle": (_params_noise_speckle, _apply_noise_speckle),
    "blur_motion": (_params_blur_motion, _apply_blur_motion),
    "blur_defocus": (_params_blur_defocus, _apply_blur_defocus),
    "jpeg2000": (_params_jpeg2000, _apply_jpeg2000),
    "quantize": (_params_quantize, _apply_quantize),
    "ringing": (_params_ringing, _apply_ringing),
    "hue": (_params_hue, _apply_hue),
    "block_loss": (_params_block_loss, _apply_block_loss),
    # recipe 3 (with three recipe-1/2 noise families)
    "exposure": (_params_exposure, _apply_exposure),
}
_RECIPE_1 = tuple(list(_FAMILIES)[:12])
_RECIPE_2 = tuple(list(_FAMILIES)[:24])
_RECIPE_3 = ("exposure", "noise", "noise_gray", "noise_pink")


def list_families(recipe: str = "1") -> list[str]:
    """Names of the single distortion families of a recipe, in a fixed order.

    Args:
        recipe: ``"1"`` (the default: the families ``sample_distortion`` draws from when ``families`` is None, those of
            ``val-v1``), ``"2"`` (recipe 1 plus the IQA-style families of the module docstring's second table) or
            ``"3"`` (the photometric stress recipe: ``exposure`` and three noise families).

    Returns:
        The family names accepted by :func:`sample_distortion` and :class:`Distortion`.

    Example:
        >>> list_families()[:3]
        ['blur', 'noise', 'jpeg']
        >>> len(list_families("2"))
        24
    """
    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {RECIPES}, got {recipe!r}.")
    return list({"1": _RECIPE_1, "2": _RECIPE_2, "3": _RECIPE_3}[recipe])


def _check_strength(strength: float, name: str = "strength") -> float:
    if isinstance(strength, bool) or not isinstance(strength, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a float in [0, 1], got {type(strength).__name__}.")
    value = float(strength)
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise ValueError(f"{name} must lie in [0, 1], got {value}; 0 is the identity and 1 the strongest effect.")
    return value


def _check_families(families: Sequence[str]) -> tuple[str, ...]:
    if isinstance(families, str):
        families = (families,)
    names = tuple(families)
    unknown = [name for name in names if name not in _FAMILIES]
    if unknown:
        raise ValueError(f"unknown distortion family {unknown}; choose from list_families() = {list(_FAMILIES)}.")
    return names


@dataclass(frozen=True)
class Distortion:
    """One distortion: one family or a combination of two, with every random choice fixed in ``params``.

    Attributes:
        families: One or two family names (see :func:`list_families`), applied in this order.
        params: Parameters per family, ``{family: {name: value}}``; JSON-serialisable. Each family's dict also
            holds the component ``strength`` it was sampled at.
        strength: Overall strength in [0, 1] the distortion was sampled at.

    Example:
        >>> import numpy as np, torch
        >>> d = sample_distortion(np.random.default_rng(0), strength=0.5, families=["blur"])
        >>> d.apply(torch.rand(3, 32, 32)).shape
        torch.Size([3, 32, 32])
    """

    families: tuple[str, ...]
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    strength: float = 0.0

    def __post_init__(self) -> None:
        names = _check_families(self.families)
        if not 1 <= len(names) <= 2 or len(set(names)) != len(names):
            raise ValueError(
                f"a Distortion has one family or two different families, got {list(names)}; "
                "combine at most two distinct families."
            )
        missing = [name for name in names if name not in self.params]
        if missing:
            raise ValueError(
                f"params has no entry for family {missing}; build distortions with sample_distortion() "
                "or Distortion.from_dict()."
            )
        object.__setattr__(self, "families", names)
        object.__setattr__(self, "strength", _check_strength(self.strength))

    @property
    def name(self) -> str:
        """Family names joined by ``+``, e.g. ``"blur+jpeg"``."""
        return "+".join(self.families)

    def apply(self, img: torch.Tensor) -> torch.Tensor:
        """Distort an image or a batch of images.

        Args:
            img: Float RGB image ``(3, H, W)`` or batch ``(N, 3, H, W)`` with values in [0, 1].

        Returns:
            The distorted image(s), same shape, dtype and device, clamped to [0, 1].

        Raises:
            TypeError: If ``img`` is not a floating-point tensor.
            ValueError: If its shape is not ``(3, H, W)`` / ``(N, 3, H, W)`` or its values leave [0, 1] or are NaN.
        """
        batch = _validate_images(img)
        out = batch.float()
        for family in self.families:
            out = _FAMILIES[family][1](out, self.params[family])
        out = out.clamp(0.0, 1.0).to(img.dtype)
        return out if img.dim() == 4 else out[0]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable description; :meth:`from_dict` inverts it."""
        return {
            "families": list(self.families),
            "params": {name: dict(values) for name, values in self.params.items()},
            "strength": self.strength,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Distortion:
        """Rebuild a distortion written by :meth:`to_dict`.

        Args:
            data: Mapping with keys ``families``, ``params`` and ``strength``.

        Returns:
            The equal :class:`Distortion`.

        Raises:
            ValueError: If a key is missing or a value is invalid.
        """
        missing = {"families", "params", "strength"} - set(data)
        if missing:
            raise ValueError(f"distortion spec lacks {sorted(missing)}; expected the output of Distortion.to_dict().")
        params = {str(name): dict(values) for name, values in data["params"].items()}
        return cls(families=tuple(data["families"]), params=params, strength=float(data["strength"]))


def _validate_images(img: torch.Tensor) -> torch.Tensor:
    """Check a ``(3,H,W)`` or ``(N,3,H,W)`` float image in [0,1] and return it as a 4-D batch."""
    if not isinstance(img, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor image, got {type(img).__name__}; convert with torch.as_tensor.")
    if not img.is_floating_point():
        raise TypeError(f"expected a float image in [0, 1], got dtype {img.dtype}; divide uint8 images by 255.")
    if img.dim() not in (3, 4) or img.shape[-3] != 3:
        raise ValueError(f"expected an RGB image (3, H, W) or batch (N, 3, H, W), got shape {tuple(img.shape)}.")
    if img.numel() and (torch.isnan(img).any() or img.min() < -1e-4 or img.max() > 1 + 1e-4):
        raise ValueError(
            f"image values must lie in [0, 1] without NaN, got range [{img.min().item():.4g}, "
            f"{img.max().item():.4g}]; rescale, e.g. (x + 1) / 2 for images in [-1, 1]."
        )
    return img if img.dim() == 4 else img.unsqueeze(0)


def sample_distortion(
    rng: np.random.Generator,
    strength: float | None = None,
    families: Sequence[str] | None = None,
    combine_probability: float = 0.2,
) -> Distortion:
    """Draw a random distortion.

    The draw order is fixed (combination coin, family choice(s), strength if not given, then each family's
    random choices), so equal rng states give equal distortions, and two calls that differ only in
    ``strength`` give distortions that differ only in magnitude.

    Args:
        rng: Source of randomness; advanced by the call.
        strength: Overall strength in [0, 1]; drawn uniformly from [0, 1] when ``None``.
        families: Families to choose from (default: the recipe-1 families, :func:`list_families`; pass
            ``list_families("2")`` for the IQA-style recipe).
        combine_probability: Probability of combining two different families (needs at least two in
            ``families``); each is then applied at ``COMBINATION_SCALE * strength``.

    Returns:
        The sampled :class:`Distortion`.

    Raises:
        TypeError: If ``rng`` is not a ``numpy.random.Generator``.
        ValueError: If ``strength`` or ``combine_probability`` is outside [0, 1] or a family is unknown/empty.

    Example:
        >>> d = sample_distortion(np.random.default_rng(0), strength=0.3, families=["noise"])
        >>> d.families, round(d.params["noise"]["std"], 3)
        (('noise',), 0.045)
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"rng must be a numpy.random.Generator, got {type(rng).__name__}; use numpy.random.default_rng(seed)."
        )
    pool = list(_RECIPE_1) if families is None else list(_check_families(families))
    if not pool:
        raise ValueError("families is empty; pass None for all families or a subset of list_families().")
    combine_probability = _check_strength(combine_probability, "combine_probability")

    combine = rng.random() < combine_probability and len(set(pool)) >= 2
    if combine:
        first, second = rng.choice(len(pool), size=2, replace=False)
        chosen: tuple[str, ...] = (pool[int(first)], pool[int(second)])
        if chosen[0] == chosen[1]:  # duplicates in ``pool``: fall back to one family
            chosen = chosen[:1]
    else:
        chosen = (pool[int(rng.integers(len(pool)))],)
    overall = float(rng.random()) if strength is None else _check_strength(strength)
    component = overall * COMBINATION_SCALE if len(chosen) == 2 else overall

    params: dict[str, dict[str, Any]] = {}
    for family in chosen:
        values = _FAMILIES[family][0](rng, component)
        values["strength"] = component
        params[family] = values
    return Distortion(families=chosen, params=params, strength=overall)
