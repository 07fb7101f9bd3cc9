"""SRCC, KRCC and PLCC against scipy (when installed), ties, the numpy logistic fit, the JND mAP, errors."""

from __future__ import annotations

import numpy as np
import pytest

from lipsim_metric.evaluation import correlation as C
from lipsim_metric.evaluation.human_2afc import jnd_average_precision, twoafc_score


@pytest.fixture()
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=1300)  # more than one chunk of krcc's pair matrix
    y = np.tanh(2 * x) + 0.3 * rng.normal(size=x.size)
    return np.round(x, 1), np.round(y, 1)  # rounded: plenty of ties


def test_rank_correlations_equal_scipy(data) -> None:
    stats = pytest.importorskip("scipy.stats")
    x, y = data
    assert np.allclose(C.rankdata(x), stats.rankdata(x))
    assert C.srcc(x, y) == pytest.approx(stats.spearmanr(x, y)[0], abs=1e-12)
    assert C.krcc(x, y) == pytest.approx(stats.kendalltau(x, y)[0], abs=1e-12)


def test_rank_correlations_basic_properties(data) -> None:
    x, y = data
    assert C.srcc(x, np.exp(x)) == pytest.approx(1.0)  # invariant to monotone maps
    assert C.krcc(x, -x) == pytest.approx(-1.0)
    assert C.srcc(x, y) == pytest.approx(-C.srcc(-x, y))
    assert np.isnan(C.srcc(x, np.ones_like(x)))
    assert C.krcc([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)  # 2 concordant, 1 discordant pair


def test_plcc_numpy_fit_matches_scipy_and_keeps_the_sign(data) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=500)
    y = 3 / (1 + np.exp(-2 * x)) + 0.1 * x + 0.2 * rng.normal(size=x.size)
    numpy_fit = C.plcc(x, y, use_scipy=False)
    assert numpy_fit.method == "logistic5-numpy"
    assert numpy_fit.plcc > C.pearson(x, y)  # the logistic captures the saturation a line misses
    assert C.plcc(-x, y, use_scipy=False).plcc == pytest.approx(-numpy_fit.plcc, abs=1e-9)
    assert C.plcc(1000 * x + 7, y, use_scipy=False).plcc == pytest.approx(numpy_fit.plcc, abs=1e-9)  # scale-free
    pytest.importorskip("scipy")
    scipy_fit = C.plcc(x, y, use_scipy=True)
    assert scipy_fit.method == "logistic5-scipy" and scipy_fit.plcc == pytest.approx(numpy_fit.plcc, abs=1e-6)


def test_errors() -> None:
    with pytest.raises(ValueError, match="same length"):
        C.srcc([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="at least 2"):
        C.krcc([1], [1])
    with pytest.raises(ValueError, match="finite"):
        C.plcc([1, 2, np.nan], [1, 2, 3])


def test_twoafc_score_and_jnd_map() -> None:
    score = twoafc_score(np.array([0.1, 0.3, 0.2]), np.array([0.2, 0.1, 0.2]), np.array([0.25, 0.25, 0.9]))
    assert np.allclose(score, [0.75, 0.25, 0.5])  # picks x0 / picks x1 / tie
    assert jnd_average_precision(np.array([0.0, 0.1, 0.5, 0.9]), np.array([1.0, 1.0, 0.0, 0.0])) == 1.0
    assert jnd_average_precision(np.array([0.9, 0.5, 0.1, 0.0]), np.array([1.0, 1.0, 0.0, 0.0])) < 0.6
