"""The shipped default weights: found offline, verified, and reproducing the committed golden values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lipsim_metric import DEFAULT_WEIGHTS, LipSim, get_pretrained_cfg, list_pretrained
from lipsim_metric.cli import main as cli_main
from lipsim_metric.images import load_image
from lipsim_metric.pretrained import resolve_weights, sha256_file

DATA = Path(__file__).resolve().parent / "data"
IMAGES = Path(__file__).resolve().parents[1] / "examples" / "images"
GOLDEN = json.loads((DATA / "shipped_golden.json").read_text())


@pytest.fixture(scope="module")
def metric() -> LipSim:
    return LipSim()


def test_default_weights_are_shipped_and_verified(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = get_pretrained_cfg(DEFAULT_WEIGHTS)
    path = resolve_weights(DEFAULT_WEIGHTS)
    assert path.name == cfg.filename and cfg.sha256 == sha256_file(path)
    assert path.stat().st_size < 50 * 2**20  # small enough to move around


@pytest.mark.parametrize("name", [n for n in list_pretrained() if get_pretrained_cfg(n).sha256 is not None])
def test_every_registered_project_weight_is_shipped(name: str, monkeypatch) -> None:
    """Weights this project made (they have a hash) are in weights/, verified, and load offline."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = get_pretrained_cfg(name)
    path = resolve_weights(name)
    assert path.parent.name == "weights" and path.name == cfg.filename
    assert sha256_file(path) == cfg.sha256
    metric = LipSim(weights=name)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert float(metric(x, x)) < 1e-6


def test_golden_values(metric: LipSim) -> None:
    assert GOLDEN["weights"] == DEFAULT_WEIGHTS
    for row in GOLDEN["pairs"]:
        a = load_image(IMAGES / "a" / row["pair"])[None]
        b = load_image(IMAGES / "b" / row["pair"])[None]
        with torch.no_grad():
            res = metric(a, b, return_radius=True)
        assert float(res.distance) == pytest.approx(row["distance"], rel=1e-4, abs=1e-6), row["pair"]
        assert float(res.radius) == pytest.approx(row["radius"], rel=1e-4, abs=1e-6), row["pair"]
    identical = [r for r in GOLDEN["pairs"] if "identical" in r["pair"]]
    assert identical and identical[0]["distance"] < 1e-6


def test_trained_weights_rank_distortions_sensibly(metric: LipSim) -> None:
    # Not a golden value: a property any useful metric has. A mild and a strong version of the same distortion.
    ref = load_image(IMAGES / "a" / "01_noise.png")[None]
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(ref.shape, generator=g)
    mild, strong = (ref + 0.03 * noise).clamp(0, 1), (ref + 0.15 * noise).clamp(0, 1)
    cert = metric.certify_2afc(ref, strong, mild)
    assert int(cert.prediction) == 1  # the mild copy is closer
    assert float(cert.radius) > 0


def test_main_job_matches_golden(capsys) -> None:
    code = cli_main([str(IMAGES / "a"), str(IMAGES / "b"), "--format", "json", "--quiet", "--workers", "0"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    got = {p["name"]: p["distance"] for p in out["pairs"]}
    for row in GOLDEN["pairs"]:
        assert got[row["pair"]] == pytest.approx(row["distance"], rel=1e-3, abs=1e-5)


def test_the_wheel_carries_only_the_default_weights() -> None:
    import tomllib

    root = Path(__file__).resolve().parents[1]
    data = tomllib.loads((root / "pyproject.toml").read_text())
    include = data["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]
    filename = get_pretrained_cfg(DEFAULT_WEIGHTS).filename
    assert include == {f"weights/{filename}": f"lipsim_metric/weights/{filename}"}
