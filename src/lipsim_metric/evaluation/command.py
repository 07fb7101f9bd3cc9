"""``python -m lipsim_metric.train.evaluate iqa``: score a human-rated set with several metrics and write the report.

Examples::

    python -m lipsim_metric.train.evaluate iqa --dataset kadid10k:data/kadid10k \\
        --metrics lipsim,lpips-vgg,dists --teachers-dir ../shared/teachers --out runs/iqa-kadid
    python -m lipsim_metric.train.evaluate iqa --dataset csv:my_ratings.csv --lower-is-better --out runs/iqa-mine
    # the same work in two processes, then the merge (the last command only reads the caches and reports)
    python -m lipsim_metric.train.evaluate iqa --dataset tid2013:data/tid2013 --out runs/tid --shard 0/2 &
    python -m lipsim_metric.train.evaluate iqa --dataset tid2013:data/tid2013 --out runs/tid --shard 1/2; wait
    python -m lipsim_metric.train.evaluate iqa --dataset tid2013:data/tid2013 --out runs/tid
    # or under torchrun: every rank scores its shard, rank 0 merges and reports
    torchrun --nproc_per_node 2 -m lipsim_metric.train.evaluate iqa --dataset ... --out ... --shard auto

Outputs in ``--out``: ``<dataset>.json`` and ``<dataset>.md`` (``docs/evaluation.md`` explains every number) and
``cache/<dataset>/<metric>/*.jsonl``, the resumable cache of distances.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from .iqa import TASK_KINDS, load_task, metric_identity, parse_shard, score_task
from .report import summarize, to_markdown

__all__ = ["add_iqa_arguments", "run_iqa", "PAPER_EPSILONS"]

#: The certified budgets of the LipSim paper (l2, [0,1] pixel units), always reported for LipSim.
PAPER_EPSILONS = (36 / 255, 72 / 255, 108 / 255)


def _budgets(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated l2 budgets such as 0.5,1,2, got {text!r}") from None
    if any(not v >= 0 for v in values):
        raise argparse.ArgumentTypeError(f"budgets must be >= 0, got {text!r}")
    return values


def add_iqa_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the ``iqa`` sub-command."""
    parser.add_argument("--dataset", required=True,
                        help=f"NAME:<path>, NAME one of {', '.join(sorted(TASK_KINDS))} (docs/evaluation.md)")
    parser.add_argument("--metrics", default="lipsim", help="comma-separated: lipsim, lpips-alex, lpips-vgg, dists, "
                        "ssim, psnr, mse, dreamsim (default: lipsim)")
    parser.add_argument("--weights", default=None, help="LipSim weights: name or .safetensors path (default: shipped)")
    parser.add_argument("--teachers-dir", default=None, help="folder of the LPIPS/DISTS weight files")
    parser.add_argument("--out", required=True, help="output folder (report and cache)")
    direction = parser.add_mutually_exclusive_group()
    direction.add_argument("--higher-is-better", dest="higher_is_better", action="store_true", default=None,
                           help="csv: datasets: a larger score means better quality (MOS)")
    direction.add_argument("--lower-is-better", dest="higher_is_better", action="store_false",
                           help="csv: datasets: a larger score means worse quality (DMOS)")
    parser.add_argument("--size", type=int, default=None,
                        help="resize images to SIZE x SIZE first (default: native size; radii are in these units)")
    parser.add_argument("--l2-eps", type=_budgets, default=[0.5, 1.0, 2.0],
                        help="certified budgets besides the paper's 36/255, 72/255, 108/255 (default 0.5,1,2)")
    parser.add_argument("--shard", default=None,
                        help="k/n: score only items i with i %% n == k and stop (a later run without --shard "
                             "merges); 'auto': k, n from torchrun's RANK/WORLD_SIZE, rank 0 merges and reports")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-workers", type=int, default=0, help="image-decoding worker processes")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _barrier() -> None:
    """Wait for every rank of a torchrun launch (a gloo group, created and destroyed here)."""
    import torch.distributed as dist

    created = not dist.is_initialized()
    if created:
        dist.init_process_group("gloo")
    dist.barrier()
    if created:
        dist.destroy_process_group()


def run_iqa(args: argparse.Namespace) -> int:
    """Run the sub-command; returns the exit status (0, or 2 for bad arguments and missing files)."""
    from .baselines import METRICS, build_metric

    names = [m.strip().lower() for m in args.metrics.split(",") if m.strip()]
    unknown = [m for m in names if m not in METRICS]
    if unknown or not names:
        raise ValueError(f"unknown --metrics {unknown or args.metrics!r}; choose from {', '.join(METRICS)}")
    if args.batch_size < 1 or args.num_workers < 0 or (args.size is not None and args.size < 16):
        raise ValueError("--batch-size must be >= 1, --num-workers >= 0 and --size >= 16")
    task = load_task(args.dataset, args.higher_is_better, args.size)
    auto = args.shard == "auto"
    shard = parse_shard(args.shard) if args.shard else (0, 1)
    out = Path(args.out)
    cache = out / "cache" / task.name
    budgets = [*PAPER_EPSILONS, *args.l2_eps]
    start = time.time()
    built: dict[str, tuple[Any, str]] = {}
    for name in names:
        metric = build_metric(name, teachers_dir=args.teachers_dir,
                              weights=args.weights if name == "lipsim" else None, device=args.device)
        built[name] = (metric, metric_identity(name, metric, args.teachers_dir))
        if shard[1] > 1:
            score_task(task, name, metric, cache, built[name][1], shard, args.size, args.batch_size, args.device,
                       args.num_workers, not args.quiet)
    if shard[1] > 1:
        if not auto:
            print(f"shard {shard[0]}/{shard[1]} cached in {cache}; run the same command without --shard to merge "
                  "the shards and write the report", file=sys.stderr)
            return 0
        _barrier()
        if shard[0] != 0:
            return 0
    report: dict[str, Any] = {
        "dataset": args.dataset, "kind": task.kind, "n_items": task.n, "human": task.description,
        "budgets_l2": budgets, "metrics": {},
        "orientation": "IQA correlations are computed between -distance and the human score oriented higher = "
                       "better, so higher is better for every dataset",
    }
    for name, (metric, identity) in built.items():
        values, fields = score_task(task, name, metric, cache, identity, (0, 1), args.size, args.batch_size,
                                    args.device, args.num_workers, not args.quiet)
        report["metrics"][name] = summarize(task, values, fields, budgets, getattr(metric, "projection", "append"),
                                            getattr(metric, "constant", 1.0))
        if name == "lipsim":
            report["weights"] = identity
    report.update({
        "machine": f"{platform.machine()} {platform.processor() or ''} {torch.get_num_threads()} threads, device "
                   f"{args.device}, torch {torch.__version__}".replace("  ", " "),
        "date": time.strftime("%Y-%m-%d"), "seconds": round(time.time() - start, 1),
        "command": "python -m lipsim_metric.train.evaluate " + " ".join(sys.argv[1:]),
    })
    out.mkdir(parents=True, exist_ok=True)
    stem = task.name.replace(":", "_")
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2))
    markdown = to_markdown(report)
    (out / f"{stem}.md").write_text(markdown)
    print(markdown)
    return 0

