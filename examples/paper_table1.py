"""Reproduce Table 1 of LipSim: natural and certified 2AFC accuracy on NIGHT.

Ghazanfari et al., "LipSim: A Provably Robust Perceptual Similarity Metric", ICLR 2024, arXiv:2310.18274, Table 1;
protocol of the official ``certified_eval`` (github.com/SaraGhazanfari/lipsim, ``lipsim/core/evaluate.py``): the
NIGHT test set (rows with at least 6 votes) is split into ``test_imagenet`` and ``test_no_imagenet``; each is scored
and the two are combined weighted by their sizes; certified accuracy counts a triplet at ``eps`` when the prediction
is right *and* certified for every l2 perturbation of the reference of norm ``eps`` (36/255, 72/255, 108/255, images
224x224 in [0, 1]).

Usage (after converting the authors' checkpoint, see docs/paper.md)::

    python examples/paper_table1.py --night-root data/nights --weights lipsim-paper-small.margin0.5.safetensors

Prints a markdown table on stdout (progress on stderr). ``--paper-formula`` adds the radius of the official code
(``margin / ||e0 - e1||``, without the embedding-norm condition), for comparison with the published numbers; it costs
two more forward passes per triplet. The certified numbers of ``LipSim.certify_2afc`` are the sound ones (see
docs/paper.md, "Certificates under the paper protocol").
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

SPLITS = ("test_imagenet", "test_no_imagenet")
EPSILONS = (36, 72, 108)  # numerators of eps = k / 255 (l2 norm, images in [0, 1])


def score_batch(d0: torch.Tensor, d1: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-triplet 2AFC score: the share of humans agreeing with the metric (0.5 on a tie), as in DreamSim/LipSim."""
    return torch.where(d1 < d0, target, torch.where(d0 < d1, 1.0 - target, torch.full_like(target, 0.5)))


def evaluate_split(metric, dataset, batch_size: int, device: torch.device, paper_formula: bool,
                   limit: int | None, num_workers: int, label: str) -> dict[str, float]:
    """Sums over one split: ``n``, ``natural`` and ``cert@k`` (and ``paper@k`` with ``paper_formula``)."""
    from torch.utils.data import DataLoader, Subset

    if limit is not None:
        dataset = Subset(dataset, range(min(limit, len(dataset))))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    sums: dict[str, float] = {"n": 0.0, "natural": 0.0}
    for key in [f"cert@{k}" for k in EPSILONS] + ([f"paper@{k}" for k in EPSILONS] if paper_formula else []):
        sums[key] = 0.0
    for i, batch in enumerate(loader):
        ref, x0, x1 = (batch[k].to(device) for k in ("ref", "x0", "x1"))
        target = batch["target"].to(device=device, dtype=torch.float32)
        cert = metric.certify_2afc(ref, x0, x1)
        score = score_batch(cert.d0, cert.d1, target)
        sums["n"] += len(target)
        sums["natural"] += score.sum().item()
        for k in EPSILONS:
            sums[f"cert@{k}"] += (score * (cert.radius > k / 255)).sum().item()
        if paper_formula:
            with torch.no_grad():
                spread = (metric.embed(x0) - metric.embed(x1)).norm(dim=1)
            paper_radius = cert.margin / spread.clamp_min(1e-12)
            for k in EPSILONS:
                sums[f"paper@{k}"] += (score * (paper_radius > k / 255)).sum().item()
        if i % 20 == 0:
            print(f"{label}: {int(sums['n'])}/{len(dataset)}", file=sys.stderr, flush=True)
    return sums


def format_table(results: dict[str, dict[str, float]], paper_formula: bool) -> str:
    """Markdown table of percentages; ``results`` maps a row label to the sums of :func:`evaluate_split`."""
    columns = ["natural"] + [f"cert@{k}" for k in EPSILONS] + ([f"paper@{k}" for k in EPSILONS] if paper_formula
                                                                else [])
    titles = ["natural 2AFC"] + [f"certified {k}/255" for k in EPSILONS] + (
        [f"certified {k}/255 (official formula)" for k in EPSILONS] if paper_formula else [])
    lines = ["| split | triplets | " + " | ".join(titles) + " |", "|---|---:|" + "---:|" * len(titles)]
    for label, sums in results.items():
        n = max(sums["n"], 1.0)
        cells = " | ".join(f"{100.0 * sums[c] / n:.2f}" for c in columns)
        lines.append(f"| {label} | {int(sums['n'])} | {cells} |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--night-root", required=True, type=Path,
                        help="NIGHT folder holding data.csv, ref/ and distort/ (dreamsim's download_dataset.sh)")
    parser.add_argument("--weights", required=True,
                        help="converted .safetensors file or registered name, e.g. lipsim-paper-small.margin0.5")
    parser.add_argument("--projection", choices=("normalize", "append"), default="normalize",
                        help="'normalize' = the paper protocol (default); 'append' = lipsim-metric's default")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-workers", type=int, default=4)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N triplets of each split")
    parser.add_argument("--paper-formula", action="store_true",
                        help="also report the official code's radius margin/||e0-e1|| (no norm condition)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not (args.night_root / "data.csv").is_file():
        print(f"paper_table1: error: {args.night_root} is not a NIGHT folder (no data.csv). Download NIGHT with "
              "dreamsim's dataset/download_dataset.sh and pass the folder holding data.csv, ref/ and distort/.",
              file=sys.stderr)
        return 2
    from lipsim_metric import LipSim
    from lipsim_metric.train.data import NightDataset

    try:
        metric = LipSim(weights=args.weights, projection=args.projection).to(args.device)
        datasets = {split: NightDataset(args.night_root, split=split, size=224) for split in SPLITS}
    except (FileNotFoundError, ValueError) as exc:
        print(f"paper_table1: error: {exc}", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    results = {split: evaluate_split(metric, datasets[split], args.batch_size, device, args.paper_formula,
                                     args.limit, args.num_workers, split) for split in SPLITS}
    # Combined accuracy = per-split accuracies weighted by split size = pooled sums over all triplets.
    results["combined"] = {key: sum(r[key] for r in results.values()) for key in results[SPLITS[0]]}
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"NIGHT 2AFC, weights={args.weights}, projection={args.projection}, {datetime.date.today()}, "
          f"{device_name}, command: python examples/paper_table1.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    print()
    print(format_table(results, args.paper_formula))
    return 0


if __name__ == "__main__":
    sys.exit(main())
