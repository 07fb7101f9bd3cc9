"""The evaluation command on a tiny generated triplet set (pixel teachers, small random LipSim)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lipsim_metric import create_backbone
from lipsim_metric.pretrained import save_weights
from lipsim_metric.train import evaluate as E
from lipsim_metric.train.data import build_val_triplets, load_triplet_set

SMALL = {"input_size": 64, "embed_dim": 256, "linear_hidden": 64}


def test_report_end_to_end(tmp_path: Path, noise_photos) -> None:
    teachers = {
        "mse": lambda a, b: (a - b).square().flatten(1).mean(1),
        "mae": lambda a, b: (a - b).abs().flatten(1).mean(1),
    }
    build_val_triplets(noise_photos(4), tmp_path / "set", teachers, n=6, seed=0, size=64)
    torch.manual_seed(0)
    weights = save_weights(create_backbone("lipsim-fast", **SMALL), tmp_path / "w.safetensors", "lipsim-fast",
                           backbone_kwargs=SMALL)
    code = E.main(["report", "--triplets", str(tmp_path / "set"), "--weights", str(weights),
                   "--out", str(tmp_path / "report"), "--quiet", "--l2-eps", "1,2"])
    assert code == 0
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    unanimous = report["lipsim"]["unanimous"]
    assert unanimous["n"] == int(load_triplet_set(tmp_path / "set").unanimous.sum())
    for key in ("natural", "certified@36/255", "certified@72/255", "certified@108/255"):
        assert 0.0 <= unanimous[key] <= 1.0
    # certified accuracy can only fall as eps grows, and never exceeds natural accuracy
    assert unanimous["natural"] >= unanimous["certified@36/255"] >= unanimous["certified@108/255"]
    assert unanimous["certified@108/255"] >= unanimous["certified@l2 1"] >= unanimous["certified@l2 2"]
    assert "certified@l2 2 |" in (tmp_path / "report" / "report.md").read_text()
    assert set(report["teachers_loo"]) == {"mse", "mae"}
    assert "| unanimous |" in (tmp_path / "report" / "report.md").read_text()


def test_report_errors(tmp_path: Path) -> None:
    assert E.main(["report", "--triplets", str(tmp_path / "none"), "--out", str(tmp_path / "r")]) == 2
