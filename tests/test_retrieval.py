"""Retrieval with LipSim embeddings: search against brute force, soundness of the certified top-1 radius, errors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lipsim_metric import LipSim
from lipsim_metric.evaluation.attacks import perturb_to_maximize, perturbation_norm
from lipsim_metric.images import load_image
from lipsim_metric.retrieval import EmbeddingIndex, certified_top1_embeddings, gallery_distances


@pytest.fixture(scope="module")
def metric(small_weights: str) -> LipSim:
    """The small random lipsim-fast of conftest, loaded like real weights."""
    return LipSim(weights=small_weights)


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    gallery = torch.rand(6, 3, 64, 64, generator=g)
    queries = (gallery[:4] + 0.1 * torch.randn(4, 3, 64, 64, generator=g)).clamp(0, 1)
    return gallery, queries


def test_search_equals_brute_force(metric: LipSim, data) -> None:
    gallery, queries = data
    index = EmbeddingIndex.from_tensor(metric, gallery, batch_size=4)
    found = index.search(queries, k=len(gallery))
    with torch.no_grad():
        brute = torch.stack([metric(q[None].expand_as(gallery), gallery) for q in queries])
    assert torch.equal(found.indices, torch.argsort(brute, dim=1, stable=True))
    assert torch.allclose(found.distances, torch.gather(brute, 1, found.indices), atol=1e-6)
    top2 = index.search(queries, k=2)
    assert torch.equal(top2.indices, found.indices[:, :2])


def test_certified_top1_agrees_with_search_and_resists_attack(metric: LipSim, data) -> None:
    gallery, queries = data
    index = EmbeddingIndex.from_tensor(metric, gallery)
    top1 = index.certified_top1(queries)
    assert torch.equal(top1.item, index.search(queries, k=1).indices[:, 0])
    assert torch.all(top1.radius > 0)

    def objective(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        d = gallery_distances(metric.embed(x), index.embeddings)
        best = top1.item[rows]
        others = d.scatter(1, best[:, None], float("inf"))
        return d.gather(1, best[:, None])[:, 0] - others.min(dim=1).values  # > 0: another item is nearer

    def attacked_top1(eps: torch.Tensor) -> torch.Tensor:
        adv = perturb_to_maximize(objective, queries, eps, "l2", "ensemble", steps=10, restarts=1).adversarial
        assert torch.all(perturbation_norm(adv, queries, "l2") <= eps * (1 + 1e-5) + 1e-5)
        return index.search(adv, k=1).indices[:, 0]

    assert torch.equal(attacked_top1(0.999 * top1.radius), top1.item)  # sound: never changes inside the radius
    assert not torch.equal(attacked_top1(3.0 * top1.radius), top1.item)  # and the attack can change it outside


def test_the_runner_up_alone_does_not_certify_the_top1() -> None:
    # Unit embeddings on a circle (angles in radians): query at 0, best item b at 0.2, runner-up c2 at 0.25, a farther
    # item c3 at -0.4. The bisector of b and c2 is at angle 0.225 from the query, that of b and c3 only 0.1 away.
    def unit(angle: float) -> torch.Tensor:
        return torch.tensor([math.cos(angle), math.sin(angle)], dtype=torch.float64)

    query, b, c2, c3 = unit(0.0), unit(0.2), unit(0.25), unit(-0.4)
    gallery = torch.stack([b, c2, c3])
    one = torch.ones(1, dtype=torch.float64)  # ||g(q)|| = c = 1: the radius is rho itself (embedding units)
    assert torch.equal(gallery_distances(query[None], gallery).argsort(dim=1)[0], torch.tensor([0, 1, 2]))
    sound = certified_top1_embeddings(query[None], gallery, one)
    runner_up_only = certified_top1_embeddings(query[None], gallery[:2], one)
    # rho_c = (margin - FLOAT_TOLERANCE) / ||e_b - e_c||: the tolerance costs 1e-5 / ||e_b - e_c2|| = 2e-4 here
    assert sound.radius.item() == pytest.approx(math.sin(0.1), abs=5e-4)
    assert runner_up_only.radius.item() == pytest.approx(math.sin(0.225), abs=5e-4)
    moved = unit(-0.11)  # just past the bisector of b and c3
    step = (moved - query).norm().item()
    assert sound.radius.item() < step < runner_up_only.radius.item()
    assert gallery_distances(moved[None], gallery).argmin().item() == 2  # the top-1 changed to c3


def test_single_item_gallery_is_certified_everywhere(metric: LipSim, data) -> None:
    gallery, queries = data
    top1 = EmbeddingIndex.from_tensor(metric, gallery[:1]).certified_top1(queries)
    assert torch.all(top1.item == 0) and torch.all(torch.isinf(top1.radius))


def test_duplicate_best_items_give_no_certificate(metric: LipSim, data) -> None:
    gallery, queries = data
    index = EmbeddingIndex.from_tensor(metric, torch.cat([gallery[:2], gallery[:1]]))
    top1 = index.certified_top1(queries[:1])
    assert top1.item.item() == 0 and top1.radius.item() == 0.0


def test_radius_is_in_query_units(metric: LipSim, data) -> None:
    gallery, queries = data
    index = EmbeddingIndex.from_tensor(metric, gallery)
    up = torch.nn.functional.interpolate(queries, size=(128, 128), mode="nearest")
    r64, r128 = index.certified_top1(queries).radius, index.certified_top1(up).radius
    assert torch.all(r128 > r64)  # the same perturbation spread over 4x the pixels has a larger l2 norm


def test_from_folder_matches_lipsim_on_the_files(metric: LipSim, tmp_path: Path) -> None:
    g = np.random.default_rng(0)
    (tmp_path / "sub").mkdir()
    for name, (h, w) in {"a.png": (64, 64), "sub/b.png": (70, 80), "c.png": (96, 64)}.items():
        Image.fromarray(g.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    index = EmbeddingIndex.from_folder(metric, tmp_path, batch_size=2)
    assert index.names == ["a.png", "c.png", "sub/b.png"] and len(index) == 3
    with torch.no_grad():
        expected = torch.cat([metric.embed(load_image(tmp_path / n)[None]) for n in index.names])
    assert torch.allclose(index.embeddings, expected, atol=1e-5)
    assert index.search(load_image(tmp_path / "sub/b.png")[None], k=1).indices.item() == 2


def test_errors(metric: LipSim, data, tmp_path: Path) -> None:
    gallery, queries = data
    with pytest.raises(ValueError, match="gallery is empty"):
        EmbeddingIndex.from_tensor(metric, gallery[:0])
    with pytest.raises(ValueError, match="gallery is empty"):
        EmbeddingIndex(metric, torch.zeros(0, 8))
    with pytest.raises(ValueError, match="no image files"):
        EmbeddingIndex.from_folder(metric, tmp_path)
    with pytest.raises(FileNotFoundError):
        EmbeddingIndex.from_folder(metric, tmp_path / "missing")
    with pytest.raises(TypeError, match="must be a lipsim_metric.LipSim"):
        EmbeddingIndex(torch.nn.Identity(), torch.zeros(2, 8))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="names"):
        EmbeddingIndex(metric, torch.zeros(2, 8), names=["only-one"])
    index = EmbeddingIndex.from_tensor(metric, gallery)
    for k in (0, len(gallery) + 1):
        with pytest.raises(ValueError, match="k must be between 1 and the gallery size 6"):
            index.search(queries, k=k)
    with pytest.raises(TypeError, match="k must be an int"):
        index.search(queries, k=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="outside input_range"):
        index.search(queries * 3, k=1)
    with pytest.raises(ValueError, match=r"shape \(N, C, H, W\)"):
        index.certified_top1(queries[0])


def test_index_ignores_autocast(metric: LipSim, data) -> None:
    # issue 14: the autocast state of the caller never leaks into what a certificate is computed from
    gallery, queries = data
    plain = EmbeddingIndex.from_tensor(metric, gallery)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = EmbeddingIndex.from_tensor(metric, gallery)
        top1 = under.certified_top1(queries)
    assert torch.equal(under.embeddings, plain.embeddings)
    assert torch.equal(top1.radius, plain.certified_top1(queries).radius)
