"""Hard pairs mined against the student (lipsim_metric.train.hard_pairs) and their use in stage "pairs"."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from data_fixtures import tiny_embedder, tiny_pairs_run
from lipsim_metric.certificates import cosine_distance
from lipsim_metric.train.hard_pairs import (
    HardPairBuffer,
    mine_blind_perturbations,
    mine_loss_shortcuts,
)


def test_mining_keeps_the_energy_and_lowers_the_distance() -> None:
    net, embed = tiny_embedder()
    ref = 0.25 + 0.5 * torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    kwargs = {"rms_range": (0.02, 0.05)}
    start = mine_blind_perturbations(embed, ref, steps=0, generator=torch.Generator().manual_seed(3), **kwargs)
    mined = mine_blind_perturbations(embed, ref, steps=6, generator=torch.Generator().manual_seed(3), **kwargs)
    again = mine_blind_perturbations(embed, ref, steps=6, generator=torch.Generator().manual_seed(3), **kwargs)
    assert torch.equal(mined, again)  # seeded
    # rms <= 0.05 around references in [0.25, 0.75]: nothing is clipped, so the perturbation keeps its energy
    e_start = (start - ref).flatten(1).norm(dim=1)
    e_mined = (mined - ref).flatten(1).norm(dim=1)
    n = ref[0].numel()
    assert torch.all(e_start >= 0.02 * math.sqrt(n) - 1e-3) and torch.all(e_start <= 0.05 * math.sqrt(n) + 1e-3)
    assert torch.allclose(e_mined, e_start, rtol=1e-4)
    with torch.no_grad():
        e_ref = embed(ref)
        d_start = cosine_distance(e_ref, embed(start))
        d_mined = cosine_distance(e_ref, embed(mined))
    assert torch.all(d_mined < d_start)  # the search hides the perturbation from the student
    assert all(p.grad is None for p in net.parameters())  # the search leaves the student's gradients alone


def test_mining_from_uniform_noise_and_bad_arguments() -> None:
    _, embed = tiny_embedder()
    ref = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    y = mine_blind_perturbations(embed, ref, steps=2, rms_range=(0.01, 0.01), uniform_fraction=1.0,
                                 generator=torch.Generator().manual_seed(0))
    assert y.shape == ref.shape and y.min() >= 0 and y.max() <= 1
    assert (y - ref).flatten(1).norm(dim=1).min() > 0.2 * math.sqrt(ref[0].numel())  # far: a noise image
    # a chain continues from where it was: zero steps give the start back, more steps keep its energy
    cont = mine_blind_perturbations(embed, ref, steps=0, rms_range=(1.0, 1.0), start=y)
    assert torch.allclose(cont, y, atol=1e-6)
    cont = mine_blind_perturbations(embed, ref, steps=2, rms_range=(1.0, 1.0), start=y)
    assert (cont - ref).flatten(1).norm(dim=1).max() <= (y - ref).flatten(1).norm(dim=1).max() + 1e-3
    with pytest.raises(ValueError, match="shape"):
        mine_blind_perturbations(embed, ref, steps=1, rms_range=(1.0, 1.0), start=y[:1])
    with pytest.raises(ValueError, match="rms_range"):
        mine_blind_perturbations(embed, ref, steps=1, rms_range=(0.1, 0.01))
    with pytest.raises(ValueError, match="steps"):
        mine_blind_perturbations(embed, ref, steps=-1, rms_range=(0.1, 0.1))


def test_loss_shortcuts_lower_the_loss_example_loss_and_are_seeded() -> None:
    net, embed = tiny_embedder()
    ref = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    kwargs = {"sigma_range": (0.05, 0.2), "size": 32, "lr": 0.01}
    seen, noisy, y0 = mine_loss_shortcuts(embed, ref, steps=0, generator=torch.Generator().manual_seed(5), **kwargs)
    assert torch.allclose(y0, noisy, atol=1e-6)  # no step: the shortcut is the noisy copy
    seen2, noisy2, y = mine_loss_shortcuts(embed, ref, steps=8, generator=torch.Generator().manual_seed(5), **kwargs)
    _, _, again = mine_loss_shortcuts(embed, ref, steps=8, generator=torch.Generator().manual_seed(5), **kwargs)
    assert torch.equal(y, again) and torch.equal(noisy, noisy2) and torch.equal(seen, seen2)
    assert y.shape == ref.shape and y.min() >= 0 and y.max() <= 1
    # the reference is seen as the metric sees a 32 px crop: smooth, not the original pixels
    assert (seen - ref).abs().mean() > 0.05
    small = torch.nn.functional.interpolate(seen, size=(32, 32), mode="bilinear", antialias=True)
    with torch.no_grad():
        e_ref = embed(seen)

        def loss(img: torch.Tensor) -> torch.Tensor:
            low = torch.nn.functional.interpolate(img, size=(32, 32), mode="bilinear", antialias=True)
            return cosine_distance(e_ref, embed(img)) + 0.1 * (low - small).abs().flatten(1).mean(1)

        assert torch.all(loss(y) < loss(noisy))  # the search finds what the loss prefers to the noisy copy
    assert all(p.grad is None for p in net.parameters())  # and leaves the student's gradients alone
    with pytest.raises(ValueError, match="sigma_range"):
        mine_loss_shortcuts(embed, ref, steps=1, sigma_range=(0.2, 0.1), size=32)
    with pytest.raises(ValueError, match="size"):
        mine_loss_shortcuts(embed, ref, steps=1, sigma_range=(0.1, 0.1), size=128)
    with pytest.raises(ValueError, match="steps"):
        mine_loss_shortcuts(embed, ref, steps=-1, sigma_range=(0.1, 0.1), size=32)


def test_buffer_evicts_oldest_samples_and_round_trips() -> None:
    buf = HardPairBuffer(3, seed=0)
    with pytest.raises(ValueError, match="empty"):
        buf.sample(1)
    for i in range(5):
        buf.add(torch.full((1, 3, 4, 4), i / 10), torch.full((1, 3, 4, 4), i / 10 + 0.5), torch.tensor([[float(i)]]))
    assert len(buf) == 3 and buf.added == 5
    r, y, d = buf.sample(10)
    assert r.shape == (3, 3, 4, 4) and r.dtype == torch.float32 and sorted(d.flatten().tolist()) == [2.0, 3.0, 4.0]
    refs, images = buf.pop(2)
    assert refs.shape == (2, 3, 4, 4) and len(buf) == 1
    assert torch.allclose(images - refs, torch.full_like(refs, 0.5), atol=1e-3)  # float16 storage
    buf.add(refs, images, torch.tensor([[7.0], [8.0]]))
    other = HardPairBuffer(3)
    other.load_state_dict(buf.state_dict())
    assert len(other) == 3 and torch.equal(torch.stack(other.distances), torch.stack(buf.distances))
    with pytest.raises(ValueError, match="capacity"):
        HardPairBuffer(0)


def test_stage_pairs_with_hard_pairs_trains_checkpoints_and_resumes(shared_dir: Path, tmp_path: Path) -> None:
    from lipsim_metric.train import engine

    run = tmp_path / "run"
    settings = [*tiny_pairs_run(shared_dir, tmp_path), f"output_dir={run}",
                "hard_pairs_per_step=2", "hard_mine_every=1", "hard_mine_refs=1", "hard_mine_steps=2"]
    engine.train(engine.load_config(None, [*settings, "max_steps=2"]))
    saved = run / "checkpoint" / "hard_pairs.safetensors"
    assert saved.is_file()
    engine.train(engine.load_config(None, [*settings, "max_steps=3"]))  # resumes with the saved buffer
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["hard_score"]) for r in log)
    assert 0.0 <= log[-1]["hard_z_rank"] <= 1.0
    from safetensors.torch import load_file

    # one mined pair per step, one teacher: 2 saved at step 2, reloaded on resume, + 1 at step 3 (1 without resume)
    assert load_file(str(saved))["distances"].shape == (3, 1)
    # persistent chains: every mining continues one buffered pair (the buffer does not grow) once there is one
    chain = tmp_path / "chain"
    settings = [s.replace(f"output_dir={run}", f"output_dir={chain}") for s in settings]
    engine.train(engine.load_config(None, [*settings, "max_steps=3", "hard_mine_refs=1", "hard_continue_fraction=1"]))
    assert load_file(str(chain / "checkpoint" / "hard_pairs.safetensors"))["distances"].shape == (1, 1)
    # loss shortcuts: each search adds the noisy copy and its shortcut (2 pairs per reference per mining)
    short = tmp_path / "short"
    settings = [s.replace(f"output_dir={chain}", f"output_dir={short}") for s in settings]
    engine.train(engine.load_config(None, [*settings, "max_steps=2", "hard_kind=shortcut", "hard_sizes=[32, 64]"]))
    assert load_file(str(short / "checkpoint" / "hard_pairs.safetensors"))["distances"].shape == (4, 1)


@pytest.mark.parametrize("override, match", [
    (["hard_pairs_per_step=-1"], "hard_pairs_per_step"),
    (["hard_mine_every=0"], "hard_mine_every"),
    (["hard_rms=[0.3, 0.1]"], "hard_rms"),
    (["hard_continue_fraction=1.5"], "hard_continue_fraction"),
    (["stage=distill", "hard_pairs_per_step=2"], "stage 'pairs'"),
    (["hard_kind=sideways"], "hard_kind"),
    (["hard_kind=shortcut", "hard_continue_fraction=0.5"], "persistent chains"),
    (["hard_kind=shortcut", "hard_sigma=[0.2, 0.1]"], "hard_sigma"),
    (["hard_kind=shortcut", "hard_sizes=[4]"], "hard_sizes"),
])
def test_hard_pair_config_is_checked(override: list[str], match: str) -> None:
    from lipsim_metric.train import engine

    with pytest.raises(ValueError, match=match):
        engine.load_config(None, ["stage=pairs", "labels=somewhere", *override])
