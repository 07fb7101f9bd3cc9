"""Tests for lipsim_metric.train.shards (packed uint8 shards).

Tiny fixtures are generated in tmp_path (layouts copy the originals); moved from tests/test_data.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from data_fixtures import make_photo_dir, noise_image
from lipsim_metric.train.photos import PhotoCropDataset, list_images
from lipsim_metric.train.shards import ShardDataset, pack_images


@pytest.fixture()
def photo_dir(tmp_path: Path) -> Path:
    return make_photo_dir(tmp_path)


def test_pack_and_read_shard(tmp_path: Path, photo_dir: Path) -> None:
    out = tmp_path / "shards" / "val.safetensors"
    result = pack_images(photo_dir, out, size=16)
    assert result.names == list_images(photo_dir) and result.skipped == []
    assert result.nbytes == out.stat().st_size and result.nbytes > 5 * 3 * 16 * 16

    shard = ShardDataset(out, augment=False)
    assert shard.names == result.names and shard.images.dtype == torch.uint8
    reference = PhotoCropDataset(photo_dir, size=16, train=False)
    for i in range(len(shard)):
        assert torch.allclose(shard[i], reference[i], atol=0.5 / 255 + 1e-6)

    augmented = ShardDataset(out, augment=True, seed=1)
    a = torch.stack([augmented[i] for i in range(len(augmented))])
    assert a.shape == (5, 3, 16, 16) and 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, torch.stack([augmented[i] for i in range(len(augmented))]))
    assert not torch.equal(a, torch.stack([shard[i] for i in range(len(shard))]))

    with pytest.raises(FileExistsError, match="overwrite=True"):
        pack_images(photo_dir, out, size=16)
    again = pack_images(photo_dir, tmp_path / "again.safetensors", size=16)
    assert again.path.read_bytes() == out.read_bytes(), "packing is byte-for-byte reproducible"
    squeezed = pack_images([photo_dir / "b.jpg"], out, size=8, crop="resize", overwrite=True)
    assert squeezed.names == ["b.jpg"] and len(ShardDataset(out, augment=False)) == 1


def test_pack_errors(tmp_path: Path, photo_dir: Path) -> None:
    (tmp_path / "bad").mkdir()
    noise_image(tmp_path / "bad" / "ok.png", 0)
    (tmp_path / "bad" / "zz.png").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"zz\.png.*skip_unreadable=True"):
        pack_images(tmp_path / "bad", tmp_path / "x.safetensors", size=8)
    assert not (tmp_path / "x.safetensors").exists(), "a failed pack leaves no file behind"
    with pytest.warns(RuntimeWarning, match="zz.png"):
        result = pack_images(tmp_path / "bad", tmp_path / "x.safetensors", size=8, skip_unreadable=True)
    assert result.names == ["ok.png"] and result.skipped == ["zz.png"]
    with pytest.raises(ValueError, match="crop must be"):
        pack_images(photo_dir, tmp_path / "y.safetensors", crop="random")
    with pytest.raises(FileNotFoundError, match="create it with pack_images"):
        ShardDataset(tmp_path / "none.safetensors", augment=False)
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not an image shard"):
        ShardDataset(tmp_path / "other.safetensors", augment=False)
