"""Baseline perceptual distances to compare LipSim against, behind one front door: :func:`build_metric`.

Every metric is an ``nn.Module`` called as ``metric(a, b) -> (N,)`` on float RGB batches ``(N, 3, H, W)`` in
``[0, 1]``; larger means more different; all are differentiable in their inputs (so they can be attacked) and have
no trainable state.

* ``"lipsim"`` -- :class:`lipsim_metric.LipSim` (weights by name or ``.safetensors`` path).
* ``"lpips-alex"``, ``"lpips-vgg"``, ``"dists"`` -- the teachers of :mod:`lipsim_metric.train.teachers`
  (LPIPS v0.1, Zhang et al. CVPR 2018; DISTS, Ding et al. TPAMI 2020).
* ``"dreamsim"`` -- ``1 - cos`` of DreamSim embeddings (Fu et al., NeurIPS 2023), the teacher of the original LipSim,
  from the optional ``dreamsim`` package.
* ``"mse"`` -- mean squared error; ``"psnr"`` -- negative PSNR in dB for data range 1, ``10 log10(MSE)``
  (monotone in MSE, so identical 2AFC judgements).
* ``"ssim"`` -- ``1 - SSIM``, SSIM of Wang, Bovik, Sheikh, Simoncelli, "Image Quality Assessment: From Error
  Visibility to Structural Similarity", IEEE TIP 13(4), 2004 (Eq. 13; reference code
  https://www.cns.nyu.edu/~lcv/ssim/): 11x11 Gaussian window with sigma 1.5, ``K1 = 0.01``, ``K2 = 0.03``, data range
  ``L = 1``, "valid" filtering, the mean of the SSIM map. Colour images: the mean over the RGB channels (as
  scikit-image's ``channel_axis`` and piq do; the reference code works on luminance). Like the authors' ``ssim.m``,
  images are first average-pooled by ``f = max(1, round(min(H, W) / 256))`` (no pooling at 224x224).

Example:
    >>> import torch
    >>> ssim_distance = build_metric("ssim")
    >>> x = torch.rand(2, 3, 32, 32)
    >>> ssim_distance(x, x).abs().max().item() < 1e-6
    True
"""

from __future__ import annotations

import os
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..certificates import cosine_distance
from ..metric import LipSim

__all__ = [
    "METRICS",
    "list_metrics",
    "build_metric",
    "MSEDistance",
    "NegativePSNR",
    "SSIMDistance",
    "EmbeddingCosineDistance",
    "gaussian_window",
    "ssim",
]

#: Names accepted by :func:`build_metric`.
METRICS: tuple[str, ...] = ("lipsim", "lpips-alex", "lpips-vgg", "dists", "dreamsim", "mse", "psnr", "ssim")

_RANGE_TOLERANCE = 1e-4


def list_metrics() -> list[str]:
    """Names accepted by :func:`build_metric`."""
    return list(METRICS)


def _check_pair(a: object, b: object, min_size: int = 1) -> tuple[Tensor, Tensor]:
    for x, name in ((a, "a"), (b, "b")):
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor (N, C, H, W) in [0, 1], got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a float tensor in [0, 1], got {x.dtype}; use x.float() / 255 for uint8")
        if x.ndim != 4 or x.shape[0] == 0:
            raise ValueError(f"{name} must be a non-empty batch (N, C, H, W), got shape {tuple(x.shape)}; use "
                             "x.unsqueeze(0) for a single image")
        if min(x.shape[-2:]) < min_size:
            raise ValueError(f"{name} is {x.shape[-2]}x{x.shape[-1]}; this metric needs H, W >= {min_size}")
        values = x.detach()
        if not bool(torch.isfinite(values).all()):
            raise ValueError(f"{name} contains NaN or Inf values")
        lo, hi = float(values.min()), float(values.max())
        if lo < -_RANGE_TOLERANCE or hi > 1.0 + _RANGE_TOLERANCE:
            raise ValueError(f"{name} must be in [0, 1], got values in [{lo:.4g}, {hi:.4g}]; rescale with (x + 1) / 2 "
                             "or x / 255")
    a, b = cast(Tensor, a), cast(Tensor, b)
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return a, b


class MSEDistance(nn.Module):
    """Mean squared error per image, ``mean((a - b)^2)`` over channels and pixels; shape ``(N,)``."""

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        """Distances ``(N,)`` for batches ``(N, C, H, W)`` in [0, 1]."""
        a, b = _check_pair(a, b)
        return (a - b).pow(2).flatten(1).mean(dim=1)


class NegativePSNR(nn.Module):
    """``-PSNR = 10 log10(MSE)`` in dB for data range 1 (MSE floored at 1e-10, i.e. at most 100 dB); ``(N,)``."""

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        """Distances ``(N,)`` for batches ``(N, C, H, W)`` in [0, 1]."""
        a, b = _check_pair(a, b)
        return 10.0 * torch.log10((a - b).pow(2).flatten(1).mean(dim=1).clamp_min(1e-10))


def gaussian_window(size: int = 11, sigma: float = 1.5, dtype: torch.dtype = torch.float32,
                    device: torch.device | str | None = None) -> Tensor:
    """Normalised 1-D Gaussian of ``size`` taps (the 2-D window is its outer product), shape ``(size,)``."""
    if size < 1 or size % 2 == 0:
        raise ValueError(f"window size must be a positive odd integer, got {size}")
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(coords**2) / (2.0 * sigma**2))
    return (g / g.sum()).to(dtype=dtype, device=device)


def ssim(a: Tensor, b: Tensor, window_size: int = 11, sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03,
         data_range: float = 1.0, downsample: bool = True) -> Tensor:
    """Mean SSIM per image (Wang et al. 2004, Eq. 13 with a Gaussian window), differentiable; shape ``(N,)``.

    Args:
        a, b: float images ``(N, C, H, W)`` in ``[0, data_range]``, same shape.
        window_size: side of the Gaussian window (odd).
        sigma: its standard deviation in pixels.
        k1, k2: the stabilising constants, ``C1 = (k1 L)^2``, ``C2 = (k2 L)^2``.
        data_range: ``L``, the dynamic range of the pixel values.
        downsample: average-pool by ``max(1, round(min(H, W) / 256))`` first, as the authors' ``ssim.m``.

    Returns:
        SSIM in ``[-1, 1]`` (1 for identical images), averaged over the valid positions and the channels.

    Raises:
        ValueError: images smaller than the window (after pooling) or of different shapes.
    """
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(f"a and b must be (N, C, H, W) of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if downsample:
        factor = max(1, round(min(a.shape[-2:]) / 256))
        if factor > 1:
            a, b = F.avg_pool2d(a, factor), F.avg_pool2d(b, factor)
    if min(a.shape[-2:]) < window_size:
        raise ValueError(f"images of {a.shape[-2]}x{a.shape[-1]} pixels are smaller than the {window_size}x"
                         f"{window_size} SSIM window; use larger images or a smaller window_size")
    channels = a.shape[1]
    g = gaussian_window(window_size, sigma, dtype=a.dtype, device=a.device)
    kernel_h = g.view(1, 1, -1, 1).expand(channels, 1, -1, 1)
    kernel_w = g.view(1, 1, 1, -1).expand(channels, 1, 1, -1)

    def blur(x: Tensor) -> Tensor:  # separable Gaussian, "valid" positions only, each channel on its own
        return F.conv2d(F.conv2d(x, kernel_h, groups=channels), kernel_w, groups=channels)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return ssim_map.flatten(1).mean(dim=1)


class SSIMDistance(nn.Module):
    """``1 - SSIM`` (see :func:`ssim`); 0 for identical images, at most 2; shape ``(N,)``.

    Args:
        window_size, sigma, k1, k2, downsample: as in :func:`ssim` (defaults of Wang et al. 2004).
    """

    def __init__(self, window_size: int = 11, sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03,
                 downsample: bool = True) -> None:
        super().__init__()
        gaussian_window(window_size, sigma)  # validate now, not at the first call
        self.window_size, self.sigma, self.k1, self.k2, self.downsample = window_size, sigma, k1, k2, downsample

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        """Distances ``(N,)`` for batches ``(N, C, H, W)`` in [0, 1]."""
        a, b = _check_pair(a, b, min_size=self.window_size)
        return 1.0 - ssim(a, b, self.window_size, self.sigma, self.k1, self.k2, 1.0, self.downsample)

    def extra_repr(self) -> str:
        return f"window_size={self.window_size}, sigma={self.sigma}"


class EmbeddingCosineDistance(nn.Module):
    """``1 - cos(e(a), e(b))`` for an embedding network ``e`` (DreamSim's distance); shape ``(N,)``.

    Args:
        embedder: a module ``x -> (N, D)`` (e.g. :class:`lipsim_metric.train.teachers.DreamSimTeacher`).
    """

    def __init__(self, embedder: nn.Module) -> None:
        super().__init__()
        self.embedder = embedder

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        """Distances ``(N,)`` for batches ``(N, C, H, W)`` in [0, 1]."""
        a, b = _check_pair(a, b)
        ea, eb = self.embedder(a).flatten(1), self.embedder(b).flatten(1)
        return cosine_distance(F.normalize(ea.float(), dim=1), F.normalize(eb.float(), dim=1))


def build_metric(name: str, teachers_dir: str | os.PathLike[str] | None = None,
                 weights: str | os.PathLike[str] | None = None, device: str | torch.device = "cpu",
                 **kwargs: Any) -> nn.Module:
    """Build a distance ``metric(a, b) -> (N,)`` by name (see :data:`METRICS` and the module docstring).

    Args:
        name: one of :data:`METRICS`.
        teachers_dir: folder with the teacher weight files (``"lpips-*"``, ``"dists"``; for ``"dreamsim"`` its
            checkpoint cache); None: ``$LIPSIM_TEACHERS_DIR`` or the online sources.
        weights: LipSim weights (registered name or ``.safetensors`` path); None: the shipped default. Only for
            ``"lipsim"``.
        device: where the module is put.
        **kwargs: passed to the metric's constructor (``LipSim``, ``SSIMDistance``).

    Returns:
        The metric module in eval mode, its parameters frozen.

    Raises:
        ValueError: unknown name, or ``weights`` given for a metric other than ``"lipsim"``.
        FileNotFoundError: missing weight files (nothing falls back to random weights).
        ImportError: ``"dreamsim"`` without the ``dreamsim`` package (``pip install dreamsim``).

    Example:
        >>> build_metric("psnr")(torch.zeros(1, 3, 8, 8), torch.full((1, 3, 8, 8), 0.1)).round().item()
        -20.0
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, one of {METRICS}, got {type(name).__name__}")
    key = name.lower()
    if key not in METRICS:
        raise ValueError(f"unknown metric {name!r}; expected one of {METRICS}")
    if weights is not None and key != "lipsim":
        raise ValueError(f"weights= is only used by 'lipsim', not {name!r}; drop it")
    metric: nn.Module
    if key == "lipsim":
        metric = LipSim(weights=weights, **kwargs) if weights is not None else LipSim(**kwargs)
    elif key in ("lpips-alex", "lpips-vgg", "dists"):
        from ..train.teachers import build_distance_teacher

        metric = build_distance_teacher(key, teachers_dir=teachers_dir)
    elif key == "dreamsim":
        from ..train.teachers import DreamSimTeacher

        metric = EmbeddingCosineDistance(DreamSimTeacher(cache_dir=teachers_dir, device=device))
    elif key == "mse":
        metric = MSEDistance()
    elif key == "psnr":
        metric = NegativePSNR()
    else:
        metric = SSIMDistance(**kwargs)
    metric.requires_grad_(False)
    return metric.to(device).eval()

