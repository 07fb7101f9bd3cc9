"""Is bf16 autocast worth it for the label teachers on this CPU? float32 against bf16, same images, same thread count.

Times ``features`` of the distance teachers (as ``python -m lipsim_metric.train.labels build`` calls them: eval,
channels_last, no grad) on a batch of random 224x224 images, once in float32 and once under
``torch.autocast("cpu", dtype=torch.bfloat16)``, and prints one markdown row per teacher with the speed-up and
what :func:`lipsim_metric.train.cpu_bf16.native_bf16_cpu` says about this CPU. Where the CPU lacks AMX /
AVX512-BF16, PyTorch emulates bf16 and the "speed-up" falls well below 1; the label builder's
``--bf16-teachers auto`` then runs the teachers in float32.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_bf16.py --teachers-dir ../shared/teachers
    python benchmarks/bench_bf16.py --teachers-dir ../shared/teachers --teachers lpips-vgg --batch 2 --repeats 1

The figures in docs/training.md ("bf16 on the CPU") come from this script.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import machine_info  # noqa: E402


def _seconds(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main(argv: list[str] | None = None) -> int:
    from lipsim_metric.train.cpu_bf16 import cpu_flags, native_bf16_cpu
    from lipsim_metric.train.teachers import build_distance_teacher

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teachers-dir", default=None, help="folder of teacher weights (../shared/teachers)")
    parser.add_argument("--teachers", default="lpips-vgg,dists,lpips-alex")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per precision (median reported)")
    args = parser.parse_args(argv)
    if args.batch < 1 or args.repeats < 1 or args.size < 32:
        parser.error("--batch and --repeats must be >= 1 and --size >= 32")

    info = machine_info([torch.device("cpu")])
    flags = sorted(f for f in cpu_flags() if "bf16" in f or f.startswith("amx"))
    date = datetime.date.today().isoformat()
    print(f"{date}, {info['cpu']}, {info['available_cores']} cores available, {info['threads']} thread(s), "
          f"torch {info['torch']}; bf16 flags: {', '.join(flags) or 'none'}; native_bf16_cpu() = {native_bf16_cpu()}")
    print(f"\nteacher features of {args.batch} x 3 x {args.size}^2 images (median of {args.repeats} calls)\n")
    print("| teacher | float32 s | bf16 autocast s | bf16 speed-up |")
    print("|---|---:|---:|---:|")
    x = torch.rand(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    x = x.contiguous(memory_format=torch.channels_last)
    for name in [t for t in args.teachers.split(",") if t]:
        net = build_distance_teacher(name, teachers_dir=args.teachers_dir).eval().to(memory_format=torch.channels_last)
        results = []
        for bf16 in (False, True):
            def step(bf16: bool = bf16, net: torch.nn.Module = net) -> None:
                with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    net.features(x)  # type: ignore[operator]
            step()  # warm-up (oneDNN primitive creation)
            results.append(_seconds(step, args.repeats))
        print(f"| {name} | {results[0]:.2f} | {results[1]:.2f} | {results[0] / results[1]:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
