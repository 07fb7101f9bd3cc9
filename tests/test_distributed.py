"""Several processes for real: two training steps under ``torchrun --nproc_per_node 2`` (gloo, CPU) end with
identical weights on both ranks, and ``evaluate iqa --shard auto`` splits its work across two torchrun ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from iqa_fixtures import MAKERS

REPO = Path(__file__).resolve().parents[1]

# Runs the project's engine CLI (lipsim_metric.train.engine.main) unchanged; a spy on create_backbone keeps a handle
# on the student so that every rank can save the weights it ends with (only rank 0 exports them).
_TRAIN = r"""
import os, sys, torch
from lipsim_metric.train import engine

made = []
original = engine.create_backbone
def spy(*args, **kwargs):
    net = original(*args, **kwargs)
    made.append((net, {k: v.detach().clone() for k, v in net.state_dict().items()}))
    return net
engine.create_backbone = spy
code = engine.main(sys.argv[2:])
net, initial = made[0]
rank = int(os.environ["RANK"])
group = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
torch.save({"final": net.state_dict(), "initial": initial, "world": int(os.environ["WORLD_SIZE"]), "group": group},
           os.path.join(sys.argv[1], f"rank{rank}.pt"))
sys.exit(code)
"""


def _torchrun(args: list[str], tmp: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src") + os.pathsep + str(REPO / "tests")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    return subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_two_training_steps_with_torchrun_end_with_identical_weights(shared_dir: Path, tmp_path: Path,
                                                                    noise_photos) -> None:
    photos = noise_photos(8, 128, 128)
    config = tmp_path / "tiny.yaml"
    config.write_text("\n".join([
        "stage: distill", f"output_dir: {tmp_path / 'run'}", f"train_dir: {photos}",
        f"teachers_dir: {shared_dir / 'teachers'}", "image_size: 128",
        "backbone_kwargs: {input_size: 128, linear_hidden: 32}",
        "max_images: 8", "batch_size: 2", "max_steps: 2", "warmup_steps: 1", "lr: 0.01", "num_workers: 0",
        "log_every: 1", "checkpoint_every: 100", "mixed_precision: 'no'", ""]))
    script = tmp_path / "train_ranks.py"
    script.write_text(_TRAIN)
    run = _torchrun([str(script), str(tmp_path), "--config", str(config)], tmp_path)
    assert run.returncode == 0, run.stderr[-4000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert all(r["world"] == 2 and r["group"] == 2 for r in ranks)  # one DDP group of two, not two lone runs
    for name, tensor in ranks[0]["final"].items():
        assert torch.equal(tensor, ranks[1]["final"][name]), f"{name} differs between the ranks"
    assert torch.equal(ranks[0]["initial"][name], ranks[1]["initial"][name])  # same seeded start
    moved = [not torch.equal(t, ranks[0]["initial"][k]) for k, t in ranks[0]["final"].items()]
    assert any(moved), "the two steps did not change the weights"
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2]  # written by rank 0 only
    assert (tmp_path / "run" / "student.safetensors").is_file()


@pytest.mark.slow
def test_evaluate_iqa_shards_across_torchrun_ranks(tmp_path: Path) -> None:
    root = MAKERS["kadid10k"](tmp_path / "kadid")
    out = tmp_path / "out"
    run = _torchrun(["-m", "lipsim_metric.train.evaluate", "iqa", "--dataset", f"kadid10k:{root}", "--metrics",
                     "mse", "--out", str(out), "--quiet", "--shard", "auto"], tmp_path)
    assert run.returncode == 0, run.stderr[-4000:]
    files = sorted(p.name for p in (out / "cache" / "kadid10k" / "mse").iterdir())
    assert files == ["shard0of2.jsonl", "shard1of2.jsonl"]
    report = json.loads((out / "kadid10k.json").read_text())
    assert report["metrics"]["mse"]["overall"]["n"] == 12 and report["metrics"]["mse"]["overall"]["srcc"] > 0.7
