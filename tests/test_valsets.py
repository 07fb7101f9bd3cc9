"""Tests for lipsim_metric.train.valsets (stored validation triplet sets).

Tiny fixtures are generated in tmp_path (layouts copy the originals); moved from tests/test_data.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from data_fixtures import TEACHERS, make_photo_dir, mse, noise_image
from lipsim_metric.train.photos import PhotoCropDataset, list_images
from lipsim_metric.train.valsets import build_val_triplets, load_triplet_set


@pytest.fixture()
def photo_dir(tmp_path: Path) -> Path:
    return make_photo_dir(tmp_path)


def test_build_and_load_val_triplets(tmp_path: Path) -> None:
    image_dir = tmp_path / "val"
    for i in range(5):
        noise_image(image_dir / f"img_{i}.jpg", i)
    first = build_val_triplets(image_dir, tmp_path / "set_a", TEACHERS, n=10, seed=3, size=24, version="t1")
    second = build_val_triplets(image_dir, tmp_path / "set_b", TEACHERS, n=10, seed=3, size=24, version="t1")
    manifest = json.loads(first.read_text())
    assert manifest == json.loads(second.read_text()), "the build is deterministic"
    assert manifest["version"] == "t1" and manifest["files"] == list_images(image_dir)
    assert manifest["summary"]["hard"] == 3 and len(manifest["triplets"]) == 10

    data = load_triplet_set(tmp_path / "set_a")
    assert len(data) == 10 and data.teachers == ["mse", "mae"]
    photos = PhotoCropDataset(image_dir, size=24, train=False)
    for i in (0, 7):
        item = data[i]
        entry = manifest["triplets"][i]
        assert item["ref"].shape == item["x0"].shape == (3, 24, 24)
        assert bool(item["is_hard"]) == entry["is_hard"] and bool(item["unanimous"]) == entry["unanimous"]
        assert {k: int(v) for k, v in item["votes"].items()} == entry["votes"]
        assert float(item["target"]) == np.mean(list(entry["votes"].values()))
        d0, d1 = entry["distances"]["mse"]
        assert entry["votes"]["mse"] == int(d1 < d0)
        assert float(mse(item["ref"][None], item["x0"][None])) == pytest.approx(d0, rel=1e-5)
        # The stored images are the quantised eval crops and their re-rendered distortions.
        ref_index = entry["ref_index"]
        assert entry["ref_file"] == photos.names[ref_index]
        assert torch.allclose(item["ref"], photos[ref_index], atol=0.5 / 255 + 1e-6)
        spec = data.specs[i]
        redo = (spec.d0.apply(item["ref"]) * 255).round() / 255
        assert torch.allclose(item["x0"], redo, atol=1e-6)
    assert len(load_triplet_set(first, size=12)[0]["x1"][0]) == 12

    with pytest.raises(FileExistsError, match="overwrite=True"):
        build_val_triplets(image_dir, tmp_path / "set_a", TEACHERS, n=10)
    tensors = tmp_path / "set_a" / "triplets.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:-1] + b"\x00")
    with pytest.raises(ValueError, match="sha256"):
        load_triplet_set(tmp_path / "set_a")
    with pytest.raises(FileNotFoundError, match="build_val_triplets"):
        load_triplet_set(tmp_path / "nothing")
