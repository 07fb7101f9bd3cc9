"""Speed and memory of LipSim against the paper network, LPIPS and a DreamSim-like ensemble, in one run.

Sections (``--sections``):

``model``
    Pairs per second of the distance ``metric(x0, x1)`` on batches of 224x224 pairs, for every selected model,
    device, precision (fp32, or bf16/fp16 under ``torch.autocast``) and batch size, plus the speed-up of the default
    LipSim (``lipsim-fast``) over every other model at the same device, precision, variant and batch size.
``train``
    Training images per second of the default backbone: forward + backward + ``AdamW`` step on a regression loss
    against random targets (the shape of stage-1 distillation; no teacher, no data loading).
``resize``
    LipSim on 224, 512 and 1024 pixel inputs (LipSim resizes to 224 itself) and the share of the antialiased resize.
``cli``
    ``lipsim-score`` end to end (in-process ``lipsim_metric.cli.main``) on generated 512x512 PNG pairs, against the
    model-only throughput of the same computation (distance and radius on 224x224 tensors, fp32, same batch size).

Models (random weights: speed does not depend on the weights):

``lipsim-fast``, ``lipsim-paper-small``
    :class:`lipsim_metric.LipSim` with ``pretrained=False`` (input checks on, as users get it).
``lpips-alex``, ``lpips-vgg``
    LPIPS v0.1 (Zhang et al., CVPR 2018): torchvision AlexNet / VGG16 ``features`` up to the last tapped ReLU, LPIPS
    input scaling, channel unit-normalisation, squared difference, 1x1 heads, spatial mean, sum over layers. With
    ``--teachers-dir`` the package's own ``lipsim_metric.train.teachers.LPIPS`` with real weights is used instead.
``dreamsim-like``
    A cost model of DreamSim's ensemble (Fu et al., NeurIPS 2023): torchvision ViT-B/16 + two ViT-B/32 (DreamSim uses
    DINO ViT-B/16, CLIP ViT-B/32 and OpenCLIP ViT-B/32), per-backbone input normalisation, the B/32 outputs projected
    to 512 (as CLIP's), embeddings concatenated (768 + 512 + 512), cosine distance.

Timing: one untimed call at batch size 1 per model and precision (one-time costs), then per configuration a warm-up
(at least one call and ``--warmup-seconds``; for ``--compile`` one more call that compiles), then repeated calls until
``--seconds`` of measured time; the reported time is the median call, with ``torch.cuda.synchronize()`` around every
call on GPU. A configuration whose single call is predicted (from the previous batch size, or from small probe
batches) to exceed ``--max-call-seconds`` is skipped; one whose warm-up call already exceeds it is reported from that
call alone, marked ``~``.

Memory: peak increase over the memory held just before the timed calls (model weights, folded-weight caches and the
input batch are in the baseline, so this is activations and workspace). GPU: ``torch.cuda.max_memory_allocated``.
CPU: peak resident set size (``VmHWM`` of ``/proc/self/status``, reset through ``/proc/self/clear_refs`` after a glibc
``malloc_trim``) minus the resident size at the start; where the kernel does not allow the reset, the increase of the
process high-water mark ``resource.getrusage(...).ru_maxrss`` (a lower bound, marked in the report).

Run ``python benchmarks/bench.py --help``; ``benchmarks/README.md`` explains the columns and the targets.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import importlib.metadata
import io
import json
import math
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lipsim_metric import LipSim
from lipsim_metric.backbones import DEFAULT_BACKBONE, create_backbone, list_backbones
from lipsim_metric.preprocess import to_backbone_input
from lipsim_metric.pretrained import save_weights

REPO = Path(__file__).resolve().parents[1]
DEFAULT_RESULTS = Path(__file__).resolve().parent / "RESULTS.md"

LIPSIM = DEFAULT_BACKBONE  # the model the ratios are computed for
PAPER = "lipsim-paper-small"
MODELS = (LIPSIM, PAPER, "lpips-alex", "lpips-vgg", "dreamsim-like")
SECTIONS = ("model", "train", "resize", "cli")
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
IMAGE_SIZE = 224

# Per-device defaults (quick-mode value second).
DEFAULT_BATCH_SIZES = {"cpu": ((1, 8, 32), (1,)), "cuda": ((32, 128, 512), (8,))}
DEFAULT_TRAIN_BATCH_SIZES = {"cpu": ((32,), (2,)), "cuda": ((128, 256), (8,))}
DEFAULT_RESIZE_BATCH = {"cpu": (8, 1), "cuda": (128, 8)}
DEFAULT_CLI_BATCH = {"cpu": (16, 4), "cuda": (128, 4)}
DEFAULT_SECONDS = {"cpu": (3.0, 0.2), "cuda": (2.0, 0.2)}


# ----------------------------------------------------------------------------------------------------------------
# Comparison models (random weights)
# ----------------------------------------------------------------------------------------------------------------

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


def build_model(name: str, teachers_dir: str | None, check_inputs: bool) -> nn.Module:
    """The distance module ``(x0, x1) -> (N,)`` named ``name`` (see the module docstring)."""
    if name == LIPSIM:  # the shipped default weights: their architecture (backbone_kwargs) is what users run
        return LipSim(check_inputs=check_inputs)
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


# ----------------------------------------------------------------------------------------------------------------
# Timing and memory
# ----------------------------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _proc_status_kib(field_name: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process; False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return _proc_status_kib("VmHWM") is not None
    except OSError:
        return False


def _malloc_trim() -> None:
    # Hand freed heap pages back to the OS so that the baseline RSS does not count memory glibc merely kept.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _ru_maxrss_bytes() -> int:
    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(value) if sys.platform == "darwin" else int(value) * 1024


CPU_MEMORY_METHOD: str | None = None  # set on first use: "rss-hwm" or "ru_maxrss"


class MemoryProbe:
    """Peak memory increase between :meth:`start` and :meth:`peak` (see the module docstring)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.base = 0

    def start(self) -> None:
        global CPU_MEMORY_METHOD
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            return
        _malloc_trim()
        if CPU_MEMORY_METHOD in (None, "rss-hwm") and _reset_peak_rss():
            CPU_MEMORY_METHOD = "rss-hwm"
            self.base = (_proc_status_kib("VmRSS") or 0) * 1024
        else:
            CPU_MEMORY_METHOD = "ru_maxrss"
            self.base = _ru_maxrss_bytes()

    def peak(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return max(0, torch.cuda.max_memory_allocated(self.device) - self.base)
        if CPU_MEMORY_METHOD == "rss-hwm":
            return max(0, (_proc_status_kib("VmHWM") or 0) * 1024 - self.base)
        return max(0, _ru_maxrss_bytes() - self.base)


@dataclass
class Timing:
    times: list[float]
    peak_bytes: int | None
    approx: bool  # only the warm-up call was timed (it exceeded --max-call-seconds)
    compile_seconds: float | None = None  # the untimed first call of a torch.compile'd step

    @property
    def median(self) -> float:
        return statistics.median(self.times)


def _timed_call(step: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    step()
    _sync(device)
    return time.perf_counter() - start


def measure(step: Callable[[], object], device: torch.device, seconds: float, warmup_seconds: float,
            max_call_seconds: float, compiles: bool = False) -> Timing:
    """Warm up, then time ``step`` until ``seconds`` of measured calls; see the module docstring.

    With ``compiles``, one more call comes first, outside the ``max_call_seconds`` rule: it compiles the step.
    """
    compile_seconds = _timed_call(step, device) if compiles else None
    probe = MemoryProbe(device)
    probe.start()
    first = _timed_call(step, device)
    if first > max_call_seconds:
        return Timing([first], probe.peak(), approx=True, compile_seconds=compile_seconds)
    warm = first
    while warm < warmup_seconds:
        warm += _timed_call(step, device)
    probe.start()
    times: list[float] = []
    while not times or sum(times) < seconds:
        times.append(_timed_call(step, device))
    return Timing(times, probe.peak(), approx=False, compile_seconds=compile_seconds)


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)) or "out of memory" in str(exc).lower()


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Row:
    """One measured configuration. ``items`` are pairs (model, resize) or images (train)."""

    section: str
    model: str
    device: str
    dtype: str
    variant: str
    batch: int
    status: str = "ok"  # ok | approx | skipped | oom | error
    seconds_per_call: float | None = None
    repeats: int = 0
    peak_bytes: int | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def items_per_s(self) -> float | None:
        if self.seconds_per_call is None or self.status not in ("ok", "approx"):
            return None
        return self.batch / self.seconds_per_call

    def fill(self, timing: Timing) -> Row:
        self.status = "approx" if timing.approx else "ok"
        self.seconds_per_call = timing.median
        self.repeats = len(timing.times)
        self.peak_bytes = timing.peak_bytes
        notes = ["warm-up call only (> --max-call-seconds)"] if timing.approx else []
        if timing.compile_seconds is not None:
            notes.append(f"first call (compilation) {timing.compile_seconds:.1f} s")
        self.note = "; ".join(notes)
        return self


@dataclass
class CliResult:
    device: str
    pairs: int
    image_size: int
    batch: int
    workers: int
    png_kib: float
    status: str = "ok"
    seconds: float | None = None
    model_pairs_per_s: float | None = None
    decode_s_per_pair: float | None = None  # one core: decoding + resizing one pair (ImagePairDataset item)
    cores: int = 1
    note: str = ""

    @property
    def pairs_per_s(self) -> float | None:
        return None if self.seconds is None else self.pairs / self.seconds

    @property
    def ratio(self) -> float | None:
        if self.pairs_per_s is None or not self.model_pairs_per_s:
            return None
        return self.pairs_per_s / self.model_pairs_per_s

    @property
    def bound(self) -> float | None:
        """Best CLI / model ratio that perfect overlap allows on this machine.

        CPU: the model keeps all ``cores`` busy, ``cores / M`` core-seconds per pair at ``M`` model-only pairs/s, and
        decoding adds ``D`` core-seconds, so at best ``cores / (cores / M + D)`` pairs/s: a ratio of
        ``1 / (1 + D M / cores)``. CUDA: the model does not use the CPU cores and ``workers`` decode in parallel:
        ``min(1, workers / (D M))`` (``workers = 0``: decoding and the model alternate, ``1 / (1 + D M)``).
        """
        if not self.model_pairs_per_s or self.decode_s_per_pair is None:
            return None
        load = self.decode_s_per_pair * self.model_pairs_per_s
        if self.device.startswith("cpu"):
            return 1.0 / (1.0 + load / max(1, self.cores))
        return 1.0 / (1.0 + load) if self.workers == 0 else min(1.0, self.workers / load)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _autocast(device: torch.device, dtype: str) -> contextlib.AbstractContextManager[Any]:
    if DTYPES[dtype] is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[dtype])


def _images(batch: int, size: int, device: torch.device, channels_last: bool, generator: torch.Generator
            ) -> torch.Tensor:
    x = torch.rand(batch, 3, size, size, generator=generator).to(device)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _variants(args: argparse.Namespace) -> list[str]:
    return ["default"] + (["compile"] if args.compile else []) + (["channels-last"] if args.channels_last else [])


def _prepare(module: nn.Module, variant: str) -> Callable[..., Any]:
    if variant == "channels-last":
        module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    if variant == "compile":
        # One specialised graph per batch size, as deployed with a fixed batch size (no dynamic-shape kernels).
        return torch.compile(module, dynamic=False)  # type: ignore[return-value]
    return module


def _run_row(row: Row, step: Callable[[], object], device: torch.device, args: argparse.Namespace) -> Row:
    try:
        row.fill(measure(step, device, args.seconds_for[device.type], args.warmup_seconds, args.max_call_seconds,
                         compiles=row.variant == "compile"))
    except Exception as exc:  # one failing configuration (OOM, compile error) must not end the run
        row.status = "oom" if _is_oom(exc) else "error"
        row.note = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
        _free(device)
    rate = row.items_per_s
    _log(f"[{row.section}] {row.model} {row.device} {row.dtype} {row.variant} batch {row.batch}"
         f"{' ' + str(row.extra.get('input')) + 'px' if 'input' in row.extra else ''}: "
         f"{f'{rate:.4g}/s' if rate is not None else row.status} {row.note}")
    return row


def _too_slow(last_seconds_per_item: float | None, batch: int, args: argparse.Namespace) -> str | None:
    if last_seconds_per_item is None:
        return None
    predicted = last_seconds_per_item * batch
    if predicted > args.max_call_seconds:
        return f"predicted {predicted:.0f} s per call > --max-call-seconds {args.max_call_seconds:g}"
    return None


# ----------------------------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------------------------


def _probe(make_step: Callable[[int], Callable[[], object]], batch: int, device: torch.device,
           max_call_seconds: float) -> float | None:
    """Seconds per item predicted for ``batch`` from small probe batches (see :func:`_sweep`); None if unknown."""
    probe_batch, per_item = 1, None
    try:
        while probe_batch < batch:
            step = make_step(probe_batch)
            seconds = _timed_call(step, device)
            del step
            per_item = seconds / probe_batch
            if per_item * batch <= max_call_seconds or 2 * seconds > max_call_seconds / 4:
                break
            probe_batch *= 2
    except Exception:  # a failing probe is reported by the real configuration
        pass
    _free(device)
    return per_item


def _sweep(section: str, name: str, device: torch.device, dtype: str, variant: str, batches: Sequence[int],
           make_step: Callable[[int], Callable[[], object]], args: argparse.Namespace) -> list[Row]:
    """Measure ``make_step(batch)`` for increasing batch sizes, skipping those predicted to be too slow.

    The time per item is extrapolated linearly (an over-estimate: larger batches are at least as efficient) from the
    previous batch size, or, before the first one, from probes at batch sizes 1, 2, 4, ... that stop once the
    prediction fits ``--max-call-seconds`` or a probe itself gets expensive. This keeps e.g. bf16 on a CPU without
    bf16 units (10x slower than fp32) from spending minutes on one call, while fixed per-call costs (the optimiser
    step in training) do not make a batch-1 probe condemn large batches.
    """
    rows: list[Row] = []
    per_item: float | None = None
    # A compiled step is specialised to each batch size (dynamic=False) and compiles on its first call at that size,
    # so neither the batch-1 warm-up nor batch-1 probes would tell anything about it.
    compiled = variant == "compile"
    if not compiled:
        # One untimed call at batch size 1 pays the per-model one-time costs (folded-weight caches: about 130 GFLOP
        # for the paper network's dense layers) before anything is timed or extrapolated.
        with contextlib.suppress(Exception):  # a failure is reported by the real configurations
            _timed_call(make_step(1), device)
        _free(device)
    for batch in batches:
        row = Row(section, name, str(device), dtype, variant, batch)
        if per_item is None and batch > 1 and not compiled:
            per_item = _probe(make_step, batch, device, args.max_call_seconds)
        reason = _too_slow(per_item, batch, args)
        if reason is None and rows and rows[-1].status == "oom":
            reason = "a smaller batch ran out of memory"
        if reason is not None:
            row.status, row.note = "skipped", reason
            _log(f"[{section}] {name} {device} {dtype} {variant} batch {batch}: skipped, {reason}")
            rows.append(row)
            continue
        try:
            step = make_step(batch)
        except Exception as exc:
            row.status = "oom" if _is_oom(exc) else "error"
            row.note = f"cannot make inputs: {type(exc).__name__}"
            rows.append(row)
            continue
        rows.append(_run_row(row, step, device, args))
        if row.seconds_per_call is not None:
            per_item = row.seconds_per_call / batch
        del step
        _free(device)
    return rows


def bench_models(args: argparse.Namespace, device: torch.device) -> list[Row]:
    rows: list[Row] = []
    generator = torch.Generator().manual_seed(args.seed)
    for name in args.models:
        try:
            model = build_model(name, args.teachers_dir, not args.no_check_inputs).to(device).eval()
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


def bench_train(args: argparse.Namespace, device: torch.device) -> list[Row]:
    rows: list[Row] = []
    generator = torch.Generator().manual_seed(args.seed)
    for variant in _variants(args):
        backbone = create_backbone(args.train_backbone).to(device).train()
        runner = _prepare(backbone, variant)
        for dtype in args.dtypes:

            def make_step(batch: int, runner: Callable[..., Any] = runner, dtype: str = dtype,
                          channels_last: bool = variant == "channels-last",
                          module: nn.Module = backbone, embed_dim: int = backbone.embed_dim
                          ) -> Callable[[], object]:
                x = _images(batch, IMAGE_SIZE, device, channels_last, generator)
                target = torch.randn(batch, embed_dim, generator=generator).to(device)
                optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4, weight_decay=0.0)

                def step() -> object:
                    with _autocast(device, dtype):
                        out = runner(x)
                    loss = F.mse_loss(out.float(), target)
                    loss.backward()
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    return loss

                return step

            rows += _sweep("train", args.train_backbone, device, dtype, variant,
                           args.train_batch_sizes_for[device.type], make_step, args)
        del backbone, runner
        _free(device)
    return rows


def bench_resize(args: argparse.Namespace, device: torch.device) -> list[Row]:
    rows: list[Row] = []
    generator = torch.Generator().manual_seed(args.seed)
    metric = LipSim(LIPSIM, pretrained=False, check_inputs=not args.no_check_inputs).to(device)
    batch = args.resize_batch_for[device.type]
    for dtype in args.dtypes:
        for size in args.image_sizes:
            row = Row("resize", LIPSIM, str(device), dtype, "default", batch, extra={"input": size})
            x0 = _images(batch, size, device, False, generator)
            x1 = _images(batch, size, device, False, generator)

            def step(x0: torch.Tensor = x0, x1: torch.Tensor = x1, dtype: str = dtype) -> object:
                with torch.inference_mode(), _autocast(device, dtype):
                    return metric(x0, x1)

            def resize(x0: torch.Tensor = x0, x1: torch.Tensor = x1, dtype: str = dtype) -> object:
                with torch.inference_mode(), _autocast(device, dtype):
                    return to_backbone_input(x0, metric.input_size), to_backbone_input(x1, metric.input_size)

            rows.append(_run_row(row, step, device, args))
            if row.status in ("ok", "approx"):
                try:
                    timing = measure(resize, device, args.seconds_for[device.type] / 2, args.warmup_seconds,
                                     args.max_call_seconds)
                    row.extra["resize_s"] = timing.median
                except Exception as exc:
                    row.note += f" resize timing failed: {type(exc).__name__}"
            del x0, x1
            _free(device)
    return rows


def _write_png_pairs(folder: Path, n_pairs: int, size: int, seed: int, unique: int = 64) -> float:
    """Write ``folder/a/{i}.png`` and ``folder/b/{i}.png``; returns the mean file size in KiB.

    Images are smooth random colour fields plus +-4 levels of noise, so that PNG sizes (about 470 KiB at 512x512)
    and decode times are those of photographs rather than of flat or pure-noise images. Only ``unique`` distinct
    images are encoded (encoding is slow); the rest are hard links (copies where links fail), each still decoded
    on its own by the CLI.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    sources = folder / "sources"
    for sub in ("a", "b", "sources"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    made: list[tuple[Path, Path]] = []
    for k in range(min(unique, n_pairs)):
        low = (rng.random((16, 16, 3)) * 255).astype(np.uint8)
        base = np.asarray(Image.fromarray(low).resize((size, size), Image.Resampling.BICUBIC), dtype=np.int16)
        paths = []
        for tag, shift in (("a", 0), ("b", 12)):  # b: brighter, different noise (a distorted copy)
            noisy = base + shift + rng.integers(-4, 5, size=base.shape)
            path = sources / f"{k}{tag}.png"
            Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(path, compress_level=1)
            paths.append(path)
        made.append((paths[0], paths[1]))
    for i in range(n_pairs):
        for source, sub in zip(made[i % len(made)], ("a", "b"), strict=True):
            target = folder / sub / f"{i:05d}.png"
            try:
                os.link(source, target)
            except OSError:
                target.write_bytes(source.read_bytes())
    sizes = [p.stat().st_size for pair in made for p in pair]
    return sum(sizes) / len(sizes) / 1024


def _decode_seconds_per_pair(folder: Path, size: int, n: int) -> float:
    """Median single-thread time of one CLI dataset item (decode both PNGs, convert, resize to ``size``)."""
    from lipsim_metric.io import ImagePairDataset

    pairs = [(folder / "a" / f"{i:05d}.png", folder / "b" / f"{i:05d}.png") for i in range(n)]
    dataset = ImagePairDataset(pairs, size)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what a DataLoader worker uses
    try:
        dataset[0]
        times = []
        for i in range(n):
            start = time.perf_counter()
            dataset[i]
            times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    return float(np.median(times))


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def bench_cli(args: argparse.Namespace, device: torch.device) -> list[CliResult]:
    """One result per ``--cli-workers`` value, on the same generated PNGs and the same model-only figure."""
    from lipsim_metric import cli

    batch = args.cli_batch_for[device.type]
    worker_counts = args.cli_workers or [cli.build_parser().get_default("workers")]
    results: list[CliResult] = []
    with tempfile.TemporaryDirectory(prefix="lipsim-bench-") as tmp:
        folder = Path(tmp)
        _log(f"[cli] writing {args.cli_pairs} pairs of {args.cli_image_size}px PNGs to {folder}")
        png_kib = _write_png_pairs(folder, args.cli_pairs, args.cli_image_size, args.seed)
        weights = save_weights(create_backbone(LIPSIM), folder / "untrained.safetensors", LIPSIM)

        # Model-only: the computation the CLI runs per batch (distance and radius, fp32) on already-resized tensors.
        metric = LipSim(weights=weights).to(device)
        generator = torch.Generator().manual_seed(args.seed)
        x0 = _images(batch, metric.input_size, device, False, generator)
        x1 = _images(batch, metric.input_size, device, False, generator)

        def step() -> object:
            with torch.inference_mode():
                return metric(x0, x1, return_radius=True)

        row = _run_row(Row("cli-model", LIPSIM, str(device), "fp32", "default", batch), step, device, args)
        decode = _decode_seconds_per_pair(folder, metric.input_size, min(args.cli_pairs, 32))
        _log(f"[cli] decoding + resizing one pair on one core: {1e3 * decode:.1f} ms")
        for workers in worker_counts:
            result = CliResult(str(device), args.cli_pairs, args.cli_image_size, batch, workers, png_kib,
                               model_pairs_per_s=row.items_per_s, decode_s_per_pair=decode,
                               cores=_available_cores())
            results.append(result)
            output = folder / "scores.json"
            argv = [str(folder / "a"), str(folder / "b"), "--weights", str(weights), "--format", "json", "-o",
                    str(output), "--quiet", "--batch-size", str(batch), "--device", str(device), "--workers",
                    str(workers)]
            captured = io.StringIO()
            start = time.perf_counter()
            with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
                code = cli.main(argv)
            elapsed = time.perf_counter() - start
            if code != 0:
                result.status, result.note = "error", f"lipsim-score exited {code}: {captured.getvalue()[-300:]}"
                continue
            scored = json.loads(output.read_text())["summary"]["n"]
            if scored != args.cli_pairs:
                result.status, result.note = "error", f"lipsim-score scored {scored} of {args.cli_pairs} pairs"
                continue
            result.seconds = elapsed
            _log(f"[cli] {device}, {workers} workers: {args.cli_pairs} pairs in {elapsed:.2f} s")
    return results


# ----------------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------------


def _num(value: float | None, approx: bool = False) -> str:
    if value is None or math.isnan(value):
        return "-"
    text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"
    return ("~" if approx else "") + text


def _mib(value: int | float | None) -> str:
    if value is None:
        return "-"
    mib = value / 2**20
    return f"{mib:,.0f}" if mib >= 100 else f"{mib:.1f}" if mib >= 1 else f"{mib:.3f}"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)


MODEL_COLUMNS = ("model", "device", "dtype", "variant", "batch", "pairs/s", "ms/batch", "repeats", "peak MiB",
                 "MiB/pair", "note")
TRAIN_COLUMNS = ("backbone", "device", "dtype", "variant", "batch", "images/s", "ms/step", "repeats", "peak MiB",
                 "MiB/image", "note")
RESIZE_COLUMNS = ("device", "dtype", "batch", "input", "pairs/s", "vs 224", "resize ms/batch", "resize share", "note")
CLI_COLUMNS = ("device", "pairs", "image", "PNG KiB", "batch", "workers", "CLI s", "CLI pairs/s",
               "model-only pairs/s", "decode ms/pair (1 core)", "overlap bound", "CLI / model", "note")


def _measured_cells(row: Row) -> list[str]:
    approx = row.status == "approx"
    ms = None if row.seconds_per_call is None or row.status not in ("ok", "approx") else row.seconds_per_call * 1e3
    peak = row.peak_bytes if row.status in ("ok", "approx") else None
    per_item = None if peak is None else peak / row.batch
    note = row.note if row.status in ("ok", "approx") else f"{row.status}: {row.note}".rstrip(": ")
    return [_num(row.items_per_s, approx), _num(ms, approx), str(row.repeats) if row.repeats else "-", _mib(peak),
            _mib(per_item), note.replace("|", "/")]


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


def train_table(rows: Sequence[Row]) -> str:
    cells = [[r.model, r.device, r.dtype, r.variant, str(r.batch), *_measured_cells(r)] for r in rows]
    return _table(TRAIN_COLUMNS, cells)


def resize_table(rows: Sequence[Row]) -> str:
    cells = []
    for r in rows:
        base = next((b for b in rows if b.device == r.device and b.dtype == r.dtype and b.extra.get("input") ==
                     IMAGE_SIZE), None)
        relative = None if base is None or not base.items_per_s or r.items_per_s is None else \
            r.items_per_s / base.items_per_s
        resize_s = r.extra.get("resize_s")
        share = None if resize_s is None or not r.seconds_per_call else resize_s / r.seconds_per_call
        note = r.note if r.status in ("ok", "approx") else f"{r.status}: {r.note}"
        cells.append([r.device, r.dtype, str(r.batch), f"{r.extra['input']}x{r.extra['input']}",
                      _num(r.items_per_s, r.status == "approx"), _num(relative), _num(None if resize_s is None
                      else resize_s * 1e3), "-" if share is None else f"{100 * share:.0f}%", note])
    return _table(RESIZE_COLUMNS, cells)


def cli_table(results: Sequence[CliResult]) -> str:
    cells = [[c.device, str(c.pairs), f"{c.image_size}x{c.image_size}", _num(c.png_kib), str(c.batch),
              str(c.workers), _num(c.seconds), _num(c.pairs_per_s), _num(c.model_pairs_per_s),
              _num(None if c.decode_s_per_pair is None else 1e3 * c.decode_s_per_pair),
              "-" if c.bound is None else f"{100 * c.bound:.0f}%",
              "-" if c.ratio is None else f"{100 * c.ratio:.0f}%", c.note.replace("|", "/").replace("\n", " ")]
             for c in results]
    return _table(CLI_COLUMNS, cells)


def _find(rows: Sequence[Row], model: str, device_type: str, dtype: str, batch: int) -> Row | None:
    for r in rows:
        if (r.model == model and r.device.split(":")[0] == device_type and r.dtype == dtype and r.batch == batch
                and r.variant == "default" and r.items_per_s is not None):
            return r
    return None


def targets_table(model_rows: Sequence[Row], train_rows: Sequence[Row], cli_results: Sequence[CliResult],
                  machine: dict[str, Any]) -> str:
    """The issue's targets, checked against what this run measured ("not measured" where it did not)."""
    lines: list[list[str]] = []

    def add(target: str, value: float | None, threshold: float, unit: str, where: str) -> None:
        if value is None:
            lines.append([target, "not measured", where])
        else:
            verdict = "met" if value >= threshold else "NOT met"
            lines.append([target, f"{_num(value)}{unit} ({verdict})", where])

    def speedup(a: Row | None, b: Row | None) -> float | None:
        return None if a is None or b is None or not b.items_per_s or a.items_per_s is None else \
            a.items_per_s / b.items_per_s

    cpu_where = f"CPU, {machine['threads']} threads ({machine['cpu']}); target set for 2 cores"
    ours_cpu, paper_cpu = _find(model_rows, LIPSIM, "cpu", "fp32", 8), _find(model_rows, PAPER, "cpu", "fp32", 8)
    add("CPU batch 8 fp32: >= 25 pairs/s", None if ours_cpu is None else ours_cpu.items_per_s, 25, " pairs/s",
        cpu_where)
    add("CPU batch 8 fp32: >= 10x paper network", speedup(ours_cpu, paper_cpu), 10, "x", cpu_where)
    gpu_where = f"CUDA ({machine.get('cuda_device') or 'none'}); targets set for H100"
    ours_gpu = _find(model_rows, LIPSIM, "cuda", "bf16", 128)
    add("GPU bf16 batch 128: >= 10,000 pairs/s", None if ours_gpu is None else ours_gpu.items_per_s, 10_000,
        " pairs/s", gpu_where)
    add("GPU bf16 batch 128: >= 4x DreamSim-like", speedup(ours_gpu, _find(model_rows, "dreamsim-like", "cuda",
                                                                            "bf16", 128)), 4, "x", gpu_where)
    add("GPU bf16 batch 128: >= 20x paper network", speedup(ours_gpu, _find(model_rows, PAPER, "cuda", "bf16", 128)),
        20, "x", gpu_where)
    gpu_train = [r for r in train_rows if r.device.startswith("cuda") and r.items_per_s is not None]
    best = max(gpu_train, key=lambda r: r.items_per_s or 0.0, default=None)
    add("GPU training >= 3,000 images/s", None if best is None else best.items_per_s, 3000, " img/s",
        gpu_where + ("" if best is None else f"; best: {best.dtype} {best.variant} batch {best.batch}"))
    for c in cli_results:
        add("CLI >= 80% of model-only", None if c.ratio is None else 100 * c.ratio, 80, "%",
            f"{c.device}, {c.pairs} pairs of {c.image_size}px PNGs, batch {c.batch}, {c.workers} workers")
    if not cli_results:
        add("CLI >= 80% of model-only", None, 80, "%", "cli section not run")
    return _table(["target", "measured", "where"], lines)


def machine_info(devices: Sequence[torch.device]) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:
        available = os.cpu_count() or 1
    mem_kib = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/meminfo", encoding="ascii") as fh:
            mem_kib = int(fh.readline().split()[1])
    info: dict[str, Any] = {
        "cpu": cpu, "cores": os.cpu_count(), "available_cores": available, "threads": torch.get_num_threads(),
        "memory_gib": None if mem_kib is None else mem_kib / 2**20, "python": platform.python_version(),
        "torch": torch.__version__, "os": platform.platform(),
    }
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        # importlib.metadata, not `import torchvision`: that import alone costs seconds (it loads torch._dynamo).
        info["torchvision"] = importlib.metadata.version("torchvision")
    cuda = [d for d in devices if d.type == "cuda"]
    if cuda:
        props = torch.cuda.get_device_properties(cuda[0])
        info.update(cuda_device=torch.cuda.get_device_name(cuda[0]), cuda_memory_gib=props.total_memory / 2**30,
                    cuda_version=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                    gpu_count=torch.cuda.device_count())
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        info["commit"] = commit + (" (uncommitted changes)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        info["commit"] = "unknown"
    return info


def _command(argv: Sequence[str]) -> str:
    env = [f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES") if k in os.environ]
    return " ".join([*env, "python", "benchmarks/bench.py", shlex.join(list(argv))]).strip()


def build_report(args: argparse.Namespace, argv: Sequence[str], machine: dict[str, Any], started: datetime,
                 elapsed: float, model_rows: Sequence[Row], train_rows: Sequence[Row], resize_rows: Sequence[Row],
                 cli_results: Sequence[CliResult]) -> str:
    parts = [f"## Benchmark {started.strftime('%Y-%m-%d %H:%M UTC')}", ""]
    facts = [
        f"command: `{_command(argv)}`",
        f"machine: {machine['cpu']}, {machine['cores']} logical cores ({machine['available_cores']} available)"
        + (f", {machine['memory_gib']:.0f} GiB RAM" if machine.get("memory_gib") else ""),
        f"torch threads (CPU): {machine['threads']}",
        f"software: Python {machine['python']}, torch {machine['torch']}, torchvision "
        f"{machine.get('torchvision', '?')}, {machine['os']}; commit {machine['commit']}",
    ]
    if machine.get("cuda_device"):
        facts.append(f"GPU: {machine['cuda_device']} ({machine['cuda_memory_gib']:.0f} GiB, {machine['gpu_count']} "
                     f"visible), CUDA {machine['cuda_version']}, cuDNN {machine['cudnn']}, cudnn.benchmark on")
    else:
        facts.append("GPU: none used")
    cpu_memory = {"rss-hwm": "peak RSS (VmHWM reset via /proc/self/clear_refs) minus RSS before the timed calls",
                  "ru_maxrss": "increase of the process high-water mark ru_maxrss (lower bound)",
                  None: "not measured"}[CPU_MEMORY_METHOD]
    facts += [
        f"timing: median call after warm-up (>= 1 call and {args.warmup_seconds:g} s), calls repeated until "
        f"{args.seconds_for['cpu']:g} s (CPU) / {args.seconds_for['cuda']:g} s (GPU) of measured time; "
        f"`~`: single warm-up call only (> {args.max_call_seconds:g} s); wall time of this run {elapsed:.0f} s",
        f"memory: increase over weights + inputs held before the timed calls; GPU: torch.cuda.max_memory_allocated; "
        f"CPU: {cpu_memory}",
        "models: random weights (speed does not depend on them) unless stated; LipSim input checks "
        f"{'off' if args.no_check_inputs else 'on'}; LPIPS "
        f"{'from --teachers-dir (package implementation, real weights)' if args.teachers_dir else 'v0.1 architecture'}"
        "; dreamsim-like = torchvision ViT-B/16 + 2 x ViT-B/32, an approximation of DreamSim's DINO ViT-B/16 + CLIP "
        "ViT-B/32 + OpenCLIP ViT-B/32 ensemble",
    ]
    parts += [f"- {fact}" for fact in facts] + [""]
    if model_rows:
        parts += [f"### Distance throughput ({IMAGE_SIZE}x{IMAGE_SIZE} pairs)", "", model_table(model_rows), ""]
        ratios = ratio_table(model_rows)
        if ratios:
            parts += [f"### Speed-up of {LIPSIM} (pairs/s ratio, same device, dtype, variant, batch)", "", ratios, ""]
    if train_rows:
        parts += [f"### Training throughput ({IMAGE_SIZE}x{IMAGE_SIZE}, forward + backward + AdamW step)", "",
                  train_table(train_rows), ""]
    if resize_rows:
        parts += [f"### Input size ({LIPSIM}, resized to {IMAGE_SIZE} inside LipSim)", "", resize_table(resize_rows),
                  ""]
    if cli_results:
        parts += ["### CLI end to end (`lipsim-score --format json`, in-process)", "", cli_table(cli_results), ""]
    if model_rows or train_rows or cli_results:
        parts += ["### Targets", "", targets_table(model_rows, train_rows, cli_results, machine), ""]
    return "\n".join(parts)


def write_results(report: str, path: Path) -> None:
    """Append ``report`` to ``path`` (created with a header if missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = ("# Benchmark results\n\nEach section is the output of the command it names "
              "(`python benchmarks/bench.py ... --write`); newest last. See benchmarks/README.md for the columns.\n\n")
    existing = path.read_text(encoding="utf-8") if path.is_file() else header
    if existing and not existing.endswith("\n\n"):
        existing = existing.rstrip("\n") + "\n\n"
    path.write_text(existing + report.rstrip("\n") + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------


def _count(text: str) -> int:
    """An integer >= 0 (worker counts)."""
    value = int(text)
    if value < 0:
        raise ValueError(text)
    return value


def _csv(kind: Callable[[str], Any], allowed: Sequence[str] | None = None) -> Callable[[str], list[Any]]:
    def parse(text: str) -> list[Any]:
        items = [item.strip() for item in text.split(",") if item.strip()]
        if not items:
            raise argparse.ArgumentTypeError("expected a comma-separated list, got an empty one")
        if allowed is not None:
            unknown = [item for item in items if item not in allowed]
            if unknown:
                raise argparse.ArgumentTypeError(f"unknown {unknown}; choose from {','.join(allowed)}")
        try:
            values = [kind(item) for item in items]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__} values, got {text!r}") from None
        if kind is int and any(v < 1 for v in values):
            raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
        return values

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench.py", description=__doc__.split("\n\n")[0],
        epilog="Defaults per device: batch sizes CPU 1,8,32 / CUDA 32,128,512; --seconds CPU 3 / CUDA 2. "
               "--quick: a smoke run (0.2 s per configuration, one batch size, 16 CLI pairs). "
               "See benchmarks/README.md.")
    parser.add_argument("--models", type=_csv(str, MODELS), default=list(MODELS),
                        help=f"comma-separated models (default: all: {','.join(MODELS)})")
    parser.add_argument("--device", default="auto",
                        help="comma-separated devices, e.g. cpu,cuda or cuda:1; auto: cpu, plus cuda when available")
    parser.add_argument("--dtypes", type=_csv(str, tuple(DTYPES)), default=["fp32", "bf16"],
                        help="precisions: fp32, bf16, fp16 (the last two under torch.autocast; default fp32,bf16)")
    parser.add_argument("--batch-sizes", type=_csv(int), default=None, help="pairs per call (overrides the defaults)")
    parser.add_argument("--sections", type=_csv(str, SECTIONS), default=list(SECTIONS),
                        help=f"what to run (default: {','.join(SECTIONS)})")
    parser.add_argument("--seconds", type=float, default=None, help="measured seconds per configuration")
    parser.add_argument("--warmup-seconds", type=float, default=None, help="warm-up seconds (default 1, quick 0)")
    parser.add_argument("--max-call-seconds", type=float, default=None,
                        help="skip a configuration whose single call would take longer (default 30, quick 5)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's default)")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile'd models (model, train)")
    parser.add_argument("--channels-last", action="store_true", help="also measure channels-last (model, train)")
    parser.add_argument("--no-check-inputs", action="store_true", help="LipSim(check_inputs=False)")
    parser.add_argument("--teachers-dir", default=None,
                        help="folder of LPIPS weight files: use the package's LPIPS implementation instead of the "
                             "random-weight architecture")
    parser.add_argument("--train-backbone", default=DEFAULT_BACKBONE, help="backbone of the train section")
    parser.add_argument("--train-batch-sizes", type=_csv(int), default=None,
                        help="images per training step (default CPU 32, CUDA 128,256)")
    parser.add_argument("--image-sizes", type=_csv(int), default=None,
                        help="input sides for the resize section (default 224,512,1024)")
    parser.add_argument("--resize-batch-size", type=int, default=None, help="pairs per call (default CPU 8, CUDA 128)")
    parser.add_argument("--cli-pairs", type=int, default=None, help="PNG pairs for the CLI section (default 1000)")
    parser.add_argument("--cli-image-size", type=int, default=512, help="side of the generated PNGs (default 512)")
    parser.add_argument("--cli-batch-size", type=int, default=None, help="lipsim-score --batch-size (CPU 16, CUDA 128)")
    parser.add_argument("--cli-workers", type=_csv(_count), default=None,
                        help="lipsim-score --workers, one CLI run each, e.g. 1,2 (default: its default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny budgets (explicit flags still win)")
    parser.add_argument("--write", action="store_true", help="append the report to --results")
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="report file (default: %(default)s)")
    return parser


def _resolve(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[torch.device]:
    q = 1 if args.quick else 0
    names = ["cpu"] + (["cuda"] if torch.cuda.is_available() else []) if args.device == "auto" else \
        [d.strip() for d in args.device.split(",") if d.strip()]
    devices = []
    for name in names:
        try:
            device = torch.device(name)
        except (RuntimeError, ValueError):
            parser.error(f"--device {name!r} is not a torch device; use cpu, cuda or cuda:N")
        if device.type not in ("cpu", "cuda"):
            parser.error(f"--device {name!r}: only cpu and cuda are supported")
        if device.type == "cuda" and not torch.cuda.is_available():
            parser.error(f"--device {name} was asked for but CUDA is not available here; use --device cpu")
        devices.append(device)
    if len({d.type for d in devices}) != len(devices):
        parser.error("give at most one device of each type (run one process per GPU, see benchmarks/README.md)")

    def per_device(value: Any, defaults: dict[str, tuple[Any, Any]]) -> dict[str, Any]:
        return {kind: value if value is not None else defaults[kind][q] for kind in ("cpu", "cuda")}

    args.batch_sizes_for = {k: sorted(v) for k, v in per_device(args.batch_sizes, DEFAULT_BATCH_SIZES).items()}
    args.train_batch_sizes_for = {k: sorted(v) for k, v in
                                  per_device(args.train_batch_sizes, DEFAULT_TRAIN_BATCH_SIZES).items()}
    args.resize_batch_for = per_device(args.resize_batch_size, DEFAULT_RESIZE_BATCH)
    args.cli_batch_for = per_device(args.cli_batch_size, DEFAULT_CLI_BATCH)
    args.seconds_for = per_device(args.seconds, DEFAULT_SECONDS)
    if args.warmup_seconds is None:
        args.warmup_seconds = 0.0 if args.quick else 1.0
    if args.max_call_seconds is None:
        args.max_call_seconds = 5.0 if args.quick else 30.0
    if args.image_sizes is None:
        args.image_sizes = [IMAGE_SIZE, 512] if args.quick else [IMAGE_SIZE, 512, 1024]
    if args.cli_pairs is None:
        args.cli_pairs = 16 if args.quick else 1000
    for name in ("seconds", "warmup_seconds", "max_call_seconds"):
        value = getattr(args, name)
        if value is not None and value < 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0, got {value}")
    for name in ("threads", "resize_batch_size", "cli_pairs", "cli_image_size", "cli_batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.cli_workers is not None and min(args.cli_workers) < 0:
        parser.error(f"--cli-workers must be >= 0, got {args.cli_workers}")
    if args.train_backbone not in list_backbones():
        parser.error(f"--train-backbone {args.train_backbone!r} is unknown; choose from {','.join(list_backbones())}")
    if min(args.image_sizes) < 32:
        parser.error(f"--image-sizes must be >= 32, got {args.image_sizes}")
    return devices


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the markdown report on stdout (progress on stderr); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        devices = _resolve(args, parser)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if any(d.type == "cuda" for d in devices):
        torch.backends.cudnn.benchmark = True
    if args.compile:
        # One graph per batch size and precision; past the default limit (8) dynamo would silently run eagerly.
        from torch._dynamo import config as dynamo_config

        for name in ("recompile_limit", "cache_size_limit"):  # the name changed in torch 2.7
            if hasattr(dynamo_config, name):
                setattr(dynamo_config, name, max(64, getattr(dynamo_config, name)))
    started = datetime.now(timezone.utc)
    clock = time.perf_counter()
    model_rows: list[Row] = []
    train_rows: list[Row] = []
    resize_rows: list[Row] = []
    cli_results: list[CliResult] = []
    for device in devices:
        if "model" in args.sections:
            model_rows += bench_models(args, device)
        if "train" in args.sections:
            train_rows += bench_train(args, device)
        if "resize" in args.sections:
            resize_rows += bench_resize(args, device)
        if "cli" in args.sections:
            try:
                cli_results += bench_cli(args, device)
            except Exception as exc:
                cli_results.append(CliResult(str(device), args.cli_pairs, args.cli_image_size,
                                             args.cli_batch_for[device.type], -1, float("nan"), status="error",
                                             note=f"{type(exc).__name__}: {exc}"))
    report = build_report(args, argv, machine_info(devices), started, time.perf_counter() - clock, model_rows,
                          train_rows, resize_rows, cli_results)
    print(report)
    if args.write:
        write_results(report, args.results)
        _log(f"appended to {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
