"""Shared timing helper of the benchmark scripts: defaults, timing and memory probes, result rows, table cells.

Used by ``bench_model.py``, ``bench_train.py``, ``bench_resize.py`` and ``bench_cli.py`` (one script per question)
and by their driver ``bench.py``. Timing and memory are measured as described in ``bench.py``'s docstring.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import importlib.metadata
import math
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lipsim_metric.backbones import DEFAULT_BACKBONE

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling scripts, also when loaded from another folder

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



def write_results(report: str, path: Path) -> None:
    """Append ``report`` to ``path`` (created with a header if missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = ("# Benchmark results\n\nEach section is the output of the command it names "
              "(`python benchmarks/bench.py ... --write`); newest last. See benchmarks/README.md for the columns.\n\n")
    existing = path.read_text(encoding="utf-8") if path.is_file() else header
    if existing and not existing.endswith("\n\n"):
        existing = existing.rstrip("\n") + "\n\n"
    path.write_text(existing + report.rstrip("\n") + "\n", encoding="utf-8")

