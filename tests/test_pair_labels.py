"""Issue 13 training path: recipe-2 distortions, pair label sets, pair objective, mean/std pooling, stage "pairs"."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from data_fixtures import smooth_photos
from lipsim_metric import create_backbone
from lipsim_metric.layers import ChannelScale, MeanStdPool2d
from lipsim_metric.train.distortions import list_families, sample_distortion
from lipsim_metric.train.pair_objective import ConsensusTarget, correlation_loss, pooled_ranking_loss

NEW = [f for f in list_families("2") if f not in list_families("1")] + ["exposure"]


def test_recipe_2_extends_recipe_1_and_default_draws_stay_recipe_1() -> None:
    assert list_families("2")[:12] == list_families("1") == list_families()
    assert len(NEW) == 13
    drawn = {sample_distortion(np.random.default_rng(i)).families[0] for i in range(300)}
    assert drawn <= set(list_families("1"))
    assert "exposure" not in list_families("2")
    assert list_families("3") == ["exposure", "noise", "noise_gray", "noise_pink"]
    with pytest.raises(ValueError, match="recipe"):
        list_families("4")


def test_exposure_reaches_clipping_strengths_both_ways() -> None:
    """Recipe 3's point: much stronger than recipe 2's brightness (factor up to 1.5), with clipped highlights."""
    x = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0)) * 0.8 + 0.1
    outs = [sample_distortion(np.random.default_rng(i), 1.0, ["exposure"]) for i in range(12)]
    gains = {round(d.params["exposure"]["gain"], 6) for d in outs}
    assert gains == {3.0, 0.5}
    bright = next(d for d in outs if d.params["exposure"]["gain"] == 3.0).apply(x)
    assert (bright == 1.0).float().mean() > 0.3


@pytest.mark.parametrize("family", NEW)
def test_new_families_identity_at_zero_deterministic_and_growing(family: str) -> None:
    x = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0)) * 0.8 + 0.1
    zero = sample_distortion(np.random.default_rng(3), 0.0, [family])
    assert torch.equal(zero.apply(x), x)
    errors = []
    for strength in (0.3, 1.0):
        a = sample_distortion(np.random.default_rng(3), strength, [family]).apply(x)
        b = sample_distortion(np.random.default_rng(3), strength, [family]).apply(x)
        assert torch.equal(a, b) and a.shape == x.shape and 0 <= a.min() and a.max() <= 1
        errors.append(float((a - x).square().mean()))
    assert 0 < errors[0] < errors[1]


def test_mean_std_pool_is_one_lipschitz_and_splits_mean_from_spread() -> None:
    pool = MeanStdPool2d(4)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, 8, 8, generator=g)
    y = x + 0.1 * torch.randn(x.shape, generator=g)
    ratio = (pool(x) - pool(y)).flatten(1).norm(dim=1) / (x - y).flatten(1).norm(dim=1)
    assert ratio.max() <= 1 + 1e-5
    flat = torch.ones(1, 1, 4, 4) * 0.5
    out = pool(flat)
    assert torch.allclose(out[:, 0], torch.tensor(0.5 * 16 / 4)) and out[:, 1].abs().max() < 1e-6
    # noise raises the spread channel by about ||noise|| of the block
    noisy = flat + 0.1 * torch.randn(flat.shape, generator=g)
    assert pool(noisy)[:, 1].item() == pytest.approx(float((noisy - noisy.mean()).norm()), abs=2e-3)
    with pytest.raises(ValueError, match="divisible"):
        pool(torch.zeros(1, 1, 6, 6))


def test_channel_scale_never_amplifies() -> None:
    scale = ChannelScale(5)
    with torch.no_grad():
        scale.logit.copy_(torch.tensor([-3.0, 0.0, 3.0, 30.0, -30.0]))
    x = torch.randn(4, 5, 2, 2)
    assert (scale(x).abs() <= x.abs() + 1e-7).all()


def test_mean_std_backbone_is_one_lipschitz() -> None:
    """Fast version: the smallest input (32, one 4x4 pooling block per channel) and half the search. At random init
    the searches reach ~0.95 of the bound, so a pooling/scaling bug that lifts the constant above 1 still fails."""
    from lipsim_metric.testing import assert_one_lipschitz

    torch.manual_seed(0)
    backbone = create_backbone("lipsim-fast", input_size=32, pooling="mean_std", channel_scale=True, linear_depth=0,
                               embed_dim=None)
    assert backbone.embed_dim == 2 * 192 * 1
    report = assert_one_lipschitz(backbone, power_iters=15, steps=20)
    assert report.jacobian_norm > 0.5  # the search is real, not a no-op on a degenerate network


@pytest.mark.slow
def test_mean_std_backbone_is_one_lipschitz_full_search() -> None:
    """The full search at 64x64 (2x2 pooling blocks); ~1 min on 2 loaded cores, hence slow."""
    from lipsim_metric.testing import assert_one_lipschitz

    torch.manual_seed(0)
    backbone = create_backbone("lipsim-fast", input_size=64, pooling="mean_std", channel_scale=True, linear_depth=0,
                               embed_dim=None)
    assert backbone.embed_dim == 2 * 192 * 4
    assert_one_lipschitz(backbone)


def test_consensus_target_and_losses() -> None:
    g = torch.Generator().manual_seed(0)
    d = torch.rand(10, 2, 4, generator=g) * 0.5 + 0.01
    target = ConsensusTarget(d)
    z = target(d)
    assert z.shape == (10, 4)
    std = target.standardised(d)
    assert std.transpose(0, 1).reshape(2, -1).mean(1).abs().max() < 1e-5
    assert correlation_loss(2 * z + 1, z).item() == pytest.approx(0.0, abs=1e-6)
    assert correlation_loss(-z, z).item() == pytest.approx(2.0, abs=1e-6)
    loss_good, agree_good = pooled_ranking_loss(z, z, std)
    loss_bad, agree_bad = pooled_ranking_loss(-z, z, std)
    assert agree_good.item() == 1.0 and agree_bad.item() == 0.0 and loss_good < loss_bad


def test_label_set_build_resume_verify_and_train(shared_dir: Path, tmp_path: Path) -> None:
    from lipsim_metric.train import engine, labels

    photos = smooth_photos(tmp_path / "photos", 3)
    out = tmp_path / "set"
    args = ["build", "--images", str(photos), "--out", str(out), "--teachers", "lpips-alex",
            "--teachers-dir", str(shared_dir / "teachers"), "--copies", "3", "--size", "64", "--chunk-size", "2",
            "--bf16-teachers", "", "--quiet"]
    assert labels.main([*args, "--max-refs", "2"]) == 0
    first = sorted((out / "chunks").iterdir())
    assert len(first) == 1
    stamp = first[0].stat().st_mtime_ns
    assert labels.main(args) == 0  # resumes: the first chunk is kept, the second one is added
    chunks = sorted((out / "chunks").iterdir())
    assert len(chunks) == 2 and chunks[0].stat().st_mtime_ns == stamp
    data = labels.PairLabelSet(out, photos)
    assert len(data) == 3 and data.distances.shape == (3, 1, 3)
    item = data[0]
    assert item["copies"].shape == (3, 3, 64, 64) and item["ref"].shape == (3, 64, 64)
    assert labels.main(["verify", str(out), "--images", str(photos), "--teachers-dir", str(shared_dir / "teachers"),
                        "--n", "3", "--tolerance", "1e-4"]) == 0
    info = labels.label_set_info(out)
    assert info["pairs"] == 9 and sum(info["families"].values()) == 9
    # another recipe in the same folder is refused; a photo folder that does not match is refused
    assert labels.main([*args, "--copies", "4"]) == 2
    (photos / "extra.png").write_bytes((photos / "p0.png").read_bytes())
    with pytest.raises(ValueError, match="not the ones"):
        labels.PairLabelSet(out, photos)
    (photos / "extra.png").unlink()
    # a recipe-3 supplement joins the main set in training (same teachers and copies); other copies are refused
    extra = tmp_path / "set3"
    args3 = [a if a != str(out) else str(extra) for a in args]
    assert labels.main([*args3, "--recipe", "3", "--max-refs", "2", "--seed", "3"]) == 0
    both = labels.ConcatPairLabelSets([data, labels.PairLabelSet(extra, photos)])
    assert len(both) == 5 and both.distances.shape == (5, 1, 3)
    assert torch.equal(both[3]["distances"], labels.PairLabelSet(extra, photos)[0]["distances"])
    assert {f.split("+")[0] for f in labels.PairLabelSet(extra, photos).families()} <= set(list_families("3"))
    four = tmp_path / "set4"
    assert labels.main([*[a if a != str(out) else str(four) for a in args], "--copies", "4", "--max-refs", "1"]) == 0
    with pytest.raises(ValueError, match="copies"):
        labels.ConcatPairLabelSets([data, labels.PairLabelSet(four, photos)])

    run = tmp_path / "run"
    kwargs = {"input_size": 64, "pooling": "mean_std", "channel_scale": True, "linear_depth": 0, "embed_dim": None}
    cfg = engine.load_config(None, [
        "stage=pairs", f"labels={out}", f"labels_images={photos}", f"output_dir={run}", "regress_weight=0",
        "image_size=64", f"backbone_kwargs={json.dumps(kwargs)}", "batch_size=2", "max_steps=2", "num_workers=0",
        "radius_margin=0.5", "radius_weight=0.5", "log_every=1", "warmup_steps=1", f"extra_labels=[{extra}]"])
    path = engine.train(cfg)
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and all(np.isfinite(r["loss"]) for r in log) and "corr" in log[0]
    from lipsim_metric import LipSim

    metric = LipSim(weights=path)
    assert metric.backbone.embed_dim == 2 * 192 * 4
    with pytest.raises(ValueError, match="labels"):
        engine.load_config(None, ["stage=pairs"])


def test_feature_inversion_example_runs(tmp_path: Path) -> None:
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("feature_inversion",
                                                  Path(__file__).parents[1] / "examples" / "feature_inversion.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["feature_inversion"] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    photos = smooth_photos(tmp_path / "photos", 1)
    out = tmp_path / "inv"
    assert module.main(["--images", str(photos), "--metrics", "lipsim,psnr", "--steps", "2", "--photos", "1",
                        "--out", str(out)]) == 0
    result = json.loads((out / "results.json").read_text())["results"]
    assert set(result) == {"lipsim", "psnr"} and result["lipsim"]["above_jpeg_q30"] in ("0/1", "1/1")


def test_finer_pooling_grid_is_one_lipschitz_and_has_four_times_the_features() -> None:
    from lipsim_metric.testing import assert_one_lipschitz

    torch.manual_seed(0)
    kw = {"input_size": 32, "pooling": "mean_std", "channel_scale": True, "linear_depth": 0, "embed_dim": None}
    coarse = create_backbone("lipsim-fast", **kw)
    fine = create_backbone("lipsim-fast", pool_size=2, **kw).eval()
    assert fine.embed_dim == 4 * coarse.embed_dim == 4 * 384
    fine.load_state_dict(coarse.state_dict())  # same parameters: the grid is not learned
    assert assert_one_lipschitz(fine, points=2, power_iters=10, steps=10).ratio <= 1.0 + 1e-4
    with pytest.raises(ValueError, match="pool_size"):
        create_backbone("lipsim-fast", pool_size=3, **kw)
