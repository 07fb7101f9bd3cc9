"""End-to-end tests for the ``lipsim-score`` command line tool, in temporary folders with untrained weights."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from lipsim_metric import LipSim, create_backbone
from lipsim_metric.cli import main
from lipsim_metric.images import load_image
from lipsim_metric.pretrained import save_weights

RNG = np.random.default_rng(1)


def noise_image(height: int, width: int) -> Image.Image:
    return Image.fromarray(RNG.integers(0, 256, (height, width, 3), dtype=np.uint8))


def run_main(argv: list[str]) -> tuple[int, str, str]:
    """Call ``main`` capturing stdout and stderr (usable from module-scoped fixtures, unlike capsys)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_weights(create_backbone("lipsim-fast"), tmp_path_factory.mktemp("weights") / "w.safetensors",
                        "lipsim-fast")


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two folders: 6 pairs (one unreadable in A), one unmatched file on each side."""
    root = tmp_path_factory.mktemp("images")
    a, b = root / "A", root / "B"
    (a / "sub").mkdir(parents=True)
    (b / "sub").mkdir(parents=True)
    same = noise_image(40, 48)
    same.save(a / "same.png")
    same.save(b / "same.png")
    noise_image(64, 64).convert("L").save(a / "gray.png")
    noise_image(64, 64).convert("L").save(b / "gray.png")
    noise_image(30, 50).convert("RGBA").save(a / "rgba.png")
    noise_image(30, 50).save(b / "rgba.png")
    noise_image(100, 80).save(a / "sub" / "nested.jpg", quality=90)
    noise_image(100, 80).save(b / "sub" / "nested.jpg", quality=50)
    noise_image(32, 32).save(a / "mixed.png")
    noise_image(48, 40).save(b / "mixed.png")
    (a / "broken.png").write_bytes(RNG.bytes(400))
    noise_image(20, 20).save(b / "broken.png")
    noise_image(20, 20).save(a / "only_in_a.png")
    noise_image(20, 20).save(b / "sub" / "only_in_b.png")
    return a, b


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two folders with two readable pairs, one of them identical."""
    root = tmp_path_factory.mktemp("small")
    a, b = root / "A", root / "B"
    a.mkdir()
    b.mkdir()
    img = noise_image(24, 24)
    img.save(a / "1.png")
    img.save(b / "1.png")
    noise_image(24, 24).save(a / "2.png")
    noise_image(24, 24).save(b / "2.png")
    return a, b


@pytest.fixture(scope="module")
def json_run(folders: tuple[Path, Path], weights: Path, tmp_path_factory: pytest.TempPathFactory
             ) -> tuple[int, dict[str, Any], str]:
    """One JSON run over ``folders`` with DataLoader workers and several batches, written with --output."""
    output = tmp_path_factory.mktemp("out") / "scores.json"
    a, b = folders
    code, stdout, stderr = run_main([str(a), str(b), "--weights", str(weights), "--format", "json",
                                     "--output", str(output), "--batch-size", "2", "--workers", "2"])
    assert stdout == ""  # results went to the file
    return code, json.loads(output.read_text()), stderr


def test_json_run_scores_readable_pairs_and_reports_the_broken_one(json_run: tuple[int, dict[str, Any], str],
                                                                   weights: Path) -> None:
    code, doc, stderr = json_run
    assert code == 1
    assert [p["name"] for p in doc["pairs"]] == ["gray.png", "mixed.png", "rgba.png", "same.png", "sub/nested.jpg"]
    assert [f["name"] for f in doc["failed"]] == ["broken.png"]
    assert "broken.png" in doc["failed"][0]["error"]
    assert "broken.png" in stderr and "1 of 6 pair(s) could not be scored" in stderr
    assert doc["weights"] == str(weights) and doc["variant"] == "lipsim-fast"
    for pair in doc["pairs"]:
        assert 0.0 <= pair["distance"] <= 2.0 and pair["radius"] >= 0.0


def test_unmatched_files_are_listed(json_run: tuple[int, dict[str, Any], str]) -> None:
    _, doc, stderr = json_run
    assert doc["unmatched"] == {"only_a": ["only_in_a.png"], "only_b": ["sub/only_in_b.png"]}
    assert "only_in_a.png" in stderr and "sub/only_in_b.png" in stderr


def test_summary_is_mean_and_standard_error(json_run: tuple[int, dict[str, Any], str]) -> None:
    _, doc, _ = json_run
    distances = np.array([p["distance"] for p in doc["pairs"]])
    summary = doc["summary"]
    assert summary["n"] == 5 and summary["n_failed"] == 1 and summary["n_unmatched"] == 2
    assert summary["mean_distance"] == pytest.approx(distances.mean())
    assert summary["standard_error"] == pytest.approx(distances.std(ddof=1) / math.sqrt(5))


def test_identical_images_have_distance_zero(json_run: tuple[int, dict[str, Any], str]) -> None:
    _, doc, _ = json_run
    same = next(p for p in doc["pairs"] if p["name"] == "same.png")
    assert same["distance"] == pytest.approx(0.0, abs=1e-6)
    assert same["radius"] == pytest.approx(0.0, abs=1e-6)


def _as_in_file(path: str) -> torch.Tensor:
    """The image as LipSim's API would take it from the file: one channel for a grayscale file."""
    x = load_image(path)[None]
    return x[:, :1] if Image.open(path).mode == "L" else x


def test_radius_is_stated_for_the_original_images(json_run: tuple[int, dict[str, Any], str], weights: Path) -> None:
    """The CLI resizes in the loader; each side's radius must match LipSim run on that original file's tensor
    (its size, and one channel for a gray file), and the pair radius is the provable min(r0 / n0, r1 / n1)."""
    _, doc, _ = json_run
    metric = LipSim(weights=weights)
    with torch.inference_mode():
        for pair in doc["pairs"]:
            x0, x1 = _as_in_file(pair["path_a"]), _as_in_file(pair["path_b"])
            direct = metric(x0, x1, return_radius=True)
            assert pair["distance"] == pytest.approx(float(direct.distance), rel=1e-4, abs=1e-6)
            assert pair["radius_a"] == pytest.approx(float(direct.radius_x0), rel=1e-4, abs=1e-7), pair["name"]
            assert pair["radius_b"] == pytest.approx(float(direct.radius_x1), rel=1e-4, abs=1e-7), pair["name"]
            assert pair["radius"] == pytest.approx(float(direct.radius), rel=1e-4, abs=1e-7), pair["name"]
            assert pair["radius"] == min(pair["radius_a"], pair["radius_b"])
    assert any(p["height_a"] != 224 for p in doc["pairs"])  # the accounting was exercised
    mixed = next(p for p in doc["pairs"] if p["name"] == "mixed.png")
    assert mixed["radius_a"] != pytest.approx(mixed["radius_b"])  # different sizes: the sides differ


def test_gray_file_radius_is_in_gray_units(json_run: tuple[int, dict[str, Any], str], weights: Path) -> None:
    """A gray file replicated to RGB: a change of norm e of its gray values is a change of norm sqrt(3) e in RGB, so
    the radius in the file's units is the RGB radius / sqrt(3)."""
    _, doc, _ = json_run
    gray = next(p for p in doc["pairs"] if p["name"] == "gray.png")
    metric = LipSim(weights=weights)
    with torch.inference_mode():
        rgb = metric(load_image(gray["path_a"])[None], load_image(gray["path_b"])[None], return_radius=True)
    assert gray["radius"] == pytest.approx(float(rgb.radius) / math.sqrt(3), rel=1e-4)


def test_table_format(small: tuple[Path, Path], weights: Path) -> None:
    a, b = small
    code, stdout, stderr = run_main([str(a), str(b), "--weights", str(weights), "--workers", "0"])
    assert code == 0, stderr
    lines = stdout.strip().splitlines()
    assert lines[0].split() == ["name", "distance", "radius"]
    assert lines[1].split()[0] == "1.png" and float(lines[1].split()[1]) == pytest.approx(0.0, abs=1e-6)
    assert lines[2].split()[0] == "2.png" and float(lines[2].split()[1]) > 0
    assert lines[3].startswith("n=2  mean distance=")
    assert "standard error=" in lines[3]


def test_csv_format(small: tuple[Path, Path], weights: Path) -> None:
    a, b = small
    code, stdout, stderr = run_main([str(a), str(b), "--weights", str(weights), "--format", "csv", "-q"])
    assert code == 0, stderr
    rows = list(csv.DictReader(io.StringIO(stdout)))
    assert [r["name"] for r in rows] == ["1.png", "2.png"]
    assert float(rows[0]["distance"]) == pytest.approx(0.0, abs=1e-6)
    assert float(rows[1]["radius"]) > 0 and rows[1]["height_a"] == "24"
    assert "n=2  mean distance=" in stderr  # summary kept out of the CSV


def test_file_vs_file(small: tuple[Path, Path], weights: Path) -> None:
    a, b = small
    code, stdout, stderr = run_main([str(a / "2.png"), str(b / "2.png"), "--weights", str(weights),
                                     "--format", "json"])
    assert code == 0, stderr
    doc = json.loads(stdout)
    assert [p["name"] for p in doc["pairs"]] == ["2.png"]
    assert doc["summary"]["n"] == 1 and doc["summary"]["standard_error"] is None


def test_console_script_subprocess(small: tuple[Path, Path], weights: Path) -> None:
    script = Path(sys.executable).parent / "lipsim-score"
    if not script.exists():
        found = shutil.which("lipsim-score")
        if found is None:
            pytest.skip("lipsim-score console script is not installed (pip install -e .)")
        script = Path(found)
    a, b = small
    proc = subprocess.run([str(script), str(a), str(b), "--weights", str(weights), "--format", "csv"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert [r["name"] for r in csv.DictReader(io.StringIO(proc.stdout))] == ["1.png", "2.png"]


def test_corrupt_single_file_exits_2_as_nothing_was_scored(folders: tuple[Path, Path], weights: Path) -> None:
    a, b = folders
    code, stdout, stderr = run_main([str(a / "broken.png"), str(b / "broken.png"), "--weights", str(weights)])
    assert code == 2  # nothing at all was scored (exit 1 means: some pairs scored, some not)
    assert "broken.png" in stderr and stdout.strip().splitlines()[-1].startswith("n=0")


# --- usage errors (exit 2, no model is built) ----------------------------------------------------------------------


def test_missing_folder_exits_2(small: tuple[Path, Path], tmp_path: Path) -> None:
    code, stdout, stderr = run_main([str(small[0]), str(tmp_path / "missing")])
    assert code == 2 and stdout == ""
    assert "missing does not exist" in stderr


def test_folder_vs_file_exits_2(small: tuple[Path, Path]) -> None:
    a, b = small
    code, _, stderr = run_main([str(a), str(b / "1.png")])
    assert code == 2 and "is a folder but" in stderr


def test_no_pairs_exits_2(small: tuple[Path, Path], tmp_path: Path) -> None:
    noise_image(16, 16).save(tmp_path / "other.png")
    code, _, stderr = run_main([str(small[0]), str(tmp_path)])
    assert code == 2 and "no image pairs" in stderr and "other.png" in stderr


def test_unloadable_weights_exit_2(small: tuple[Path, Path], tmp_path: Path) -> None:
    code, _, stderr = run_main([str(small[0]), str(small[1]), "--weights", str(tmp_path / "nope.safetensors")])
    assert code == 2 and "cannot load weights" in stderr and "nope.safetensors" in stderr


def test_bad_arguments_exit_2(small: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = small
    assert run_main([str(a), str(b), "--batch-size", "0"])[0] == 2
    assert run_main([str(a), str(b), "--format", "xml"])[0] == 2
    assert run_main([str(a)])[0] == 2
    code, _, stderr = run_main([str(a), str(b), "--output", str(tmp_path / "no" / "such" / "out.csv")])
    assert code == 2 and "does not exist" in stderr


def test_help_documents_exit_codes() -> None:
    code, stdout, _ = run_main(["--help"])
    assert code == 0
    assert "exit codes:" in stdout and "--batch-size" in stdout and "radius" in stdout
