"""Resize cost: LipSim on 224, 512 and 1024 pixel inputs and the share of the antialiased resize.

The ``resize`` section of ``bench.py`` (see its docstring). Run alone with ``python benchmarks/bench_resize.py
[bench.py flags]``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from lipsim_metric import LipSim
from lipsim_metric.preprocess import to_backbone_input

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling scripts, also when loaded from another folder

from bench_common import IMAGE_SIZE, LIPSIM, Row, _autocast, _free, _images, _num, _run_row, _table, measure  # noqa: E402


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



RESIZE_COLUMNS = ("device", "dtype", "batch", "input", "pairs/s", "vs 224", "resize ms/batch", "resize share", "note")


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




def main(argv: Sequence[str] | None = None) -> int:
    """``python benchmarks/bench_resize.py [bench.py flags]``: the ``resize`` section of :mod:`bench` alone."""
    import bench

    return bench.main(["--sections", "resize", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
