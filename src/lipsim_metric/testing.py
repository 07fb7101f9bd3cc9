"""Test helpers for 1-Lipschitz networks, for this project's tests and for third-party backbones.

Every certificate of LipSim rests on Claim 1 of ``docs/certificates.md``: the backbone is 1-Lipschitz in l2. A new
block or backbone should be checked the way the project checks its own, by two independent searches for a
violation:

* **power iteration on the Jacobian** (:func:`jacobian_spectral_norm`): the largest singular value of the
  Jacobian at given inputs, via forward- and reverse-mode products (``torch.func.jvp`` / ``torch.func.vjp``);
* **adversarial ratio search** (:func:`adversarial_lipschitz_ratio`): gradient ascent on
  ``||f(x) - f(y)|| / ||x - y||`` over pairs of inputs (this finds violations between distant points, which a
  Jacobian at a few points can miss).

:func:`assert_one_lipschitz` runs both (and :func:`lipsim_metric.layers.check_lipschitz_declarations`) and raises
``AssertionError`` when either finds a ratio above the declared bound. Both are searches, not proofs: passing means
no violation was found. Stress the parameters (large, badly scaled weights) to make the search meaningful.

The module has no dependency beyond torch (no training extras), so it can be imported from any test-suite.

Example:
    >>> import torch
    >>> from lipsim_metric import create_backbone
    >>> from lipsim_metric.testing import assert_one_lipschitz
    >>> _ = torch.manual_seed(0)
    >>> net = create_backbone("lipsim-fast", input_size=64, embed_dim=64, linear_hidden=32)
    >>> report = assert_one_lipschitz(net, power_iters=5, steps=5)
    >>> report.jacobian_norm <= 1 + 1e-4 and report.ratio <= 1 + 1e-4
    True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor, nn

from .layers import check_lipschitz_declarations

__all__ = ["LipschitzReport", "jacobian_spectral_norm", "adversarial_lipschitz_ratio", "assert_one_lipschitz"]

Function = Callable[[Tensor], Tensor]


class LipschitzReport(NamedTuple):
    """Result of :func:`assert_one_lipschitz`.

    Attributes:
        jacobian_norm: the largest Jacobian spectral norm found by power iteration (a lower bound on the
            Lipschitz constant).
        ratio: the largest ``||f(x) - f(y)|| / ||x - y||`` found by the adversarial search (also a lower bound).
        bound: the bound that was checked (``lipschitz_bound`` of the module, or the one passed).
    """

    jacobian_norm: float
    ratio: float
    bound: float


def jacobian_spectral_norm(f: Function, x: Tensor, iters: int = 30, generator: torch.Generator | None = None) -> float:
    """Largest singular value of the Jacobian of ``f`` at ``x`` (power iteration on ``J^T J``).

    For a batch ``x`` of independent samples the Jacobian is block diagonal, so this is the maximum over the
    samples. Every iterate ``||J v||`` (``||v|| = 1``) is a lower bound on ``||J||``; the largest is returned.

    Args:
        f: a function of one tensor (e.g. a module), differentiable in forward and reverse mode.
        x: the point, any shape.
        iters: power iterations.
        generator: for the random start (default: a generator seeded with 0).

    Returns:
        The estimate of ``||J_f(x)||_2``.
    """
    generator = generator or torch.Generator().manual_seed(0)
    x = x.detach()
    v = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    v = v / v.norm()
    best = 0.0
    for _ in range(int(iters)):
        jv = torch.func.jvp(f, (x,), (v,))[1]
        best = max(best, float(jv.detach().norm()))
        vjp = torch.func.vjp(f, x)[1]
        (jtjv,) = vjp(jv.detach())
        norm = jtjv.detach().norm()
        if float(norm) == 0.0:  # J v = 0: v is in the null space; nothing more to learn from this start
            break
        v = jtjv.detach() / norm
    return best


def adversarial_lipschitz_ratio(f: Function, x: Tensor, steps: int = 40, lr: float = 1e-2, spread: float = 0.05,
                                generator: torch.Generator | None = None) -> float:
    """Gradient ascent on ``||f(x) - f(y)|| / ||x - y||`` over pairs; the largest ratio found.

    The pairs start at ``x`` and ``x + spread * noise`` and are optimised jointly with Adam; each sample of the
    batch is one pair (samples must be independent). Pairs that collapse (``||x - y|| < 1e-3``) are ignored, because
    there rounding error, not the function, dominates the ratio.

    Args:
        f: a function of one tensor, differentiable in the input.
        x: starting points ``(N, ...)``.
        steps: Adam steps.
        lr: Adam learning rate.
        spread: scale of the initial offset of ``y``.
        generator: for the initial offsets (default: seeded with 0).

    Returns:
        The largest ratio seen over all steps and pairs.
    """
    generator = generator or torch.Generator().manual_seed(0)
    a = x.detach().clone().requires_grad_(True)
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    b = (x.detach() + spread * noise).requires_grad_(True)
    opt = torch.optim.Adam([a, b], lr=lr)
    best = 0.0
    for _ in range(int(steps) + 1):
        num = (f(a) - f(b)).flatten(1).norm(dim=1)
        den = (a - b).flatten(1).norm(dim=1)
        ratio = num / den.clamp_min(1e-3)
        valid = den.detach() >= 1e-3
        if bool(valid.any()):
            best = max(best, float(ratio.detach()[valid].max()))
        opt.zero_grad()
        grads = torch.autograd.grad(-(ratio * valid).sum(), [a, b], allow_unused=True)
        for p, g in zip((a, b), grads, strict=True):
            p.grad = g
        opt.step()
    return best


def _first_floating(module: nn.Module) -> Tensor | None:
    for t in list(module.parameters()) + list(module.buffers()):
        if t.is_floating_point():
            return t
    return None


def assert_one_lipschitz(
    module: nn.Module,
    input_shape: tuple[int, ...] | None = None,
    *,
    bound: float | None = None,
    tolerance: float = 1e-4,
    points: int = 2,
    power_iters: int = 30,
    steps: int = 40,
    seed: int = 0,
    dtype: torch.dtype | None = None,
    check_declarations: bool = True,
) -> LipschitzReport:
    """Check a block or backbone for l2 Lipschitz violations, as LipSim's certificates use it.

    Runs :func:`lipsim_metric.layers.check_lipschitz_declarations` (unless ``check_declarations=False``), then power
    iteration on the Jacobian at ``points`` random inputs and an adversarial ratio search over ``points`` pairs. The
    module is evaluated as it is (its mode, parameters and caches are not changed), with autocast disabled, because
    that is how certificates evaluate it; no parameter gradient is accumulated.

    Args:
        module: the block or backbone.
        input_shape: shape of one input *without* the batch dimension; default ``(3, S, S)`` with
            ``S = module.input_size`` (LipSim backbones).
        bound: the Lipschitz bound to check; default ``module.lipschitz_bound`` (1 if none is declared).
        tolerance: relative slack for floating point (``ratio <= bound * (1 + tolerance)`` passes).
        points: batch size of the random inputs (uniform in ``[0, 1]``, like images).
        power_iters: power iterations.
        steps: steps of the ratio search.
        seed: seed of every random choice.
        dtype: input dtype; default float32, or the module's dtype if wider (float64 for a ``.double()`` copy).
        check_declarations: also require declared bounds on the module and its parametrised blocks.

    Returns:
        A :class:`LipschitzReport` with the largest values found.

    Raises:
        AssertionError: a search found a ratio above ``bound * (1 + tolerance)``.
        TypeError: a parametrised block declares no bound (see ``check_declarations``).
        ValueError: ``input_shape`` missing and not inferable, or bad ``points``/``tolerance``.
    """
    if check_declarations:
        check_lipschitz_declarations(module, name=type(module).__name__)
    if input_shape is None:
        size = getattr(module, "input_size", None)
        if not isinstance(size, int):
            raise ValueError(f"{type(module).__name__} has no integer input_size; pass input_shape=(C, H, W)")
        input_shape = (3, size, size)
    if int(points) < 1:
        raise ValueError(f"points must be >= 1, got {points}")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    if bound is None:
        bound = float(getattr(module, "lipschitz_bound", 1.0))
    ref = _first_floating(module)
    device = ref.device if ref is not None else torch.device("cpu")
    if dtype is None:
        dtype = torch.float32 if ref is None else torch.promote_types(ref.dtype, torch.float32)
    generator = torch.Generator().manual_seed(int(seed))
    x = torch.rand((int(points), *input_shape), generator=generator, dtype=dtype).to(device)
    with torch.autocast(device_type=device.type, enabled=False):
        jac = jacobian_spectral_norm(module, x, iters=power_iters, generator=generator)
        ratio = adversarial_lipschitz_ratio(module, x, steps=steps, generator=generator)
    limit = bound * (1.0 + tolerance)
    if jac > limit or ratio > limit:
        raise AssertionError(
            f"{type(module).__name__} is not {bound:g}-Lipschitz: Jacobian spectral norm {jac:.6g}, adversarial ratio "
            f"{ratio:.6g} (allowed {limit:.6g}). Its certificates would be unsound; check its proof, its weights "
            "rescaling and any cached state."
        )
    return LipschitzReport(jac, ratio, bound)
