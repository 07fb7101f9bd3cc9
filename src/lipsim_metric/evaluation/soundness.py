"""Soundness checks of the certificates at scale: no attack may succeed inside a certified radius.

:func:`soundness_check` runs :func:`lipsim_metric.evaluation.attacks.check_certificates` in resumable batches;
:func:`generated_triplets` makes triplets from photos when no stored set is at hand (``docs/robustness.md``).
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import torch

from ..metric import LipSim
from .attacks import (
    CERTIFICATE_CHECKS,
)
from .robustness_experiments import _read_cache, _write_cache


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
    return DistortionTripletDataset(cast(Sequence[torch.Tensor], photos), specs)  # indexable (3, S, S) images
