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

Every other block here is norm preserving or norm non-increasing; each docstring states why. Every block declares its
bound as the class attribute ``lipschitz_bound``; :func:`check_lipschitz_declarations` (run whenever a backbone is
built for LipSim) refuses a network with a parametrised module that declares none, such as a plain ``nn.Conv2d``.
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
    "MeanStdPool2d",
    "ChannelScale",
    "LowFrequencyDamp",
    "safe_reciprocal",
    "T_SAFETY",
    "exact_dtype",
    "check_lipschitz_declarations",
]


def safe_reciprocal(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Return ``1/x`` where ``x > eps`` and ``0`` elsewhere, with a finite gradient everywhere.

    A row of ``W`` that is entirely zero gives ``t_i = 1/0``; that hidden unit contributes nothing
    (its row of ``W`` is zero), so setting ``t_i = 0`` is exact and keeps the layer 1-Lipschitz. The
    ``torch.where`` on a clamped denominator keeps the backward pass free of ``inf * 0 = nan``.
    """
    safe = torch.clamp(x, min=eps)
    return torch.where(x > eps, 1.0 / safe, torch.zeros_like(x))


def check_lipschitz_declarations(module: nn.Module, name: str = "backbone") -> None:
    """Refuse a network that could hold a block without a proven l2 Lipschitz bound of at most 1.

    Rules: ``module`` itself (its ``forward`` is what gets certified) and every submodule that holds parameters or
    buffers of its own must declare a class attribute ``lipschitz_bound`` in ``[0, 1]``; any declared bound must lie
    in ``[0, 1]``. Containers without parameters of their own (``nn.Sequential``, ``nn.ModuleList``) and
    parameter-free modules (``nn.ReLU``) are not checked: their behaviour is fixed by code, which the declaration of
    the enclosing backbone vouches for and :func:`lipsim_metric.testing.assert_one_lipschitz` tests.

    Args:
        module: the backbone to check.
        name: how to call it in the error message.

    Raises:
        TypeError: naming every offending submodule and its class, with the fix.
    """
    original = getattr(module, "_orig_mod", None)  # torch.compile wraps the module it compiles
    if isinstance(original, nn.Module):
        module = original
    problems = []
    for sub_name, sub in module.named_modules():
        label = f"{name}.{sub_name}" if sub_name else name
        bound = getattr(sub, "lipschitz_bound", None)
        owns = any(True for _ in sub.parameters(recurse=False)) or any(True for _ in sub.buffers(recurse=False))
        if bound is None:
            if owns or sub is module:
                what = "is the backbone" if sub is module else "has parameters or buffers"
                problems.append(f"{label} ({type(sub).__module__}.{type(sub).__qualname__}) {what} but declares no "
                                "lipschitz_bound")
        elif isinstance(bound, bool) or not isinstance(bound, (int, float)) or not 0.0 <= float(bound) <= 1.0:
            problems.append(f"{label} ({type(sub).__qualname__}) declares lipschitz_bound={bound!r}, not in [0, 1]")
    if problems:
        raise TypeError(
            "LipSim certifies only networks built from blocks with a proven l2 Lipschitz bound <= 1: "
            + "; ".join(problems[:8]) + ("; ..." if len(problems) > 8 else "")
            + ". Use the blocks of lipsim_metric.layers (SLLConv2d, SLLLinear, SumPool2d, ...), or prove your block's "
            "bound, set the class attribute lipschitz_bound = 1.0 and test it with "
            "lipsim_metric.testing.assert_one_lipschitz."
        )


#: Relative safety factor applied to every ``t`` (``t <- T_SAFETY * t``). ``t`` is computed in float64 (float32 on
#: devices without float64), so its own error is below ``1e-10`` relative; the factor covers the rounding of ``t`` and
#: of the folded weights ``2 t W`` to float32 (``2**-24 = 6e-8`` relative) with a wide margin, and shrinks the layer's
#: nonlinear branch by only ``1e-6`` (see docs/certificates.md, "Precision and the folded-weight cache").
T_SAFETY = 1.0 - 1e-6


def exact_dtype(device: torch.device) -> torch.dtype:
    """The dtype ``t`` is computed in on ``device``: float64, or float32 where float64 is not supported (MPS)."""
    return torch.float32 if device.type == "mps" else torch.float64


def _autocast_off(device: torch.device) -> torch.autocast:
    return torch.autocast(device_type=device.type, enabled=False)


class _CachedRescale(nn.Module):
    """Mixin for SLL layers: computes the rescaled (folded) weights at full precision and caches them in eval mode.

    The folded weights ``2 t W`` are always computed with autocast disabled, from float copies of the parameters:
    in float64 for the eval-mode cache (:func:`exact_dtype`), stored as float32 (float64 for float64 parameters),
    and in float32 at least when autograd needs gradients with respect to the parameters (training; the cache is
    then not used). ``t`` carries the safety factor :data:`T_SAFETY`. So neither the autocast state, nor the
    parameters' storage dtype (``.to(torch.bfloat16)``), nor ``torch.inference_mode`` (the cache is built outside
    it) of the call that fills the cache can change what later calls compute.

    The cache is keyed on the parameters' identity, storage, device, dtype and in-place version counters, so
    ``load_state_dict``, optimiser steps, in-place edits under ``torch.no_grad()``, ``.to()`` and ``.train()`` all
    invalidate it. Edits through ``.data`` (``p.data.mul_(...)``, ``p.data.copy_(...)``) bypass the version counter:
    call :meth:`refresh` after them (or :meth:`lipsim_metric.LipSim.refresh` on the whole metric).
    """

    #: Declared l2 Lipschitz bound of the block (checked by :func:`check_lipschitz_declarations`).
    lipschitz_bound: float = 1.0

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

    def refresh(self) -> None:
        """Drop the cached folded weights; the next eval-mode call recomputes them from the current parameters.

        Needed only after editing parameters through ``.data`` (old-style EMA, pruning, weight surgery), which
        PyTorch does not record in the version counters the cache is keyed on. Cheap: the cache is rebuilt once.
        """
        self._cache_key, self._cache_val = None, None

    def train(self, mode: bool = True) -> _CachedRescale:
        self.refresh()
        return super().train(mode)

    def _param(self) -> torch.Tensor:
        return next(self.parameters(recurse=False))

    # Run eagerly under torch.compile: the cache lookup is Python state (keys, versions) that Dynamo would otherwise
    # guard on, recompiling every layer once its cache fills (and hitting the recompile limit). The convolutions that
    # use the folded weights stay in the compiled graph.
    @torch.compiler.disable
    def _folded(self) -> tuple[torch.Tensor, ...]:
        ref = self._param()
        out_dtype = torch.promote_types(ref.dtype, torch.float32)
        if self.training or self._needs_param_grad():
            with _autocast_off(ref.device):  # differentiable, at float32 at least
                return self._compute_folded(out_dtype)
        key = self._key()
        if self._cache_key != key or self._cache_val is None:
            # Built outside inference mode and autocast, so that the cache is a plain float tensor that later
            # autograd calls (losses, attacks) can use, whatever the context of the call that filled it.
            with torch.inference_mode(False), torch.no_grad(), _autocast_off(ref.device):
                work = torch.promote_types(exact_dtype(ref.device), out_dtype)
                self._cache_val = tuple(v.to(out_dtype).detach() for v in self._compute_folded(work))
            self._cache_key = key
        return self._cache_val

    def _compute_folded(self, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:  # pragma: no cover - abstract
        """The folded weights, computed in ``dtype`` (autocast is already disabled by the caller)."""
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

    def compute_t(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``t`` of shape ``(hidden,)``: the diagonal rescaling that makes the layer 1-Lipschitz.

        Computed with autocast disabled in ``dtype`` (default: :func:`exact_dtype`, float64) and multiplied by
        :data:`T_SAFETY`.
        """
        dtype = dtype or torch.promote_types(exact_dtype(self.kernel.device), self.kernel.dtype)
        with _autocast_off(self.kernel.device):
            return self._t(self.kernel.to(dtype), self.q.to(dtype))

    def _t(self, k: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        ktk = torch.abs(F.conv2d(k, k, padding=self.kernel_size - 1))  # (hidden, hidden, 2k-1, 2k-1)
        row = ktk.sum(dim=(2, 3))
        if self.q_weighted:  # sum_j |K K^T|_ij q_j / q_i, with q = exp(s) evaluated as exp(s_j - s_i)
            row = row * torch.exp(q[None, :] - q[:, None])
        t_inv = row.sum(dim=1)
        return safe_reciprocal(t_inv) * T_SAFETY

    def _compute_folded(self, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        k = self.kernel.to(dtype)
        t = self._t(k, self.q.to(dtype))
        # 2 K^T diag(t) r == conv_transpose(r, 2 t K): fold the rescaling into the transposed kernel.
        return (k * (2.0 * t)[:, None, None, None],)

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

    def compute_t(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``t`` of shape ``(hidden,)``, computed like :meth:`SLLConv2d.compute_t`."""
        dtype = dtype or torch.promote_types(exact_dtype(self.weight.device), self.weight.dtype)
        with _autocast_off(self.weight.device):
            return self._t(self.weight.to(dtype), self.q.to(dtype))

    @staticmethod
    def _t(w: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        wwt = torch.abs(w @ w.T)
        log_ratio = q[None, :] - q[:, None]
        t_inv = (wwt * torch.exp(log_ratio)).sum(dim=1)
        return safe_reciprocal(t_inv) * T_SAFETY

    def _compute_folded(self, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        w = self.weight.to(dtype)
        t = self._t(w, self.q.to(dtype))
        return (w * (2.0 * t)[:, None],)

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

    lipschitz_bound: float = 1.0

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

    lipschitz_bound: float = 1.0


class SumPool2d(nn.Module):
    """Non-overlapping ``k x k`` sum pooling divided by ``k`` (``AvgPool2d(k, divisor_override=k)``).

    Each output is ``s/k`` with ``s`` a sum of ``k^2`` disjoint inputs, and ``|s| <= k ||block||`` by Cauchy-Schwarz,
    so ``|s/k| <= ||block||``; summing squares over the disjoint blocks gives ``||pool(x)|| <= ||x||`` (linear, so
    1-Lipschitz). The bound is attained by constant blocks.
    """

    lipschitz_bound: float = 1.0

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

    lipschitz_bound: float = 1.0


class Truncate(nn.Module):
    """Keep the first ``features`` coordinates of ``(N, D)``: an orthogonal projection, 1-Lipschitz."""

    lipschitz_bound: float = 1.0

    def __init__(self, features: int) -> None:
        super().__init__()
        self.features = features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, : self.features]

    def extra_repr(self) -> str:
        return f"features={self.features}"


class MeanStdPool2d(nn.Module):
    """Per-channel block mean and block spread: ``(N, C, H, W) -> (N, 2C, H/k, W/k)``, 1-Lipschitz.

    For each channel and each disjoint ``k x k`` block ``v`` (``k^2`` values) the outputs are ``sum(v) / k`` (as
    :class:`SumPool2d`) and ``sqrt(||v - mean(v)||^2 + eps^2) - eps``: a smooth norm of the block's centred part, i.e.
    ``k`` times its local standard deviation (DISTS-style texture energy: noise, grain and blocking raise it).

    Lipschitz argument: ``v = m + c`` with ``m = mean(v) 1`` and ``c = v - m`` orthogonal, so
    ``||v - v'||^2 = ||m - m'||^2 + ||c - c'||^2``. The first output is ``<v, 1> / k = +-||m||``, a linear function of
    ``m`` with ``|sum(v) - sum(v')| / k = ||m - m'||``; the second is ``phi(c) = ||(c, eps)|| - eps``, and
    ``|phi(c) - phi(c')| <= ||c - c'||`` (the reverse triangle inequality for the norm of ``(c, eps)``). Summing the
    two squares and then over the disjoint blocks gives ``||P(x) - P(x')|| <= ||x - x'||``. ``eps`` keeps the gradient
    finite for constant blocks (where the plain norm has none).

    Output layout: channels ``[0, C)`` are the means, ``[C, 2C)`` the spreads.
    """

    lipschitz_bound: float = 1.0

    def __init__(self, kernel_size: int, eps: float = 1e-3) -> None:
        super().__init__()
        if kernel_size < 1 or eps <= 0:
            raise ValueError(f"kernel_size must be >= 1 and eps > 0, got {kernel_size} and {eps}")
        self.kernel_size, self.eps = kernel_size, float(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kernel_size
        n, c, h, w = x.shape
        if h % k or w % k:
            raise ValueError(f"MeanStdPool2d({k}) needs H and W divisible by {k}, got {h}x{w}")
        blocks = x.reshape(n, c, h // k, k, w // k, k)
        total = blocks.sum(dim=(3, 5))
        centred = blocks - (total / (k * k))[:, :, :, None, :, None]
        energy = centred.square().sum(dim=(3, 5))
        spread = torch.sqrt(energy + self.eps**2) - self.eps
        return torch.cat([total / k, spread], dim=1)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, eps={self.eps}"


class ChannelScale(nn.Module):
    """Learned per-channel weights in ``(0, 1)``: ``y_c = sigmoid(p_c) x_c``; 1-Lipschitz (diagonal, entries <= 1).

    The 1-Lipschitz counterpart of LPIPS's per-channel linear heads: a channel can be turned down, never amplified.
    Shapes: ``(N, C, H, W)`` or ``(N, C)``.
    """

    lipschitz_bound: float = 1.0

    def __init__(self, channels: int, init: float = 4.0) -> None:
        super().__init__()
        self.channels = channels
        self.logit = nn.Parameter(torch.full((channels,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = torch.sigmoid(self.logit.float()).to(x.dtype)
        return x * scale.reshape(1, -1, *([1] * (x.dim() - 2)))

    def extra_repr(self) -> str:
        return f"channels={self.channels}"


class LowFrequencyDamp(nn.Module):
    """Turn down the low spatial frequencies of an image: ``y = x - (1 - w) B x``, 1-Lipschitz and injective.

    ``B`` is a fixed separable binomial blur of order ``k`` (per channel, kernel ``C(2k, j) / 4^k``, ``j = 0..2k``, a
    Gaussian of standard deviation ``sqrt(k / 2)`` pixels) with zero padding, and ``w`` in ``(0, 1]`` is the weight the
    output keeps at frequency zero. ``w = 1`` is the identity.

    Lipschitz argument: along one axis, the zero-padded "same" convolution with the length-``2k+1`` kernel is the
    compression ``P C P^T`` of a circulant ``C`` on a circle of length ``n + 2k`` (the signal zero-extended, then
    restricted), and ``C``'s eigenvalues are the kernel's frequency response ``cos(omega / 2)^(2k)`` in ``[0, 1]``.
    A compression of a symmetric matrix with eigenvalues in ``[0, 1]`` is symmetric with eigenvalues in ``[0, 1]``
    (Cauchy interlacing), and so is the Kronecker product of the two axes' operators. Hence ``B`` is symmetric with
    spectrum in ``[0, 1]``, ``I - (1 - w) B`` is symmetric with spectrum in ``[w, 1]``: its operator norm is at most 1
    (1-Lipschitz, linear) and its smallest singular value at least ``w > 0`` (injective:
    ``||y - y'|| >= w ||x - x'||``).

    What it is for: a pixel term ``a (x - mu)`` charges a brightness, gamma or colour shift (mostly low frequencies,
    forgiven by the human-calibrated teachers) as much as noise (mostly high frequencies, not forgiven); through this
    filter the pixel term charges smooth shifts ``w`` times less and keeps noise nearly at full weight.
    Shapes: ``(N, C, H, W)`` in, same out.
    """

    lipschitz_bound: float = 1.0

    def __init__(self, low_weight: float, order: int = 32) -> None:
        super().__init__()
        if not 0.0 < low_weight <= 1.0:
            raise ValueError(f"low_weight must be in (0, 1], got {low_weight}")
        if order < 1:
            raise ValueError(f"order must be >= 1, got {order}")
        self.low_weight, self.order = float(low_weight), int(order)
        kernel = torch.tensor([math.comb(2 * order, j) for j in range(2 * order + 1)], dtype=torch.float64)
        self.register_buffer("kernel", (kernel / kernel.sum()).float(), persistent=False)

    def blur(self, x: torch.Tensor) -> torch.Tensor:
        """``B x``: the separable binomial blur with zero padding (per channel)."""
        c, k = x.shape[1], self.order
        buf: torch.Tensor = self.kernel  # type: ignore[assignment]
        kernel = buf.to(x.dtype)
        rows = kernel.reshape(1, 1, 1, -1).expand(c, 1, 1, -1)
        cols = kernel.reshape(1, 1, -1, 1).expand(c, 1, -1, 1)
        x = F.conv2d(x, rows, padding=(0, k), groups=c)
        return F.conv2d(x, cols, padding=(k, 0), groups=c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.low_weight == 1.0:
            return x
        return x - (1.0 - self.low_weight) * self.blur(x)

    def extra_repr(self) -> str:
        return f"low_weight={self.low_weight}, order={self.order}"
