"""Tests for lipsim_metric.train.photos (photo folders, random crops).

Tiny fixtures are generated in tmp_path (layouts copy the originals); moved from tests/test_data.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from data_fixtures import make_photo_dir, noise_image, save_image
from lipsim_metric.train.photos import PhotoCropDataset, list_images


@pytest.fixture()
def photo_dir(tmp_path: Path) -> Path:
    return make_photo_dir(tmp_path)


def test_list_images_sorted_relative_and_filtered(photo_dir: Path) -> None:
    assert list_images(photo_dir) == ["a.PNG", "b.jpg", "e.jpeg", "sub/c.bmp", "sub/d.webp"]
    assert list_images(photo_dir, recursive=False) == ["a.PNG", "b.jpg", "e.jpeg"]
    assert list_images(photo_dir / "sub" / "..") == list_images(photo_dir)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_images(photo_dir / "nope")


def test_photo_crops_eval_is_centre_crop(tmp_path: Path) -> None:
    # 60 x 20 image: red | green (central 20 x 20) | blue; the eval crop must be all green.
    array = np.zeros((20, 60, 3), dtype=np.uint8)
    array[:, :20] = (255, 0, 0)
    array[:, 20:40] = (0, 255, 0)
    array[:, 40:] = (0, 0, 255)
    save_image(tmp_path / "wide.png", array)
    data = PhotoCropDataset(tmp_path, size=10, train=False)
    crop = data[0]
    assert crop.shape == (3, 10, 10) and crop.dtype == torch.float32
    assert torch.allclose(crop[1, :, 1:-1], torch.ones(10, 8), atol=0.02)
    assert crop[0].max() < 0.6 and crop[2].max() < 0.6
    assert torch.equal(data[0], crop), "eval mode is deterministic"


def test_photo_crops_train_are_seeded(photo_dir: Path) -> None:
    data = PhotoCropDataset(photo_dir, size=16, train=True, seed=3)
    first = torch.stack([data[i] for i in range(len(data))])
    assert first.shape == (5, 3, 16, 16) and 0 <= first.min() and first.max() <= 1
    assert torch.equal(first, torch.stack([data[i] for i in range(len(data))]))
    other = PhotoCropDataset(photo_dir, size=16, train=True, seed=4)
    assert not torch.equal(first, torch.stack([other[i] for i in range(len(other))]))
    data.set_epoch(1)
    assert not torch.equal(first, torch.stack([data[i] for i in range(len(data))]))


def test_photo_crops_file_list_and_errors(tmp_path: Path, photo_dir: Path) -> None:
    files = [photo_dir / "b.jpg", photo_dir / "sub" / "c.bmp"]
    data = PhotoCropDataset(files, size=8, train=False)
    assert data.names == ["b.jpg", "sub/c.bmp"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        PhotoCropDataset(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="neither an image folder"):
        PhotoCropDataset(tmp_path / "missing")
    with pytest.raises(ValueError, match="size must be a positive int"):
        PhotoCropDataset(photo_dir, size=0)


def test_unreadable_files_raise_or_are_skipped_with_a_warning(tmp_path: Path) -> None:
    noise_image(tmp_path / "good.png", 0)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    strict = PhotoCropDataset(tmp_path, size=8, train=False)
    with pytest.raises(ValueError, match=r"broken\.jpg.*skip_unreadable=True"):
        strict[0]
    lenient = PhotoCropDataset(tmp_path, size=8, train=False, skip_unreadable=True)
    with pytest.warns(RuntimeWarning, match="broken.jpg"):
        item = lenient[0]
    assert torch.equal(item, strict[1]), "the unreadable file is replaced by the next readable one"
