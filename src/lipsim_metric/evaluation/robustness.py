"""Robustness report: natural, empirical-robust and certified 2AFC agreement of LipSim and baselines.

Command::

    python -m lipsim_metric.evaluation.robustness --triplets data_cache/val-v1 \\
        --metrics lipsim,lpips-alex,lpips-vgg,dists,ssim --weights weights/<file>.safetensors \\
        --teachers-dir ../shared/teachers --out runs/robust [--limit 64] [--steps 100] [--device cuda] [--figure]

On the unanimous triplets of a stored set (:func:`lipsim_metric.train.valsets.load_triplet_set`; label = the teachers'
unanimous vote, 1 = ``x1`` closer) it measures, for each metric:

* **natural 2AFC**: share of triplets where the metric's judgement equals the label (for the teachers themselves this
  is 100 % by construction: the unanimous vote includes theirs);
* **empirical robust 2AFC** at l2 eps in {0.5, 1, 2, 3} and linf eps in {1, 2, 4}/255 ([0, 1] pixel units of the
  stored images, 224x224 for ``val-v1``): share still equal to the label after
  :func:`lipsim_metric.evaluation.attacks.attack_2afc` on the reference (APGD-CE, 100 steps by default) -- an upper
  bound on the true robust accuracy;
* for LipSim, **certified 2AFC**: share judged correctly with a certified radius above eps
  (:meth:`lipsim_metric.LipSim.certify_2afc`); a lower bound on its robust accuracy. Linf budgets are certified
  through ``||delta||_2 <= sqrt(3 H W) ||delta||_inf``;
* the **distance attack**: ``d(x, x + delta)`` maximised over ``||delta||_2 <= --distance-eps`` for the references
  (the paper's distribution of ``d(x, x + delta)``), with the median clean ``d(ref, x0)`` for scale.

Outputs in ``--out``: ``results.json``, ``results.md`` (markdown tables), ``accuracy_vs_eps.png``,
``distance_attack.png``, with ``--figure`` also ``adversarial_example.png`` (a triplet whose baseline judgement an
attack flips while LipSim's judgement is certified at that budget), and ``cache/`` with one JSON per metric and
budget, written after every batch: an interrupted run resumes where it stopped; a finished entry is never recomputed
unless its configuration (triplets, weights, method, steps, restarts, seed) changed.

This module holds the report (:func:`run_report`) and its command line; the pieces live beside it, one concern each:
:mod:`.robustness_experiments` (configuration, triplet selection, resume cache, the evaluations),
:mod:`.robustness_output` (plots, markdown table, adversarial figure), :mod:`.retrieval_attack` (retrieval under
attack) and :mod:`.soundness` (certificate soundness checks). Every name is also importable from here.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..metric import LipSim
from .attacks import (
    CERTIFICATE_CHECKS,
    DistanceFn,
)
from .retrieval_attack import (  # noqa: F401  (names of the module before the split, kept importable here)
    _all_distances,
    retrieval_attack_experiment,
    retrieval_from_triplets,
    run_retrieval,
)
from .robustness_experiments import (  # noqa: F401
    AttackConfig,
    _batches,
    _file_label,
    _indices_digest,
    _progress,
    _read_cache,
    _write_cache,
    certified_2afc,
    certified_accuracy,
    distance_attack,
    eps_label,
    evaluate_2afc,
    select_triplets,
)
from .robustness_output import (  # noqa: F401
    _find_and_save_figure,
    _markdown,
    _plot_accuracy,
    _plot_distance_hist,
    _show,
    save_adversarial_figure,
)
from .soundness import _weights_digest, generated_triplets, soundness_check  # noqa: F401

__all__ = [
    "L2_EPSILONS",
    "LINF_EPSILONS",
    "AttackConfig",
    "select_triplets",
    "evaluate_2afc",
    "certified_2afc",
    "distance_attack",
    "run_report",
    "save_adversarial_figure",
    "retrieval_attack_experiment",
    "retrieval_from_triplets",
    "run_retrieval",
    "main",
]

#: l2 budgets of the report, [0, 1] pixel units.
L2_EPSILONS: tuple[float, ...] = (0.5, 1.0, 2.0, 3.0)
#: linf budgets of the report, [0, 1] pixel units.
LINF_EPSILONS: tuple[float, ...] = (1 / 255, 2 / 255, 4 / 255)


# ----------------------------------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------------------------------


def _summary(values: Sequence[float]) -> dict[str, float]:
    t = torch.tensor(values, dtype=torch.float64)
    return {"median": float(t.median()), "mean": float(t.mean()), "max": float(t.max()), "min": float(t.min())}


def run_report(
    dataset: Any,
    metrics: Mapping[str, DistanceFn],
    out_dir: str | os.PathLike[str],
    limit: int | None = None,
    l2_eps: Sequence[float] = L2_EPSILONS,
    linf_eps: Sequence[float] = LINF_EPSILONS,
    config: AttackConfig | None = None,
    distance_eps: float = 1.0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    figure: bool = False,
    dataset_id: str = "",
    weights_id: str = "",
    command: str = "",
) -> dict[str, Any]:
    """Compute (or resume) the robustness report and write ``results.json``, ``results.md`` and the plots.

    Args:
        dataset: a triplet set (:func:`lipsim_metric.train.valsets.load_triplet_set` or anything with ``unanimous``,
            ``target`` and items ``{"ref", "x0", "x1"}``).
        metrics: name -> distance; the entry ``"lipsim"`` (a :class:`LipSim`) also gets the certified curve.
        out_dir: output folder (created); its ``cache/`` makes the run resumable.
        limit: evaluate the first ``limit`` unanimous triplets only.
        l2_eps, linf_eps: attack budgets, [0, 1] pixel units.
        config: attack settings.
        distance_eps: l2 budget of the distance attack (0 skips it).
        device: where to compute.
        progress: tqdm progress bars on stderr.
        figure: also save ``adversarial_example.png``.
        dataset_id, weights_id: identify the data and the LipSim weights in the cache keys and the report.
        command: the command line, recorded in the report.

    Returns:
        The result dict written to ``results.json``.
    """
    config = config or AttackConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    indices, labels = select_triplets(dataset, limit)
    base_key = {"triplets": dataset_id, "indices": _indices_digest(indices), **asdict(config)}
    raw: dict[Any, Any] = {}
    result: dict[str, Any] = {
        "triplets": dataset_id,
        "n_triplets": len(indices),
        "config": {**asdict(config), "l2_eps": list(l2_eps), "linf_eps": list(linf_eps), "distance_eps": distance_eps,
                   "limit": limit},
        "metrics": {},
    }
    budgets = [("l2", float(e)) for e in l2_eps] + [("linf", float(e)) for e in linf_eps]
    start = time.time()
    for name, fn in metrics.items():
        if isinstance(fn, nn.Module):
            fn = fn.to(device).eval()
        key = {**base_key, "metric": name, "weights": weights_id if name == "lipsim" else ""}
        raw[name] = {}
        cache_dir = out / "cache" / name
        raw[name]["natural"] = evaluate_2afc(fn, dataset, indices, labels, "l2", 0.0, config, device,
                                             cache_dir / "natural.json", {**key, "eps": 0.0}, progress,
                                             f"{name} natural")
        entry: dict[str, Any] = {"natural": float(torch.tensor(raw[name]["natural"]["correct"]).double().mean()),
                                 "l2": {}, "linf": {}}
        for norm, eps in budgets:
            res = evaluate_2afc(fn, dataset, indices, labels, norm, eps, config, device,
                                cache_dir / f"{_file_label(norm, eps)}.json", {**key, "norm": norm, "eps": eps},
                                progress, f"{name} {eps_label(norm, eps)}")
            raw[name][(norm, eps)] = res
            entry[norm][str(eps)] = float(torch.tensor(res["correct"]).double().mean())
        if distance_eps > 0:
            da = distance_attack(fn, dataset, indices, distance_eps, "l2", config, device,
                                 cache_dir / f"distance_{_file_label('l2', distance_eps)}.json",
                                 {**key, "distance_eps": distance_eps}, progress, f"{name} distance attack")
            entry["distance_attack"] = {"values": da["values"], **_summary(da["values"]),
                                        "median_clean_d_ref_x0": _summary(da["clean_d0"])["median"]}
        result["metrics"][name] = entry
        if name == "lipsim" and isinstance(fn, LipSim):
            cert = certified_2afc(fn, dataset, indices, labels, config.batch_size, device)
            raw["certified"] = cert
            top = {"l2": max([*l2_eps, 0.0]), "linf": max([*linf_eps, 0.0])}
            result["lipsim_certified"] = {
                "natural": certified_accuracy(cert, "l2", 0.0),
                "l2": {str(float(e)): certified_accuracy(cert, "l2", float(e)) for e in l2_eps},
                "linf": {str(float(e)): certified_accuracy(cert, "linf", float(e)) for e in linf_eps},
                "curve": {norm: {"eps": [top[norm] * i / 50 for i in range(51)],
                                 "accuracy": [certified_accuracy(cert, norm, top[norm] * i / 50) for i in range(51)]}
                          for norm in ("l2", "linf")},
                "median_radius_correct": float(torch.tensor(
                    [r for r, c in zip(cert["radius"], cert["correct"], strict=True) if c] or [0.0]).median()),
                "dim": cert["dim"],
            }
    result.update({
        "weights": weights_id,
        "machine": f"{platform.machine()} {platform.processor() or ''} {torch.get_num_threads()} threads, device "
                   f"{device}, torch {torch.__version__}".replace("  ", " "),
        "date": time.strftime("%Y-%m-%d"),
        "command": command,
        "seconds_this_run": round(time.time() - start, 1),
    })
    (out / "results.json").write_text(json.dumps(result, indent=2))
    (out / "results.md").write_text(_markdown(result))
    _plot_accuracy(result, out / "accuracy_vs_eps.png")
    _plot_distance_hist(result, out / "distance_attack.png")
    if figure:
        saved = _find_and_save_figure(result, raw, metrics, dataset, indices, labels, config, device, out)
        result["figure"] = str(saved) if saved else None
        (out / "results.json").write_text(json.dumps(result, indent=2))
    return result




# ----------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------


def _floats(text: str, scale: float = 1.0) -> list[float]:
    try:
        return [float(v) * scale for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from exc


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m lipsim_metric.evaluation.robustness``."""
    from ..train.valsets import load_triplet_set
    from .baselines import METRICS, build_metric

    parser = argparse.ArgumentParser(prog="python -m lipsim_metric.evaluation.robustness", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--triplets", default=None,
                        help="stored triplet set (folder or manifest.json); needed except for --soundness-only runs "
                             "on --soundness-images")
    parser.add_argument("--metrics", default="lipsim,lpips-alex,lpips-vgg,dists,ssim",
                        help=f"comma-separated, from {', '.join(METRICS)}")
    parser.add_argument("--weights", default=None, help="LipSim weights: registered name or .safetensors path")
    parser.add_argument("--teachers-dir", default=None, help="teacher weights folder (default $LIPSIM_TEACHERS_DIR)")
    parser.add_argument("--out", required=True, help="output folder (also the resume cache)")
    parser.add_argument("--limit", type=int, default=None, help="first N unanimous triplets only (CPU-sized runs)")
    parser.add_argument("--method", default="apgd-ce", choices=["apgd-ce", "apgd-margin", "pgd", "ensemble"])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--restarts", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--l2-eps", type=_floats, default=list(L2_EPSILONS), help="l2 budgets, e.g. 0.5,1,2,3")
    parser.add_argument("--linf-eps", type=lambda t: _floats(t, 1 / 255), default=list(LINF_EPSILONS),
                        help="linf budgets in 1/255 units, e.g. 1,2,4")
    parser.add_argument("--distance-eps", type=float, default=1.0, help="l2 budget of the distance attack (0: skip)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--figure", action="store_true", help="also save adversarial_example.png")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--retrieval", type=int, default=0, metavar="G",
                        help="instead of the 2AFC report, run the retrieval attack experiment: gallery of the first G "
                             "reference photos, one distorted copy of each as query, --l2-eps budgets, --steps")
    parser.add_argument("--soundness", type=int, default=0, metavar="N",
                        help="also attack LipSim's own certificates on the first N triplets (check_certificates, "
                             "--steps/--restarts) and write soundness.json; every flip count must be 0")
    parser.add_argument("--soundness-steps", type=int, default=None, metavar="S",
                        help="attack steps of the soundness check (default: --steps)")
    parser.add_argument("--soundness-checks", default=",".join(CERTIFICATE_CHECKS),
                        help="which certificates to attack: comma-separated from 2afc, pair (distance 0), half "
                             "(distance d/2)")
    parser.add_argument("--soundness-images", default=None, metavar="DIR",
                        help="run the soundness check on N unlabelled distortion triplets generated from the photos "
                             "in DIR (seed --soundness-seed) instead of the first N of --triplets")
    parser.add_argument("--soundness-seed", type=int, default=1,
                        help="recipe seed of --soundness-images triplets (default 1; val-v1 used 0)")
    parser.add_argument("--soundness-only", action="store_true", help="skip the 2AFC report, run only the soundness "
                                                                       "check (resumable: soundness_cache.json)")
    args = parser.parse_args(argv)
    checks = tuple(c.strip() for c in args.soundness_checks.split(",") if c.strip())
    if not checks or not set(checks) <= set(CERTIFICATE_CHECKS):
        parser.error(f"--soundness-checks takes a comma-separated subset of {','.join(CERTIFICATE_CHECKS)}, got "
                     f"{args.soundness_checks!r}")
    if args.soundness_only and args.soundness < 1:
        parser.error("--soundness-only needs --soundness N (N >= 1)")
    if args.soundness_only and args.retrieval > 0:
        parser.error("--soundness-only and --retrieval are separate runs; give one of them")
    if args.triplets is None and not (args.soundness_only and args.soundness_images):
        parser.error("--triplets is required (only a --soundness-only run on --soundness-images goes without)")
    if args.retrieval < 0:
        parser.error(f"--retrieval must be >= 0 (0: the 2AFC report), got {args.retrieval}")
    if args.soundness_steps is not None and args.soundness_steps < 1:
        parser.error(f"--soundness-steps must be >= 1, got {args.soundness_steps}")
    command = "python -m lipsim_metric.evaluation.robustness " + " ".join(sys.argv[1:] if argv is None else argv)
    try:
        dataset = load_triplet_set(args.triplets) if args.triplets is not None else None
        names = [m.strip() for m in args.metrics.split(",") if m.strip()]
        if args.soundness_only:
            names = ["lipsim"]
        if not names:
            raise ValueError("--metrics is empty")
        metrics = {name: build_metric(name, teachers_dir=args.teachers_dir,
                                      weights=args.weights if name == "lipsim" else None, device=args.device)
                   for name in names}
        config = AttackConfig(args.method, args.steps, args.restarts, args.seed, args.batch_size)
        if args.retrieval > 0:
            retrieval = run_retrieval(dataset, metrics, args.retrieval, args.l2_eps, config, args.device, args.out,
                                      command)
            print(retrieval["markdown"])
            return 0
        if not args.soundness_only:
            assert dataset is not None  # --triplets is required without --soundness-only (parser.error above)
            manifest = dataset.manifest
            dataset_id = (f"{args.triplets} (version {manifest.get('version')}, "
                          f"sha256 {str(manifest.get('sha256'))[:12]})")
            result = run_report(dataset, metrics, args.out, args.limit, args.l2_eps, args.linf_eps, config,
                                args.distance_eps, args.device, not args.quiet, args.figure, dataset_id,
                                str(args.weights or ""), command)
            print(_markdown(result))
        if args.soundness > 0 and "lipsim" in metrics:
            if args.soundness_images:
                sound_set = generated_triplets(args.soundness_images, args.soundness, args.soundness_seed)
                source = f"{args.soundness_images} (generated, seed {args.soundness_seed})"
            else:
                sound_set, source = dataset, str(args.triplets)
            sound = soundness_check(metrics["lipsim"], sound_set, args.soundness, args.soundness_steps or args.steps,
                                    args.restarts, args.seed, args.batch_size, args.device, checks,
                                    Path(args.out, "soundness_cache.json"), source, not args.quiet)
            sound.update(weights=str(args.weights or "default"), command=command)
            Path(args.out, "soundness.json").write_text(json.dumps(sound, indent=2))
            print(json.dumps(sound, indent=2))
            if sound["flips"] or sound["pair_flips"] or sound["half_flips"]:
                print("error: a certificate was broken", file=sys.stderr)
                return 1
    except (FileNotFoundError, ValueError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
