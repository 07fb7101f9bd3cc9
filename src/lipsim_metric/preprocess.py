"""Input validation, range conversion and the (differentiable, antialiased) resize to the backbone size.

Certificates are stated in the caller's input units, so this module also computes, soundly, how much the
preprocessing can amplify a perturbation: the l2 operator norm of the map from caller input to backbone input
(range scaling x resize x grayscale replication). See ``docs/certificates.md``, section "Input units".
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Literal

import torch
import torch.nn.functional as F

__all__ = [
    "InputRange",
    "MIN_IMAGE_SIZE",
    "validate_images",
    "check_threshold",
    "to_backbone_input",
    "resize_matrix",
    "resize_operator_norm",
    "input_operator_norm",
]

InputRange = Literal["[0,1]", "[-1,1]"]
_RANGES: dict[str, tuple[float, float]] = {"[0,1]": (0.0, 1.0), "[-1,1]": (-1.0, 1.0)}

#: Smallest accepted image side; smaller images carry too little content to upsample meaningfully.
MIN_IMAGE_SIZE = 8
#: Tolerance on the value range, for images that went through lossy arithmetic (e.g. bilinear resampling).
RANGE_TOLERANCE = 1e-3
#: Relative safety factor applied to operator norms computed in float64 (see docs/certificates.md).
NORM_SAFETY = 1.0 + 1e-6


def check_input_range(input_range: str) -> tuple[float, float]:
    """Return ``(low, high)`` for a supported ``input_range`` or raise ``ValueError``."""
    if input_range not in _RANGES:
        raise ValueError(f"input_range must be one of {sorted(_RANGES)}, got {input_range!r}")
    return _RANGES[input_range]


def validate_images(x: object, name: str, input_range: str = "[0,1]", check_values: bool = True) -> torch.Tensor:
    """Check that ``x`` is a batch of images LipSim accepts and return it.

    Args:
        x: candidate tensor, expected float ``(N, C, H, W)`` with ``C`` in {1, 3}.
        name: the argument name, used in error messages.
        input_range: ``"[0,1]"`` or ``"[-1,1]"``; values must lie in it (up to ``RANGE_TOLERANCE``).
        check_values: also check the value range and finiteness (one host-device sync).

    Returns:
        ``x`` unchanged.

    Raises:
        TypeError: not a tensor, or not floating point.
        ValueError: wrong number of dimensions or channels, empty batch, too small, out of range, NaN/Inf.
    """
    low, high = check_input_range(input_range)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (N, 3, H, W), got {type(x).__name__}")
    if x.device.type == "meta":
        raise ValueError(
            f"{name} is on the 'meta' device, which holds shapes but no values, so there is nothing to score. "
            f"Load real images (e.g. lipsim_metric.images.load_image), or materialise the tensor on a real device "
            f"first (torch.empty_like({name}, device='cpu') and fill it)."
        )
    if not torch.is_floating_point(x):
        raise TypeError(
            f"{name} has dtype {x.dtype}; LipSim expects floating-point images in {input_range}. "
            f"For uint8 images use {name}.float() / 255 (and input_range='[0,1]')."
        )
    if x.ndim != 4:
        hint = f" Add a batch dimension with {name}.unsqueeze(0)." if x.ndim == 3 else ""
        raise ValueError(f"{name} must have shape (N, C, H, W), got {tuple(x.shape)}.{hint}")
    n, c, h, w = x.shape
    if c not in (1, 3) and w in (1, 3, 4) and h >= MIN_IMAGE_SIZE:
        raise ValueError(
            f"{name} has shape {tuple(x.shape)}, which looks channels-last (N, H, W, C); LipSim takes (N, C, H, W). "
            f"Use {name}.permute(0, 3, 1, 2)" + (" and drop the alpha channel with [:, :3]." if w == 4 else ".")
        )
    if c not in (1, 3):
        raise ValueError(
            f"{name} has {c} channels; LipSim takes RGB (3) or grayscale (1, replicated to RGB). "
            "Drop an alpha channel with x[:, :3]."
        )
    if n == 0:
        raise ValueError(f"{name} is an empty batch (N=0)")
    if min(h, w) < MIN_IMAGE_SIZE:
        raise ValueError(f"{name} is {h}x{w}; images must be at least {MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE} pixels")
    if check_values:
        # One pass: min and max propagate NaN, and +-Inf shows up as an infinite extreme.
        lo, hi = torch.stack(torch.aminmax(x)).float().tolist()
        if not (math.isfinite(lo) and math.isfinite(hi)):
            bad = "NaN" if math.isnan(lo) or math.isnan(hi) else "infinite"
            raise ValueError(
                f"{name} contains {bad} values. Find where they come from (a division by zero, an overflow in "
                f"float16, a log of 0) and fix it there; to score the images anyway, replace them first with "
                f"torch.nan_to_num({name}, nan=0.0, posinf={high:g}, neginf={low:g})."
            )
        if lo < low - RANGE_TOLERANCE or hi > high + RANGE_TOLERANCE:
            other = "[-1,1]" if input_range == "[0,1]" else "[0,1]"
            raise ValueError(
                f"{name} has values in [{lo:.4g}, {hi:.4g}], outside input_range={input_range}. "
                f"Rescale the images (e.g. x / 255 for 8-bit data) or construct LipSim(input_range='{other}')."
            )
    return x


def check_threshold(threshold: object) -> float:
    """Return ``threshold`` as a float if it is a valid distance threshold, i.e. finite and in ``[0, 2]``.

    LipSim distances lie in ``[0, 2]``, so a threshold outside that range decides nothing (and a NaN threshold would
    give NaN radii).

    Raises:
        TypeError: not a real number (a one-element tensor is accepted).
        ValueError: NaN, infinite, or outside ``[0, 2]``.
    """
    if isinstance(threshold, torch.Tensor):
        if threshold.numel() != 1:
            raise TypeError(f"threshold must be one number in [0, 2], got a tensor of shape {tuple(threshold.shape)}")
        threshold = threshold.item()
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real):
        raise TypeError(f"threshold must be a number in [0, 2], got {type(threshold).__name__}")
    value = float(threshold)
    if not (math.isfinite(value) and 0.0 <= value <= 2.0):
        raise ValueError(
            f"threshold must be a finite distance in [0, 2] (LipSim distances lie there), got {threshold!r}; "
            "use 0 to certify that the images are not judged identical"
        )
    return value


def to_backbone_input(x: torch.Tensor, size: int, input_range: str = "[0,1]") -> torch.Tensor:
    """Map caller images to the backbone's contract: RGB in [0,1] at ``size x size``.

    The map is linear up to a constant (affine): ``[-1,1] -> [0,1]`` by ``(x + 1) / 2``; grayscale is replicated
    to three channels; any other spatial size is resized with ``F.interpolate(mode="bilinear", antialias=True,
    align_corners=False)``, which is differentiable. Aspect ratio is not preserved (as in LPIPS/DreamSim).
    """
    if input_range == "[-1,1]":
        x = (x + 1.0) * 0.5
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[-2:] != (size, size):
        # The antialiased kernel has no half-precision CPU implementation; resample in float32.
        dtype = x.dtype
        x = F.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        x = x.to(dtype)
    return x


#: Elements (float64) of one block of basis vectors pushed through the 1-D resize at a time (8 MiB).
_BASIS_BLOCK_ELEMENTS = 1 << 20


def resize_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """The ``(n_out, n_in)`` float64 matrix of the 1-D antialiased bilinear resize ``n_in -> n_out``.

    Column ``j`` is the resize of the ``j``-th basis vector, computed with the very ``F.interpolate`` call that
    :func:`to_backbone_input` uses, so the matrix is the operator itself, not a re-derivation of its kernel. The basis
    vectors go through in blocks of at most ``_BASIS_BLOCK_ELEMENTS`` values, so memory stays
    ``O(n_in * n_out)`` (18 MiB for a 10000-pixel side resized to 224) instead of the ``O(n_in ** 2)`` of a dense
    identity.
    """
    matrix = torch.empty(n_out, n_in, dtype=torch.float64)
    block = max(1, _BASIS_BLOCK_ELEMENTS // n_in)
    for start in range(0, n_in, block):
        stop = min(n_in, start + block)
        basis = torch.zeros(stop - start, 1, 1, n_in, dtype=torch.float64)
        basis[:, 0, 0].diagonal(offset=start).fill_(1.0)  # basis[k, 0, 0, start + k] = 1
        cols = F.interpolate(basis, size=(1, n_out), mode="bilinear", antialias=True, align_corners=False)
        matrix[:, start:stop] = cols.reshape(stop - start, n_out).T
    return matrix


@functools.lru_cache(maxsize=256)
def _resize_matrix_norm(n_in: int, n_out: int) -> float:
    """Spectral norm of the 1-D antialiased bilinear resampling matrix ``n_in -> n_out`` (float64)."""
    if n_in == n_out:
        return 1.0
    matrix = resize_matrix(n_in, n_out)
    # ||M||_2 = sqrt(lambda_max(M M^T)); the Gram matrix is taken on the short side (min(n_in, n_out) squared
    # entries), so the eigen-decomposition stays small for huge images. float64 keeps its relative error near 1e-15,
    # far inside NORM_SAFETY.
    gram = matrix @ matrix.T if n_out <= n_in else matrix.T @ matrix
    return math.sqrt(max(0.0, float(torch.linalg.eigvalsh(gram)[-1])))


def resize_operator_norm(height: int, width: int, size: int) -> float:
    """Upper bound on the l2 operator norm of resizing one ``height x width`` channel to ``size x size``.

    The antialiased bilinear resize is separable, ``R = A_h (x) A_w`` (a Kronecker product), and
    ``||A_h (x) A_w||_2 = ||A_h||_2 ||A_w||_2``. Each 1-D factor is built exactly as a small ``size x n`` matrix
    (:func:`resize_matrix`; never a dense ``n x n`` identity, so a 20000-pixel side costs 36 MiB, not 3 GiB) and its
    spectral norm computed in float64; the product is inflated by ``NORM_SAFETY`` to cover rounding. The test-suite
    checks the bound against power iteration on the real 2-D operator.
    """
    if (height, width) == (size, size):
        return 1.0
    return _resize_matrix_norm(height, size) * _resize_matrix_norm(width, size) * NORM_SAFETY


def input_operator_norm(height: int, width: int, channels: int, size: int, input_range: str) -> float:
    """l2 operator norm bound of the linear part of :func:`to_backbone_input` for one image.

    A caller perturbation ``delta`` becomes a backbone-input perturbation of norm at most this times ``||delta||``:
    ``1/2`` for ``[-1,1]`` input, ``sqrt(3)`` for grayscale replication, times the resize norm.
    """
    scale = 0.5 if input_range == "[-1,1]" else 1.0
    gray = math.sqrt(3.0) if channels == 1 else 1.0
    return scale * gray * resize_operator_norm(height, width, size)
