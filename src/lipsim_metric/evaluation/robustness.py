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
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

from ..metric import LipSim
from ..retrieval import EmbeddingIndex, gallery_distances
from .attacks import (
    CERTIFICATE_CHECKS,
    DistanceFn,
    attack_2afc,
    attack_distance,
    feature_split,
    perturb_to_maximize,
    perturbation_norm,
)

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


@dataclass(frozen=True)
class AttackConfig:
    """How the 2AFC and distance attacks are run (part of every cache key).

    Attributes:
        method: :data:`lipsim_metric.evaluation.attacks.TWO_AFC_METHODS` entry.
        steps: iterations per run.
        restarts: random restarts.
        seed: base seed; batch ``b`` starting at position ``p`` uses ``seed + p`` (so resuming reproduces a full run).
        batch_size: triplets per attacked batch.
    """

    method: str = "apgd-ce"
    steps: int = 100
    restarts: int = 1
    seed: int = 0
    batch_size: int = 16


def eps_label(norm: str, eps: float) -> str:
    """Human and file-name friendly budget label: ``"l2 0.5"``, ``"linf 4/255"``."""
    if norm == "linf":
        return f"linf {eps * 255:g}/255"
    return f"l2 {eps:g}"


def _file_label(norm: str, eps: float) -> str:
    return eps_label(norm, eps).replace(" ", "_").replace("/", "-")


# ----------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------


def select_triplets(dataset: Any, limit: int | None = None) -> tuple[list[int], Tensor]:
    """Indices of the first ``limit`` unanimous triplets and their labels (1 = ``x1`` closer).

    Args:
        dataset: a triplet set with ``unanimous`` (bool ``(N,)``) and ``target`` (share of votes for ``x1``).
        limit: keep at most this many (in stored order); None keeps all.

    Raises:
        ValueError: no unanimous triplet, or ``limit < 1``.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    indices = torch.nonzero(torch.as_tensor(dataset.unanimous)).flatten().tolist()
    if not indices:
        raise ValueError("the triplet set has no unanimous triplet; nothing to evaluate")
    indices = indices[:limit] if limit is not None else indices
    labels = (torch.as_tensor(dataset.target)[indices] > 0.5).long()
    return indices, labels


def _batches(dataset: Any, indices: Sequence[int], batch_size: int, start: int = 0,
             device: str | torch.device = "cpu") -> Iterator[tuple[int, Tensor, Tensor, Tensor]]:
    """``(position, ref, x0, x1)`` batches of ``dataset[indices[start:]]``."""
    for pos in range(start, len(indices), batch_size):
        items = [dataset[i] for i in indices[pos : pos + batch_size]]
        ref, x0, x1 = (torch.stack([it[key] for it in items]).to(device) for key in ("ref", "x0", "x1"))
        yield pos, ref, x0, x1


# ----------------------------------------------------------------------------------------------------------------
# Resumable cache
# ----------------------------------------------------------------------------------------------------------------


def _read_cache(path: Path, key: Mapping[str, Any]) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if data.get("key") != dict(key):
        print(f"note: {path} was computed with another configuration; recomputing", file=sys.stderr)
        return None
    return cast(dict[str, Any], data)


def _write_cache(path: Path, data: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)  # atomic: an interrupted write never leaves a broken cache file


def _indices_digest(indices: Sequence[int]) -> str:
    return hashlib.sha256(",".join(map(str, indices)).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------------------------
# Evaluations
# ----------------------------------------------------------------------------------------------------------------


def _progress(total: int, desc: str, enabled: bool, initial: int = 0) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, file=sys.stderr, leave=False)


def evaluate_2afc(metric_fn: DistanceFn, dataset: Any, indices: Sequence[int], labels: Tensor, norm: str = "l2",
                  eps: float = 0.0, config: AttackConfig | None = None, device: str | torch.device = "cpu",
                  cache: Path | None = None, key: Mapping[str, Any] | None = None, progress: bool = True,
                  desc: str = "") -> dict[str, Any]:
    """Per-triplet 2AFC correctness, natural (``eps = 0``) or after :func:`attack_2afc` at budget ``eps``.

    Args:
        metric_fn: the distance.
        dataset, indices, labels: from :func:`select_triplets`.
        norm, eps: the attack budget (``eps = 0``: no attack).
        config: attack settings.
        device: where to compute.
        cache: JSON file to resume from and to write after every batch.
        key: configuration stored in the cache; a cache with another key is recomputed.
        progress: show a progress bar.
        desc: its label.

    Returns:
        ``{"correct": [bool], "d0": [float], "d1": [float], "complete": bool}`` (distances at the evaluated point).
    """
    config = config or AttackConfig()
    key = dict(key or {})
    state: dict[str, Any] = {"key": key, "correct": [], "d0": [], "d1": [], "complete": False}
    if cache is not None:
        state = _read_cache(cache, key) or state
        if state.get("complete"):
            return state
    done = len(state["correct"])
    bar = _progress(len(indices), desc, progress, done)
    for pos, ref, x0, x1 in _batches(dataset, indices, config.batch_size, done, device):
        label = labels[pos : pos + len(ref)].to(ref.device)
        if eps > 0:
            ref = attack_2afc(metric_fn, ref, x0, x1, eps, norm, config.method, config.steps, config.restarts,
                              config.seed + pos, target=label)
        with torch.no_grad():
            d0, d1 = metric_fn(ref, x0).float(), metric_fn(ref, x1).float()
        state["correct"] += ((d1 < d0).long() == label).cpu().tolist()
        state["d0"] += d0.cpu().tolist()
        state["d1"] += d1.cpu().tolist()
        state["complete"] = len(state["correct"]) == len(indices)
        if cache is not None:
            _write_cache(cache, state)
        bar.update(len(ref))
    bar.close()
    state["complete"] = True
    return state


def certified_2afc(metric: LipSim, dataset: Any, indices: Sequence[int], labels: Tensor, batch_size: int = 32,
                   device: str | torch.device = "cpu") -> dict[str, Any]:
    """LipSim's judgements and certified radii: ``{"correct": [bool], "radius": [float], "dim": int}``.

    ``dim = C H W`` of the images, for the linf conversion ``radius / sqrt(dim)``.
    """
    correct: list[bool] = []
    radius: list[float] = []
    dim = 0
    with torch.no_grad():
        for pos, ref, x0, x1 in _batches(dataset, indices, batch_size, 0, device):
            cert = metric.certify_2afc(ref, x0, x1)
            correct += (cert.prediction == labels[pos : pos + len(ref)].to(ref.device)).cpu().tolist()
            radius += cert.radius.cpu().tolist()
            dim = int(ref[0].numel())
    return {"correct": correct, "radius": radius, "dim": dim}


def certified_accuracy(cert: Mapping[str, Any], norm: str, eps: float) -> float:
    """Share of triplets judged correctly with a certified radius above ``eps`` (linf via ``sqrt(dim)``)."""
    correct = torch.tensor(cert["correct"], dtype=torch.bool)
    radius = torch.tensor(cert["radius"], dtype=torch.float64)
    if norm == "linf":
        radius = radius / math.sqrt(cert["dim"])
    return float((correct & (radius > eps)).double().mean())


def distance_attack(metric_fn: DistanceFn, dataset: Any, indices: Sequence[int], eps: float, norm: str = "l2",
                    config: AttackConfig | None = None, device: str | torch.device = "cpu",
                    cache: Path | None = None, key: Mapping[str, Any] | None = None, progress: bool = True,
                    desc: str = "") -> dict[str, Any]:
    """``d(x, x + delta)`` maximised by :func:`attack_distance` for the distinct references of ``indices``.

    Returns:
        ``{"values": [float], "clean_d0": [float]}``: attacked distances per reference and clean ``d(ref, x0)``.
    """
    config = config or AttackConfig()
    key = dict(key or {})
    state: dict[str, Any] = {"key": key, "values": [], "clean_d0": [], "complete": False}
    if cache is not None:
        state = _read_cache(cache, key) or state
        if state.get("complete"):
            return state
    # one triplet per distinct reference image
    rows = getattr(dataset, "ref_row", None)
    if rows is not None:
        seen: set[int] = set()
        distinct = []
        for i in indices:
            if int(rows[i]) not in seen:
                seen.add(int(rows[i]))
                distinct.append(i)
        indices = distinct
    method = {"apgd-ce": "apgd", "apgd-margin": "apgd", "pgd": "pgd", "ensemble": "ensemble"}[config.method]
    done = len(state["values"])
    bar = _progress(len(indices), desc, progress, done)
    for pos, ref, x0, _ in _batches(dataset, indices, config.batch_size, done, device):
        adv = attack_distance(metric_fn, ref, ref, eps, norm, maximize=True, steps=config.steps,
                              restarts=config.restarts, seed=config.seed + pos, method=method)
        with torch.no_grad():
            state["values"] += metric_fn(adv, ref).float().cpu().tolist()
            state["clean_d0"] += metric_fn(ref, x0).float().cpu().tolist()
        state["complete"] = len(state["values"]) == len(indices)
        if cache is not None:
            _write_cache(cache, state)
        bar.update(len(ref))
    bar.close()
    state["complete"] = True
    return state


# ----------------------------------------------------------------------------------------------------------------
# Plots, tables, figure
# ----------------------------------------------------------------------------------------------------------------


def _plot_accuracy(result: Mapping[str, Any], path: Path) -> None:
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    fig = Figure(figsize=(10, 4), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, norm in zip(axes, ("l2", "linf"), strict=True):
        scale = 255.0 if norm == "linf" else 1.0
        for name, res in result["metrics"].items():
            eps = [0.0] + [float(e) for e in res[norm]]
            acc = [res["natural"]] + list(res[norm].values())
            ax.plot([e * scale for e in eps], [100 * a for a in acc], marker="o", label=f"{name} (attack)")
        cert = result.get("lipsim_certified")
        if cert:
            curve = cert["curve"][norm]
            ax.plot([e * scale for e in curve["eps"]], [100 * a for a in curve["accuracy"]], "k--",
                    label="lipsim (certified)")
        ax.set_xlabel("l2 budget ([0,1] pixel units)" if norm == "l2" else "linf budget (x/255)")
        ax.set_ylabel("2AFC agreement with teachers (%)")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.set_title(f"{norm} attacks on the reference ({result['n_triplets']} triplets)")
    axes[0].legend(fontsize=8)
    fig.savefig(path, dpi=120)


def _plot_distance_hist(result: Mapping[str, Any], path: Path) -> None:
    from matplotlib.figure import Figure

    entries = [(n, r["distance_attack"]) for n, r in result["metrics"].items() if r.get("distance_attack")]
    if not entries:
        return
    fig = Figure(figsize=(3.2 * len(entries), 3.2), layout="constrained")
    axes = fig.subplots(1, len(entries), squeeze=False)[0]
    for ax, (name, res) in zip(axes, entries, strict=True):
        ax.hist(res["values"], bins=20, color="tab:red", alpha=0.7, label="d(x, x+delta)")
        ax.axvline(res["median_clean_d_ref_x0"], color="k", ls="--", label="median d(ref, x0)")
        ax.set_title(name)
        ax.set_xlabel("distance")
    axes[0].set_ylabel("images")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"distance attack, l2 eps = {result['config']['distance_eps']:g}")
    fig.savefig(path, dpi=120)


def _markdown(result: Mapping[str, Any]) -> str:
    cols = [("natural", None)] + [("l2", e) for e in result["config"]["l2_eps"]] + \
        [("linf", e) for e in result["config"]["linf_eps"]]
    head = ["natural" if n == "natural" else eps_label(n, e) for n, e in cols]
    lines = [
        f"Triplets: `{result['triplets']}` ({result['n_triplets']} unanimous triplets); attack "
        f"{result['config']['method']}, {result['config']['steps']} steps, {result['config']['restarts']} restart(s); "
        f"{result['machine']}; {result['date']}.",
        f"Command: `{result['command']}`",
        "",
        "| metric | " + " | ".join(head) + " |",
        "|---|" + "---|" * len(head),
    ]
    for name, res in result["metrics"].items():
        cells = [res["natural"] if n == "natural" else res[n][str(e)] for n, e in cols]
        lines.append(f"| {name} | " + " | ".join(f"{100 * c:.1f}" for c in cells) + " |")
    cert = result.get("lipsim_certified")
    if cert:
        cells = [cert["natural"] if n == "natural" else cert[n][str(e)] for n, e in cols]
        lines.append("| lipsim (certified) | " + " | ".join(f"{100 * c:.1f}" for c in cells) + " |")
    if not any(res.get("distance_attack") for res in result["metrics"].values()):
        return "\n".join(lines) + "\n"  # --distance-eps 0: no distance attack
    lines += ["", f"Distance attack, l2 eps = {result['config']['distance_eps']:g}: d(x, x + delta) per metric.", "",
              "| metric | images | median d(x, x+delta) | max | median clean d(ref, x0) |", "|---|---|---|---|---|"]
    for name, res in result["metrics"].items():
        da = res.get("distance_attack")
        if da:
            lines.append(f"| {name} | {len(da['values'])} | {da['median']:.4g} | {da['max']:.4g} | "
                         f"{da['median_clean_d_ref_x0']:.4g} |")
    return "\n".join(lines) + "\n"


def _show(ax: Any, image: Tensor, title: str) -> None:
    ax.imshow(image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy())
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def save_adversarial_figure(path: str | os.PathLike[str], ref: Tensor, x0: Tensor, x1: Tensor, adv_ref: Tensor,
                            baseline_name: str, baseline: DistanceFn, lipsim: LipSim, norm: str = "l2") -> Path:
    """Save a grid (reference, x0, x1, attacked reference, perturbation) with both metrics' judgements.

    Args:
        path: output PNG.
        ref, x0, x1, adv_ref: one triplet, each ``(3, H, W)`` or ``(1, 3, H, W)`` in [0, 1].
        baseline_name: name printed for ``baseline``.
        baseline: the attacked distance (e.g. LPIPS).
        lipsim: the LipSim metric (its judgement and certificate are shown for the clean and attacked reference).
        norm: the attack's norm (printed with the perturbation size).

    Returns:
        The written path.
    """
    from matplotlib.figure import Figure

    ref, x0, x1, adv_ref = (t if t.ndim == 4 else t[None] for t in (ref, x0, x1, adv_ref))
    with torch.no_grad():
        b_clean = (float(baseline(ref, x0)), float(baseline(ref, x1)))
        b_adv = (float(baseline(adv_ref, x0)), float(baseline(adv_ref, x1)))
        l_clean = lipsim.certify_2afc(ref, x0, x1)
        l_adv = lipsim.certify_2afc(adv_ref, x0, x1)

    def choice(d: tuple[float, float]) -> str:
        return "x1" if d[1] < d[0] else "x0"

    delta = (adv_ref - ref)[0]
    size = float(perturbation_norm(adv_ref, ref, norm)[0])
    amp = 0.5 / max(float(delta.abs().max()), 1e-12)
    fig = Figure(figsize=(13, 3.6), layout="constrained")
    axes = fig.subplots(1, 5)
    _show(axes[0], ref[0], "reference")
    _show(axes[1], x0[0], "x0")
    _show(axes[2], x1[0], "x1")
    _show(axes[3], adv_ref[0], f"attacked reference\n{norm} norm {size:.3g}")
    _show(axes[4], 0.5 + amp * delta, f"perturbation (x{amp:.0f})")
    lc = (float(l_clean.d0[0]), float(l_clean.d1[0]))
    la = (float(l_adv.d0[0]), float(l_adv.d1[0]))
    fig.suptitle(
        f"{baseline_name}: {choice(b_clean)} closer (d0={b_clean[0]:.3f}, d1={b_clean[1]:.3f}) -> attacked: "
        f"{choice(b_adv)} closer (d0={b_adv[0]:.3f}, d1={b_adv[1]:.3f})\n"
        f"LipSim: {choice(lc)} closer (d0={lc[0]:.3f}, d1={lc[1]:.3f}, certified l2 radius "
        f"{float(l_clean.radius[0]):.3g}) -> attacked: {choice(la)} closer (d0={la[0]:.3f}, d1={la[1]:.3f})",
        fontsize=9)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    return out


def _find_and_save_figure(result: Mapping[str, Any], raw: Mapping[str, Any], metrics: Mapping[str, DistanceFn],
                          dataset: Any, indices: Sequence[int], labels: Tensor, config: AttackConfig,
                          device: str | torch.device, out: Path, max_tries: int = 5) -> Path | None:
    """Find a triplet flipped for a baseline at the smallest budget while LipSim is certified there; save it."""
    lipsim = metrics.get("lipsim")
    cert = raw.get("certified")
    if not isinstance(lipsim, LipSim) or cert is None:
        print("note: --figure needs the 'lipsim' metric; no figure written", file=sys.stderr)
        return None
    radius = torch.tensor(cert["radius"], dtype=torch.float64)
    for norm in ("l2", "linf"):
        for eps in sorted(result["config"][f"{norm}_eps"]):
            lipsim_radius = radius / math.sqrt(cert["dim"]) if norm == "linf" else radius
            for name, fn in metrics.items():
                if name == "lipsim":
                    continue
                natural, attacked = raw[name]["natural"]["correct"], raw[name][(norm, eps)]["correct"]
                tries = 0
                for pos in range(len(indices)):
                    if not (natural[pos] and not attacked[pos] and cert["correct"][pos] and lipsim_radius[pos] > eps):
                        continue
                    if tries >= max_tries:
                        break
                    tries += 1
                    item = dataset[indices[pos]]
                    ref, x0, x1 = (item[k][None].to(device) for k in ("ref", "x0", "x1"))
                    label = labels[pos : pos + 1].to(device)
                    adv = attack_2afc(fn, ref, x0, x1, eps, norm, config.method, config.steps, config.restarts,
                                      config.seed, target=label)
                    with torch.no_grad():
                        flipped = int(fn(adv, x1)[0] < fn(adv, x0)[0]) != int(label[0])
                    if flipped:
                        return save_adversarial_figure(out / "adversarial_example.png", ref, x0, x1, adv, name, fn,
                                                       lipsim, norm)
    print("note: no triplet found where an attack flips a baseline while LipSim is certified; no figure written",
          file=sys.stderr)
    return None


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
# Retrieval under attack
# ----------------------------------------------------------------------------------------------------------------


def _all_distances(metric_fn: DistanceFn, gallery: Tensor) -> Callable[[Tensor], Tensor]:
    """``queries (n, C, H, W) -> (n, N)`` distances to every gallery image (LipSim: gallery embedded once)."""
    if isinstance(metric_fn, LipSim):
        index = EmbeddingIndex.from_tensor(metric_fn, gallery)
        return lambda q: gallery_distances(cast(Tensor, metric_fn.embed(q)), index.embeddings)
    n_gallery = gallery.shape[0]
    split = feature_split(metric_fn)
    if split is not None:  # LPIPS, DISTS: gallery features computed once
        features, from_features = split
        with torch.no_grad():
            gallery_features = [features(gallery[i:i + 1]) for i in range(n_gallery)]

        def from_cached(q: Tensor) -> Tensor:
            fq = features(q)
            return torch.stack([from_features(fq, [f.expand(q.shape[0], *f.shape[1:]) for f in g])
                                for g in gallery_features], dim=1)

        return from_cached

    def pairwise(q: Tensor) -> Tensor:
        a = q.repeat_interleave(n_gallery, dim=0)
        b = gallery.repeat(q.shape[0], 1, 1, 1)
        return metric_fn(a, b).reshape(q.shape[0], n_gallery)

    return pairwise


def retrieval_attack_experiment(
    metric_fn: DistanceFn,
    gallery: Tensor,
    queries: Tensor,
    eps_list: Sequence[float],
    norm: str = "l2",
    steps: int = 50,
    restarts: int = 1,
    seed: int = 0,
    method: str = "apgd",
) -> dict[str, Any]:
    """Top-1 retention of nearest-neighbour retrieval when the query is attacked (LipSim vs a baseline).

    For each query the clean top-1 item ``b`` is found; the attack maximises ``d(q', b) - min_{c != b} d(q', c)``
    (positive once another item is nearer) with :func:`perturb_to_maximize`. For LipSim the certified share (top-1
    radius from :class:`lipsim_metric.retrieval.EmbeddingIndex` above eps) is reported too. Every query is compared
    with the whole gallery at every step, so keep galleries small for non-embedding baselines.

    Args:
        metric_fn: LipSim or any distance ``(a, b) -> (N,)``.
        gallery: ``(N, C, H, W)`` images in [0, 1], ``N >= 2``.
        queries: ``(Q, C, H, W)`` images in [0, 1].
        eps_list: budgets, [0, 1] pixel units.
        norm: ``"l2"`` or ``"linf"``.
        steps, restarts, seed, method: attack settings (see :func:`perturb_to_maximize`).

    Returns:
        ``{"norm", "eps", "retention", "certified", "n_queries", "gallery_size", "clean_top1"}``; ``retention[i]``
        is the share of queries whose top-1 survives the attack at ``eps[i]``; ``certified`` is None for non-LipSim
        metrics; ``clean_top1`` is each query's unattacked top-1 gallery index.

    Raises:
        ValueError: a gallery of fewer than 2 images.
    """
    if gallery.ndim != 4 or gallery.shape[0] < 2:
        raise ValueError(f"the gallery needs at least 2 images (N, C, H, W), got shape {tuple(gallery.shape)}")
    distances = _all_distances(metric_fn, gallery)
    with torch.no_grad():
        clean = distances(queries)
    top1 = torch.sort(clean, dim=1, stable=True).indices[:, 0]

    def objective(x: Tensor, rows: Tensor) -> Tensor:
        d = distances(x).float()
        best = top1[rows]
        d_best = d.gather(1, best[:, None])[:, 0]
        others = d.scatter(1, best[:, None], float("inf"))
        return d_best - others.min(dim=1).values

    retention: list[float] = []
    for eps in eps_list:
        if eps <= 0:
            retention.append(1.0)
            continue
        # objective > 0: another gallery item is strictly nearer, the top-1 answer changed; that query is finished.
        adv = perturb_to_maximize(objective, queries, eps, norm, method, steps, restarts, seed,
                                  stop_above=0.0).adversarial
        with torch.no_grad():
            new_top1 = torch.sort(distances(adv), dim=1, stable=True).indices[:, 0]
        retention.append(float((new_top1 == top1).double().mean()))
    certified = None
    if isinstance(metric_fn, LipSim):
        cert = EmbeddingIndex.from_tensor(metric_fn, gallery).certified_top1(queries)
        radius = cert.radius.double()
        if norm == "linf":
            radius = radius / math.sqrt(queries[0].numel())
        certified = [float((radius > eps).double().mean()) for eps in eps_list]
    return {"norm": norm, "eps": [float(e) for e in eps_list], "retention": retention, "certified": certified,
            "n_queries": int(queries.shape[0]), "gallery_size": int(gallery.shape[0]),
            "clean_top1": [int(i) for i in top1]}


def retrieval_from_triplets(dataset: Any, gallery_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """Gallery and queries for the retrieval experiment, from a stored triplet set.

    The gallery is the first ``gallery_size`` distinct reference photos; each gets one query, the ``x0`` of the first
    triplet built on it (a distorted copy), whose correct answer is that photo.

    Returns:
        ``(gallery, queries, answers)``: float images in [0, 1] and the gallery index each query should retrieve.

    Raises:
        ValueError: fewer than 2 photos available.
    """
    ref_row = torch.as_tensor(dataset.ref_row)
    photos = [int(r) for r in torch.unique(ref_row, sorted=True)[:gallery_size]]
    if len(photos) < 2:
        raise ValueError(f"the retrieval experiment needs at least 2 reference photos, got {len(photos)}")
    first = [int(torch.nonzero(ref_row == r)[0]) for r in photos]
    gallery = torch.stack([dataset[i]["ref"] for i in first])
    queries = torch.stack([dataset[i]["x0"] for i in first])
    return gallery, queries, torch.arange(len(photos))


def run_retrieval(dataset: Any, metrics: Mapping[str, DistanceFn], gallery_size: int, eps_list: Sequence[float],
                  config: AttackConfig, device: str | torch.device, out_dir: str | os.PathLike[str],
                  command: str = "") -> dict[str, Any]:
    """Top-1 retention under attack for every metric (:func:`retrieval_attack_experiment`), written to
    ``retrieval.json`` and ``retrieval.md`` in ``out_dir``."""
    gallery, queries, answers = retrieval_from_triplets(dataset, gallery_size)
    gallery, queries = gallery.to(device), queries.to(device)
    result: dict[str, Any] = {"gallery_size": int(gallery.shape[0]), "n_queries": int(queries.shape[0]),
                              "steps": config.steps, "restarts": config.restarts, "seed": config.seed,
                              "command": command, "date": time.strftime("%Y-%m-%d"), "metrics": {}}
    for name, fn in metrics.items():
        if isinstance(fn, nn.Module):
            fn = fn.to(device).eval()
        res = retrieval_attack_experiment(fn, gallery, queries, eps_list, "l2", config.steps, config.restarts,
                                          config.seed)
        accuracy = float((torch.tensor(res["clean_top1"]) == answers).double().mean())
        result["metrics"][name] = {"clean_top1_accuracy": accuracy, **res}
    lines = [f"Retrieval: gallery of {result['gallery_size']} photos, {result['n_queries']} distorted queries, "
             f"l2 attack on the query ({config.steps} steps); share of queries whose top-1 answer survives.", "",
             "| metric | clean top-1 correct | " + " | ".join(f"l2 {e:g}" for e in eps_list) + " |",
             "|---|---|" + "---|" * len(eps_list)]
    for name, entry in result["metrics"].items():
        lines.append(f"| {name} | {100 * entry['clean_top1_accuracy']:.1f} | "
                     + " | ".join(f"{100 * r:.1f}" for r in entry["retention"]) + " |")
        if entry["certified"] is not None:
            lines.append(f"| {name} (certified) | - | " + " | ".join(f"{100 * r:.1f}" for r in entry["certified"])
                         + " |")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "retrieval.json").write_text(json.dumps(result, indent=2))
    (out / "retrieval.md").write_text("\n".join(lines) + "\n")
    result["markdown"] = "\n".join(lines)
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


def soundness_check(metric_fn: Any, dataset: Any, n: int, steps: int, restarts: int, seed: int, batch_size: int,
                    device: str, checks: Sequence[str] | None = None, cache: str | os.PathLike[str] | None = None,
                    source: str = "", progress: bool = True) -> dict[str, Any]:
    """Run :func:`~lipsim_metric.evaluation.attacks.check_certificates` over the first ``n`` triplets, in batches.

    Args:
        metric_fn: the LipSim metric (or a wrapper with a ``.metric`` attribute).
        dataset: indexable triplets with ``ref``, ``x0``, ``x1`` items (labels are not used: a certificate is a claim
            about LipSim's own judgement, right or wrong).
        n: number of triplets (the first ``n``).
        steps, restarts, seed: attack configuration.
        batch_size: triplets per call.
        device: where to run.
        checks: subset of ``("2afc", "pair", "half")`` (default: all three).
        cache: JSON file holding the finished batches; a rerun with the same configuration skips them, so a long
            run can be stopped and resumed (a different configuration starts over).
        source: description of ``dataset`` stored with the results (also part of the resume key).
        progress: show a progress bar.

    Returns:
        The summed counts of :func:`check_certificates` (``max_*`` entries: the maximum), ``mean_margin_used`` (the
        average share of a certified 2AFC margin the attack removed), plus ``triplets``,
        ``steps``, ``restarts``, ``budget_factor``, ``checks``, ``source`` and ``seconds`` (attack time of this
        and resumed runs).
    """
    from tqdm import tqdm

    from .attacks import check_certificates

    metric = getattr(metric_fn, "metric", metric_fn)
    if not isinstance(metric, LipSim):
        raise ValueError("the soundness check needs the LipSim metric")
    checks = tuple(CERTIFICATE_CHECKS if checks is None else checks)
    n = min(n, len(dataset))
    key = {"n": n, "steps": steps, "restarts": restarts, "seed": seed, "batch_size": batch_size,
           "checks": list(checks), "source": source, "weights": _weights_digest(metric)}
    done: dict[str, Any] = {}
    if cache is not None:
        previous = _read_cache(Path(cache), key)
        done = dict(previous.get("batches", {})) if previous else {}
    starts = list(range(0, n, batch_size))
    bar = tqdm(total=n, desc="soundness", file=sys.stderr, disable=not progress,
               initial=sum(min(n, s + batch_size) - s for s in starts if str(s) in done))
    for start in starts:
        if str(start) in done:
            continue
        begin = time.perf_counter()
        items = [dataset[i] for i in range(start, min(n, start + batch_size))]
        ref, x0, x1 = (torch.stack([it[k] for it in items]).to(device) for k in ("ref", "x0", "x1"))
        part = check_certificates(metric, ref, x0, x1, steps=steps, restarts=restarts, seed=seed, checks=checks)
        part["seconds"] = time.perf_counter() - begin
        done[str(start)] = part
        if cache is not None:
            _write_cache(Path(cache), {"key": key, "batches": done})
        bar.update(len(items))
    bar.close()
    totals: dict[str, Any] = {}
    for part in done.values():
        for name, value in part.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                totals[name] = max(totals.get(name, 0), value) if name.startswith("max_") else \
                    totals.get(name, 0) + value
    if totals.get("certified"):
        totals["mean_margin_used"] = totals["sum_margin_used"] / totals["certified"]
    totals.update(triplets=n, steps=steps, restarts=restarts, budget_factor=0.999, checks=list(checks),
                  source=source)
    return totals


def _weights_digest(metric: LipSim) -> str:
    """A short digest of the metric's parameters (so a resume cache is never reused across weights)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(metric.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def generated_triplets(image_dir: str | os.PathLike[str], n: int, seed: int, size: int = 224) -> Any:
    """Unlabelled distortion triplets on the centre crops of the photos in ``image_dir`` (for soundness checks).

    The recipe is the validation set's (:func:`~lipsim_metric.train.triplets.make_distortion_triplets`, hard fraction
    0.3), drawn with ``seed``; no teacher is run, so any number of triplets costs only the rendering.
    """
    import numpy as np

    from ..train.photos import PhotoCropDataset
    from ..train.triplets import DistortionTripletDataset, make_distortion_triplets

    photos = PhotoCropDataset(image_dir, size=size, train=False)
    specs = make_distortion_triplets(len(photos), np.random.default_rng(seed), n)
    return DistortionTripletDataset(photos, specs)


if __name__ == "__main__":
    raise SystemExit(main())
