"""Tests for lipsim_metric.train.human_2afc (NIGHT, BAPPS 2AFC, CSV and in-memory triplets).

Tiny fixtures are generated in tmp_path (layouts copy the originals); moved from tests/test_data.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from data_fixtures import solid
from lipsim_metric.train.human_2afc import (
    BAPPS2AFCDataset,
    NightDataset,
    Triplet,
    TripletCSVDataset,
    TripletFileDataset,
)


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
        solid(root / "ref" / "000" / f"{i}.png", (0, 200, 0), (20, 16))
        solid(root / "distort" / "000" / f"{i}_0.png", (200, 0, 0), (20, 16))
        solid(root / "distort" / "000" / f"{i}_1.png", (0, 0, 200), (20, 16))
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
            solid(root / subset / "ref" / f"{stem}.png", (shade, shade, shade), (16, 16))
            solid(root / subset / "p0" / f"{stem}.png", (shade, 0, 0), (16, 16))
            solid(root / subset / "p1" / f"{stem}.png", (0, 0, shade), (16, 16))
            judge = (k + 1) / 4.0
            (root / subset / "judge").mkdir(parents=True, exist_ok=True)
            np.save(root / subset / "judge" / f"{stem}.npy", np.array([judge], dtype=np.float32))
            judges[f"{subset}/{stem}"] = judge
    # A stray p0 file without reference: would shift a sort-order pairing by one.
    solid(root / "traditional" / "p0" / "000001.png", (255, 255, 0), (16, 16))
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
    solid(tmp_path / "img" / "r.png", (10, 10, 10))
    solid(tmp_path / "img" / "a.png", (200, 10, 10))
    solid(tmp_path / "img" / "b.png", (10, 10, 200))
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
    solid(tmp_path / "a.png", (255, 0, 0))
    data = TripletFileDataset([Triplet(torch.zeros(3, 8, 8), torch.ones(3, 8, 8), "a.png", 1)], root=tmp_path, size=4)
    item = data[0]
    assert item["ref"].shape == (3, 4, 4) and float(item["x0"].min()) == 1.0 and float(item["x1"][0].min()) == 1.0
    with pytest.raises(TypeError, match="divide uint8 images by 255"):
        Triplet(torch.zeros(3, 8, 8, dtype=torch.uint8), "a.png", "a.png", 0)
    with pytest.raises(ValueError, match="vote share"):
        Triplet("a.png", "a.png", "a.png", -0.1)
