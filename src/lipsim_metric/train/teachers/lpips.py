"""LPIPS v0.1 distance teacher.

Zhang, Isola, Efros, Shechtman, Wang. "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric".
CVPR 2018. https://arxiv.org/abs/1801.03924, official code github.com/richzhang/PerceptualSimilarity (PyPI
``lpips==0.1.4``). Eq. (1) of the paper: ``d(x, x0) = sum_l 1/(H_l W_l) sum_{h,w} || w_l * (yhat_l - yhat0_l)_{hw}
||^2`` with ``yhat_l`` the channel-unit-normalised ReLU activations of layer ``l`` of an ImageNet trunk and ``w_l``
the learned heads.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ._common import (
    _ALEXNET_CHANNELS,
    _ALEXNET_TAPS,
    _VGG16_CHANNELS,
    _VGG16_TAPS,
    _check_pair,
    _FrozenTeacher,
    _per_channel_buffer,
    _TappedTrunk,
    _unit_normalize,
)
from .weights import PathLike, _load_lpips_heads, load_alexnet_features, load_vgg16_features

# LPIPS v0.1 ScalingLayer (lpips/lpips.py), applied to images in [-1, 1].
_LPIPS_SHIFT = (-0.030, -0.088, -0.188)
_LPIPS_SCALE = (0.458, 0.448, 0.450)

class LPIPS(_FrozenTeacher):
    """LPIPS v0.1 distance (Zhang et al., CVPR 2018), numerically the ``lpips==0.1.4`` package.

    ``forward`` maps images in [0, 1] to [-1, 1], applies LPIPS's ``(x - shift) / scale``, taps the ReLU outputs
    relu1_2..relu5_3 (VGG16) or relu1..relu5 (AlexNet), unit-normalises each over channels (eps 1e-10), takes the
    squared difference, applies the learned 1x1 head of each layer, averages spatially and sums over layers
    (Eq. 1 of the paper; ``spatial=False``, ``normalize=True`` in the package).

    Args:
        net: trunk, ``"vgg"`` or ``"alex"``.
        trunk_path: ImageNet trunk weights (see :func:`load_vgg16_features`); None to resolve as documented there.
        heads_path: ``lpips_v0.1_{net}_heads.safetensors`` (keys ``lin{k}.model.1.weight``, or the package's
            ``weights/v0.1/{net}.pth``); None for ``$LIPSIM_TEACHERS_DIR`` or an installed ``lpips`` package.

    Raises:
        ValueError: if ``net`` is not ``"vgg"``/``"alex"`` or a weight file does not match.
        FileNotFoundError: if weights cannot be found.

    Example:
        >>> metric = LPIPS("alex", trunk_path=".../alexnet_imagenet_features.safetensors",
        ...                heads_path=".../lpips_v0.1_alex_heads.safetensors")  # doctest: +SKIP
        >>> metric(x0, x1)  # (N,) distances, 0 for identical images                # doctest: +SKIP
    """

    NETS = ("vgg", "alex")
    shift: Tensor
    scale: Tensor

    def __init__(self, net: str = "vgg", trunk_path: PathLike | None = None,
                 heads_path: PathLike | None = None) -> None:
        super().__init__()
        if net not in self.NETS:
            raise ValueError(f"net must be one of {self.NETS}, got {net!r}.")
        self.net = net
        if net == "vgg":
            features, taps, channels = load_vgg16_features(trunk_path), _VGG16_TAPS, _VGG16_CHANNELS
        else:
            features, taps, channels = load_alexnet_features(trunk_path), _ALEXNET_TAPS, _ALEXNET_CHANNELS
        self.trunk = _TappedTrunk(features, taps)
        head_weights = _load_lpips_heads(net, heads_path, channels)
        heads = []
        for k, c in enumerate(channels):
            with torch.device("meta"):  # no random init; the weight is replaced right away
                head = nn.Conv2d(c, 1, kernel_size=1, bias=False)
            head.weight = nn.Parameter(head_weights[f"lin{k}.model.1.weight"])
            heads.append(head)
        self.heads = nn.ModuleList(heads)
        self.register_buffer("shift", _per_channel_buffer(_LPIPS_SHIFT), persistent=False)
        self.register_buffer("scale", _per_channel_buffer(_LPIPS_SCALE), persistent=False)
        self._freeze()

    def forward(self, x0: Tensor, x1: Tensor) -> Tensor:
        """LPIPS distance between corresponding images.

        Args:
            x0: images ``(N, 3, H, W)`` in [0, 1], ``H, W >= 32``.
            x1: images of the same shape.

        Returns:
            Distances ``(N,)`` (0 for identical images, larger is more different).

        Raises:
            TypeError: for non-tensor or non-float input.
            ValueError: for a wrong shape, size < 32, values outside [0, 1], NaN, or mismatched shapes.
        """
        x0, x1 = _check_pair(x0, x1)
        n = x0.shape[0]
        both = self.features(torch.cat([x0, x1]))
        return self.distance_from_features([f[:n] for f in both], [f[n:] for f in both])

    def features(self, x: Tensor) -> list[Tensor]:
        """Unit-normalised trunk features of ``x`` (``(N, 3, H, W)`` in [0, 1], not checked), one per stage.

        ``distance_from_features(features(a), features(b))`` equals ``forward(a, b)``; attacks use the split to
        compute fixed images' features once.
        """
        return [_unit_normalize(f) for f in self.trunk((x * 2 - 1 - self.shift) / self.scale)]

    def distance_from_features(self, f0: Sequence[Tensor], f1: Sequence[Tensor]) -> Tensor:
        """LPIPS distance ``(N,)`` from two lists of :meth:`features`."""
        total = f0[0].new_zeros(f0[0].shape[0])
        for a, b, head in zip(f0, f1, self.heads, strict=True):
            total = total + head((a - b) ** 2).mean(dim=(1, 2, 3))  # head has one output channel
        return total
