"""Training smoke test: a tiny configuration runs on CPU, the loss falls, weights export and reload, resume works."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lipsim_metric import LipSim
from lipsim_metric.train.engine import load_config, train


def _cfg(tmp: Path, shared: Path, **over):
    base = [
        f"output_dir={tmp}",
        f"train_dir={shared / 'images' / 'val'}",
        f"teachers_dir={shared / 'teachers'}",
        "image_size=128",
        "backbone_kwargs={input_size: 128, linear_hidden: 64}",
        "max_images=8",
        "batch_size=4",
        "lr=0.003",
        "warmup_steps=1",
        "log_every=1",
        "checkpoint_every=100",
        "num_workers=0",
    ]
    return load_config(None, base + [f"{k}={v}" for k, v in over.items()])


def _log(path: Path) -> list[dict]:
    return [json.loads(line) for line in (path / "log.jsonl").read_text().splitlines()]


def test_distill_then_finetune_smoke(shared_dir: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    out1 = train(_cfg(tmp_path / "s1", shared_dir, max_steps=8))
    log = _log(tmp_path / "s1")
    first, last = log[0]["regress"], min(r["regress"] for r in log[-3:])
    assert last < 0.8 * first, f"distillation loss did not fall: {first} -> {last}"
    metric = LipSim(weights=out1)
    assert metric.input_size == 128
    x = torch.rand(2, 3, 128, 128)
    assert metric(x, x.flip(-1)).shape == (2,)

    out2 = train(_cfg(tmp_path / "s2", shared_dir, stage="finetune", init_weights=str(out1), max_steps=3,
                      distortions_per_ref=3, batch_size=2, regress_weight=0.0, margin=0.01))
    log2 = _log(tmp_path / "s2")
    assert all("hinge" in r and r["hinge"] >= 0 for r in log2)
    assert LipSim(weights=out2).backbone.embed_dim == metric.backbone.embed_dim


def test_resume_continues_from_checkpoint(shared_dir: Path, tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, shared_dir, max_steps=2, checkpoint_every=2)
    train(cfg)
    assert json.loads((tmp_path / "checkpoint" / "progress.json").read_text())["step"] == 2
    cfg.max_steps = 3
    train(cfg)
    steps = [r["step"] for r in _log(tmp_path)]
    assert steps == [1, 2, 3]


def test_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown config keys"):
        load_config(None, ["learning_rate=1"])
    with pytest.raises(ValueError, match="stage"):
        load_config(None, ["stage=pretrain"])
    with pytest.raises(ValueError, match="key=value"):
        load_config(None, ["oops"])
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.yaml")
