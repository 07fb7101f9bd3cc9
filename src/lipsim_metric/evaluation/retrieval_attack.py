"""Retrieval under attack: the share of queries whose top-1 answer survives an attack on the query, against the
certified top-1 radius of :mod:`lipsim_metric.retrieval` (kept out of the core so that it stays attack-free).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

from ..metric import LipSim
from ..retrieval import EmbeddingIndex, gallery_distances
from .attacks import (
    DistanceFn,
    feature_split,
    perturb_to_maximize,
)
from .robustness_experiments import AttackConfig

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
