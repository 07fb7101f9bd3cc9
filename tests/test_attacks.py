"""Attacks (2AFC and distance), the certificate soundness check, the baseline metrics and the robustness report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lipsim_metric import LipSim
from lipsim_metric.evaluation.attacks import (
    TWO_AFC_METHODS,
    TwoAFCModel,
    attack_2afc,
    attack_distance,
    check_certificates,
    perturb_to_maximize,
    perturbation_norm,
)
from lipsim_metric.evaluation.baselines import build_metric, gaussian_window, ssim
from lipsim_metric.evaluation.robustness import (
    AttackConfig,
    generated_triplets,
    main,
    retrieval_attack_experiment,
    retrieval_from_triplets,
    run_report,
    run_retrieval,
    save_adversarial_figure,
    soundness_check,
)


@pytest.fixture(scope="module")
def metric(small_weights: str) -> LipSim:
    """The small random lipsim-fast of conftest, loaded like real weights."""
    return LipSim(weights=small_weights)


@pytest.fixture(scope="module")
def mse() -> torch.nn.Module:
    return build_metric("mse")


def triplets(n: int, seed: int, size: int = 64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ref = torch.rand(n, 3, size, size, generator=g)
    x0 = (ref + 0.15 * torch.randn(n, 3, size, size, generator=g)).clamp(0, 1)
    x1 = (ref + 0.25 * torch.randn(n, 3, size, size, generator=g)).clamp(0, 1)
    return ref, x0, x1


def within(adv: torch.Tensor, x: torch.Tensor, norm: str, eps: float | torch.Tensor) -> bool:
    """Budget check up to float32 rounding of x + delta (2^-24 per coordinate)."""
    rounding = x[0].numel() ** 0.5 * 2.0**-24 if norm == "l2" else 2.0**-24
    return bool(torch.all(perturbation_norm(adv, x, norm) <= eps * (1 + 1e-5) + rounding))


def judgement(fn: torch.nn.Module, ref: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return (fn(ref, x1) < fn(ref, x0)).long()


# ----------------------------------------------------------------------------------------------------------------
# 2AFC attacks
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", TWO_AFC_METHODS)
@pytest.mark.parametrize("norm, large, tiny", [("l2", 8.0, 1e-3), ("linf", 0.1, 1e-5)])
def test_attack_flips_mse_at_large_budget_and_respects_it(mse, method, norm, large, tiny) -> None:
    ref, x0, x1 = triplets(6, seed=0)
    clean = judgement(mse, ref, x0, x1)
    # MSE margins here need an l2 step of about (||ref-x1||^2 - ||ref-x0||^2) / (2 ||x0-x1||) ~ 6 to flip
    adv = attack_2afc(mse, ref, x0, x1, large, norm, method, steps=15)
    assert (judgement(mse, adv, x0, x1) != clean).float().mean() >= 0.75
    assert within(adv, ref, norm, large)
    assert adv.min() >= 0 and adv.max() <= 1
    adv_tiny = attack_2afc(mse, ref, x0, x1, tiny, norm, method, steps=3)
    assert torch.equal(judgement(mse, adv_tiny, x0, x1), clean)
    assert within(adv_tiny, ref, norm, tiny)


def test_attack_on_lipsim_flips_beyond_the_radius_and_uses_per_sample_budgets(metric) -> None:
    ref, x0, x1 = triplets(4, seed=1)
    cert = metric.certify_2afc(ref, x0, x1)
    eps = 6 * cert.radius
    adv = attack_2afc(metric, ref, x0, x1, eps, "l2", "apgd-ce", steps=8)
    assert within(adv, ref, "l2", eps)
    assert (judgement(metric, adv, x0, x1) != cert.prediction).sum() >= 2


def test_attack_defends_a_given_target_and_skips_wrong_ones(mse) -> None:
    ref, x0, x1 = triplets(4, seed=2)
    clean = judgement(mse, ref, x0, x1)
    target = clean.clone()
    target[0] = 1 - target[0]  # already wrong for this label: returned unchanged
    adv = attack_2afc(mse, ref, x0, x1, 8.0, "l2", "apgd-margin", steps=10, target=target)
    assert torch.equal(adv[0], ref[0])
    assert torch.all(judgement(mse, adv[1:], x0[1:], x1[1:]) != target[1:])


def test_attack_is_deterministic_and_leaves_the_global_rng_alone(mse) -> None:
    ref, x0, x1 = triplets(2, seed=3)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = attack_2afc(mse, ref, x0, x1, 2.0, "l2", "pgd", steps=5, restarts=2, seed=7)
    after = torch.rand(1)
    b = attack_2afc(mse, ref, x0, x1, 2.0, "l2", "pgd", steps=5, restarts=2, seed=7)
    assert torch.equal(a, b)
    assert torch.equal(before, after)


def test_attack_errors(mse) -> None:
    ref, x0, x1 = triplets(2, seed=4)
    with pytest.raises(ValueError, match="method must be one of"):
        attack_2afc(mse, ref, x0, x1, 1.0, method="fgsm")
    with pytest.raises(ValueError, match="norm must be one of"):
        attack_2afc(mse, ref, x0, x1, 1.0, norm="l1")
    with pytest.raises(ValueError, match="eps must be finite and >= 0"):
        attack_2afc(mse, ref, x0, x1, -1.0)
    with pytest.raises(ValueError, match="one value per sample"):
        attack_2afc(mse, ref, x0, x1, [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match=r"must be in \[0, 1\]"):
        attack_2afc(mse, ref * 2, x0, x1, 1.0)
    with pytest.raises(ValueError, match="same batch size"):
        attack_2afc(mse, ref, x0[:1], x1, 1.0)
    with pytest.raises(ValueError, match="target must hold"):
        attack_2afc(mse, ref, x0, x1, 1.0, target=torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="steps must be >= 1"):
        attack_2afc(mse, ref, x0, x1, 1.0, steps=0)


def test_two_afc_model_logits(mse) -> None:
    ref, x0, x1 = triplets(3, seed=5)
    logits = TwoAFCModel(mse, x0, x1)(ref)
    assert torch.allclose(logits, torch.stack([-mse(ref, x0), -mse(ref, x1)], dim=1))
    assert torch.equal(logits.argmax(1), judgement(mse, ref, x0, x1))


def test_native_apgd_is_as_strong_as_torchattacks(mse) -> None:
    torchattacks = pytest.importorskip("torchattacks")
    ref, x0, x1 = triplets(16, seed=6)
    clean = judgement(mse, ref, x0, x1)
    eps = 6.0  # near the flipping budget, where attack quality shows
    theirs = torchattacks.APGD(TwoAFCModel(mse, x0, x1), norm="L2", eps=eps, steps=20, loss="ce")(ref, clean)
    ours = attack_2afc(mse, ref, x0, x1, eps, "l2", "apgd-ce", steps=20)
    flips_theirs = int((judgement(mse, theirs, x0, x1) != clean).sum())
    flips_ours = int((judgement(mse, ours, x0, x1) != clean).sum())
    assert flips_ours >= flips_theirs


# ----------------------------------------------------------------------------------------------------------------
# Distance attacks and the generic optimiser
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm, eps", [("l2", 1.0), ("linf", 4 / 255)])
def test_distance_attack_moves_the_distance_both_ways(metric, norm, eps) -> None:
    ref, x0, _ = triplets(3, seed=7)
    up = attack_distance(metric, ref, ref, eps, norm, maximize=True, steps=10)
    assert within(up, ref, norm, eps) and up.min() >= 0 and up.max() <= 1
    with torch.no_grad():
        assert torch.all(metric(up, ref) > 1e-4)
        # 1-Lipschitz: the distance can grow by at most ||delta||_2 (input norm 1 at the native size)
        assert torch.all(metric(up, ref) <= perturbation_norm(up, ref, "l2") + 1e-5)
    down = attack_distance(metric, x0, ref, eps, norm, maximize=False, steps=10, method="apgd")
    with torch.no_grad():
        assert torch.all(metric(down, ref) < metric(x0, ref))


def test_apgd_finds_the_box_constrained_optimum() -> None:
    # maximise <w, x> over an l2 ball intersected with [0, 1]: the optimum pushes along w until the box stops it
    x = torch.full((2, 1, 4, 4), 0.5)
    w = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    result = perturb_to_maximize(lambda z, rows: (z * w[rows]).flatten(1).sum(1), x, 10.0, "linf", "apgd", steps=20)
    assert torch.allclose(result.adversarial, (w > 0).float())
    small = perturb_to_maximize(lambda z, rows: (z * w[rows]).flatten(1).sum(1), x, 0.1, "l2", "apgd", steps=50)
    best = x + 0.1 * w / w.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    assert torch.allclose(small.adversarial, best, atol=2e-3)


# ----------------------------------------------------------------------------------------------------------------
# Soundness of the certificates
# ----------------------------------------------------------------------------------------------------------------


def _assert_no_attack_breaks_a_certificate(metric: LipSim, n: int, steps: int) -> None:
    ref, x0, x1 = triplets(n, seed=8)
    report = check_certificates(metric, ref, x0, x1, steps=steps, restarts=1)
    assert report["tried"] == n and report["certified"] == n and report["pair_certified"] == n
    assert report["flips"] == 0 and report["pair_flips"] == 0 and report["half_flips"] == 0
    # the attack is real: it removes a visible part of what each certificate allows
    assert report["max_margin_used"] > 0.3 and report["max_half_used"] > 0.2


def test_no_attack_breaks_a_certificate(metric) -> None:
    # 3 triplets x 5 steps already use ~0.77 of the 2AFC margin and ~0.50 of the half-distance one (8 x 15: 0.75 and
    # 0.50), so a certificate that overstated its radius would be broken here too.
    _assert_no_attack_breaks_a_certificate(metric, n=3, steps=5)


@pytest.mark.slow
def test_no_attack_breaks_a_certificate_more_triplets_and_steps(metric) -> None:
    _assert_no_attack_breaks_a_certificate(metric, n=8, steps=15)


def test_the_soundness_check_finds_flips_outside_the_certificates(metric) -> None:
    ref, x0, x1 = triplets(2, seed=9)
    report = check_certificates(metric, ref, x0, x1, steps=5, restarts=1, budget_factor=6.0)
    assert report["flips"] > 0 and report["half_flips"] > 0


def test_check_certificates_runs_only_the_selected_checks(metric) -> None:
    ref, x0, x1 = triplets(3, seed=11)
    full = check_certificates(metric, ref, x0, x1, steps=4, restarts=1)
    only = check_certificates(metric, ref, x0, x1, steps=4, restarts=1, checks=("2afc",))
    assert only["certified"] == full["certified"] == 3 and only["flips"] == 0
    assert only["max_margin_used"] == pytest.approx(full["max_margin_used"])  # same attack, same seed
    assert only["pair_certified"] == only["half_certified"] == 0
    half = check_certificates(metric, ref, x0, x1, steps=4, restarts=1, checks=("half",))
    assert half["certified"] == 0 and half["half_certified"] == full["half_certified"] and half["pair_certified"] == 0
    with pytest.raises(ValueError, match="subset of"):
        check_certificates(metric, ref, x0, x1, checks=("2afc", "linf"))
    with pytest.raises(ValueError, match="subset of"):
        check_certificates(metric, ref, x0, x1, checks=())


def test_soundness_check_resumes_from_its_cache(metric, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import lipsim_metric.evaluation.attacks as attacks

    data = TinyTripletSet(3)  # two batches (2 + 1): enough to cut the last one off
    cache = tmp_path / "soundness_cache.json"
    kwargs = dict(n=3, steps=3, restarts=1, seed=0, batch_size=2, device="cpu", checks=("2afc", "half"),
                  cache=cache, source="tiny", progress=False)
    first = soundness_check(metric, data, **kwargs)
    assert first["tried"] == first["triplets"] == 3 and first["flips"] == 0 and first["half_flips"] == 0
    assert first["certified"] == 3 and first["pair_certified"] == 0 and first["checks"] == ["2afc", "half"]
    assert 0 < first["mean_margin_used"] <= first["max_margin_used"] < 1
    saved = json.loads(cache.read_text())
    assert sorted(saved["batches"]) == ["0", "2"]
    # an interrupted run: the last batch is missing; the rerun attacks only that one
    del saved["batches"]["2"]
    cache.write_text(json.dumps(saved))
    calls = []
    real = attacks.check_certificates

    def counting(m, ref, *a, **k):
        calls.append(len(ref))
        return real(m, ref, *a, **k)

    monkeypatch.setattr(attacks, "check_certificates", counting)
    again = soundness_check(metric, data, **kwargs)
    assert calls == [1]
    assert {k: v for k, v in again.items() if k != "seconds"} == {k: v for k, v in first.items() if k != "seconds"}
    # another configuration does not reuse the cache
    calls.clear()
    soundness_check(metric, data, **{**kwargs, "steps": 2})
    assert calls == [2, 1]


def test_generated_soundness_triplets_are_reproducible(noise_photos) -> None:
    folder = noise_photos(3, 48, 64)
    a, b = generated_triplets(folder, 5, seed=1, size=32), generated_triplets(folder, 5, seed=1, size=32)
    c = generated_triplets(folder, 5, seed=2, size=32)
    assert len(a) == 5 and a[0]["ref"].shape == (3, 32, 32)
    assert all(torch.equal(a[i][k], b[i][k]) for i in range(5) for k in ("ref", "x0", "x1"))
    assert not all(torch.equal(a[i]["x0"], c[i]["x0"]) for i in range(5))


def test_soundness_only_command_on_generated_triplets(small_weights: str, tmp_path: Path, noise_photos,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    folder = noise_photos(2, 48, 64)
    out = tmp_path / "out"
    argv = ["--soundness-only", "--soundness", "3", "--soundness-images", str(folder), "--soundness-checks", "2afc",
            "--weights", small_weights, "--out", str(out), "--steps", "2", "--batch-size", "2", "--quiet"]
    assert main(argv) == 0
    saved = json.loads((out / "soundness.json").read_text())
    assert saved["tried"] == 3 and saved["flips"] == 0 and saved["checks"] == ["2afc"]
    assert "generated, seed 1" in saved["source"] and (out / "soundness_cache.json").is_file()
    assert not (out / "results.json").exists()  # no report in a soundness-only run
    capsys.readouterr()
    for bad, message in ((["--soundness-checks", "2afc,bogus"], "subset of 2afc,pair,half"),
                         (["--soundness", "0"], "needs --soundness N"),
                         (["--soundness-images", ""], "--triplets is required")):
        with pytest.raises(SystemExit):
            main(argv + bad)
        assert message in capsys.readouterr().err


def test_check_certificates_needs_lipsim(mse) -> None:
    ref, x0, x1 = triplets(1, seed=10)
    with pytest.raises(TypeError, match="needs a LipSim"):
        check_certificates(mse, ref, x0, x1)


# ----------------------------------------------------------------------------------------------------------------
# Baselines
# ----------------------------------------------------------------------------------------------------------------


def naive_ssim(a: np.ndarray, b: np.ndarray, size: int = 11, sigma: float = 1.5) -> float:
    """Wang et al. (2004) Eq. 13 with explicit 2-D windows, float64, channels averaged."""
    g = np.exp(-((np.arange(size) - (size - 1) / 2) ** 2) / (2 * sigma**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01**2, 0.03**2
    values = []
    for ch in range(a.shape[0]):
        for i in range(a.shape[1] - size + 1):
            for j in range(a.shape[2] - size + 1):
                pa, pb = a[ch, i : i + size, j : j + size], b[ch, i : i + size, j : j + size]
                ma, mb = (w * pa).sum(), (w * pb).sum()
                va, vb = (w * (pa - ma) ** 2).sum(), (w * (pb - mb) ** 2).sum()
                cov = (w * (pa - ma) * (pb - mb)).sum()
                values.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(values))


def test_ssim_matches_the_definition() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, 16, 18, generator=g, dtype=torch.float64)
    b = (a + 0.2 * torch.randn(2, 3, 16, 18, generator=g, dtype=torch.float64)).clamp(0, 1)
    ours = ssim(a, b)
    for k in range(2):
        assert ours[k].item() == pytest.approx(naive_ssim(a[k].numpy(), b[k].numpy()), abs=1e-10)
    assert torch.allclose(gaussian_window(11, 1.5).sum(), torch.tensor(1.0))


def test_ssim_distance_properties() -> None:
    dist = build_metric("ssim")
    g = torch.Generator().manual_seed(1)
    a, b = torch.rand(2, 3, 32, 32, generator=g), torch.rand(2, 3, 32, 32, generator=g)
    assert torch.allclose(dist(a, a), torch.zeros(2), atol=1e-6)
    assert torch.allclose(dist(a, b), dist(b, a), atol=1e-6)
    a.requires_grad_(True)
    (grad,) = torch.autograd.grad(dist(a, b).sum(), a)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert not any(p.requires_grad for p in dist.parameters())
    with pytest.raises(ValueError, match="needs H, W >= 11"):
        dist(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))


def test_pixel_baselines() -> None:
    a, b = torch.zeros(1, 3, 8, 8), torch.full((1, 3, 8, 8), 0.1)
    assert build_metric("mse")(a, b).item() == pytest.approx(0.01)
    assert build_metric("psnr")(a, b).item() == pytest.approx(-20.0, abs=1e-4)
    assert math.isfinite(build_metric("psnr")(a, a).item())


def test_build_metric_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown metric 'lpips-squeeze'"):
        build_metric("lpips-squeeze")
    with pytest.raises(ValueError, match="only used by 'lipsim'"):
        build_metric("ssim", weights="x.safetensors")
    with pytest.raises(ValueError, match=r"must be in \[0, 1\]"):
        build_metric("mse")(torch.full((1, 3, 8, 8), 2.0), torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="same shape"):
        build_metric("mse")(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 9))
    with pytest.raises(FileNotFoundError):
        build_metric("lipsim", weights=tmp_path / "missing.safetensors")


def test_dreamsim_without_the_package_says_how_to_install() -> None:
    pytest.importorskip("torch")
    try:
        import dreamsim  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install dreamsim"):
            build_metric("dreamsim")
    else:
        pytest.skip("dreamsim is installed")


def test_lpips_alex_is_flipped_at_a_small_budget(shared_dir: Path) -> None:
    lpips = build_metric("lpips-alex", teachers_dir=shared_dir / "teachers")
    ref, x0, x1 = triplets(4, seed=11)
    clean = judgement(lpips, ref, x0, x1)
    adv = attack_2afc(lpips, ref, x0, x1, 1.0, "l2", "apgd-ce", steps=5)
    assert (judgement(lpips, adv, x0, x1) != clean).sum() >= 2


# ----------------------------------------------------------------------------------------------------------------
# Report and retrieval experiment
# ----------------------------------------------------------------------------------------------------------------


class TinyTripletSet(torch.utils.data.Dataset):
    """In-memory stand-in for a stored triplet set (the attributes the report reads)."""

    def __init__(self, n: int = 6) -> None:
        self.ref, self.x0, self.x1 = triplets(n, seed=12)
        self.target = (build_metric("mse")(self.ref, self.x1) < build_metric("mse")(self.ref, self.x0)).float()
        self.unanimous = torch.ones(n, dtype=torch.bool)
        self.unanimous[1] = False
        self.ref_row = torch.arange(n)

    def __len__(self) -> int:
        return len(self.ref)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"ref": self.ref[i], "x0": self.x0[i], "x1": self.x1[i]}


def _report_kwargs(figure: bool) -> dict:
    return dict(limit=4, l2_eps=(0.5, 8.0), linf_eps=(2 / 255,), config=AttackConfig(steps=3, batch_size=2),
                distance_eps=0.5, progress=False, figure=figure, dataset_id="tiny")


def test_report_end_to_end_and_resumable(metric, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Matplotlib's savefig is most of this test's time on a loaded CPU: the plots are checked once here, the
    # adversarial figures in test_adversarial_figure and (slow) test_report_with_adversarial_figure.
    import lipsim_metric.evaluation.robustness as robustness

    data = TinyTripletSet()
    metrics = {"lipsim": metric, "mse": build_metric("mse")}
    kwargs = _report_kwargs(figure=False)
    run_report(data, metrics, tmp_path, **kwargs)
    for name in ("results.json", "results.md", "accuracy_vs_eps.png", "distance_attack.png"):
        assert (tmp_path / name).is_file()
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["n_triplets"] == 4 and set(saved["metrics"]) == {"lipsim", "mse"}
    assert saved["metrics"]["mse"]["natural"] == 1.0  # the labels are MSE's own judgements
    assert saved["metrics"]["mse"]["l2"]["8.0"] < 1.0
    cert = saved["lipsim_certified"]
    for eps, acc in cert["l2"].items():  # certified accuracy never exceeds what the attack leaves
        assert acc <= saved["metrics"]["lipsim"]["l2"][eps] + 1e-9
    assert "| lipsim (certified) |" in (tmp_path / "results.md").read_text()

    cache = tmp_path / "cache" / "mse" / "l2_8.json"
    full = json.loads(cache.read_text())
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("*.json") if p != cache}
    # an interrupted run: only the first batch was done (the plots were checked above; skip redrawing them)
    monkeypatch.setattr(robustness, "_plot_accuracy", lambda *a, **k: None)
    monkeypatch.setattr(robustness, "_plot_distance_hist", lambda *a, **k: None)
    partial = {**full, "correct": full["correct"][:2], "d0": full["d0"][:2], "d1": full["d1"][:2], "complete": False}
    cache.write_text(json.dumps(partial))
    run_report(data, metrics, tmp_path, **kwargs)
    assert json.loads(cache.read_text()) == full  # resumed, same result as the uninterrupted run
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())  # finished entries were not recomputed


def test_adversarial_figure(metric, tmp_path: Path) -> None:
    data = TinyTripletSet()
    mse = build_metric("mse")
    ref, x0, x1 = data.ref[:1], data.x0[:1], data.x1[:1]
    adv = attack_2afc(mse, ref, x0, x1, 8.0, "l2", steps=3)
    figure = save_adversarial_figure(tmp_path / "fig.png", ref, x0, x1, adv, "mse", mse, metric)
    assert figure.is_file() and figure.stat().st_size > 1000


@pytest.mark.slow
def test_report_with_adversarial_figure(metric, tmp_path: Path) -> None:
    result = run_report(TinyTripletSet(), {"lipsim": metric, "mse": build_metric("mse")}, tmp_path,
                        **_report_kwargs(figure=True))
    assert (tmp_path / "results.json").is_file()
    if result.get("figure"):
        assert Path(result["figure"]).is_file()


def test_report_command_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--triplets", str(tmp_path / "missing"), "--out", str(tmp_path / "out")]) == 2
    assert "no triplet-set manifest" in capsys.readouterr().err


def test_retrieval_attack_experiment(metric) -> None:
    g = torch.Generator().manual_seed(13)
    gallery = torch.rand(4, 3, 64, 64, generator=g)
    queries = (gallery + 0.05 * torch.randn(4, 3, 64, 64, generator=g)).clamp(0, 1)
    eps = [0.0, 0.5, 8.0]
    lip = retrieval_attack_experiment(metric, gallery, queries, eps, steps=5)
    base = retrieval_attack_experiment(build_metric("mse"), gallery, queries, eps, steps=5)
    assert lip["retention"][0] == 1.0 and base["certified"] is None
    assert all(r >= c for r, c in zip(lip["retention"], lip["certified"], strict=True))  # certified => retained
    assert lip["certified"][1] > 0
    with pytest.raises(ValueError, match="at least 2 images"):
        retrieval_attack_experiment(metric, gallery[:1], queries, eps)


def test_retrieval_run_on_a_triplet_set(metric, tmp_path: Path) -> None:
    data = TinyTripletSet(5)
    gallery, queries, answers = retrieval_from_triplets(data, 4)
    assert gallery.shape[0] == queries.shape[0] == 4 and torch.equal(answers, torch.arange(4))
    assert torch.equal(queries[2], data.x0[2]) and torch.equal(gallery[2], data.ref[2])
    result = run_retrieval(data, {"lipsim": metric, "mse": build_metric("mse")}, 4, [0.25, 8.0],
                           AttackConfig(steps=3), "cpu", tmp_path)
    saved = json.loads((tmp_path / "retrieval.json").read_text())
    assert saved["gallery_size"] == 4 and set(saved["metrics"]) == {"lipsim", "mse"}
    lip = saved["metrics"]["lipsim"]
    assert 0.0 <= lip["clean_top1_accuracy"] <= 1.0
    assert all(r >= c for r, c in zip(lip["retention"], lip["certified"], strict=True))
    assert "| lipsim (certified) |" in (tmp_path / "retrieval.md").read_text()
    assert result["metrics"]["mse"]["certified"] is None
    with pytest.raises(ValueError, match="at least 2 reference photos"):
        retrieval_from_triplets(data, 1)


def test_finished_samples_are_not_evaluated_again(mse) -> None:
    """stop_above: samples already past the goal leave the batch; the others get the same result as without it."""
    from lipsim_metric.evaluation.attacks import _apgd_run, _pgd_run

    ref, x0, x1 = triplets(6, seed=21)
    target = judgement(mse, ref, x0, x1)
    seen: list[int] = []

    def loss(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        seen.append(len(rows))
        d0, d1 = mse(x, x0[rows]), mse(x, x1[rows])
        return torch.where(target[rows] == 1, d1 - d0, d0 - d1)  # > 0: judgement flipped

    eps = torch.tensor([0.05, 0.05, 0.05, 8.0, 8.0, 8.0])  # three budgets too small to flip, three large
    rows = torch.arange(6)
    for run in (_apgd_run, _pgd_run):
        seen.clear()
        _, full = run(loss, ref, rows, eps, "l2", 20, torch.Generator().manual_seed(0))
        evaluated_full = sum(seen)
        seen.clear()
        _, early = run(loss, ref, rows, eps, "l2", 20, torch.Generator().manual_seed(0), stop_above=0.0)
        assert sum(seen) < evaluated_full
        assert torch.equal(early > 0, full > 0)  # the same triplets are broken
        kept = early <= 0
        torch.testing.assert_close(early[kept], full[kept])  # unfinished samples: the same trajectory
