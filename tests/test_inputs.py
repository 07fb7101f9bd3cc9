"""API input handling without traps (issue 16 item 7) and the resize norm without a dense identity (item 4)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lipsim_metric import LipSim, preprocess
from lipsim_metric.preprocess import check_threshold, resize_matrix, resize_operator_norm


@pytest.fixture(scope="module")
def metric() -> LipSim:
    return LipSim(pretrained=False)


def test_meta_tensors_get_a_value_error(metric: LipSim) -> None:
    x = torch.empty(2, 3, 32, 32, device="meta")
    with pytest.raises(ValueError, match="'meta' device.*no values"):
        metric(x, x)
    with pytest.raises(ValueError, match="'meta' device"):
        metric.embed(x)


@pytest.mark.parametrize("threshold", [-0.1, 2.5, math.nan, math.inf])
def test_threshold_outside_the_distance_range_is_refused(metric: LipSim, threshold: float) -> None:
    x = torch.rand(1, 3, 32, 32)
    with pytest.raises(ValueError, match=r"threshold must be a finite distance in \[0, 2\]"):
        metric(x, x, return_radius=True, threshold=threshold)


def test_threshold_accepts_numbers_and_one_element_tensors(metric: LipSim) -> None:
    assert check_threshold(0) == 0.0 and check_threshold(torch.tensor(0.5)) == 0.5 and check_threshold(2) == 2.0
    with pytest.raises(TypeError, match="threshold must be a number"):
        check_threshold("0.1")
    x = torch.rand(1, 3, 32, 32)
    assert torch.isfinite(metric(x, x.flip(-1), return_radius=True, threshold=0.01).radius).all()


def test_channels_last_batch_gets_the_permute_hint(metric: LipSim) -> None:
    x = torch.rand(2, 64, 64, 3)
    with pytest.raises(ValueError, match=r"channels-last.*x0\.permute\(0, 3, 1, 2\)"):
        metric(x, x)
    with pytest.raises(ValueError, match=r"permute\(0, 3, 1, 2\) and drop the alpha channel"):
        metric(torch.rand(2, 64, 64, 4), torch.rand(2, 64, 64, 4))
    with pytest.raises(ValueError, match="Drop an alpha channel"):  # a real 4-channel (N, C, H, W) batch
        metric(torch.rand(2, 4, 64, 64), torch.rand(2, 4, 64, 64))


@pytest.mark.parametrize("bad, word", [(math.nan, "NaN"), (math.inf, "infinite")])
def test_nan_and_inf_messages_give_a_fix(metric: LipSim, bad: float, word: str) -> None:
    x = torch.rand(1, 3, 32, 32)
    y = x.clone()
    y[0, 0, 0, 0] = bad
    with pytest.raises(ValueError, match=rf"x1 contains {word} values.*torch\.nan_to_num\(x1"):
        metric(x, y)


def test_resize_matrix_is_the_interpolate_operator() -> None:
    for n_in, n_out in [(37, 224), (500, 224), (1000, 64), (9, 224)]:
        eye = torch.eye(n_in, dtype=torch.float64).reshape(n_in, 1, 1, n_in)
        dense = F.interpolate(eye, size=(1, n_out), mode="bilinear", antialias=True, align_corners=False)
        assert torch.equal(resize_matrix(n_in, n_out), dense.reshape(n_in, n_out).T)


def test_resize_norm_needs_no_dense_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 20000-pixel side: the old torch.eye(20000) float64 was 3.2 GB. Now blocks of basis vectors (8 MiB)."""
    def no_eye(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("a dense identity was built")

    monkeypatch.setattr(torch, "eye", no_eye)
    monkeypatch.setattr(preprocess, "_BASIS_BLOCK_ELEMENTS", 1 << 16)  # many blocks, to exercise the seams
    preprocess._resize_matrix_norm.cache_clear()
    try:
        n = preprocess._resize_matrix_norm(3001, 224)
    finally:
        preprocess._resize_matrix_norm.cache_clear()
    monkeypatch.undo()
    eye = torch.eye(3001, dtype=torch.float64).reshape(3001, 1, 1, 3001)
    dense = F.interpolate(eye, size=(1, 224), mode="bilinear", antialias=True, align_corners=False)
    assert n == pytest.approx(float(torch.linalg.matrix_norm(dense.reshape(3001, 224), ord=2)), rel=1e-12)


def test_resize_norm_is_an_upper_bound_of_the_2d_operator() -> None:
    """Power iteration on the real 2-D resize never exceeds the separable bound (which keeps NORM_SAFETY)."""
    h, w, size = 61, 173, 48
    bound = resize_operator_norm(h, w, size)
    x = torch.randn(1, 1, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    resize = lambda v: F.interpolate(v, size=(size, size), mode="bilinear", antialias=True, align_corners=False)  # noqa: E731
    for _ in range(100):
        x = x.requires_grad_(True)
        y = resize(x)
        (grad,) = torch.autograd.grad(y, x, y)  # R^T R x
        x = (grad / grad.norm()).detach()
    estimate = float(resize(x).norm())
    assert estimate <= bound and bound <= estimate * 1.01  # sound, and not loose
    assert bound == pytest.approx(preprocess._resize_matrix_norm(h, size) * preprocess._resize_matrix_norm(w, size)
                                  * preprocess.NORM_SAFETY)
