"""Feature-statistics embedding teachers (:class:`AlexNetStats`, :class:`VGGStats`), an offline stand-in for DreamSim.

A global embedding made of the per-channel spatial mean and standard deviation of the LPIPS layers (Zhang et al.,
CVPR 2018), i.e. the "texture" statistics of DISTS (Ding et al., TPAMI 2020).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._common import (
    _ALEXNET_CHANNELS,
    _ALEXNET_TAPS,
    _IMAGENET_MEAN,
    _IMAGENET_STD,
    _VGG16_CHANNELS,
    _VGG16_TAPS,
    _check_images,
    _FrozenTeacher,
    _per_channel_buffer,
    _TappedTrunk,
)
from .weights import PathLike, load_alexnet_features, load_vgg16_features


class _FeatureStats(_FrozenTeacher):
    """Unit-norm embedding of per-channel spatial mean and std at the LPIPS layers of an ImageNet trunk.

    Input normalised with ImageNet mean/std (as DISTS). For each tapped ReLU stage ``s`` with ``C_s`` channels:
    ``v_s = [mean_c; std_c]`` (length ``2 C_s``, population std ``sqrt(var + 1e-10)``, the epsilon keeping the
    gradient finite for constant channels), ``e_s = v_s / ||v_s|| / sqrt(S)``; the output is the concatenation of
    the ``e_s`` in layer order, so it has unit l2 norm (unless a whole stage is zero).
    """

    _STD_EPS = 1e-10
    mean: Tensor
    std: Tensor

    def __init__(self, features: nn.Sequential, taps: Sequence[int], channels: Sequence[int]) -> None:
        super().__init__()
        self.trunk = _TappedTrunk(features, taps)
        self.stage_channels = tuple(channels)
        self.embed_dim = 2 * sum(channels)
        self.register_buffer("mean", _per_channel_buffer(_IMAGENET_MEAN), persistent=False)
        self.register_buffer("std", _per_channel_buffer(_IMAGENET_STD), persistent=False)
        self._freeze()

    def forward(self, x: Tensor) -> Tensor:
        """Embed images.

        Args:
            x: images ``(N, 3, H, W)`` in [0, 1], ``H, W >= 32``.

        Returns:
            Embeddings ``(N, embed_dim)`` with unit l2 norm.

        Raises:
            TypeError: for non-tensor or non-float input.
            ValueError: for a wrong shape, size < 32, values outside [0, 1] or NaN.
        """
        x = _check_images(x, "x")
        stages = self.trunk((x - self.mean) / self.std)
        scale = 1.0 / math.sqrt(len(stages))
        parts = []
        for features in stages:
            mean = features.mean(dim=(2, 3))
            std = ((features - mean[:, :, None, None]) ** 2).mean(dim=(2, 3)).add(self._STD_EPS).sqrt()
            parts.append(F.normalize(torch.cat([mean, std], dim=1), dim=1) * scale)
        return torch.cat(parts, dim=1)


class AlexNetStats(_FeatureStats):
    """Feature-statistics embedding on ImageNet AlexNet relu1..relu5 (LPIPS-Alex layers); ``embed_dim`` 2304.

    See :class:`_FeatureStats` for the definition (texture statistics in the sense of DISTS, Ding et al. 2020,
    on the layers of LPIPS, Zhang et al. 2018).

    Args:
        trunk_path: AlexNet weights (see :func:`load_alexnet_features`).

    Raises:
        FileNotFoundError: if weights cannot be found.
        ValueError: if the weight file does not match.
    """

    def __init__(self, trunk_path: PathLike | None = None) -> None:
        super().__init__(load_alexnet_features(trunk_path), _ALEXNET_TAPS, _ALEXNET_CHANNELS)


class VGGStats(_FeatureStats):
    """Feature-statistics embedding on ImageNet VGG16 relu1_2..relu5_3 (LPIPS-VGG layers); ``embed_dim`` 2944.

    See :class:`_FeatureStats` for the definition. Uses VGG's max-pooling (not DISTS's L2 pooling).

    Args:
        trunk_path: VGG16 weights (see :func:`load_vgg16_features`).

    Raises:
        FileNotFoundError: if weights cannot be found.
        ValueError: if the weight file does not match.
    """

    def __init__(self, trunk_path: PathLike | None = None) -> None:
        super().__init__(load_vgg16_features(trunk_path), _VGG16_TAPS, _VGG16_CHANNELS)
