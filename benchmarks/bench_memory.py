"""Peak memory of ``lipsim-score`` on one pair of huge images (issue 16 item 4).

Writes a pair of ``SIDE x SIDE`` JPEG photos-like images (smooth colour waves plus fine noise; the second a brightened
copy) into a temporary folder, then runs ``python -m lipsim_metric.cli A B --workers 0`` in a child process and reads
the child's peak resident memory (``ru_maxrss`` from ``os.wait4``). With ``--workers 0`` decoding happens in that one
process, so its peak is the whole cost (the images are made in another helper process, so that the measuring
process itself stays small: a forked child's peak counts its parent's resident pages). For reference it also
measures a child that only imports the package (the torch import alone is several hundred MB, most of it shared
libraries).

Usage::

    python benchmarks/bench_memory.py                       # 10000 x 10000, the package's default weights
    python benchmarks/bench_memory.py --side 20000 --max-pixels 0 --weights path/to/w.safetensors

Prints one markdown row per measurement; the numbers in benchmarks/RESULTS.md come from this script.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def write_pair(folder: Path, side: int, seed: int = 0) -> None:
    """Two ``side x side`` JPEGs named ``huge.jpg`` in ``folder/a`` and ``folder/b``, written band by band."""
    rng = np.random.default_rng(seed)
    (folder / "a").mkdir()
    (folder / "b").mkdir()
    image = Image.new("RGB", (side, side))
    x = np.linspace(0.0, 1.0, side, dtype=np.float32)[None, :]
    band = 1024
    for top in range(0, side, band):
        y = np.linspace(top / side, min(side, top + band) / side, min(band, side - top), dtype=np.float32)[:, None]
        channels = [0.5 + 0.4 * np.sin(2 * np.pi * (3 + c) * (x + (c + 1) * y)) for c in range(3)]
        pixels = np.stack(channels, -1) * 255 + rng.normal(0, 4, (len(y), side, 3)).astype(np.float32)
        image.paste(Image.fromarray(pixels.clip(0, 255).astype(np.uint8)), (0, top))
    image.save(folder / "a" / "huge.jpg", quality=90)
    image.point(lambda v: min(255, v + 12)).save(folder / "b" / "huge.jpg", quality=90)


def measure(command: list[str]) -> tuple[float, float, int, str]:
    """Peak RSS (MiB) of ``command`` via os.wait4, wall seconds, exit code and the output tail."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = proc.stdout.read().decode(errors="replace") if proc.stdout is not None else ""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_maxrss / 1024.0, time.perf_counter() - start, proc.returncode, output[-2000:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", type=int, default=10000, help="image side in pixels (default: %(default)s)")
    parser.add_argument("--weights", default=None, help="weights for lipsim-score (default: the package default)")
    parser.add_argument("--max-pixels", default=None, help="passed to lipsim-score (needed above 13379 px)")
    parser.add_argument("--workdir", type=Path, default=None, help="where to write the images (default: a temp dir)")
    parser.add_argument("--write-pair-to", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.write_pair_to is not None:  # the helper process that makes the images
        write_pair(args.write_pair_to, args.side)
        return 0

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        # In a helper process: a forked child's ru_maxrss counts the parent's resident pages, so the parent stays
        # small (no image ever lives in it).
        subprocess.run([sys.executable, __file__, "--side", str(args.side), "--write-pair-to", str(folder)],
                       check=True)
        print(f"wrote two {args.side}x{args.side} JPEGs ({(folder / 'a' / 'huge.jpg').stat().st_size / 2**20:.1f} "
              f"MiB each) in {time.perf_counter() - start:.1f} s", file=sys.stderr)
        score = [sys.executable, "-m", "lipsim_metric.cli", str(folder / "a"), str(folder / "b"), "--workers", "0",
                 "--format", "csv", "-q"]
        if args.weights:
            score += ["--weights", args.weights]
        if args.max_pixels is not None:
            score += ["--max-pixels", str(args.max_pixels)]
        rows = []
        for label, command in (("import lipsim_metric.cli only", [sys.executable, "-c", "import lipsim_metric.cli"]),
                               (f"lipsim-score, one {args.side}x{args.side} JPEG pair", score)):
            peak, seconds, code, output = measure(command)
            if code != 0:
                print(output, file=sys.stderr)
                print(f"{label}: exit code {code}", file=sys.stderr)
                return 1
            rows.append(f"| {label} | {peak:.0f} | {seconds:.1f} |")
    print(f"`python benchmarks/bench_memory.py --side {args.side}` ({platform.machine()}, {os.cpu_count()} CPUs, "
          f"{datetime.date.today().isoformat()}):\n")
    print("| process | peak RSS (MiB) | wall (s) |\n|---|---:|---:|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
