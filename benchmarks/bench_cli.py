"""CLI end to end: ``lipsim-score`` on generated PNG pairs against the model-only throughput of the same computation.

The ``cli`` section of ``bench.py`` (see its docstring). Run alone with ``python benchmarks/bench_cli.py
[bench.py flags]``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lipsim_metric import LipSim
from lipsim_metric.backbones import create_backbone
from lipsim_metric.pretrained import save_weights

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling scripts, also when loaded from another folder

from bench_common import LIPSIM, Row, _images, _log, _num, _run_row, _table  # noqa: E402


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
    from lipsim_metric.images import ImagePairDataset

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



CLI_COLUMNS = ("device", "pairs", "image", "PNG KiB", "batch", "workers", "CLI s", "CLI pairs/s",
               "model-only pairs/s", "decode ms/pair (1 core)", "overlap bound", "CLI / model", "note")



def cli_table(results: Sequence[CliResult]) -> str:
    cells = [[c.device, str(c.pairs), f"{c.image_size}x{c.image_size}", _num(c.png_kib), str(c.batch),
              str(c.workers), _num(c.seconds), _num(c.pairs_per_s), _num(c.model_pairs_per_s),
              _num(None if c.decode_s_per_pair is None else 1e3 * c.decode_s_per_pair),
              "-" if c.bound is None else f"{100 * c.bound:.0f}%",
              "-" if c.ratio is None else f"{100 * c.ratio:.0f}%", c.note.replace("|", "/").replace("\n", " ")]
             for c in results]
    return _table(CLI_COLUMNS, cells)




def main(argv: Sequence[str] | None = None) -> int:
    """``python benchmarks/bench_cli.py [bench.py flags]``: the ``cli`` section of :mod:`bench` alone."""
    import bench

    return bench.main(["--sections", "cli", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
