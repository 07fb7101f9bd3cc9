"""Training throughput: images per second of forward + backward + ``AdamW`` step of the default backbone.

The ``train`` section of ``bench.py`` (see its docstring). Run alone with ``python benchmarks/bench_train.py
[bench.py flags]``.
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

from lipsim_metric.backbones import create_backbone

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling scripts, also when loaded from another folder

from bench_common import (  # noqa: E402
    IMAGE_SIZE,
    Row,
    _autocast,
    _free,
    _images,
    _measured_cells,
    _prepare,
    _sweep,
    _table,
    _variants,
)


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



TRAIN_COLUMNS = ("backbone", "device", "dtype", "variant", "batch", "images/s", "ms/step", "repeats", "peak MiB",
                 "MiB/image", "note")


def train_table(rows: Sequence[Row]) -> str:
    cells = [[r.model, r.device, r.dtype, r.variant, str(r.batch), *_measured_cells(r)] for r in rows]
    return _table(TRAIN_COLUMNS, cells)




def main(argv: Sequence[str] | None = None) -> int:
    """``python benchmarks/bench_train.py [bench.py flags]``: the ``train`` section of :mod:`bench` alone."""
    import bench

    return bench.main(["--sections", "train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
