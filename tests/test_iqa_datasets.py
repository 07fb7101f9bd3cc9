"""IQA loaders on fixtures laid out like each official distribution: pairing, types, score direction, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from iqa_fixtures import MAKERS, make_rated_csv
from lipsim_metric.evaluation import iqa_datasets as D
from lipsim_metric.evaluation.correlation import srcc

#: (loader name, higher_is_better, expected types)
EXPECTED = {
    "tid2013": (True, {"additive Gaussian noise", "mean shift"}),
    "kadid10k": (True, {"white noise", "mean shift"}),
    "csiq": (False, {"awgn", "blur"}),
    "live": (False, {"wn", "fastfading"}),
    "pipal": (True, {"type 00", "type 02"}),
}


def _level(path: Path) -> int:
    """The distortion level encoded in each fixture's file name (last digit before the extension)."""
    stem = path.stem
    if stem.startswith("img"):  # LIVE: img<j>.bmp, j = (ref - 1) * 3 + level
        return (int(stem[3:]) - 1) % 3 + 1
    return int(stem.rstrip(".")[-1])


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_loader_reads_the_official_layout(name: str, tmp_path: Path) -> None:
    if name == "live":
        pytest.importorskip("scipy")
    root = MAKERS[name](tmp_path / name)
    data = D.IQA_LOADERS[name](root)
    higher, types = EXPECTED[name]
    assert len(data) == 12 and data.higher_is_better is higher
    assert {p.dist_type for p in data} == types
    assert len({p.ref_name for p in data}) == 2
    data.check_files()
    for pair in data:
        assert pair.ref.is_file() and pair.dist.is_file() and pair.ref != pair.dist
    # the fixture's scores worsen with the level: the oriented quality must fall with it, whatever the direction
    levels = np.array([_level(p.dist) for p in data])
    assert srcc(levels, data.quality()) == pytest.approx(-1.0)
    raw = np.array([p.score for p in data])
    assert srcc(levels, raw) == pytest.approx(-1.0 if higher else 1.0)


def test_references_pair_by_name_not_by_order(tmp_path: Path) -> None:
    data = D.load_tid2013(MAKERS["tid2013"](tmp_path / "tid"))
    for pair in data:
        assert pair.ref.name.lower() == f"i{pair.dist.name[1:3]}.bmp"  # i02_* pairs with I02.BMP
    kadid = D.load_kadid10k(MAKERS["kadid10k"](tmp_path / "kadid"))
    assert all(p.dist.name.startswith(p.ref.stem + "_") for p in kadid)


def test_csv_loader_and_direction(tmp_path: Path) -> None:
    path = make_rated_csv(tmp_path)
    lower = D.load_rated_csv(path, higher_is_better=False)
    higher = D.load_rated_csv(path, higher_is_better=True)
    assert np.array_equal(lower.quality(), -higher.quality())
    assert {p.dist_type for p in lower} == {"A", "B"}


def test_errors_name_the_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="mos_with_names.txt"):
        D.load_tid2013(tmp_path)
    root = MAKERS["kadid10k"](tmp_path / "kadid")
    (root / "images" / "I01_11_02.png").unlink()
    with pytest.raises(FileNotFoundError, match="I01_11_02.png"):
        D.load_kadid10k(root)
    with pytest.raises(FileNotFoundError, match="csiq.DMOS.csv"):
        D.load_csiq(tmp_path)
    bad = tmp_path / "bad.csv"
    bad.write_text("ref,dist\na.png,b.png\n")
    with pytest.raises(ValueError, match="no header row"):
        D.load_rated_csv(bad, higher_is_better=True)
    tid = MAKERS["tid2013"](tmp_path / "tid")
    (tid / "mos_with_names.txt").write_text("abc i01_01_1.bmp\n")
    with pytest.raises(ValueError, match="expected a number"):
        D.load_tid2013(tid)
