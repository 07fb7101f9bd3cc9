"""Soundness regression matrix (issue 14): shipped weights x input conditions x real photos, every certificate attacked.

Each cell builds LipSim with one of the project's shipped weight files (those registered with a sha256), puts it in
one condition, and attacks every certified decision on real photos (``../shared/images/val``) with l2 PGD inside
``0.999 x`` its certified radius:

* **2AFC** (:meth:`LipSim.certify_2afc`): the reference of ``(photo, mild noise, strong noise)`` is perturbed;
* **pair** (``return_radius=True``, threshold ``d / 2``): each side alone, with its own radius (``radius_x0`` /
  ``radius_x1``), tries to pull the distance to ``d / 2`` (a reachable threshold, unlike 0);
* **retrieval** (:meth:`EmbeddingIndex.certified_top1`): the query (the photo) tries to change its nearest item in a
  gallery of every photo's noisy copies.

Conditions: ``224`` (no resize), ``500x333`` (a landscape photo; its pair partner stays 224x224, so the two sides have
different radii), ``grayscale`` (1-channel input, radii in gray units), ``[-1,1]`` (LPIPS input range), ``normalize``
(the paper's projection), ``bf16-first-call`` (the call that fills the weight cache runs under bf16 autocast),
``train-eval`` (``.train()`` / ``.eval()`` toggles of the metric and its backbone), ``optimiser-step`` (one SGD step on
a deep copy, whose certificates are then checked). The last three also require the certificates to be *equal* to those
of a fresh metric with the same weights: certificates must not depend on the call history.

One attack implementation: :func:`lipsim_metric.evaluation.attacks.perturb_to_maximize` (PGD; the slow matrix adds
APGD).
Every flip count must be 0. The default suite runs a fast subset (one weight file, one photo, few steps); the full
matrix is ``pytest -m slow tests/test_soundness_matrix.py``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from conftest import SHARED
from lipsim_metric import DEFAULT_WEIGHTS, LipSim, get_pretrained_cfg, list_pretrained
from lipsim_metric.certificates import cosine_distance
from lipsim_metric.evaluation.attacks import perturb_to_maximize, perturbation_norm, signed_margin
from lipsim_metric.images import load_image
from lipsim_metric.retrieval import EmbeddingIndex, gallery_distances
from soundness_fixtures import val_photos

SHIPPED = [n for n in list_pretrained() if get_pretrained_cfg(n).sha256 is not None]
CONDITIONS = ("224", "500x333", "grayscale", "[-1,1]", "normalize", "bf16-first-call", "train-eval", "optimiser-step")
HISTORY = ("bf16-first-call", "train-eval", "optimiser-step")
BUDGET = 0.999


@pytest.fixture(scope="module")
def photos() -> list[Path]:
    found = val_photos(SHARED, 4)
    if len(found) < 2:
        pytest.skip(f"no real photos at {SHARED / 'images' / 'val'} (set LIPSIM_SHARED_DIR)")
    return found


@dataclass
class Cell:
    """One matrix cell: a metric in a condition and the images, in [0, 1] "attack space"."""

    metric: LipSim
    to_input: Callable[[Tensor], Tensor]  # [0, 1] image -> the metric's input range
    unit: float  # caller units per [0, 1] unit (2 for [-1,1] input)
    ref: Tensor
    x0: Tensor
    x1: Tensor
    partner: Tensor  # the fixed side of the pair check (224x224 in the 500x333 condition)
    gallery: Tensor


def _images(photos: list[Path], size: tuple[int, int], gray: bool, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    base = torch.stack([F.interpolate(load_image(p)[None], size=size, mode="bilinear", antialias=True,
                                      align_corners=False)[0] for p in photos]).clamp(0, 1)
    if gray:
        base = base.mean(dim=1, keepdim=True)
    g = torch.Generator().manual_seed(seed)
    x0 = (base + 0.03 * torch.randn(base.shape, generator=g)).clamp(0, 1)
    x1 = (base + 0.08 * torch.randn(base.shape, generator=g)).clamp(0, 1)
    return base, x0, x1


def make_cell(weights: str, condition: str, photos: list[Path], n_ref: int, shared: LipSim | None = None) -> Cell:
    """The cell's metric and images: triplets of the first ``n_ref`` photos, a gallery of every photo's copies.

    ``shared`` (fast subset only): a metric with these weights whose backbone (and filled cache) the conditions that do
    not test the call history reuse, to save loading the weights and filling the cache once per cell.
    """
    kwargs = {"input_range": "[-1,1]"} if condition == "[-1,1]" else {}
    if condition == "normalize":
        kwargs["projection"] = "normalize"
    if shared is not None and condition not in HISTORY:
        metric = shared
        if kwargs:
            metric = LipSim(pretrained=False, **kwargs)
            metric.backbone = shared.backbone
    else:
        metric = LipSim(weights=weights, **kwargs)
    size = (333, 500) if condition == "500x333" else (224, 224)
    ref, x0, x1 = _images(photos, size, gray=condition == "grayscale")
    gallery = torch.cat([x0, x1])
    ref, x0, x1 = ref[:n_ref], x0[:n_ref], x1[:n_ref]
    partner = F.interpolate(x1, size=(224, 224), mode="bilinear", antialias=True).clamp(0, 1) if size != (224, 224) \
        else x1
    to_input = (lambda x: 2 * x - 1) if condition == "[-1,1]" else (lambda x: x)
    if condition == "bf16-first-call":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            metric(to_input(ref), to_input(x0))
    elif condition == "train-eval":
        metric(ref, x0)
        metric.train()
        metric.backbone.train()
        metric(ref, x0)  # a train-mode call (no cache)
        metric.eval()
        metric.backbone.eval()
        metric.train()
    elif condition == "optimiser-step":
        metric(ref, x0)  # fill the cache of the original before copying
        tuned = copy.deepcopy(metric)
        tuned.backbone.train().requires_grad_(True)
        opt = torch.optim.SGD(tuned.backbone.parameters(), lr=0.05)
        cast(Tensor, tuned.embed(ref)).sum().backward()  # any non-constant loss: one forward, one backward
        opt.step()
        tuned.backbone.eval().requires_grad_(False)
        metric = tuned
    return Cell(metric, to_input, 2.0 if condition == "[-1,1]" else 1.0, ref, x0, x1, partner, gallery)


def _attack(objective, x: Tensor, eps01: Tensor, steps: int, method: str, restarts: int) -> Tensor:
    adv = perturb_to_maximize(objective, x, eps01, "l2", method, steps=steps, restarts=restarts).adversarial
    assert torch.all(perturbation_norm(adv, x, "l2") <= eps01 * (1 + 1e-5) + 1e-5), "an attack left its budget"
    return adv


def _embed(cell: Cell, x: Tensor) -> Tensor:
    return cell.metric.embed(cell.to_input(x))  # type: ignore[return-value]


def check_2afc(cell: Cell, steps: int, method: str, restarts: int) -> tuple[int, int, float]:
    """Returns (certified, flips, largest share of a margin the attack removed)."""
    m, t = cell.metric, cell.to_input
    cert = m.certify_2afc(t(cell.ref), t(cell.x0), t(cell.x1))
    idx = torch.nonzero(cert.radius > 0).flatten()
    if idx.numel() == 0:
        return 0, 0, 0.0
    with torch.no_grad():
        e0, e1 = _embed(cell, cell.x0[idx]), _embed(cell, cell.x1[idx])
    target = cert.prediction[idx]

    def objective(x: Tensor, rows: Tensor) -> Tensor:
        e = _embed(cell, x)
        return -signed_margin(cosine_distance(e, e0[rows]), cosine_distance(e, e1[rows]), target[rows])

    adv = _attack(objective, cell.ref[idx], BUDGET * cert.radius[idx] / cell.unit, steps, method, restarts)
    after = m.certify_2afc(t(adv), t(cell.x0[idx]), t(cell.x1[idx]))
    used = 1 - signed_margin(after.d0, after.d1, target) / cert.margin[idx]
    return int(idx.numel()), int((after.prediction != target).sum()), float(used.max())


def check_pair(cell: Cell, steps: int, method: str, restarts: int, sides: tuple[int, ...] = (0, 1)
               ) -> tuple[int, int, float]:
    """Each side of (ref, partner) alone pulls the distance towards d/2 inside its own radius."""
    m, t = cell.metric, cell.to_input
    a, b = cell.ref, cell.partner
    with torch.no_grad():
        d = m(t(a), t(b))
        sides = [m(t(a[i : i + 1]), t(b[i : i + 1]), return_radius=True, threshold=float(d[i] / 2))
                 for i in range(len(d))]
    certified = flips = 0
    used = 0.0
    for side in sides:
        radius = torch.cat([s.radius_x0 if side == 0 else s.radius_x1 for s in sides])
        moving, fixed = (a, b) if side == 0 else (b, a)
        idx = torch.nonzero(radius > 0).flatten()
        if idx.numel() == 0:
            continue
        with torch.no_grad():
            e_fixed = _embed(cell, fixed[idx])

        def objective(x: Tensor, rows: Tensor, e_fixed: Tensor = e_fixed) -> Tensor:
            return -cosine_distance(_embed(cell, x), e_fixed[rows])

        adv = _attack(objective, moving[idx], BUDGET * radius[idx] / cell.unit, steps, method, restarts)
        with torch.no_grad():
            d_adv = m(t(adv), t(fixed[idx]))
        certified += int(idx.numel())
        flips += int((d_adv <= d[idx] / 2).sum())
        used = max(used, float(((d[idx] - d_adv) / (d[idx] / 2)).max()))
    return certified, flips, used


def check_retrieval(cell: Cell, steps: int, method: str, restarts: int) -> tuple[int, int, float]:
    t = cell.to_input
    index = EmbeddingIndex.from_tensor(cell.metric, t(cell.gallery))
    top1 = index.certified_top1(t(cell.ref))
    idx = torch.nonzero((top1.radius > 0) & torch.isfinite(top1.radius)).flatten()
    if idx.numel() == 0:
        return 0, 0, 0.0
    best = top1.item[idx]
    with torch.no_grad():
        clean = gallery_distances(_embed(cell, cell.ref[idx]), index.embeddings)
    clean_gap = clean.scatter(1, best[:, None], float("inf")).min(dim=1).values - clean.gather(1, best[:, None])[:, 0]

    def objective(x: Tensor, rows: Tensor) -> Tensor:
        dist = gallery_distances(_embed(cell, x), index.embeddings)
        others = dist.scatter(1, best[rows, None], float("inf"))
        return dist.gather(1, best[rows, None])[:, 0] - others.min(dim=1).values  # > 0: another item is nearer

    adv = _attack(objective, cell.ref[idx], BUDGET * top1.radius[idx] / cell.unit, steps, method, restarts)
    with torch.no_grad():
        after = gallery_distances(_embed(cell, adv), index.embeddings)
    gap = after.scatter(1, best[:, None], float("inf")).min(dim=1).values - after.gather(1, best[:, None])[:, 0]
    changed = index.search(t(adv), k=1).indices[:, 0] != best
    return int(idx.numel()), int(changed.sum()), float((1 - gap / clean_gap).max())


def reference_certificates(cell: Cell, weights: str) -> None:
    """History conditions: the certificates equal those of a fresh metric (same weights, first call = certify)."""
    fresh = LipSim(weights=weights)
    fresh.backbone.load_state_dict(cell.metric.backbone.state_dict())  # the tuned weights, for optimiser-step
    t = cell.to_input
    a, b = cell.metric.certify_2afc(t(cell.ref), t(cell.x0), t(cell.x1)), fresh.certify_2afc(cell.ref, cell.x0, cell.x1)
    assert torch.equal(a.radius, b.radius) and torch.equal(a.prediction, b.prediction)
    pa, pb = cell.metric(cell.ref, cell.partner, return_radius=True), fresh(cell.ref, cell.partner, return_radius=True)
    assert torch.equal(pa.radius_x0, pb.radius_x0) and torch.equal(pa.radius_x1, pb.radius_x1)


def run_cell(weights: str, condition: str, photos: list[Path], n_ref: int, steps: int, method: str,
             restarts: int, shared: LipSim | None = None) -> dict:
    cell = make_cell(weights, condition, photos, n_ref, shared)
    if condition in HISTORY:
        reference_certificates(cell, weights)
    results = {"2afc": check_2afc(cell, steps, method, restarts)}
    # The fast subset trims what is implied: a history cell whose certificates equal a fresh metric's (checked above)
    # is attacked on its 2AFC certificate only, and both sides of a pair only where they differ (different sizes).
    if shared is None or condition not in HISTORY:
        sides = (0, 1) if shared is None or condition == "500x333" else (0,)
        results["pair"] = check_pair(cell, steps, method, restarts, sides)
        results["retrieval"] = check_retrieval(cell, steps, method, restarts)
    for name, (certified, flips, used) in results.items():
        assert flips == 0, f"{weights} / {condition} / {name}: {flips} of {certified} certified decisions flipped"
        assert used < 1.0, f"{weights} / {condition} / {name}: the attack reached the decision boundary"
    return results


@pytest.fixture(scope="module")
def default_metric() -> LipSim:
    return LipSim(weights=DEFAULT_WEIGHTS)


@pytest.mark.parametrize("condition", CONDITIONS)
def test_soundness_matrix_fast(condition: str, photos: list[Path], default_metric: LipSim) -> None:
    # default weights, one photo (plus one more in the retrieval gallery), 3 PGD steps: a smoke test of every cell
    results = run_cell(DEFAULT_WEIGHTS, condition, photos[:2], n_ref=1, steps=3, method="pgd", restarts=1,
                       shared=default_metric)
    assert sum(c for c, _, _ in results.values()) > 0, "nothing was certified, so nothing was checked"
    assert max(u for _, _, u in results.values()) > 0, "the attack did not move any decision: a dud"


@pytest.mark.slow
@pytest.mark.parametrize("condition", CONDITIONS)
@pytest.mark.parametrize("weights", SHIPPED)
def test_soundness_matrix(weights: str, condition: str, photos: list[Path]) -> None:
    results = run_cell(weights, condition, photos[:3], n_ref=3, steps=10, method="ensemble", restarts=1)
    for name, (certified, _, used) in results.items():
        assert certified > 0, f"{weights} / {condition} / {name}: nothing certified"
        assert used > 0, f"{weights} / {condition} / {name}: the attack did not move the decision"
