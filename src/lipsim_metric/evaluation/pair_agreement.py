"""Agreement of a metric's distances with the teachers' on held-out distortion pairs, pooled and per family.

The held-out set is a pair label set (:mod:`lipsim_metric.train.labels`) built on photos the training never saw
(``../shared/images/val``, centre crops). For every metric it reports:

* **SRCC** (Spearman) of the metric's distance with each teacher's distance over all pairs (pooled across
  references and families: a quality scale comparable between photos), and per distortion family (the first family
  of a two-family combination is not used: combinations form their own group, ``combination``);
* **2AFC agreement**: over every two copies of one reference on which all teachers agree, the share the metric orders
  the same way.

Teachers' own figures come from the stored labels (no teacher runs); other metrics are computed on the re-rendered
images (:func:`lipsim_metric.evaluation.baselines.build_metric`).

Command::

    python -m lipsim_metric.evaluation.pair_agreement --labels data_cache/pairs-val-v2 --images ../shared/images/val \\
        --metrics lipsim,psnr,ssim --weights weights/<file>.safetensors --out runs/pairs_eval
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .correlation import srcc

__all__ = ["pair_distances", "agreement_report", "main"]


def _group(name: str) -> str:
    return "combination" if "+" in name else name


def pair_distances(metric: torch.nn.Module, data: Any, batch_refs: int = 8, progress: bool = True) -> np.ndarray:
    """Distances ``(N, K)`` of ``metric`` from each reference of ``data`` (a PairLabelSet) to its copies."""
    from tqdm import tqdm

    out = np.zeros((len(data), data.cfg.copies), dtype=np.float64)
    for lo in tqdm(range(0, len(data), batch_refs), disable=not progress, file=sys.stderr, desc="pairs"):
        items = [data[i] for i in range(lo, min(len(data), lo + batch_refs))]
        copies = torch.cat([it["copies"] for it in items])
        refs = torch.cat([it["ref"][None].expand_as(it["copies"]) for it in items])
        with torch.no_grad():
            d = metric(refs, copies).float()
        out[lo : lo + len(items)] = d.view(len(items), -1).numpy()
    return out


def agreement_report(distances: dict[str, np.ndarray], teachers: dict[str, np.ndarray],
                     families: list[str]) -> dict[str, Any]:
    """SRCC (pooled, per family) and within-reference 2AFC agreement of each metric with each teacher.

    Args:
        distances: metric name -> ``(N, K)`` distances.
        teachers: teacher name -> ``(N, K)`` distances (the labels).
        families: distortion name of each pair, item-major (``N * K``).
    """
    groups: dict[str, list[int]] = defaultdict(list)
    for i, name in enumerate(families):
        groups[_group(name)].append(i)
    t_stack = np.stack(list(teachers.values()))  # (T, N, K)
    n, k = t_stack.shape[1:]
    iu = np.triu_indices(k, 1)
    t_gap = t_stack[:, :, iu[0]] - t_stack[:, :, iu[1]]  # (T, N, P)
    unanimous = (np.sign(t_gap) == np.sign(t_gap[:1])).all(0) & (t_gap[0] != 0)
    report: dict[str, Any] = {"pairs": int(n * k), "references": int(n), "unanimous_2afc": int(unanimous.sum()),
                              "metrics": {}}
    for name, d in {**teachers, **distances}.items():
        flat = d.reshape(-1)
        entry: dict[str, Any] = {"srcc": {t: srcc(flat, td.reshape(-1)) for t, td in teachers.items()}}
        entry["srcc_by_family"] = {
            g: {t: srcc(flat[idx], td.reshape(-1)[idx]) for t, td in teachers.items()}
            for g, idx in sorted(groups.items()) if len(idx) >= 5
        }
        gap = d[:, iu[0]] - d[:, iu[1]]
        entry["2afc_agreement"] = float((np.sign(gap) == np.sign(t_gap[0]))[unanimous].mean())
        report["metrics"][name] = entry
    report["family_counts"] = {g: len(idx) for g, idx in sorted(groups.items())}
    return report


def _markdown(report: dict[str, Any]) -> str:
    teachers = list(next(iter(report["metrics"].values()))["srcc"])
    lines = [f"{report['pairs']} pairs of {report['references']} held-out references; "
             f"{report['unanimous_2afc']} within-reference 2AFC judgements on which all teachers agree.", "",
             "| metric | " + " | ".join(f"SRCC {t}" for t in teachers) + " | 2AFC (unanimous) |",
             "|---|" + "---:|" * (len(teachers) + 1)]
    for name, e in report["metrics"].items():
        lines.append(f"| {name} | " + " | ".join(f"{e['srcc'][t]:.3f}" for t in teachers)
                     + f" | {100 * e['2afc_agreement']:.1f}% |")
    lines += ["", "Per family (SRCC with " + " / ".join(teachers) + "):", "",
              "| family | n | " + " | ".join(report["metrics"]) + " |", "|---|---:|" + "---|" * len(report["metrics"])]
    for g, count in report["family_counts"].items():
        cells = []
        for e in report["metrics"].values():
            fam = e["srcc_by_family"].get(g)
            cells.append(" / ".join(f"{fam[t]:.2f}" for t in teachers) if fam else "")
        lines.append(f"| {g} | {count} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from ..train.labels import PairLabelSet
    from .baselines import build_metric

    parser = argparse.ArgumentParser(prog="python -m lipsim_metric.evaluation.pair_agreement", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labels", required=True, help="held-out pair label set folder")
    parser.add_argument("--images", required=True, help="the photo folder it was built from")
    parser.add_argument("--metrics", default="lipsim", help="comma-separated, e.g. lipsim,psnr,ssim")
    parser.add_argument("--weights", action="append", default=[],
                        help="LipSim weights (name or file); repeat to compare several, each as 'lipsim:<file>'")
    parser.add_argument("--constant", type=float, default=None,
                        help="LipSim's appended constant c (LipSim(constant=...)); default: LipSim's")
    parser.add_argument("--teachers-dir", default=None)
    parser.add_argument("--max-refs", type=int, default=None)
    parser.add_argument("--out", required=True)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.constant is not None and not args.constant > 0:
        parser.error(f"--constant must be > 0 (LipSim's appended coordinate), got {args.constant}")
    try:
        data = PairLabelSet(args.labels, args.images, max_refs=args.max_refs)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    teachers = {t: data.distances[:, i].numpy().astype(np.float64) for i, t in enumerate(data.teachers)}
    distances: dict[str, np.ndarray] = {}
    for name in [m for m in args.metrics.split(",") if m]:
        if name == "lipsim":
            for w in args.weights or [None]:
                # a file's stem names it, unless several files share it (runs/*/student.safetensors)
                stems = [Path(x).stem for x in args.weights]
                label = "lipsim" if w is None else f"lipsim:{Path(w).stem if stems.count(Path(w).stem) == 1 else w}"
                kwargs = {} if args.constant is None else {"constant": args.constant}
                metric = build_metric("lipsim", weights=w, **kwargs) if w else build_metric("lipsim", **kwargs)
                distances[label] = pair_distances(metric.eval(), data, progress=not args.quiet)
        elif name not in teachers:
            metric = build_metric(name, teachers_dir=args.teachers_dir).eval()
            distances[name] = pair_distances(metric, data, progress=not args.quiet)
    report = agreement_report(distances, teachers, data.families())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pair_agreement.json").write_text(json.dumps(report, indent=1))
    (out / "pair_agreement.md").write_text(_markdown(report))
    print(_markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
