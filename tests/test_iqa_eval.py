"""``evaluate iqa`` end to end on fixture datasets: SRCC signs, certified figures and their soundness, the resumable
cache, sharding across two processes, the 2AFC/JND/NIGHT reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from iqa_fixtures import MAKERS, make_bapps_2afc, make_bapps_jnd, make_night, make_rated_csv
from lipsim_metric import LipSim
from lipsim_metric.evaluation.attacks import attack_distance
from lipsim_metric.evaluation.certified_order import certified_order_shares, distance_shift_bound
from lipsim_metric.evaluation.iqa import load_task, parse_shard
from lipsim_metric.evaluation.iqa_datasets import load_kadid10k
from lipsim_metric.images import load_image
from lipsim_metric.train import evaluate as E

REPO = Path(__file__).resolve().parents[1]


def _run(tmp: Path, spec: str, *extra: str, out: str = "out") -> dict:
    assert E.main(["iqa", "--dataset", spec, "--out", str(tmp / out), "--quiet", *extra]) == 0
    stem = spec.split(":")[0]
    return json.loads((tmp / out / f"{stem}.json").read_text())


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_srcc_is_positive_for_a_sensible_distance_whatever_the_score_direction(name: str, tmp_path: Path) -> None:
    if name == "live":
        pytest.importorskip("scipy")
    root = MAKERS[name](tmp_path / name)
    report = _run(tmp_path, f"{name}:{root}", "--metrics", "mse")
    overall = report["metrics"]["mse"]["overall"]
    assert overall["n"] == 12
    assert overall["srcc"] > 0.7 and overall["krcc"] > 0.5 and overall["plcc"] > 0.7
    for block in report["metrics"]["mse"]["per_type"].values():  # within a type the fixture is perfectly monotone
        assert block["srcc"] > 0.9


def test_csv_direction_flags(tmp_path: Path) -> None:
    path = make_rated_csv(tmp_path / "csv")
    lower = _run(tmp_path, f"csv:{path}", "--metrics", "mse", "--lower-is-better", out="lower")
    higher = _run(tmp_path, f"csv:{path}", "--metrics", "mse", "--higher-is-better", out="higher")
    assert lower["metrics"]["mse"]["overall"]["srcc"] > 0.7  # the fixture's scores are DMOS-like
    assert higher["metrics"]["mse"]["overall"]["srcc"] == pytest.approx(-lower["metrics"]["mse"]["overall"]["srcc"])
    assert E.main(["iqa", "--dataset", f"csv:{path}", "--out", str(tmp_path / "x"), "--quiet"]) == 2


def test_lipsim_report_cache_and_resume(tmp_path: Path, small_weights: str) -> None:
    root = MAKERS["kadid10k"](tmp_path / "kadid")
    args = ("--metrics", "lipsim", "--weights", small_weights, "--l2-eps", "0.01,0.05")
    report = _run(tmp_path, f"kadid10k:{root}", *args)
    cert = report["metrics"]["lipsim"]["certified_order"]
    for scope in ("same_reference", "pooled"):
        block = cert[scope]
        shares = [block[f"certified_concordant@{k}"] for k in ("0.01", "0.05", "36/255", "72/255", "108/255")]
        assert block["concordant"] >= shares[0] and shares == sorted(shares, reverse=True)
        assert all(block[f"certified@{k}"] >= block[f"certified_concordant@{k}"] for k in ("0.01", "36/255"))
    assert cert["same_reference"]["pairs"] == 24 and cert["pooled"]["pairs"] == 48
    cache = tmp_path / "out" / "cache" / "kadid10k" / "lipsim" / "all.jsonl"
    lines = cache.read_text().splitlines()
    assert len(lines) == 13  # header + 12 items
    # the distances are LipSim's own
    data = load_kadid10k(root)
    metric = LipSim(weights=small_weights)
    first = json.loads(lines[1])
    with torch.no_grad():
        expected = metric(load_image(data[first["i"]].ref)[None], load_image(data[first["i"]].dist)[None])
    assert first["v"][0] == pytest.approx(float(expected), abs=1e-5)
    # an interrupted run (last lines lost, one cut in half) resumes: only the missing items are computed
    cache.write_text("\n".join(lines[:8]) + "\n" + lines[8][:10])
    again = _run(tmp_path, f"kadid10k:{root}", *args)
    assert again["metrics"] == report["metrics"]
    assert [ln.endswith("}") for ln in cache.read_text().splitlines()].count(True) == 13  # header + 12, once each
    unchanged = cache.read_text()
    _run(tmp_path, f"kadid10k:{root}", *args)
    assert cache.read_text() == unchanged  # nothing recomputed
    # other weights are another configuration: the cache starts afresh
    _run(tmp_path, f"kadid10k:{root}", "--metrics", "lipsim", "--l2-eps", "0.01")
    assert json.loads(cache.read_text().splitlines()[0])["config"]["metric"].startswith("lipsim:lipsim-fast")


def test_certified_order_cannot_be_swapped_by_attacks(small_weights: str, tmp_path: Path) -> None:
    data = load_kadid10k(MAKERS["kadid10k"](tmp_path / "kadid"))
    metric = LipSim(weights=small_weights)
    ref = torch.stack([load_image(p.ref) for p in data])
    dist = torch.stack([load_image(p.dist) for p in data])
    with torch.no_grad():
        e_ref = metric.embed(ref)
        e, r = metric.embed(dist, return_norm=True)
    d = (1 - (e_ref * e).sum(1)).numpy()
    a = np.full(len(d), metric.input_norm(dist))
    eps = 0.05
    bound = distance_shift_bound(eps, r.numpy(), a)
    up = attack_distance(metric, dist, ref, eps, steps=20, maximize=True, method="apgd")
    down = attack_distance(metric, dist, ref, eps, steps=20, maximize=False, method="apgd")
    with torch.no_grad():
        d_up, d_down = metric(up, ref).numpy(), metric(down, ref).numpy()
    assert np.all(d_up - d <= bound + 1e-6) and np.all(d - d_down <= bound + 1e-6)
    assert (d_up - d).max() > 0.2 * bound.max()  # the attack is real: it uses a visible share of the bound
    quality = data.quality()
    shares = certified_order_shares(d, quality, r.numpy(), a, [p.ref_name for p in data], [eps])
    certified = 0
    for i in range(len(d)):
        for j in range(len(d)):
            if d[i] < d[j] and abs(d[i] - d[j]) - 2e-5 > bound[i] + bound[j]:
                certified += quality[i] != quality[j]
                # the worst case for this order moves i up and j down, each inside its own budget
                assert d_up[i] < d_down[j]
    assert certified == round(shares["pooled"][f"certified@{eps:g}"] * shares["pooled"]["pairs"]) > 0


def test_shards_then_merge_equal_one_run(tmp_path: Path) -> None:
    root = MAKERS["tid2013"](tmp_path / "tid")
    spec = f"tid2013:{root}"
    for k in range(3):
        assert E.main(["iqa", "--dataset", spec, "--metrics", "mse", "--out", str(tmp_path / "sharded"), "--quiet",
                       "--shard", f"{k}/3"]) == 0
    folder = tmp_path / "sharded" / "cache" / "tid2013" / "mse"
    counts = [len(p.read_text().splitlines()) - 1 for p in sorted(folder.iterdir())]
    assert counts == [4, 4, 4]  # items i % 3 == k, disjoint
    assert not (tmp_path / "sharded" / "tid2013.json").exists()  # a shard only caches
    merged = _run(tmp_path, spec, "--metrics", "mse", out="sharded")
    assert not (folder / "all.jsonl").exists()  # nothing was left to compute
    assert merged["metrics"] == _run(tmp_path, spec, "--metrics", "mse", out="single")["metrics"]


@pytest.mark.slow
def test_two_processes_shard_the_work_and_a_third_run_merges(tmp_path: Path) -> None:
    root = MAKERS["tid2013"](tmp_path / "tid")
    spec = f"tid2013:{root}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    cmd = [sys.executable, "-m", "lipsim_metric.train.evaluate", "iqa", "--dataset", spec, "--metrics", "mse,psnr",
           "--out", str(tmp_path / "sharded"), "--quiet"]
    procs = [subprocess.Popen([*cmd, "--shard", f"{k}/2"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for k in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
    assert not (tmp_path / "sharded" / "tid2013.json").exists()  # a shard only caches
    files = sorted(p.name for p in (tmp_path / "sharded" / "cache" / "tid2013" / "mse").iterdir())
    assert files == ["shard0of2.jsonl", "shard1of2.jsonl"]
    merged = _run(tmp_path, spec, "--metrics", "mse,psnr", out="sharded")
    assert not (tmp_path / "sharded" / "cache" / "tid2013" / "mse" / "all.jsonl").exists()  # nothing left to do
    single = _run(tmp_path, spec, "--metrics", "mse,psnr", out="single")
    assert merged["metrics"] == single["metrics"]


def test_bapps_2afc_and_jnd(tmp_path: Path, small_weights: str) -> None:
    root = make_bapps_2afc(tmp_path / "2afc", judge=0.2)
    report = _run(tmp_path, f"bapps2afc:{root}", "--metrics", "mse,lipsim", "--weights", small_weights)
    mse = report["metrics"]["mse"]
    assert mse["overall"]["natural"] == pytest.approx(0.8)  # p0 is always closer; 80% of raters agree
    assert set(mse["per_group"]) == {"traditional", "cnn"} and mse["per_group"]["cnn"]["n"] == 2
    lipsim = report["metrics"]["lipsim"]["overall"]
    assert lipsim["natural"] >= lipsim["certified@36/255"] >= lipsim["certified@2"]
    jnd = _run(tmp_path, f"bapps-jnd:{make_bapps_jnd(tmp_path / 'jnd')}", "--metrics", "mse")
    assert jnd["metrics"]["mse"]["overall"]["map"] == pytest.approx(1.0)  # identical pairs have distance 0


def test_night_splits_are_weighted_by_size(tmp_path: Path, small_weights: str) -> None:
    root = make_night(tmp_path / "night")
    report = _run(tmp_path, f"night:{root}", "--metrics", "mse,lipsim", "--weights", small_weights, "--size", "32")
    mse = report["metrics"]["mse"]
    assert mse["per_group"]["test_imagenet"]["n"] == 3 and mse["per_group"]["test_no_imagenet"]["n"] == 1
    assert mse["per_group"]["test_imagenet"]["natural"] == pytest.approx(5 / 6)
    assert mse["per_group"]["test_no_imagenet"]["natural"] == pytest.approx(1 / 6)
    assert mse["overall"]["natural"] == pytest.approx((3 * 5 / 6 + 1 / 6) / 4)
    assert "| lipsim | all (size-weighted) | 4 |" in (tmp_path / "out" / "night.md").read_text()


def test_argument_errors(tmp_path: Path) -> None:
    out = ["--out", str(tmp_path / "o"), "--quiet"]
    assert E.main(["iqa", "--dataset", "imagenet:x", *out]) == 2
    assert E.main(["iqa", "--dataset", f"kadid10k:{tmp_path}", *out]) == 2  # no dmos.csv
    root = MAKERS["kadid10k"](tmp_path / "kadid")
    assert E.main(["iqa", "--dataset", f"kadid10k:{root}", "--metrics", "nope", *out]) == 2
    assert E.main(["iqa", "--dataset", f"kadid10k:{root}", "--higher-is-better", *out]) == 2
    assert E.main(["iqa", "--dataset", f"kadid10k:{root}", "--shard", "2/2", *out]) == 2
    with pytest.raises(ValueError, match="k/n"):
        parse_shard("1-2")
    with pytest.raises(ValueError, match="NAME:<path>"):
        load_task("kadid10k")
