"""1-Lipschitz building blocks (l2 norm, input to output).

The residual layers are the SDP-based Lipschitz layers (SLL) of

    Araujo, Havens, Delattre, Allauzen, Hu. "A Unified Algebraic Perspective on Lipschitz Neural
    Networks". ICLR 2023. https://arxiv.org/abs/2303.03169
    (official code: github.com/araujoalexandre/lipschitz-sll-networks)

as used by LipSim (Ghazanfari et al., ICLR 2024, https://arxiv.org/abs/2310.18274):

    h(x) = x - 2 W^T diag(t) relu(W x + b),    t_i = 1 / sum_j |W W^T|_ij q_j / q_i,   q_i = exp(s_i) > 0.

Theorem 3 of Araujo et al.: if ``T = diag(t)`` satisfies ``T^{-1} >= W W^T`` in the Loewner order, then ``h`` is
1-Lipschitz in l2 for any slope-restricted activation in [0, 1] (ReLU). With the weights ``q`` above,
``sum_j |W W^T|_ij q_j/q_i`` is a Gershgorin-type bound that makes ``diag(1/t) - W W^T`` diagonally dominant with a
non-negative diagonal, hence positive semi-definite (Proposition 5 of the same paper). For a convolution, ``W W^T`` is
itself a (multi-channel) convolution whose kernel is ``conv2d(K, K, padding=k-1)``, and the same argument applies to
its block-Toeplitz matrix with zero padding (every row of the block matrix sums a subset of those kernel entries).

Every other block here is norm preserving or norm non-increasing; each docstring states why.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "SLLConv2d",
    "SLLLinear",
    "ChannelZeroPad",
    "PixelUnshuffle",
    "SumPool2d",
    "Truncate",
    "Flatten",
    "safe_reciprocal",
]


def safe_reciprocal(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Return ``1/x`` where ``x > eps`` and ``0`` elsewhere, with a finite gradient everywhere.

    A row of ``W`` that is entirely zero gives ``t_i = 1/0``; that hidden unit contributes nothing
    (its row of ``W`` is zero), so setting ``t_i = 0`` is exact and keeps the layer 1-Lipschitz. The
    ``torch.where`` on a clamped denominator keeps the backward pass free of ``inf * 0 = nan``.
    """
    safe = torch.clamp(x, min=eps)
    return torch.where(x > eps, 1.0 / safe, torch.zeros_like(x))


class _CachedRescale(nn.Module):
    """Mixin that caches the rescaled (folded) weights in eval mode.

    The cache is keyed on the parameters' identity, storage, device, dtype and in-place version counters,
    so ``load_state_dict``, optimiser steps, ``.to()`` and ``.train()`` all invalidate it. It is never used
    when autograd needs gradients with respect to the parameters.
    """

    def __init__(self) -> None:
        super().__init__()
        self._cache_key: tuple | None = None
        self._cache_val: tuple[torch.Tensor, ...] | None = None

    def _key(self) -> tuple:
        return tuple(
            (id(p), p.data_ptr(), p.device, p.dtype, p._version) for p in self.parameters(recurse=False)
        )

    def _needs_param_grad(self) -> bool:
        return torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters(recurse=False))

    def train(self, mode: bool = True) -> _CachedRescale:
        self._cache_key, self._cache_val = None, None
        return super().train(mode)

    def _folded(self) -> tuple[torch.Tensor, ...]:
        if self.training or self._needs_param_grad():
            return self._compute_folded()
        key = self._key()
        if self._cache_key != key or self._cache_val is None:
            with torch.no_grad():
                self._cache_val = tuple(v.detach() for v in self._compute_folded())
            self._cache_key = key
        return self._cache_val

    def _compute_folded(self) -> tuple[torch.Tensor, ...]:  # pragma: no cover - abstract
        raise NotImplementedError


class SLLConv2d(_CachedRescale):
    """SDP-based Lipschitz residual convolution: ``x - 2 K^T diag(t) relu(K x + b)``, 1-Lipschitz.

    Shapes: input and output ``(N, channels, H, W)``. ``K`` has shape ``(hidden, channels, k, k)`` with odd ``k``
    and "same" zero padding, so ``K^T`` is exactly ``conv_transpose2d`` with the same padding (the adjoint
    of the zero-padded convolution). Lipschitz argument: module docstring (Araujo et al., Thm. 3 and Prop. 5).

    Parameter names and shapes (``kernel``, ``bias`` of shape ``(1, hidden, 1, 1)``, ``q``) match the
    official LipSim/SLL code so that released checkpoints load directly.

    Args:
        channels: number of input (= output) channels.
        hidden: number of hidden channels (rows of ``K``).
        kernel_size: odd spatial kernel size.
        q_weighted: use the weights ``q_j / q_i`` in ``t`` (the SLL paper's formula). The official LipSim/SLL
            convolution code reshapes ``q`` and ``1/q`` along the same axis so they cancel, i.e. it uses
            ``q = 1``; ``q_weighted=False`` reproduces that exactly (needed to load the released checkpoints).
            Both choices are sound: ``q = 1`` is a special case of the theorem.
    """

    def __init__(self, channels: int, hidden: int, kernel_size: int = 3, q_weighted: bool = True) -> None:
        super().__init__()
        self.q_weighted = q_weighted
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd for a 'same' padded SLL convolution, got {kernel_size}")
        self.channels, self.hidden, self.kernel_size = channels, hidden, kernel_size
        self.kernel = nn.Parameter(torch.empty(hidden, channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(1, hidden, 1, 1))
        self.q = nn.Parameter(torch.empty(hidden))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_normal_(self.kernel)
        fan_in = self.channels * self.kernel_size**2
        bound = 1.0 / math.sqrt(fan_in)
        nn.init.uniform_(self.bias, -bound, bound)
        nn.init.normal_(self.q)

    def compute_t(self) -> torch.Tensor:
        """``t`` of shape ``(hidden,)``: the diagonal rescaling that makes the layer 1-Lipschitz."""
        k = self.kernel
        ktk = torch.abs(F.conv2d(k, k, padding=self.kernel_size - 1))  # (hidden, hidden, 2k-1, 2k-1)
        row = ktk.sum(dim=(2, 3))
        if self.q_weighted:  # sum_j |K K^T|_ij q_j / q_i, with q = exp(s) evaluated as exp(s_j - s_i)
            row = row * torch.exp(self.q[None, :] - self.q[:, None])
        t_inv = row.sum(dim=1)
        return safe_reciprocal(t_inv)

    def _compute_folded(self) -> tuple[torch.Tensor, ...]:
        t = self.compute_t()
        # 2 K^T diag(t) r == conv_transpose(r, 2 t K): fold the rescaling into the transposed kernel.
        return (self.kernel * (2.0 * t)[:, None, None, None],)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (kernel_t,) = self._folded()
        pad = self.kernel_size // 2
        kernel = self.kernel.to(x.dtype)
        res = F.relu(F.conv2d(x, kernel, self.bias.reshape(-1).to(x.dtype), padding=pad))
        return x - F.conv_transpose2d(res, kernel_t.to(x.dtype), padding=pad)

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, hidden={self.hidden}, kernel_size={self.kernel_size}, "
            f"q_weighted={self.q_weighted}"
        )


class SLLLinear(_CachedRescale):
    """SDP-based Lipschitz residual dense layer: ``x - 2 W^T diag(t) relu(W x + b)``, 1-Lipschitz.

    ``W`` has shape ``(hidden, features)``; input and output are ``(N, features)``. Parameter names
    (``weight``, ``bias`` of shape ``(1, hidden)``, ``q``) match the official LipSim/SLL code.
    Lipschitz argument: module docstring.
    """

    def __init__(self, features: int, hidden: int) -> None:
        super().__init__()
        self.features, self.hidden = features, hidden
        self.weight = nn.Parameter(torch.empty(hidden, features))
        self.bias = nn.Parameter(torch.empty(1, hidden))
        self.q = nn.Parameter(torch.empty(hidden))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_normal_(self.weight)
        bound = 1.0 / math.sqrt(self.features)
        nn.init.uniform_(self.bias, -bound, bound)
        nn.init.uniform_(self.q, -1.0, 1.0)

    def compute_t(self) -> torch.Tensor:
        """``t`` of shape ``(hidden,)``."""
        w = self.weight
        wwt = torch.abs(w @ w.T)
        log_ratio = self.q[None, :] - self.q[:, None]
        t_inv = (wwt * torch.exp(log_ratio)).sum(dim=1)
        return safe_reciprocal(t_inv)

    def _compute_folded(self) -> tuple[torch.Tensor, ...]:
        t = self.compute_t()
        return (self.weight * (2.0 * t)[:, None],)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (weight_t,) = self._folded()
        res = F.relu(F.linear(x, self.weight.to(x.dtype), self.bias.reshape(-1).to(x.dtype)))
        return x - res @ weight_t.to(x.dtype)

    def extra_repr(self) -> str:
        return f"features={self.features}, hidden={self.hidden}"


class ChannelZeroPad(nn.Module):
    """Append zero channels: ``(N, C, H, W) -> (N, channels, H, W)``.

    An isometry onto its image (``||pad(x) - pad(y)|| = ||x - y||``), hence 1-Lipschitz.
    """

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        if channels < in_channels:
            raise ValueError(f"ChannelZeroPad cannot shrink {in_channels} channels to {channels}; use Truncate")
        self.in_channels, self.channels = in_channels, channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, (0, 0, 0, 0, 0, self.channels - self.in_channels))

    def extra_repr(self) -> str:
        return f"{self.in_channels} -> {self.channels}"


class PixelUnshuffle(nn.PixelUnshuffle):
    """Space-to-depth ``(N, C, rH, rW) -> (N, C r^2, H, W)``: a permutation of coordinates, so an isometry."""


class SumPool2d(nn.Module):
    """Non-overlapping ``k x k`` sum pooling divided by ``k`` (``AvgPool2d(k, divisor_override=k)``).

    Each output is ``s/k`` with ``s`` a sum of ``k^2`` disjoint inputs, and ``|s| <= k ||block||`` by Cauchy-Schwarz,
    so ``|s/k| <= ||block||``; summing squares over the disjoint blocks gives ``||pool(x)|| <= ||x||`` (linear, so
    1-Lipschitz). The bound is attained by constant blocks.
    """

    def __init__(self, kernel_size: int) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.pool = nn.AvgPool2d(kernel_size, stride=kernel_size, divisor_override=kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}"


class Flatten(nn.Flatten):
    """Reshape ``(N, ...) -> (N, prod(...))``: a relabelling of coordinates, an isometry."""


class Truncate(nn.Module):
    """Keep the first ``features`` coordinates of ``(N, D)``: an orthogonal projection, 1-Lipschitz."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.features = features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, : self.features]

    def extra_repr(self) -> str:
        return f"features={self.features}"
