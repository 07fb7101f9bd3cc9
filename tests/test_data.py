"""Tests for lipsim_metric.train.data on tiny fixtures generated in tmp_path (layouts copy the originals)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lipsim_metric.train.data import (
    BAPPS2AFCDataset,
    DistortionTripletDataset,
    NightDataset,
    PhotoCropDataset,
    ShardDataset,
    Triplet,
    TripletCSVDataset,
    TripletFileDataset,
    TripletSpec,
    build_val_triplets,
    label_triplets,
    list_images,
    load_triplet_set,
    make_distortion_triplets,
    pack_images,
    render_triplet,
)


def _mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a - b) ** 2).mean(dim=(1, 2, 3))


def _mae(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).abs().mean(dim=(1, 2, 3))


TEACHERS = {"mse": _mse, "mae": _mae}


def _save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)
    return path


def _solid(path: Path, rgb: tuple[int, int, int], size: tuple[int, int] = (12, 12)) -> Path:
    """Write a solid-colour image of (width, height) = size."""
    return _save(path, np.broadcast_to(np.array(rgb, dtype=np.uint8), (size[1], size[0], 3)).copy())


def _noise_image(path: Path, seed: int, width: int = 40, height: int = 30) -> Path:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(4, 4, 3)).astype(np.uint8)
    image = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


@pytest.fixture()
def photo_dir(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    _noise_image(root / "b.jpg", 1)
    _noise_image(root / "a.PNG", 2, 30, 40)
    _noise_image(root / "sub" / "c.bmp", 3)
    _noise_image(root / "sub" / "d.webp", 4)
    _noise_image(root / "e.jpeg", 5)
    (root / "notes.txt").write_text("not an image")
    _noise_image(root / ".hidden.jpg", 6)
    return root


# ------------------------------------------------------------------------------------------ photo folders


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
    _save(tmp_path / "wide.png", array)
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
    _noise_image(tmp_path / "good.png", 0)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    strict = PhotoCropDataset(tmp_path, size=8, train=False)
    with pytest.raises(ValueError, match=r"broken\.jpg.*skip_unreadable=True"):
        strict[0]
    lenient = PhotoCropDataset(tmp_path, size=8, train=False, skip_unreadable=True)
    with pytest.warns(RuntimeWarning, match="broken.jpg"):
        item = lenient[0]
    assert torch.equal(item, strict[1]), "the unreadable file is replaced by the next readable one"


# ------------------------------------------------------------------------------------------ shards


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
    _noise_image(tmp_path / "bad" / "ok.png", 0)
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


# ------------------------------------------------------------------------------------------ NIGHT


def _make_night(root: Path) -> None:
    """NIGHT layout: data.csv + ref/000/<i>.png + distort/000/<i>_{0,1}.png; left red, right blue."""
    rows = ["id,left_vote,right_vote,votes,ref_path,left_path,right_path,idx,prompt,split,is_imagenet"]
    plan = [  # (split, is_imagenet, left_vote, right_vote, votes)
        ("train", "False", 1.0, 0.0, 7),
        ("train", "True", 0.0, 1.0, 6),
        ("val", "False", 0.0, 1.0, 9),
        ("test", "True", 0.0, 1.0, 8),
        ("test", "True", 1.0, 0.0, 8),
        ("test", "False", 2.0, 6.0, 8),
        ("test", "False", 0.0, 1.0, 5),  # dropped: fewer than 6 votes
    ]
    for i, (split, imagenet, left, right, votes) in enumerate(plan):
        _solid(root / "ref" / "000" / f"{i}.png", (0, 200, 0), (20, 16))
        _solid(root / "distort" / "000" / f"{i}_0.png", (200, 0, 0), (20, 16))
        _solid(root / "distort" / "000" / f"{i}_1.png", (0, 0, 200), (20, 16))
        rows.append(f"{i},{left},{right},{votes},ref/000/{i}.png,distort/000/{i}_0.png,distort/000/{i}_1.png,"
                    f"{i},an image of a thing,{split},{imagenet}")
    (root / "data.csv").write_text("\n".join(rows) + "\n")


def test_night_splits_targets_and_images(tmp_path: Path) -> None:
    _make_night(tmp_path)
    lengths = {s: len(NightDataset(tmp_path, split=s)) for s in NightDataset.SPLITS}
    assert lengths == {"train": 2, "val": 1, "test": 3, "test_imagenet": 2, "test_no_imagenet": 1}
    assert len(NightDataset(tmp_path, split="test_no_imagenet", min_votes=None)) == 2

    imagenet = NightDataset(tmp_path, split="test_imagenet", size=8)
    assert [float(imagenet[i]["target"]) for i in range(2)] == [1.0, 0.0]
    item = imagenet[0]
    assert set(item) == {"ref", "x0", "x1", "target"}
    assert item["ref"].shape == item["x0"].shape == item["x1"].shape == (3, 8, 8)
    assert item["x0"][0].mean() > 0.7 and item["x1"][2].mean() > 0.7, "x0 is the left image, x1 the right"
    assert imagenet.ids == ["3", "4"]
    vote_share = NightDataset(tmp_path, split="test_no_imagenet")
    assert float(vote_share[0]["target"]) == pytest.approx(6.0 / 8.0)


def test_night_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="data.csv"):
        NightDataset(tmp_path)
    _make_night(tmp_path)
    with pytest.raises(ValueError, match="unknown NIGHT split"):
        NightDataset(tmp_path, split="test-imagenet")
    (tmp_path / "distort" / "000" / "4_1.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"4_1\.png.*dataset root"):
        NightDataset(tmp_path, split="test_imagenet")
    lazy = NightDataset(tmp_path, split="test_imagenet", check_files=False)
    lazy[0]
    with pytest.raises(FileNotFoundError, match=r"4_1\.png.*dataset root"):
        lazy[1]


# ------------------------------------------------------------------------------------------ BAPPS


def _make_bapps(root: Path) -> dict[str, float]:
    """BAPPS 2AFC layout; image colours encode the id, so mis-pairing is visible. Returns id -> judge."""
    judges: dict[str, float] = {}
    for subset, ids in (("traditional", ["000000", "000002", "000010"]), ("cnn", ["000001"])):
        for k, stem in enumerate(ids):
            shade = 20 * (int(stem) + 1)
            _solid(root / subset / "ref" / f"{stem}.png", (shade, shade, shade), (16, 16))
            _solid(root / subset / "p0" / f"{stem}.png", (shade, 0, 0), (16, 16))
            _solid(root / subset / "p1" / f"{stem}.png", (0, 0, shade), (16, 16))
            judge = (k + 1) / 4.0
            (root / subset / "judge").mkdir(parents=True, exist_ok=True)
            np.save(root / subset / "judge" / f"{stem}.npy", np.array([judge], dtype=np.float32))
            judges[f"{subset}/{stem}"] = judge
    # A stray p0 file without reference: would shift a sort-order pairing by one.
    _solid(root / "traditional" / "p0" / "000001.png", (255, 255, 0), (16, 16))
    return judges


def test_bapps_pairs_by_id_and_reads_judge(tmp_path: Path) -> None:
    judges = _make_bapps(tmp_path)
    data = BAPPS2AFCDataset(tmp_path, size=16)
    assert data.subsets == ["cnn", "traditional"] and len(data) == 4
    for i in range(len(data)):
        item = data[i]
        key = f"{data.subset_of[i]}/{data.ids[i]}"
        assert float(item["target"]) == pytest.approx(judges[key])
        shade = item["ref"][0, 0, 0]
        assert item["x0"][0, 0, 0] == pytest.approx(shade) and item["x0"][1].max() == 0
        assert item["x1"][2, 0, 0] == pytest.approx(shade)
    only = BAPPS2AFCDataset(tmp_path, subsets=("traditional",), size=None)
    assert len(only) == 3 and only[0]["ref"].shape == (3, 16, 16)


def test_bapps_errors(tmp_path: Path) -> None:
    _make_bapps(tmp_path)
    with pytest.raises(FileNotFoundError, match="subset 'superres' not found"):
        BAPPS2AFCDataset(tmp_path, subsets=("superres",))
    (tmp_path / "cnn" / "judge" / "000001.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"judge file .*000001\.npy.*dataset root"):
        BAPPS2AFCDataset(tmp_path, subsets=("cnn",))
    (tmp_path / "traditional" / "p1" / "000002.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"p1.*000002\.png.*is missing"):
        BAPPS2AFCDataset(tmp_path, subsets=("traditional",))


# ------------------------------------------------------------------------------------------ CSV


def test_triplet_csv(tmp_path: Path) -> None:
    _solid(tmp_path / "img" / "r.png", (10, 10, 10))
    _solid(tmp_path / "img" / "a.png", (200, 10, 10))
    _solid(tmp_path / "img" / "b.png", (10, 10, 200))
    csv_path = tmp_path / "triplets.csv"
    csv_path.write_text("ref,x0,x1,target,note\nimg/r.png,img/a.png,img/b.png,0.25,x\nimg/r.png,img/b.png,img/a.png,1,y\n")
    data = TripletCSVDataset(csv_path, size=4)
    assert len(data) == 2
    assert float(data[0]["target"]) == 0.25 and data[0]["x1"].shape == (3, 4, 4)
    assert data[1]["x0"][2].mean() > 0.7

    csv_path.write_text("ref,left,right,target\nimg/r.png,img/a.png,img/b.png,1\n")
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['x0', 'x1'\]"):
        TripletCSVDataset(csv_path)
    csv_path.write_text("ref,x0,x1,target\nimg/r.png,img/a.png,img/b.png,1.5\n")
    with pytest.raises(ValueError, match=r"line 2: target must be a vote share"):
        TripletCSVDataset(csv_path)
    csv_path.write_text("ref,x0,x1,target\nimg/r.png,img/a.png,img/missing.png,1\n")
    with pytest.raises(FileNotFoundError, match=r"missing\.png.*dataset root"):
        TripletCSVDataset(csv_path)


def test_in_memory_triplets(tmp_path: Path) -> None:
    _solid(tmp_path / "a.png", (255, 0, 0))
    data = TripletFileDataset([Triplet(torch.zeros(3, 8, 8), torch.ones(3, 8, 8), "a.png", 1)], root=tmp_path, size=4)
    item = data[0]
    assert item["ref"].shape == (3, 4, 4) and float(item["x0"].min()) == 1.0 and float(item["x1"][0].min()) == 1.0
    with pytest.raises(TypeError, match="divide uint8 images by 255"):
        Triplet(torch.zeros(3, 8, 8, dtype=torch.uint8), "a.png", "a.png", 0)
    with pytest.raises(ValueError, match="vote share"):
        Triplet("a.png", "a.png", "a.png", -0.1)


# ------------------------------------------------------------------------------------------ generated triplets


def test_make_distortion_triplets_mix_and_determinism() -> None:
    specs = make_distortion_triplets(7, np.random.default_rng(0), n=40, hard_fraction=0.3)
    assert specs == make_distortion_triplets(range(7), np.random.default_rng(0), n=40, hard_fraction=0.3)
    assert len(specs) == 40 and sum(s.is_hard for s in specs) == 12
    counts = np.bincount([s.ref_index for s in specs], minlength=7)
    assert counts.min() >= 5 and counts.max() <= 6, "references are used about equally often"
    for spec in specs:
        if spec.is_hard:
            assert len(spec.d0.families) == len(spec.d1.families) == 1
            assert spec.d0.families != spec.d1.families
            assert spec.d0.strength == spec.d1.strength and 0.2 <= spec.d0.strength <= 0.8
        else:
            assert abs(spec.d0.strength - spec.d1.strength) >= 0.25 - 1e-12
    assert TripletSpec.from_dict(json.loads(json.dumps(specs[0].to_dict()))) == specs[0]
    with pytest.raises(ValueError, match="at least two different families"):
        make_distortion_triplets(3, np.random.default_rng(0), n=4, families=["blur"])
    with pytest.raises(ValueError, match="no reference images"):
        make_distortion_triplets([], np.random.default_rng(0), n=4)


def test_label_triplets_votes_and_unanimity() -> None:
    ref = torch.zeros(3, 3, 8, 8)
    x0 = torch.full_like(ref, 0.1)  # mse 0.01, mae 0.1
    x1 = torch.zeros_like(ref)
    x1[0, :, :2, :2] = 0.5  # first: mse 0.0156, mae 0.031: the teachers disagree
    x1[1] = 0.05  # second: closer for both
    x1[2] = 0.1  # third: tie for both
    votes = label_triplets((ref, x0, x1), TEACHERS, batch_size=2)
    assert votes.votes["mse"].tolist() == [0, 1, 0]
    assert votes.votes["mae"].tolist() == [1, 1, 0]
    assert votes.unanimous.tolist() == [False, True, False]
    assert votes.target.tolist() == [0.5, 1.0, 0.0]
    assert torch.allclose(votes.d0["mse"], torch.full((3,), 0.01))


def test_label_triplets_accepts_specs_and_datasets() -> None:
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 16, 16, generator=g) for _ in range(4)]
    specs = make_distortion_triplets(images, np.random.default_rng(1), n=9)
    from_specs = label_triplets(specs, TEACHERS, batch_size=4, images=images)
    from_dataset = label_triplets(DistortionTripletDataset(images, specs), TEACHERS, batch_size=9)
    rendered = [render_triplet(images, s) for s in specs]
    from_tensors = label_triplets(tuple(torch.stack(p) for p in zip(*rendered, strict=True)), TEACHERS)
    for name in TEACHERS:
        assert torch.equal(from_specs.votes[name], from_dataset.votes[name])
        assert torch.allclose(from_specs.d1[name], from_tensors.d1[name])
    with pytest.raises(ValueError, match="no images"):
        label_triplets(specs, TEACHERS)
    with pytest.raises(ValueError, match="at least one"):
        label_triplets(specs, {}, images=images)
    with pytest.raises(ValueError, match="returned shape"):
        label_triplets(specs, {"bad": lambda a, b: (a - b).mean(dim=1)}, images=images)


def test_build_and_load_val_triplets(tmp_path: Path) -> None:
    image_dir = tmp_path / "val"
    for i in range(5):
        _noise_image(image_dir / f"img_{i}.jpg", i)
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
        assert float(_mse(item["ref"][None], item["x0"][None])) == pytest.approx(d0, rel=1e-5)
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
