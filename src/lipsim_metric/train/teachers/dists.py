"""DISTS distance teacher and its L2 pooling.

Ding, Ma, Wang, Simoncelli. "Image Quality Assessment: Unifying Structure and Texture Similarity". IEEE TPAMI 2020
(vol. 44(5), 2022). https://arxiv.org/abs/2004.07728, official code github.com/dingkeyan93/DISTS (PyPI
``DISTS_pytorch==0.1``). Eqs. (5)-(9): per-channel texture (mean) and structure (covariance) similarities on an
L2-pooled VGG16, weighted by learned ``alpha``/``beta``; ``D = 1 - sum (alpha l + beta s)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._common import (
    _IMAGENET_MEAN,
    _IMAGENET_STD,
    _VGG16_TAPS,
    DISTS_CHANNELS,
    _check_pair,
    _FrozenTeacher,
    _per_channel_buffer,
    _TappedTrunk,
)
from .weights import PathLike, _load_dists_alpha_beta, load_vgg16_features

# VGG16 max-pools that DISTS replaces by L2 pooling, with the channel count they see.
_DISTS_POOLS = {4: 64, 9: 128, 16: 256, 23: 512}

class L2Pooling(nn.Module):
    """L2 pooling of DISTS (Ding et al., TPAMI 2020, Sec. 3.1), replacing VGG's max-pooling.

    ``y = sqrt(conv(x^2, g) + 1e-12)`` with ``g`` the normalised outer product of ``hanning(5)[1:-1]`` (a 3x3
    kernel), stride 2, padding 1, applied depthwise; exactly ``L2pooling`` of ``DISTS_pytorch``.

    Args:
        channels: number of input channels.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.filter: Tensor
        window = torch.tensor([0.5, 1.0, 0.5], dtype=torch.float64)  # numpy.hanning(5)[1:-1], exactly
        kernel = window[:, None] * window[None, :]
        kernel = (kernel / kernel.sum()).to(torch.float32)
        self.register_buffer("filter", kernel.expand(channels, 1, 3, 3).contiguous(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """Pool ``(N, C, H, W)`` to ``(N, C, floor((H - 1) / 2) + 1, floor((W - 1) / 2) + 1)``.

        Args:
            x: feature maps with ``C == channels``.

        Returns:
            The L2-pooled maps.
        """
        out = F.conv2d(x**2, self.filter, stride=2, padding=1, groups=self.channels)
        return (out + 1e-12).sqrt()


class DISTS(_FrozenTeacher):
    """DISTS distance (Ding et al., TPAMI 2020), numerically the ``DISTS_pytorch==0.1`` package.

    The image itself (3 channels) and the VGG16 ReLU outputs relu1_2..relu5_3 (max-pools replaced by
    :class:`L2Pooling`, input normalised with ImageNet mean/std) give 1475 channels. Per channel, with
    ``c1 = c2 = 1e-6``: texture ``l = (2 mu_x mu_y + c1) / (mu_x^2 + mu_y^2 + c1)`` and structure
    ``s = (2 cov_xy + c2) / (var_x + var_y + c2)``; ``alpha``, ``beta`` are divided by their joint sum and
    ``D = 1 - sum_c (alpha_c l_c + beta_c s_c)``.

    Args:
        trunk_path: ImageNet VGG16 weights (see :func:`load_vgg16_features`).
        alpha_beta_path: ``dists_alpha_beta.safetensors`` (keys ``alpha``, ``beta``, shape (1, 1475, 1, 1), or the
            package's ``weights.pt``); None for ``$LIPSIM_TEACHERS_DIR`` or an installed ``DISTS_pytorch``.

    Raises:
        FileNotFoundError: if weights cannot be found.
        ValueError: if a weight file does not match.
    """

    CHANNELS = DISTS_CHANNELS
    mean: Tensor
    std: Tensor
    C1 = 1e-6
    C2 = 1e-6

    def __init__(self, trunk_path: PathLike | None = None, alpha_beta_path: PathLike | None = None) -> None:
        super().__init__()
        features = load_vgg16_features(trunk_path)
        for index, channels in _DISTS_POOLS.items():
            features[index] = L2Pooling(channels)
        self.trunk = _TappedTrunk(features, _VGG16_TAPS)
        weights = _load_dists_alpha_beta(alpha_beta_path)
        self.alpha = nn.Parameter(weights["alpha"])
        self.beta = nn.Parameter(weights["beta"])
        self.register_buffer("mean", _per_channel_buffer(_IMAGENET_MEAN), persistent=False)
        self.register_buffer("std", _per_channel_buffer(_IMAGENET_STD), persistent=False)
        self._freeze()

    def forward(self, x0: Tensor, x1: Tensor) -> Tensor:
        """DISTS distance between corresponding images.

        Args:
            x0: images ``(N, 3, H, W)`` in [0, 1], ``H, W >= 32``.
            x1: images of the same shape.

        Returns:
            Distances ``(N,)``; about 0 (within float rounding, ~1e-6) for identical images.

        Raises:
            TypeError: for non-tensor or non-float input.
            ValueError: for a wrong shape, size < 32, values outside [0, 1], NaN, or mismatched shapes.
        """
        x0, x1 = _check_pair(x0, x1)
        n = x0.shape[0]
        both = self.features(torch.cat([x0, x1]))
        return self.distance_from_features([f[:n] for f in both], [f[n:] for f in both])

    def features(self, x: Tensor) -> list[Tensor]:
        """The image and its trunk features (``x``: ``(N, 3, H, W)`` in [0, 1], not checked), one per stage.

        ``distance_from_features(features(a), features(b))`` equals ``forward(a, b)``; attacks use the split to
        compute fixed images' features once.
        """
        return [x, *self.trunk((x - self.mean) / self.std)]

    def distance_from_features(self, stages0: Sequence[Tensor], stages1: Sequence[Tensor]) -> Tensor:
        """DISTS distance ``(N,)`` from two lists of :meth:`features`."""
        n = stages0[0].shape[0]
        total = self.alpha.sum() + self.beta.sum()
        alphas = torch.split(self.alpha / total, list(self.CHANNELS), dim=1)
        betas = torch.split(self.beta / total, list(self.CHANNELS), dim=1)
        texture = stages0[0].new_zeros(n, 1, 1, 1)
        structure = stages0[0].new_zeros(n, 1, 1, 1)
        for f0, f1, alpha, beta in zip(stages0, stages1, alphas, betas, strict=True):
            mean0 = f0.mean([2, 3], keepdim=True)
            mean1 = f1.mean([2, 3], keepdim=True)
            similarity_l = (2 * mean0 * mean1 + self.C1) / (mean0**2 + mean1**2 + self.C1)
            texture = texture + (alpha * similarity_l).sum(1, keepdim=True)
            var0 = ((f0 - mean0) ** 2).mean([2, 3], keepdim=True)
            var1 = ((f1 - mean1) ** 2).mean([2, 3], keepdim=True)
            cov = (f0 * f1).mean([2, 3], keepdim=True) - mean0 * mean1
            similarity_s = (2 * cov + self.C2) / (var0 + var1 + self.C2)
            structure = structure + (beta * similarity_s).sum(1, keepdim=True)
        return 1 - (texture + structure).reshape(n)
