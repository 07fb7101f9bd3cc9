"""Pieces shared by the teachers: input validation, the frozen base class, tapped ImageNet trunks, constants."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

MIN_IMAGE_SIZE = 32
# Inputs may exceed [0, 1] by this much (float rounding of resizing / colour conversion); more is a caller bug.
_RANGE_TOLERANCE = 1e-4

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
# Indices of the ReLU outputs tapped in torchvision's ``features`` (LPIPS slices relu1_2 .. relu5_3 for VGG16,
# relu1 .. relu5 for AlexNet); DISTS taps the same VGG16 indices.
_VGG16_TAPS = (3, 8, 15, 22, 29)
_ALEXNET_TAPS = (1, 4, 7, 9, 11)
_VGG16_CHANNELS = (64, 128, 256, 512, 512)
_ALEXNET_CHANNELS = (64, 192, 384, 256, 256)
# Channels of the DISTS stages: the image itself and the five VGG16 ReLU stages.
DISTS_CHANNELS = (3, 64, 128, 256, 512, 512)


def _check_images(x: object, name: str) -> Tensor:
    """Validate a float RGB batch ``(N, 3, H, W)`` in [0, 1] with ``H, W >= 32``; return it unchanged."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (N, 3, H, W), got {type(x).__name__}.")
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(
            f"{name} must have shape (N, 3, H, W) (RGB, channels first), got {tuple(x.shape)}; use "
            f"x.unsqueeze(0) for a single image or x.permute(0, 3, 1, 2) for channels-last."
        )
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a float tensor in [0, 1], got {x.dtype}; use x.float() / 255 for uint8.")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch; pass at least one image.")
    if min(x.shape[2], x.shape[3]) < MIN_IMAGE_SIZE:
        raise ValueError(
            f"{name} is {x.shape[2]}x{x.shape[3]}; teachers need H, W >= {MIN_IMAGE_SIZE}. Resize the images up."
        )
    values = x.detach()
    if not bool(torch.isfinite(values).all()):
        raise ValueError(f"{name} contains NaN or Inf values.")
    lo, hi = float(values.min()), float(values.max())
    if lo < -_RANGE_TOLERANCE or hi > 1.0 + _RANGE_TOLERANCE:
        raise ValueError(
            f"{name} must be in [0, 1], got values in [{lo:.4g}, {hi:.4g}]; convert [-1, 1] images with "
            f"(x + 1) / 2, 0..255 images with x / 255, or clamp with x.clamp(0, 1)."
        )
    return x


def _check_pair(x0: object, x1: object) -> tuple[Tensor, Tensor]:
    a, b = _check_images(x0, "x0"), _check_images(x1, "x1")
    if a.shape != b.shape:
        raise ValueError(f"x0 and x1 must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}.")
    return a, b


def _per_channel_buffer(values: Sequence[float]) -> Tensor:
    return torch.tensor(values, dtype=torch.float32).reshape(1, -1, 1, 1)


class _FrozenTeacher(nn.Module):
    """Base class: parameters never require grad and the module never leaves eval mode."""

    def _freeze(self) -> None:
        for parameter in self.parameters():
            parameter.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> _FrozenTeacher:
        """Keep the teacher in eval mode whatever ``mode`` is (teachers are frozen).

        Args:
            mode: ignored.

        Returns:
            self.
        """
        return super().train(False)


class _TappedTrunk(nn.Module):
    """Run a ``features`` Sequential and return the outputs of the layers at ``taps`` (nothing after the last)."""

    def __init__(self, features: nn.Sequential, taps: Sequence[int]) -> None:
        super().__init__()
        self.taps = tuple(taps)
        # Slicing a Sequential keeps the layer names ("0", "1", ...), so state-dict keys stay torchvision's.
        self.features = features[: max(self.taps) + 1]

    def forward(self, x: Tensor) -> list[Tensor]:
        outputs = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self.taps:
                outputs.append(x)
        return outputs


def _unit_normalize(features: Tensor, eps: float = 1e-10) -> Tensor:
    """``f / (||f||_2 over channels + eps)``, lpips.normalize_tensor.

    ``torch.linalg.vector_norm`` equals ``sqrt(sum f^2)`` but has a finite gradient where a feature vector is all
    zero (where the reference's ``sqrt`` gives NaN), which keeps attacks on the teacher NaN-free.
    """
    norm: Tensor = torch.linalg.vector_norm(features, dim=1, keepdim=True)
    return features / (norm + eps)
