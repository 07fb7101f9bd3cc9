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


def test_ranking_hinge_uses_only_unanimous_pairs() -> None:
    from lipsim_metric.train.engine import _ranking_hinge

    d_student = torch.tensor([[0.1, 0.2, 0.3]])
    # teacher A orders copies 0 < 1 < 2; teacher B agrees on (0,1), (0,2) but swaps (1,2)
    d_teacher = torch.tensor([[[1.0, 2.0, 3.0]], [[1.0, 3.0, 2.0]]])
    loss, agree = _ranking_hinge(d_student, d_teacher, margin=0.05, min_gap=0.0)
    # used pairs: (0,1), (0,2); student gaps 0.1 and 0.2 exceed the margin -> zero loss, all ordered correctly
    assert loss.item() == 0.0 and agree.item() == 1.0
    loss, agree = _ranking_hinge(d_student, d_teacher, margin=0.15, min_gap=0.0)
    assert abs(loss.item() - 0.025) < 1e-6  # only (0,1) violates: 0.15 - 0.1, averaged over the 2 used pairs
    wrong = torch.tensor([[0.3, 0.2, 0.1]])
    _, agree = _ranking_hinge(wrong, d_teacher, margin=0.05, min_gap=0.0)
    assert agree.item() == 0.0


def test_teachers_to_copies_matches_pairwise_distances(shared_dir: Path) -> None:
    """The training step computes each reference's teacher features once; the distances must not change."""
    from lipsim_metric.train.engine import _Teachers

    torch.manual_seed(0)
    teachers = _Teachers(["lpips-alex", "dists"], str(shared_dir / "teachers"))
    ref = torch.rand(3, 3, 64, 64)
    copies = (ref[:, None] + 0.1 * torch.randn(3, 4, 3, 64, 64)).clamp(0, 1)
    fast = teachers.to_copies(ref, copies)
    slow = teachers(ref.repeat_interleave(4, dim=0), copies.flatten(0, 1)).view(2, 3, 4)
    assert fast.shape == (2, 3, 4)
    assert torch.allclose(fast, slow, rtol=1e-4, atol=1e-6)
    assert (fast[:, 1] != fast[:, 0]).any()  # references are not mixed up: rows differ


def test_finetune_on_human_style_csv_triplets(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    rows = ["ref,x0,x1,target"]
    for i in range(4):
        base = rng.random((64, 64, 3))
        for name, arr in (("r", base), ("a", base + 0.02 * rng.standard_normal(base.shape)),
                          ("b", base + 0.3 * rng.standard_normal(base.shape))):
            Image.fromarray((np.clip(arr, 0, 1) * 255).astype(np.uint8)).save(tmp_path / f"{name}{i}.png")
        rows.append(f"r{i}.png,a{i}.png,b{i}.png,{0.0 if i % 2 else 0.2}")
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    cfg = load_config(None, [f"output_dir={tmp_path / 'run'}", "stage=finetune", f"triplets=csv:{tmp_path / 't.csv'}",
                             "image_size=64", "backbone_kwargs={input_size: 64, embed_dim: 256, linear_hidden: 32}",
                             "regress_weight=0", "batch_size=2", "max_steps=2", "log_every=1", "num_workers=0",
                             "margin=0.05"])
    out = train(cfg)
    log = _log(tmp_path / "run")
    assert len(log) == 2 and all(r["hinge"] >= 0 for r in log)
    assert LipSim(weights=out).input_size == 64


def test_signed_radius_matches_the_certificate() -> None:
    """The training objective's radius is the certificate's radius (sign = which image is closer)."""
    from lipsim_metric.certificates import FLOAT_TOLERANCE, certify_2afc_embeddings, project_embedding
    from lipsim_metric.train.engine import signed_radius

    g = torch.Generator().manual_seed(0)
    feats = [3.0 * torch.randn(16, 8, generator=g) for _ in range(3)]
    (er, nr), (e0, _), (e1, _) = (project_embedding(f) for f in feats)
    cert = certify_2afc_embeddings(er, e0, e1, nr)
    signed = signed_radius(er, nr, e0, e1)
    assert torch.equal(signed > 0, cert.prediction == 1)
    # the certificate subtracts the float allowance from the margin; the training quantity does not
    assert torch.all(signed.abs() >= cert.radius - 1e-6)
    assert torch.allclose(signed.abs(), cert.radius, atol=50 * FLOAT_TOLERANCE * nr.max().item())
    # broadcasting over a (K, K) grid of copies, as the ranking loss uses it; zero on the diagonal, finite gradients
    copies = torch.randn(1, 4, 8, generator=g, requires_grad=True)
    ek, _ = project_embedding(copies.view(4, 8))
    ek = ek.view(1, 4, 9)
    grid = signed_radius(er[:1, None, None], nr[:1, None, None], ek[:, :, None], ek[:, None, :])
    assert grid.shape == (1, 4, 4) and torch.allclose(grid, -grid.transpose(1, 2))
    assert torch.all(grid.diagonal(dim1=1, dim2=2) == 0)
    grid.sum().backward()
    assert torch.isfinite(copies.grad).all()


def test_radius_hinge_finetune_runs(tmp_path: Path, shared_dir: Path) -> None:
    cfg = load_config(None, [f"output_dir={tmp_path / 'run'}", "stage=finetune",
                             f"train_dir={shared_dir / 'images/val'}", f"teachers_dir={shared_dir / 'teachers'}",
                             "image_size=64", "max_images=4",
                             "backbone_kwargs={input_size: 64, embed_dim: 256, linear_hidden: 32}",
                             "regress_weight=0", "batch_size=2", "max_steps=2", "log_every=1", "num_workers=0",
                             "distortions_per_ref=3", "radius_margin=2.0"])
    train(cfg)
    log = _log(tmp_path / "run")
    assert len(log) == 2 and all(r["hinge"] >= 0 for r in log)


def test_config_refuses_a_non_positive_constant() -> None:
    assert load_config(None, ["constant=25"]).constant == 25
    with pytest.raises(ValueError, match="constant"):
        load_config(None, ["constant=0"])
