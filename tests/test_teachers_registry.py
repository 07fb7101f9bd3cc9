"""Tests for lipsim_metric.train.teachers.registry: user-registered teachers and the package's re-exports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from lipsim_metric.train import teachers as T
from lipsim_metric.train.teachers import registry


class _L1(nn.Module):
    """A toy distance teacher remembering the folder it was built with."""

    def __init__(self, folder: Path | None) -> None:
        super().__init__()
        self.folder = folder

    def forward(self, x0: Tensor, x1: Tensor) -> Tensor:
        return (x0 - x1).abs().mean(dim=(1, 2, 3))


class _MeanColour(nn.Module):
    embed_dim = 3

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=(2, 3))


@pytest.fixture
def user_teachers() -> Iterator[None]:
    """Drop every user registration after the test, so tests stay independent."""
    before = {kind: dict(reg) for kind, reg in registry._KINDS.items()}
    yield
    for kind, reg in registry._KINDS.items():
        reg.clear()
        reg.update(before[kind])


def test_user_distance_teacher_is_buildable_by_name(user_teachers: None, tmp_path: Path) -> None:
    T.register_teacher("l1", "distance", _L1)
    assert "l1" in T.list_teachers("distance") and "l1" in T.list_teachers()
    assert "l1" not in T.list_teachers("embedding")
    teacher = T.build_distance_teacher("l1", teachers_dir=tmp_path)
    assert isinstance(teacher, _L1) and teacher.folder == tmp_path  # the builder gets the validated folder
    d = teacher(torch.zeros(2, 3, 32, 32), torch.full((2, 3, 32, 32), 0.5))
    torch.testing.assert_close(d, torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match="valid names"):
        T.build_embedding_teacher("l1")  # registered as a distance teacher only


def test_user_embedding_teacher_and_unregister(user_teachers: None) -> None:
    T.register_teacher("mean-colour", "embedding", lambda folder: _MeanColour())
    assert T.build_embedding_teacher("mean-colour")(torch.ones(1, 3, 4, 4)).shape == (1, 3)
    T.unregister_teacher("mean-colour")
    assert "mean-colour" not in T.list_teachers()
    with pytest.raises(ValueError, match="No user-registered teacher"):
        T.unregister_teacher("mean-colour")


def test_register_errors(user_teachers: None) -> None:
    with pytest.raises(ValueError, match="built-in"):
        T.register_teacher("lpips-alex", "distance", _L1)
    with pytest.raises(ValueError, match="built-in"):
        T.unregister_teacher("dists")
    with pytest.raises(ValueError, match="kind must be one of"):
        T.register_teacher("x", "both", _L1)
    with pytest.raises(TypeError, match="callable"):
        T.register_teacher("x", "distance", "not a builder")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must be a str"):
        T.register_teacher(3, "distance", _L1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-empty"):
        T.register_teacher("", "distance", _L1)
    T.register_teacher("x", "distance", _L1)
    with pytest.raises(ValueError, match="overwrite=True"):
        T.register_teacher("x", "distance", _L1)
    with pytest.raises(ValueError, match="unique across kinds"):
        T.register_teacher("x", "embedding", lambda folder: _MeanColour(), overwrite=True)
    T.register_teacher("x", "distance", lambda folder: _L1(None), overwrite=True)
    assert T.build_distance_teacher("x").folder is None


def test_package_reexports_every_public_name_of_the_old_module() -> None:
    old_all = ["TEACHERS_DIR_ENV", "WEIGHT_FILES", "default_teachers_dir", "load_vgg16_features",
               "load_alexnet_features", "LPIPS", "DISTS", "L2Pooling", "AlexNetStats", "VGGStats",
               "DreamSimTeacher", "build_distance_teacher", "build_embedding_teacher", "list_teachers"]
    for name in old_all:
        assert name in T.__all__ and getattr(T, name) is not None
    assert T.DISTS.CHANNELS == (3, 64, 128, 256, 512, 512)
