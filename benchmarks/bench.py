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

One script per question, sharing the timing helper ``bench_common.py``: ``bench_model.py``, ``bench_train.py``,
``bench_resize.py``, ``bench_cli.py`` (each also runs alone and takes these flags). This file is the driver: it
parses the flags, runs the selected sections and writes the report (with the targets, which span sections).

Run ``python benchmarks/bench.py --help``; ``benchmarks/README.md`` explains the columns and the targets.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from lipsim_metric.backbones import DEFAULT_BACKBONE, list_backbones

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling scripts, also when loaded from another folder

import bench_common  # noqa: E402
from bench_cli import CLI_COLUMNS, CliResult, bench_cli, cli_table  # noqa: E402
from bench_common import (  # noqa: E402
    DEFAULT_BATCH_SIZES,
    DEFAULT_CLI_BATCH,
    DEFAULT_RESIZE_BATCH,
    DEFAULT_RESULTS,
    DEFAULT_SECONDS,
    DEFAULT_TRAIN_BATCH_SIZES,
    DTYPES,
    IMAGE_SIZE,
    LIPSIM,
    MODELS,
    PAPER,
    SECTIONS,
    Row,
    _command,
    _log,
    _num,
    _table,
    machine_info,
    write_results,
)
from bench_model import MODEL_COLUMNS, bench_models, build_model, model_table, ratio_table  # noqa: E402
from bench_resize import RESIZE_COLUMNS, bench_resize, resize_table  # noqa: E402
from bench_train import TRAIN_COLUMNS, bench_train, train_table  # noqa: E402

# The names of the single-file bench.py, importable from it as before.
__all__ = ["MODELS", "SECTIONS", "Row", "CliResult", "MODEL_COLUMNS", "TRAIN_COLUMNS", "RESIZE_COLUMNS", "CLI_COLUMNS",
           "build_model", "bench_models", "bench_train", "bench_resize", "bench_cli", "model_table", "ratio_table",
           "train_table", "resize_table", "cli_table", "targets_table", "machine_info", "build_report",
           "write_results", "build_parser", "main"]


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
                  None: "not measured"}[bench_common.CPU_MEMORY_METHOD]
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
    if getattr(args, "lipsim_weights", None):
        facts.append(f"lipsim-fast: the architecture of `{args.lipsim_weights}` (a candidate), not the shipped default")
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
    parser.add_argument("--lipsim-weights", default=None,
                        help="time this weights file as lipsim-fast instead of the shipped default (a candidate)")
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
        if args.lipsim_weights and not Path(args.lipsim_weights).is_file():
            parser.error(f"--lipsim-weights {args.lipsim_weights}: no such file (give a .safetensors weights file, "
                         "e.g. a run's student.safetensors)")
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
