"""The denoiser adversary of stage "pairs" (lipsim_metric.train.denoiser_adversary, ``hard_kind: denoiser``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from data_fixtures import tiny_embedder, tiny_pairs_run
from lipsim_metric.train.denoiser_adversary import DenoiserAdversary, TinyDenoiser, within_group_ranking
from lipsim_metric.train.hard_pairs import HardPairBuffer, TeacherLabeller


def test_tiny_denoiser_starts_as_the_identity() -> None:
    x = torch.rand(2, 3, 16, 16)
    assert torch.equal(TinyDenoiser(8, 3)(x), x)
    with pytest.raises(ValueError, match="depth"):
        TinyDenoiser(8, 1)


def test_adversary_lowers_its_loss_leaves_the_student_alone_and_restarts() -> None:
    net, embed = tiny_embedder()
    refs = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    adv = DenoiserAdversary(width=8, depth=3, lr=3e-3, crop=32, sigma_range=(0.1, 0.1), batch=4, reset_every=30,
                            image_size=64, seed=0)
    first = adv.step(embed, refs)
    assert first["clean"].shape == (4, 3, 32, 32) and first["out_seen"].shape == (4, 3, 64, 64)
    assert torch.equal(first["out"], first["noisy"])  # the first output is the untrained identity's
    assert all(p.grad is None for p in net.parameters())  # only the denoiser's gradients were taken
    losses = [float(adv.step(embed, refs)["loss"]) for _ in range(28)]
    assert sum(losses[-5:]) < sum(losses[:5])  # it learns against the student
    assert adv.since_reset == 29 and adv.resets == 0
    adv.step(embed, refs)
    res = adv.step(embed, refs)  # the 31st update: a fresh identity first
    assert adv.resets == 1 and adv.since_reset == 1 and torch.equal(res["out"], res["noisy"])
    # seeded: the same seed gives the same crops, noise and updates
    a = DenoiserAdversary(width=8, depth=3, crop=32, batch=2, image_size=64, seed=5)
    b = DenoiserAdversary(width=8, depth=3, crop=32, batch=2, image_size=64, seed=5)
    ra, rb = a.step(embed, refs), b.step(embed, refs)
    assert torch.equal(ra["noisy"], rb["noisy"]) and torch.equal(ra["loss"], rb["loss"])
    with pytest.raises(ValueError, match="smaller than the adversary's crop"):
        DenoiserAdversary(crop=128, image_size=64).step(embed, refs)
    with pytest.raises(ValueError, match="sigma_range"):
        DenoiserAdversary(sigma_range=(0.2, 0.1))


def test_within_group_ranking_follows_unanimous_teachers() -> None:
    # two groups: (noisy, out). Teachers (2 of them): group 0 says the output is closer, group 1 disagrees.
    teacher = torch.tensor([[1.0, 0.5], [0.0, -0.5], [0.2, 0.0], [0.1, 0.3]])
    right = torch.tensor([0.0, -1.0, 5.0, 5.0])  # group 0: student also finds the output closer
    wrong = torch.tensor([-1.0, 0.0, 5.0, 5.0])
    loss_r, agree_r = within_group_ranking(right, teacher, temperature=0.1)
    loss_w, agree_w = within_group_ranking(wrong, teacher, temperature=0.1)
    assert float(agree_r) == 1.0 and float(agree_w) == 0.0  # only group 0 is used
    assert math.isclose(float(loss_r), math.log1p(math.exp(-10.0)), rel_tol=1e-5)
    assert math.isclose(float(loss_w), math.log1p(math.exp(10.0)), rel_tol=1e-5)
    none, agree = within_group_ranking(right[2:], teacher[2:])
    assert float(none) == 0.0 and math.isnan(float(agree))
    with pytest.raises(ValueError, match="2G"):
        within_group_ranking(right[:3], teacher[:3])


def test_grouped_buffer_keeps_groups_whole() -> None:
    buf = HardPairBuffer(4, seed=0, group=2)
    for i in range(3):  # 6 pairs into room for 4: the oldest group leaves
        x = torch.full((2, 3, 4, 4), float(i) / 10)
        buf.add(x, x, torch.tensor([[2.0 * i], [2.0 * i + 1]]))
    assert len(buf) == 4
    for _ in range(5):
        _, _, d = buf.sample(2)
        d = d.flatten().tolist()
        assert len(d) == 2 and d[1] == d[0] + 1 and d[0] in (2.0, 4.0)  # one whole group, in order
    assert len(buf.sample(8)[2]) == 4
    with pytest.raises(ValueError, match="whole groups"):
        buf.add(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4), torch.zeros(1, 1))
    with pytest.raises(ValueError, match="group 1"):
        buf.pop(2)
    with pytest.raises(ValueError, match="multiple of group"):
        HardPairBuffer(3, group=2)


def test_labeller_copies_equal_pairwise_calls(shared_dir: Path) -> None:
    lab = TeacherLabeller(["lpips-alex", "dists"], str(shared_dir / "teachers"))
    g = torch.Generator().manual_seed(0)
    ref, a, b = (torch.rand(2, 3, 64, 64, generator=g) for _ in range(3))
    both = lab.copies(ref, [a, b])
    assert both.shape == (2, 2, 2)
    pairwise = [torch.stack([net(ref, y).flatten() for net in lab.nets], dim=1) for y in (a, b)]  # the teachers' own
    assert torch.allclose(both[:, 0], pairwise[0], rtol=1e-4, atol=1e-6)
    assert torch.allclose(both[:, 1], pairwise[1], rtol=1e-4, atol=1e-6)
    assert torch.allclose(lab(ref, a), pairwise[0], rtol=1e-4, atol=1e-6)  # one copy: the pairwise labeller


def test_stage_pairs_with_the_denoiser_adversary_trains(shared_dir: Path, tmp_path: Path) -> None:
    from lipsim_metric.train import engine

    run = tmp_path / "run"
    settings = [*tiny_pairs_run(shared_dir, tmp_path), f"output_dir={run}", "max_steps=3",
                "hard_kind=denoiser", "hard_pairs_per_step=4", "hard_mine_every=2", "hard_mine_refs=2",
                "hard_sizes=[32]", "hard_denoiser_width=8", "hard_denoiser_depth=3", "hard_denoiser_batch=2",
                "hard_within_weight=1.0", "hard_buffer=8", "hard_lr=0.001"]
    with pytest.raises(ValueError, match="not among the objective's teachers"):
        engine.train(engine.load_config(None, [*settings, "hard_within_teachers=[dists]"]))
    engine.train(engine.load_config(None, [*settings, "hard_within_teachers=[lpips-alex]"]))
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["adv_psnr_noisy"]) for r in log)
    assert all("within" in r and "within_agreement" in r for r in log)
    from safetensors.torch import load_file

    # mined at steps 0 (empty buffer) and 2: two crops, two pairs each
    assert load_file(str(run / "checkpoint" / "hard_pairs.safetensors"))["distances"].shape == (8, 1)


@pytest.mark.parametrize("override, match", [
    (["hard_within_weight=1"], "needs hard_kind 'denoiser'"),
    (["hard_kind=denoiser", "hard_pairs_per_step=3"], "even"),
    (["hard_kind=denoiser", "hard_sizes=[32, 64]"], "one size"),
])
def test_denoiser_config_is_checked(override: list[str], match: str) -> None:
    from lipsim_metric.train import engine

    with pytest.raises(ValueError, match=match):
        engine.load_config(None, ["stage=pairs", "labels=somewhere", *override])
