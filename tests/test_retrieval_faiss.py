"""Certified retrieval from the top-k: never larger than the exhaustive radius, tight in the worst case, sound under
attack; the FAISS backend returns the exact backend's answers."""

from __future__ import annotations

import math

import pytest
import torch

from lipsim_metric import LipSim
from lipsim_metric.evaluation.attacks import perturb_to_maximize, perturbation_norm
from lipsim_metric.retrieval import EmbeddingIndex, certified_top1_embeddings, gallery_distances
from lipsim_metric.retrieval_faiss import certified_top1_from_candidates, unreturned_margin_bound


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def _exact_topk(e_query: torch.Tensor, gallery: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    order = torch.sort(gallery_distances(e_query, gallery), dim=1, stable=True).indices[:, :k]
    return order, gallery[order]


@pytest.mark.parametrize("spread", [0.05, 0.3, 2.0])  # clustered to spread-out galleries
def test_topk_certificate_never_exceeds_the_exhaustive_one(spread: float) -> None:
    g = torch.Generator().manual_seed(int(spread * 100))
    dim, n = 6, 300
    centre = torch.randn(dim, generator=g)
    gallery = _unit(centre + spread * torch.randn(n, dim, generator=g))
    queries = _unit(centre + spread * torch.randn(40, dim, generator=g))
    norms = 1.0 + 3.0 * torch.rand(40, generator=g)  # ||g(q)|| >= c = 1
    exhaustive = certified_top1_embeddings(queries, gallery, norms)
    assert (exhaustive.radius > 0).any()
    previous = torch.zeros(40)
    for k in (1, 2, 5, 20, 100, n):
        ids, vectors = _exact_topk(queries, gallery, k)
        top = certified_top1_from_candidates(queries, norms, ids, vectors, n)
        assert torch.equal(top.item, exhaustive.item)
        assert torch.all(top.radius <= exhaustive.radius)
        if k == 1:
            assert torch.all(top.radius == 0)  # nothing is known about the runner-up
        if k == n:
            assert torch.equal(top.radius, exhaustive.radius)
        assert torch.all(top.radius >= previous - 1e-7)  # more candidates, a larger (never smaller) radius
        previous = top.radius
    assert (previous > 0).any()


def test_bound_is_tight_in_the_worst_case_and_beats_the_naive_one() -> None:
    # query at angle 0, b at theta_b, an unreturned c at -theta_c (opposite side, same plane): rho_c = sin((tc-tb)/2)
    for theta_b, theta_c in ((0.1, 0.3), (0.4, 0.5), (1.0, 2.0)):
        d_b, d_c = 1 - math.cos(theta_b), 1 - math.cos(theta_c)
        bound = unreturned_margin_bound(torch.tensor([d_b]), torch.tensor([d_c]), tau=0.0).item()
        e_b = torch.tensor([math.cos(theta_b), math.sin(theta_b)], dtype=torch.float64)
        e_c = torch.tensor([math.cos(theta_c), -math.sin(theta_c)], dtype=torch.float64)
        rho = (d_c - d_b) / (e_b - e_c).norm().item()
        assert bound <= rho + 1e-12 and bound == pytest.approx(rho, rel=1e-5)
        assert bound >= (d_c - d_b) / 2 - 1e-12  # at least the naive bound (||e_b - e_c|| <= 2)
    assert unreturned_margin_bound(torch.tensor([0.01]), torch.tensor([0.01 + 5e-6])).item() == 0.0  # within tau


def test_bound_holds_for_random_unreturned_items() -> None:
    g = torch.Generator().manual_seed(3)
    for _ in range(20):
        e = _unit(torch.randn(1, 3, generator=g, dtype=torch.float64))
        items = _unit(torch.randn(2000, 3, generator=g, dtype=torch.float64))
        d = gallery_distances(e, items)[0]
        order = torch.argsort(d)
        b, k = order[0], order[4]
        bound = unreturned_margin_bound(d[b][None], d[k][None]).item()
        rest = order[5:]
        rho = (d[rest] - d[b] - 1e-5) / (items[rest] - items[b]).norm(dim=1)
        assert bound <= rho.min().item()


@pytest.fixture(scope="module")
def metric(small_weights: str) -> LipSim:
    return LipSim(weights=small_weights)


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    gallery = torch.rand(8, 3, 64, 64, generator=g)
    queries = (gallery[:4] + 0.1 * torch.randn(4, 3, 64, 64, generator=g)).clamp(0, 1)
    return gallery, queries


def test_faiss_index_answers_like_the_exact_index_and_resists_attack(metric: LipSim, data) -> None:
    pytest.importorskip("faiss")
    from lipsim_metric.retrieval_faiss import FaissIndex

    gallery, queries = data
    exact = EmbeddingIndex.from_tensor(metric, gallery)
    index = FaissIndex.from_embedding_index(exact)
    assert len(index) == 8 and index.names == exact.names
    found, expected = index.search(queries, k=5), exact.search(queries, k=5)
    assert torch.equal(found.indices, expected.indices)
    assert torch.allclose(found.distances, expected.distances, atol=1e-6)
    full = exact.certified_top1(queries)
    top = index.certified_top1(queries, k=3)
    assert torch.equal(top.item, full.item)
    assert torch.all(top.radius <= full.radius) and torch.all(top.radius > 0)
    assert torch.equal(index.certified_top1(queries, k=8).radius, full.radius)

    def objective(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        d = gallery_distances(metric.embed(x), exact.embeddings)
        best = top.item[rows]
        others = d.scatter(1, best[:, None], float("inf"))
        return d.gather(1, best[:, None])[:, 0] - others.min(dim=1).values  # > 0: another item is nearer

    adv = perturb_to_maximize(objective, queries, 0.999 * top.radius, "l2", "ensemble", steps=10,
                              restarts=1).adversarial
    assert torch.all(perturbation_norm(adv, queries, "l2") <= 0.999 * top.radius * (1 + 1e-5) + 1e-5)
    assert torch.equal(exact.search(adv, k=1).indices[:, 0], top.item)  # never changes inside the radius


def test_faiss_index_errors(metric: LipSim) -> None:
    pytest.importorskip("faiss")
    from lipsim_metric.retrieval_faiss import FaissIndex

    with pytest.raises(TypeError, match="must be a lipsim_metric.LipSim"):
        FaissIndex(torch.nn.Identity())  # type: ignore[arg-type]
    index = FaissIndex(metric, _unit(torch.randn(4, 8)))
    with pytest.raises(ValueError, match="unit-norm"):
        index.add(torch.randn(2, 8) * 3)
    with pytest.raises(ValueError, match="dimension"):
        index.add(_unit(torch.randn(2, 5)))
    with pytest.raises(ValueError, match="between 1 and the gallery size 4"):
        index.search_embeddings(_unit(torch.randn(1, 8)), k=5)
    index.add(_unit(torch.randn(3, 8)), names=["a", "b", "c"])
    assert len(index) == 7 and index.names[-1] == "c"
