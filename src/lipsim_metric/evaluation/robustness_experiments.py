"""The experiments of the robustness report: attack configuration, triplet selection, resumable cache, and the
natural / empirical-robust / certified 2AFC and distance-attack evaluations (used by :mod:`.robustness`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor

from ..metric import LipSim
from .attacks import (
    DistanceFn,
    attack_2afc,
    attack_distance,
)


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
