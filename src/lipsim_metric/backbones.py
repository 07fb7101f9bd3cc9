"""1-Lipschitz feature extractors and their registry.

Every backbone maps a float RGB image ``(N, 3, S, S)`` in ``[0, 1]`` (``S = input_size``, 224 for all shipped
variants) to features ``(N, embed_dim)`` and is 1-Lipschitz in l2 *by construction*: it is a composition of the
blocks of :mod:`lipsim_metric.layers`, each 1-Lipschitz, plus a constant shift of the input (an isometry).

Registered variants:

``lipsim-paper-small``
    The published LipSim "small" network (Ghazanfari et al., ICLR 2024, arXiv:2310.18274, built on the SLL
    "small" network of Araujo et al., ICLR 2023): zero-pad RGB to 45 channels, 20 SLL convolutions (hidden
    width 5) at full 224x224 resolution, two 4x4 sum-pools divided by 4 (224 -> 56 -> 14), flatten
    45*14*14 = 8820, 7 SLL dense layers (hidden width 1024), keep the first 1792 outputs. Its SLL convolutions
    use the official code's ``t`` (``q`` cancels; see :class:`~lipsim_metric.layers.SLLConv2d`), so the authors'
    checkpoints load unchanged (see :mod:`lipsim_metric.convert`).

``lipsim-fast`` (the default)
    Designed here for throughput at the same input contract: subtract the ImageNet mean (a shift), pixel-unshuffle
    by 4 (3x224x224 -> 48x56x56, an isometry), 3 SLL convolutions (hidden 24) at 56x56, pixel-unshuffle by 2
    (-> 192x28x28), 3 SLL convolutions (hidden 32) at 28x28, 4x4 sum-pool / 4 (-> 192x7x7 = 9408), 2 SLL dense
    layers (hidden 512), keep the first ``embed_dim`` (2304) outputs. About 40x fewer activations than the paper
    network; see ``benchmarks/RESULTS.md`` for measured speed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from . import layers as _layers
from .layers import (
    ChannelScale,
    ChannelZeroPad,
    Flatten,
    LowFrequencyDamp,
    MeanStdPool2d,
    PixelUnshuffle,
    SLLConv2d,
    SLLLinear,
    SumPool2d,
    Truncate,
)

__all__ = ["LipschitzBackbone", "create_backbone", "list_backbones", "register_backbone", "DEFAULT_BACKBONE"]

DEFAULT_BACKBONE = "lipsim-fast"

_IMAGENET_MEAN = (0.485, 0.456, 0.406)


class LipschitzBackbone(nn.Module):
    """A 1-Lipschitz map from ``(N, 3, input_size, input_size)`` images in [0, 1] to ``(N, embed_dim)``.

    Attributes:
        input_size: the spatial size the network expects (square).
        embed_dim: number of output features.
        name: registry name of the variant.
    """

    def __init__(self, name: str, input_size: int, embed_dim: int, input_shift: tuple[float, ...] | None) -> None:
        super().__init__()
        self.name, self.input_size, self.embed_dim = name, input_size, embed_dim
        shift = torch.tensor(input_shift if input_shift is not None else (0.0, 0.0, 0.0)).reshape(1, 3, 1, 1)
        self.register_buffer("input_shift", shift, persistent=False)

    #: The composition of 1-Lipschitz stages is 1-Lipschitz (checked for every block by ``create_backbone``).
    lipschitz_bound: float = 1.0

    #: Names of the submodules applied in order (kept as names, not a second registration, so that each parameter
    #: has exactly one name in the state dict).
    stages: tuple[str, ...] = ()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Subtracting a constant is an isometry, so it does not change the Lipschitz constant.
        shift: torch.Tensor = self.input_shift  # type: ignore[assignment]
        x = x - shift.to(x.dtype)
        for name in self.stages:
            x = getattr(self, name)(x)
        return x


class PaperSmall(LipschitzBackbone):
    """The published LipSim small network; parameter names follow the official checkpoint layout."""

    def __init__(
        self,
        channels: int = 45,
        conv_depth: int = 20,
        conv_hidden: int = 5,
        linear_depth: int = 7,
        linear_hidden: int = 1024,
        embed_dim: int = 1792,
        input_size: int = 224,
    ) -> None:
        super().__init__("lipsim-paper-small", input_size, embed_dim, input_shift=None)
        if input_size % 16:
            raise ValueError(f"input_size must be a multiple of 16 (two 4x4 pools), got {input_size}")
        features = channels * (input_size // 16) ** 2
        self.pad = ChannelZeroPad(3, channels)
        self.convs = nn.Sequential(*[SLLConv2d(channels, conv_hidden, 3, q_weighted=False) for _ in range(conv_depth)])
        self.pool = nn.Sequential(SumPool2d(4), SumPool2d(4), Flatten())
        self.linear = nn.Sequential(*[SLLLinear(features, linear_hidden) for _ in range(linear_depth)])
        self.trunc = Truncate(embed_dim)
        self.stages = ("pad", "convs", "pool", "linear", "trunc")


class FastBackbone(LipschitzBackbone):
    """The efficient variant (see module docstring).

    Args:
        stage1_depth, stage1_hidden: SLL convolutions at 56x56 (48 channels) and their hidden width.
        stage2_depth, stage2_hidden: SLL convolutions at 28x28 (192 channels) and their hidden width.
        linear_depth, linear_hidden: SLL dense layers on the pooled features (0 for none).
        embed_dim: keep the first ``embed_dim`` features; None keeps them all.
        input_size: side of the square input (a multiple of 32).
        pooling: ``"sum"`` (4x4 sum-pool / 4: block means) or ``"mean_std"`` (:class:`MeanStdPool2d`: block means
            and block spreads, twice the features; the spreads see noise, grain and blocking that block means
            average away).
        channel_scale: learned per-channel weights in (0, 1) on the pooled maps (:class:`ChannelScale`).
        pool_size: side of the pooling blocks on the 28x28 maps (4: a 7x7 grid; 2: a 14x14 grid, 4x the features,
            which pin the image down more finely).
        pixel_weight: ``a`` in ``[0, 1)``; when positive the output is ``[sqrt(1 - a^2) F(x); a (x - mu)]``: the
            convolutional features ``F(x)`` (after ``embed_dim`` truncation) followed by the mean-shifted pixels
            (``3 S^2`` more coordinates). See :meth:`forward` for why this stays 1-Lipschitz and what it buys.
        pixel_low_weight: ``w`` in ``(0, 1]``: the pixel part passes through :class:`LowFrequencyDamp` (``x - (1 - w)
            B x``, ``B`` a binomial blur of order ``pixel_low_order``) first, so smooth shifts (brightness, gamma,
            colour) count ``w`` times less than noise; 1-Lipschitz and injective. ``1`` (the default): plain pixels.
            Only used when ``pixel_weight > 0``.
        pixel_low_order: order ``k`` of the blur (standard deviation ``sqrt(k / 2)`` pixels).
    """

    def __init__(
        self,
        stage1_depth: int = 3,
        stage1_hidden: int = 24,
        stage2_depth: int = 3,
        stage2_hidden: int = 32,
        linear_depth: int = 2,
        linear_hidden: int = 512,
        embed_dim: int | None = 2304,
        input_size: int = 224,
        pooling: str = "sum",
        channel_scale: bool = False,
        pool_size: int = 4,
        pixel_weight: float = 0.0,
        pixel_low_weight: float = 1.0,
        pixel_low_order: int = 32,
    ) -> None:
        if not 0.0 <= pixel_weight < 1.0:
            raise ValueError(f"pixel_weight must be in [0, 1), got {pixel_weight}")
        if input_size % 32:
            raise ValueError(f"input_size must be a multiple of 32, got {input_size}")
        if pooling not in ("sum", "mean_std"):
            raise ValueError(f"pooling must be 'sum' or 'mean_std', got {pooling!r}")
        if pool_size < 1 or (input_size // 8) % pool_size:
            raise ValueError(f"pool_size must divide input_size / 8 = {input_size // 8}, got {pool_size}")
        c1, c2 = 3 * 16, 3 * 16 * 4
        pooled = c2 * (2 if pooling == "mean_std" else 1)
        features = pooled * (input_size // (8 * pool_size)) ** 2
        embed_dim = features if embed_dim is None else embed_dim
        if embed_dim > features:
            raise ValueError(f"embed_dim={embed_dim} exceeds the {features} features available")
        pixels = 3 * input_size**2 if pixel_weight else 0
        super().__init__("lipsim-fast", input_size, embed_dim + pixels, input_shift=_IMAGENET_MEAN)
        self.feature_dim = embed_dim  # F(x) coordinates; the pixel part follows them
        self.pixel_weight = float(pixel_weight)
        self.pixel_filter = LowFrequencyDamp(pixel_low_weight, pixel_low_order)
        self.stage1 = nn.Sequential(PixelUnshuffle(4), *[SLLConv2d(c1, stage1_hidden) for _ in range(stage1_depth)])
        self.stage2 = nn.Sequential(PixelUnshuffle(2), *[SLLConv2d(c2, stage2_hidden) for _ in range(stage2_depth)])
        pool: list[nn.Module] = [SumPool2d(pool_size) if pooling == "sum" else MeanStdPool2d(pool_size)]
        if channel_scale:
            pool.append(ChannelScale(pooled))
        self.pool = nn.Sequential(*pool, Flatten())
        self.linear = nn.Sequential(*[SLLLinear(features, linear_hidden) for _ in range(linear_depth)])
        self.trunc = Truncate(self.feature_dim)
        self.stages = ("stage1", "stage2", "pool", "linear", "trunc")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features ``F(x)``, or ``[b F(x); a (x - mu)]`` with ``a = pixel_weight``, ``b = sqrt(1 - a^2)``.

        Lipschitz: ``||[b (F(x) - F(y)); a (x - y)]||^2 = b^2 ||F(x) - F(y)||^2 + a^2 ||x - y||^2 <= (b^2 + a^2)
        ||x - y||^2 = ||x - y||^2``, since ``F`` is 1-Lipschitz. What the pixel part buys: the map is *injective*
        (equal outputs force ``x = y``), so no image but the photo itself is at distance 0 from it, whereas block
        means and spreads alone are matched by a large set of noise images (the feature-inversion blind spot of
        ``examples/feature_inversion.py``); and a denoiser trained against it cannot leave noise the pooled
        features do not see. The price: ``3 S^2`` more embedding coordinates (150,528 at 224).
        """
        feats = super().forward(x)
        if not self.pixel_weight:
            return feats
        shift: torch.Tensor = self.input_shift  # type: ignore[assignment]
        a = self.pixel_weight
        pixels = self.pixel_filter(x - shift.to(x.dtype)).flatten(1).to(feats.dtype)
        return torch.cat([math.sqrt(1.0 - a * a) * feats, a * pixels], dim=1)


_REGISTRY: dict[str, Callable[..., LipschitzBackbone]] = {}


def register_backbone(name: str) -> Callable[[Callable[..., LipschitzBackbone]], Callable[..., LipschitzBackbone]]:
    """Decorator registering a constructor under ``name`` (timm-style)."""

    def wrap(fn: Callable[..., LipschitzBackbone]) -> Callable[..., LipschitzBackbone]:
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn

    return wrap


@register_backbone("lipsim-paper-small")
def _paper_small(**kwargs: Any) -> LipschitzBackbone:
    return PaperSmall(**kwargs)


@register_backbone("lipsim-fast")
def _fast(**kwargs: Any) -> LipschitzBackbone:
    return FastBackbone(**kwargs)


def list_backbones() -> list[str]:
    """Names of the registered backbone variants."""
    return sorted(_REGISTRY)


def create_backbone(name: str = DEFAULT_BACKBONE, **kwargs: Any) -> LipschitzBackbone:
    """Build an untrained backbone by registry name.

    Args:
        name: one of :func:`list_backbones`.
        **kwargs: architecture overrides passed to the constructor (e.g. ``embed_dim``).

    Returns:
        The randomly initialised backbone (use :class:`lipsim_metric.LipSim` for pretrained weights).

    Raises:
        ValueError: if ``name`` is not registered.
        TypeError: if the network holds a parametrised block that declares no Lipschitz bound <= 1
            (:func:`lipsim_metric.layers.check_lipschitz_declarations`).
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown backbone {name!r}; choose one of {list_backbones()}")
    backbone = _REGISTRY[name](**kwargs)
    _layers.check_lipschitz_declarations(backbone, name=name)  # TypeError for a block without a proven bound
    return backbone
