"""``pair_teachers``: the stage-"pairs" objective on a subset of a label set's teachers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_fixtures import smooth_photos


def _label_set(shared_dir: Path, photos: Path, out: Path, teachers: str) -> Path:
    from lipsim_metric.train import labels

    assert labels.main(["build", "--images", str(photos), "--out", str(out), "--teachers", teachers,
                        "--teachers-dir", str(shared_dir / "teachers"), "--copies", "3", "--size", "64",
                        "--bf16-teachers", "", "--quiet"]) == 0
    return out


def _first_steps(shared_dir: Path, photos: Path, labels: Path, run: Path, *extra: str) -> list[dict]:
    from lipsim_metric.train import engine

    kwargs = {"input_size": 64, "pooling": "mean_std", "channel_scale": True, "linear_depth": 0, "embed_dim": None}
    engine.train(engine.load_config(None, [
        "stage=pairs", f"labels={labels}", f"labels_images={photos}", "regress_weight=0", "image_size=64",
        f"backbone_kwargs={json.dumps(kwargs)}", "batch_size=2", "num_workers=0", "log_every=1", "warmup_steps=1",
        "checkpoint_every=100", "max_steps=2", "radius_margin=2", "radius_weight=0.5", "min_teacher_gap=0.1",
        f"teachers_dir={shared_dir / 'teachers'}", f"output_dir={run}", *extra]))
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_pair_teachers_equals_a_label_set_of_those_teachers(shared_dir: Path, tmp_path: Path) -> None:
    """The objective over one teacher of a two-teacher set is the objective of the one-teacher set (same pairs)."""
    from safetensors import safe_open

    photos = smooth_photos(tmp_path / "photos", 2)
    both = _label_set(shared_dir, photos, tmp_path / "both", "lpips-alex,lpips-vgg")
    vgg = _label_set(shared_dir, photos, tmp_path / "vgg", "lpips-vgg")
    sub = _first_steps(shared_dir, photos, both, tmp_path / "sub", "pair_teachers=[lpips-vgg]")
    alone = _first_steps(shared_dir, photos, vgg, tmp_path / "alone")
    full = _first_steps(shared_dir, photos, both, tmp_path / "full")
    assert len(sub) == len(alone) == 2
    for a, b in zip(sub, alone, strict=True):
        for key in ("loss", "corr", "hinge"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    assert sub[0]["corr"] != pytest.approx(full[0]["corr"], rel=1e-4)  # both teachers: another target
    with safe_open(str(tmp_path / "sub" / "student.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["training"])["distance_teachers"] == ["lpips-vgg"]
    with pytest.raises(ValueError, match="not teachers of the label set"):
        _first_steps(shared_dir, photos, both, tmp_path / "bad", "pair_teachers=[dists]")
