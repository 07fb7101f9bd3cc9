"""Model throughput: pairs per second of the distance ``metric(x0, x1)`` for LipSim and the comparison models.

The comparison models (random weights) and the ``model`` section of ``bench.py`` (see its docstring). Run alone with
``python benchmarks/bench_model.py [bench.py flags]``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lipsim_metric import LipSim

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling scripts, also when loaded from another folder

from bench_common import (  # noqa: E402
    IMAGE_SIZE,
    LIPSIM,
    MODELS,
    PAPER,
    Row,
    _autocast,
    _free,
    _images,
    _measured_cells,
    _num,
    _prepare,
    _sweep,
    _table,
    _variants,
)

# LPIPS v0.1 constants (lpips==0.1.4, ScalingLayer and the tapped ReLU indices of torchvision's `features`).
_LPIPS_SHIFT = (-0.030, -0.088, -0.188)
_LPIPS_SCALE = (0.458, 0.448, 0.450)
_LPIPS_NETS = {
    "alex": ((1, 4, 7, 9, 11), (64, 192, 384, 256, 256)),
    "vgg": ((3, 8, 15, 22, 29), (64, 128, 256, 512, 512)),
}
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_CLIP_MEAN, _CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def _channel_buffer(values: Sequence[float]) -> torch.Tensor:
    return torch.tensor(values).reshape(1, -1, 1, 1)


class LPIPSLike(nn.Module):
    """LPIPS v0.1 distance with random weights (same computation as ``lipsim_metric.train.teachers.LPIPS``).

    Kept here rather than built from the teacher class because that class (rightly) refuses to run without its
    weight files; the cost of the computation does not depend on the weights.
    """

    def __init__(self, net: str) -> None:
        super().__init__()
        import torchvision

        features = torchvision.models.alexnet().features if net == "alex" else torchvision.models.vgg16().features
        self.taps, channels = _LPIPS_NETS[net]
        self.features = features[: max(self.taps) + 1]
        self.heads = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in channels)
        self.shift: torch.Tensor
        self.scale: torch.Tensor
        self.register_buffer("shift", _channel_buffer(_LPIPS_SHIFT), persistent=False)
        self.register_buffer("scale", _channel_buffer(_LPIPS_SCALE), persistent=False)

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        n = x0.shape[0]
        x = (torch.cat([x0, x1]) * 2 - 1 - self.shift) / self.scale
        total = x0.new_zeros(n, dtype=torch.float32)
        heads = iter(self.heads)
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self.taps:
                f0, f1 = x[:n], x[n:]
                f0 = f0 / (torch.linalg.vector_norm(f0, dim=1, keepdim=True) + 1e-10)
                f1 = f1 / (torch.linalg.vector_norm(f1, dim=1, keepdim=True) + 1e-10)
                total = total + next(heads)((f0 - f1) ** 2).mean(dim=(1, 2, 3))
        return total


class DreamSimLike(nn.Module):
    """Cost model of DreamSim's ensemble: ViT-B/16 + 2 x ViT-B/32 (torchvision, random weights), cosine distance."""

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models import vit_b_16, vit_b_32

        self.backbones = nn.ModuleList([vit_b_16(), vit_b_32(), vit_b_32()])
        for backbone in self.backbones:
            backbone.heads = nn.Identity()  # the class token after the final LayerNorm, width 768
        # DINO's embedding is its class token (768); CLIP and OpenCLIP project theirs to 512.
        self.projections = nn.ModuleList([nn.Identity(), nn.Linear(768, 512, bias=False),
                                          nn.Linear(768, 512, bias=False)])
        for k, (mean, std) in enumerate([(_IMAGENET_MEAN, _IMAGENET_STD), (_CLIP_MEAN, _CLIP_STD),
                                         (_CLIP_MEAN, _CLIP_STD)]):
            self.register_buffer(f"mean{k}", _channel_buffer(mean), persistent=False)
            self.register_buffer(f"std{k}", _channel_buffer(std), persistent=False)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        parts = []
        for k, (backbone, projection) in enumerate(zip(self.backbones, self.projections, strict=True)):
            z = (x - getattr(self, f"mean{k}")) / getattr(self, f"std{k}")
            parts.append(projection(backbone(z)))
        return torch.cat(parts, dim=1)

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        e = self.embed(torch.cat([x0, x1])).float()
        n = x0.shape[0]
        return 1 - F.cosine_similarity(e[:n], e[n:], dim=1)


def build_model(name: str, teachers_dir: str | None, check_inputs: bool,
                lipsim_weights: str | None = None) -> nn.Module:
    """The distance module ``(x0, x1) -> (N,)`` named ``name`` (see the module docstring).

    ``lipsim_weights``: a weights file to time as ``lipsim-fast`` instead of the shipped default (a candidate's
    architecture, before it is registered)."""
    if name == LIPSIM:  # the shipped default weights: their architecture (backbone_kwargs) is what users run
        return LipSim(weights=lipsim_weights, check_inputs=check_inputs)  # None: the shipped default
    if name == PAPER:
        return LipSim(name, pretrained=False, check_inputs=check_inputs)
    if name in ("lpips-alex", "lpips-vgg"):
        if teachers_dir is not None:
            from lipsim_metric.train.teachers import build_distance_teacher

            return build_distance_teacher(name, teachers_dir=teachers_dir)
        return LPIPSLike(name.split("-")[1])
    if name == "dreamsim-like":
        return DreamSimLike()
    raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")



def bench_models(args: argparse.Namespace, device: torch.device) -> list[Row]:
    rows: list[Row] = []
    generator = torch.Generator().manual_seed(args.seed)
    for name in args.models:
        try:
            model = build_model(name, args.teachers_dir, not args.no_check_inputs,
                                getattr(args, "lipsim_weights", None)).to(device).eval()
        except Exception as exc:
            rows.append(Row("model", name, str(device), "-", "-", 0, status="error",
                            note=f"cannot build: {type(exc).__name__}: {exc}"))
            continue
        for variant in _variants(args):
            runner = _prepare(model, variant)
            for dtype in args.dtypes:

                def make_step(batch: int, runner: Callable[..., Any] = runner, dtype: str = dtype,
                              channels_last: bool = variant == "channels-last") -> Callable[[], object]:
                    x0 = _images(batch, IMAGE_SIZE, device, channels_last, generator)
                    x1 = _images(batch, IMAGE_SIZE, device, channels_last, generator)

                    def step() -> object:
                        with torch.inference_mode(), _autocast(device, dtype):
                            return runner(x0, x1)

                    return step

                rows += _sweep("model", name, device, dtype, variant, args.batch_sizes_for[device.type], make_step,
                               args)
        del model, runner
        _free(device)
    return rows



MODEL_COLUMNS = ("model", "device", "dtype", "variant", "batch", "pairs/s", "ms/batch", "repeats", "peak MiB",
                 "MiB/pair", "note")


def model_table(rows: Sequence[Row]) -> str:
    cells = [[r.model, r.device, r.dtype, r.variant, str(r.batch), *_measured_cells(r)] for r in rows]
    return _table(MODEL_COLUMNS, cells)


def ratio_table(rows: Sequence[Row]) -> str | None:
    """Speed-up of lipsim-fast over every other model at the same device, dtype, variant and batch size."""
    others = [m for m in MODELS if m != LIPSIM and any(r.model == m for r in rows)]
    groups = list(dict.fromkeys((r.device, r.dtype, r.variant, r.batch) for r in rows if r.model == LIPSIM))
    if not others or not groups:
        return None
    lookup = {(r.model, r.device, r.dtype, r.variant, r.batch): r for r in rows}
    cells = []
    for device, dtype, variant, batch in groups:
        ours = lookup[(LIPSIM, device, dtype, variant, batch)]
        line = [device, dtype, variant, str(batch), _num(ours.items_per_s, ours.status == "approx")]
        for other in others:
            theirs = lookup.get((other, device, dtype, variant, batch))
            if ours.items_per_s is None or theirs is None or not theirs.items_per_s:
                line.append("-")
            else:
                approx = "approx" in (ours.status, theirs.status)
                line.append(f"{_num(ours.items_per_s / theirs.items_per_s, approx)}x")
        cells.append(line)
    return _table(["device", "dtype", "variant", "batch", f"{LIPSIM} pairs/s", *(f"vs {m}" for m in others)], cells)




def main(argv: Sequence[str] | None = None) -> int:
    """``python benchmarks/bench_model.py [bench.py flags]``: the ``model`` section of :mod:`bench` alone."""
    import bench

    return bench.main(["--sections", "model", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
