"""Networks and images for the soundness tests (issue 14): where a certificate is tight enough that any rounding shows.

``tight_lipsim`` builds the reviewer's reproducer: a ``lipsim-fast`` at input 64 with zero convolutions (identity
layers) and dense layers whose rows are orthogonal, ``+-value * e_i``, so the Gershgorin bound behind ``t`` is exact
and each dense layer has slope exactly -1 where its ReLU is active (the sign flip between the two layers keeps both
active for the same inputs). With ``value = 1 + 0.99 * 2**-8``, which rounds to 1.0 in bf16, a ``t`` computed under
bf16 autocast is 0.8% too large per layer and the network's Lipschitz constant becomes 1.03.
"""

from __future__ import annotations

from pathlib import Path

import torch

from lipsim_metric import LipSim
from lipsim_metric.backbones import FastBackbone
from lipsim_metric.layers import SLLConv2d, SLLLinear

#: 1 + 0.99 * 2**-8: exact in float32, rounds to 1.0 in bfloat16.
BF16_TRAP = 1 + 0.99 * 2**-8


def tight_backbone(value: float = BF16_TRAP, input_size: int = 64) -> FastBackbone:
    """The tight ``lipsim-fast`` described in the module docstring (eval mode, frozen)."""
    hidden = 512
    backbone = FastBackbone(input_size=input_size, embed_dim=hidden, linear_hidden=hidden)
    sign = 1.0
    with torch.no_grad():
        for module in backbone.modules():
            if isinstance(module, SLLConv2d):
                module.kernel.zero_()
            elif isinstance(module, SLLLinear):
                module.weight.zero_()
                module.weight[torch.arange(hidden), torch.arange(hidden)] = sign * value
                module.bias.zero_()
                module.q.zero_()
                sign = -sign
    return backbone.requires_grad_(False).eval()


def tight_lipsim(value: float = BF16_TRAP) -> LipSim:
    """A :class:`LipSim` around :func:`tight_backbone`."""
    metric = LipSim(pretrained=False)
    metric.backbone = tight_backbone(value)
    return metric


def triplets(n: int, seed: int, size: int = 64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` random references with two noisy copies each (noise 0.10 and 0.12), all in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    ref = torch.rand(n, 3, size, size, generator=g)
    x0 = (ref + 0.10 * torch.randn(ref.shape, generator=g)).clamp(0, 1)
    x1 = (ref + 0.12 * torch.randn(ref.shape, generator=g)).clamp(0, 1)
    return ref, x0, x1


def val_photos(shared: Path, n: int) -> list[Path]:
    """The first ``n`` photos of ``shared/images/val`` (sorted), or an empty list when the folder is absent."""
    folder = shared / "images" / "val"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})[:n]
