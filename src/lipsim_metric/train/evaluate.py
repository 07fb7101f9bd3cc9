"""Validation triplets and the 2AFC evaluation report (natural and certified agreement).

Three sub-commands::

    # 1. build the fixed, seeded, versioned validation set (teacher-labelled distortion triplets)
    python -m lipsim_metric.train.evaluate build --images ../shared/images/val --out data_cache/val-v1 \\
        --teachers lpips-alex,lpips-vgg,dists --teachers-dir ../shared/teachers --n 400 --seed 0 --version v1

    # 2. evaluate LipSim weights (and the teachers) on it; writes report.json and report.md
    python -m lipsim_metric.train.evaluate report --triplets data_cache/val-v1 --weights weights/<file> \\
        --out runs/eval

    # 3. correlate metrics with human ratings (TID2013, KADID-10k, CSIQ, LIVE, PIPAL, a CSV; BAPPS, NIGHT)
    python -m lipsim_metric.train.evaluate iqa --dataset kadid10k:data/kadid10k --metrics lipsim,lpips-vgg,dists \\
        --teachers-dir ../shared/teachers --out runs/iqa-kadid      (see docs/evaluation.md)

Metrics, following LipSim (Ghazanfari et al., ICLR 2024, Table 1) with the teachers' unanimous votes in place of
human judgements: *natural 2AFC* is the share of triplets where the metric picks the image the teachers picked;
*certified 2AFC at eps* is the share where it picks it **and** the certified radius of
:meth:`lipsim_metric.LipSim.certify_2afc` exceeds eps (l2, [0,1] pixel units at 224x224, like the paper:
eps = 36/255, 72/255, 108/255). Reported on the unanimous subset (the target) and, for reference, on all triplets
against the teachers' majority.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from ..evaluation.command import add_iqa_arguments, run_iqa
from ..metric import LipSim
from .data import build_val_triplets, load_triplet_set
from .teachers import build_distance_teacher

__all__ = ["EPSILONS", "evaluate_lipsim", "evaluate_teachers", "write_report", "main"]

#: Certified-accuracy budgets of the paper, l2 in [0,1] pixel units at 224x224.
EPSILONS = (36 / 255, 72 / 255, 108 / 255)


def _labels(ds: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(majority label, unanimous mask, is_hard) for a stored triplet set, from its manifest."""
    rows = ds.manifest["triplets"]
    votes = torch.tensor([[float(v) for v in r["votes"].values()] for r in rows])
    majority = (votes.mean(1) > 0.5).long()
    unanimous = torch.tensor([bool(r["unanimous"]) for r in rows])
    hard = torch.tensor([bool(r["is_hard"]) for r in rows])
    return majority, unanimous, hard


@torch.no_grad()
def evaluate_lipsim(metric: LipSim, dataset: Any, batch_size: int = 32, device: str = "cpu",
                    epsilons: tuple[float, ...] = EPSILONS, progress: bool = True,
                    extra_l2: tuple[float, ...] = ()) -> dict[str, Any]:
    """Natural and certified 2AFC agreement of ``metric`` with the teachers' judgements on a stored triplet set.

    ``epsilons`` are reported as ``certified@k/255``; ``extra_l2`` budgets (e.g. the robustness report's 1, 2, 3)
    as ``certified@l2 <eps>``.
    """
    from tqdm import tqdm

    metric = metric.to(device).eval()
    preds, radii = [], []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    for batch in tqdm(loader, desc="lipsim", disable=not progress, file=sys.stderr):
        cert = metric.certify_2afc(batch["ref"].to(device), batch["x0"].to(device), batch["x1"].to(device))
        preds.append(cert.prediction.cpu())
        radii.append(cert.radius.cpu())
    pred, radius = torch.cat(preds), torch.cat(radii)
    label, unanimous, hard = _labels(dataset)
    correct = pred == label

    def summary(mask: torch.Tensor) -> dict[str, Any]:
        n = int(mask.sum())
        out: dict[str, Any] = {"n": n, "natural": float(correct[mask].float().mean()) if n else float("nan")}
        budgets = [(f"certified@{round(e * 255)}/255", e) for e in epsilons]
        budgets += [(f"certified@l2 {e:g}", e) for e in extra_l2]
        for key, eps in budgets:
            ok = correct & (radius > eps)
            out[key] = float(ok[mask].float().mean()) if n else float("nan")
        out["median_radius_correct"] = float(radius[mask & correct].median()) if (mask & correct).any() else 0.0
        return out

    return {
        "unanimous": summary(unanimous),
        "unanimous_hard": summary(unanimous & hard),
        "unanimous_easy": summary(unanimous & ~hard),
        "all_vs_majority": summary(torch.ones_like(unanimous)),
    }


def evaluate_teachers(dataset: Any) -> dict[str, Any]:
    """Each teacher's agreement with the others' majority (leave-one-out), from the stored distances."""
    rows = dataset.manifest["triplets"]
    names = list(rows[0]["votes"])
    votes = torch.tensor([[float(r["votes"][k]) for k in names] for r in rows])
    out = {}
    for i, name in enumerate(names):
        others = torch.cat([votes[:, :i], votes[:, i + 1:]], dim=1)
        decided = others.mean(1) != 0.5
        maj = (others.mean(1) > 0.5).float()
        out[name] = {
            "agreement_with_other_teachers": float((votes[decided, i] == maj[decided]).float().mean()),
            "n": int(decided.sum()),
        }
    return out


def write_report(result: dict[str, Any], out_dir: Path) -> None:
    """Write ``report.json`` and a markdown table ``report.md``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(result, indent=2))
    first = next(iter(result["lipsim"].values()))
    keys = [k for k in first if k == "natural" or k.startswith("certified@")]
    lines = [
        f"Validation set: `{result['triplets']}` (version {result['version']}, {result['n_triplets']} triplets, "
        f"teachers {', '.join(result['teachers'])}); weights `{result['weights']}`; {result['machine']}, "
        f"{result['date']}.",
        "",
        "| subset | n | " + " | ".join(keys) + " |",
        "|---|---|" + "---|" * len(keys),
    ]
    for subset, vals in result["lipsim"].items():
        cells = " | ".join(f"{100 * vals[k]:.1f}%" for k in keys)
        lines.append(f"| {subset} | {vals['n']} | {cells} |")
    lines += ["", "| teacher | agreement with the other teachers' majority |", "|---|---|"]
    for name, vals in result["teachers_loo"].items():
        lines.append(f"| {name} | {100 * vals['agreement_with_other_teachers']:.1f}% (n={vals['n']}) |")
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")


def _build(args: argparse.Namespace) -> int:
    names = [t for t in args.teachers.split(",") if t]
    teachers = {name: build_distance_teacher(name, teachers_dir=args.teachers_dir).to(args.device) for name in names}
    start = time.time()
    manifest = build_val_triplets(args.images, args.out, teachers, n=args.n, seed=args.seed, version=args.version,
                                  batch_size=args.batch_size, device=args.device, overwrite=args.overwrite)
    print(f"wrote {manifest} in {time.time() - start:.0f} s", file=sys.stderr)
    return 0


def _report(args: argparse.Namespace) -> int:
    import platform

    dataset = load_triplet_set(args.triplets)
    metric = LipSim(weights=args.weights) if args.weights else LipSim()
    start = time.time()
    result: dict[str, Any] = {
        "triplets": str(args.triplets),
        "version": dataset.manifest.get("version"),
        "n_triplets": len(dataset),
        "teachers": list(dataset.manifest["triplets"][0]["votes"]),
        "weights": str(args.weights or metric.weights_name),
        "lipsim": evaluate_lipsim(metric, dataset, args.batch_size, args.device, progress=not args.quiet,
                                  extra_l2=tuple(args.l2_eps)),
        "teachers_loo": evaluate_teachers(dataset),
        "machine": f"{platform.machine()} {platform.processor() or ''} {torch.get_num_threads()} threads, "
                   f"device {args.device}, torch {torch.__version__}".replace("  ", " "),
        "date": time.strftime("%Y-%m-%d"),
        "command": "python -m lipsim_metric.train.evaluate " + " ".join(sys.argv[1:]),
    }
    result["seconds"] = round(time.time() - start, 1)
    write_report(result, Path(args.out))
    print((Path(args.out) / "report.md").read_text())
    return 0


def _budgets(text: str) -> list[float]:
    """``"1,2,3"`` -> ``[1.0, 2.0, 3.0]``; non-negative numbers only."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated l2 budgets such as 1,2,3, got {text!r}") from None
    if any(not v >= 0 for v in values):
        raise argparse.ArgumentTypeError(f"budgets must be >= 0, got {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lipsim_metric.train.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build the validation triplet set")
    b.add_argument("--images", required=True)
    b.add_argument("--out", required=True)
    b.add_argument("--teachers", default="lpips-alex,lpips-vgg,dists")
    b.add_argument("--teachers-dir", default=None)
    b.add_argument("--n", type=int, default=400)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--version", default="v1")
    b.add_argument("--batch-size", type=int, default=16)
    b.add_argument("--device", default="cpu")
    b.add_argument("--overwrite", action="store_true")
    r = sub.add_parser("report", help="evaluate LipSim weights on a triplet set")
    r.add_argument("--triplets", required=True)
    r.add_argument("--weights", default=None, help="name or .safetensors path (default: the shipped default)")
    r.add_argument("--out", required=True)
    r.add_argument("--batch-size", type=int, default=32)
    r.add_argument("--device", default="cpu")
    r.add_argument("--quiet", action="store_true")
    r.add_argument("--l2-eps", type=_budgets, default=[],
                   help="extra certified budgets in l2 [0,1] pixel units, e.g. 1,2,3 (the robustness report's)")
    q = sub.add_parser("iqa", help="correlate metrics with human ratings (IQA sets, BAPPS, NIGHT, a CSV)")
    add_iqa_arguments(q)
    args = parser.parse_args(argv)
    try:
        if args.cmd == "iqa":
            return run_iqa(args)
        return _build(args) if args.cmd == "build" else _report(args)
    except (FileNotFoundError, FileExistsError, ValueError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
