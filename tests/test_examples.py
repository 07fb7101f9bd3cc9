"""The examples in ``examples/`` run end to end in their fast modes and write what they promise.

Every example gets a tiny untrained weights file (the shipped default weights may not exist on a developer machine,
and untrained weights keep the run to seconds) and small generated photos. Examples that need the teacher networks
(``../shared/teachers``) are skipped when that folder is absent. Python examples run in-process through their
``main(argv)``; the shell walkthrough runs as a subprocess.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from PIL import Image

from lipsim_metric import create_backbone
from lipsim_metric.pretrained import save_weights

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
SHARED = Path(os.environ.get("LIPSIM_SHARED_DIR", REPO.parent / "shared"))
TINY_KWARGS = {"input_size": 64, "embed_dim": 256, "linear_hidden": 64}


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"lipsim_example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def teachers_dir_or_none() -> Path | None:
    folder = SHARED / "teachers"
    return folder if folder.is_dir() else None


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    save_weights(create_backbone("lipsim-fast", **TINY_KWARGS), path, "lipsim-fast", backbone_kwargs=TINY_KWARGS)
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``train/`` and ``val/`` folders of six smooth 48x48 colour images each (JPEG, like the shared photos)."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:48, 0:48] / 47.0
    for split in ("train", "val"):
        (root / split).mkdir()
        for i in range(6):
            f = rng.uniform(1, 4, size=3)
            phase = rng.uniform(0, 6.28, size=3)
            image = np.stack([0.5 + 0.4 * np.sin(6.28 * f[c] * (xx + c * yy) + phase[c]) for c in range(3)], -1)
            image += rng.normal(0, 0.03, image.shape)
            pixels = (255 * image.clip(0, 1)).astype(np.uint8)
            Image.fromarray(pixels).save(root / split / f"photo_{i}.jpg", quality=90)
    return root


def test_quickstart_prints_distances_radii_and_certificate(tiny_weights: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert load_example("quickstart").main(["--weights", str(tiny_weights)]) == 0
    out = capsys.readouterr().out
    assert "certified radius" in out
    assert "blur sigma=2" in out and "2AFC" in out


def test_quickstart_reports_missing_weights(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert load_example("quickstart").main(["--weights", str(tmp_path / "missing.safetensors")]) == 2
    assert "--weights" in capsys.readouterr().err


def test_loss_denoise_fast(tiny_weights: Path, photos: Path, tmp_path: Path) -> None:
    teachers = teachers_dir_or_none()
    argv = ["--fast", "--weights", str(tiny_weights), "--images", str(photos / "train"),
            "--val-images", str(photos / "val"), "--out-dir", str(tmp_path)]
    if teachers is not None:
        argv += ["--teachers-dir", str(teachers)]
    assert load_example("loss_denoise").main(argv) == 0
    for name in ("results.json", "results.md", "denoise_grid.png"):
        assert (tmp_path / name).is_file(), name
    results = json.loads((tmp_path / "results.json").read_text())["results"]
    assert [row.get("loss") for row in results.values()] == [None, "l1", "lipsim"]  # noisy baseline, then losses
    expected = {"psnr", "ssim", "l1", "lipsim"} | ({"lpips_vgg"} if teachers is not None else set())
    for row in results.values():
        assert set(row["metrics"]) == expected
        assert all(np.isfinite(v) for v in row["metrics"].values())


def test_loss_denoise_rejects_lpips_loss_without_teachers(tiny_weights: Path, photos: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        load_example("loss_denoise").main(["--fast", "--weights", str(tiny_weights), "--losses", "l1,lpips-vgg",
                                           "--images", str(photos / "train"), "--out-dir", str(tmp_path)])
    assert exc.value.code == 2


def test_retrieval_fast(tiny_weights: Path, photos: Path, tmp_path: Path) -> None:
    output = tmp_path / "retrieval.json"
    argv = ["--fast", "--weights", str(tiny_weights), "--gallery", str(photos / "val"), "--output", str(output)]
    assert load_example("retrieval").main(argv) == 0
    document = json.loads(output.read_text())
    assert len(document["gallery"]) == 6 and len(document["queries"]) == 2
    for query in document["queries"]:
        assert len(query["results"]) == 3
        assert query["certified_top1_radius"] >= 0


def test_robustness_demo_fast(tiny_weights: Path, photos: Path, tmp_path: Path) -> None:
    teachers = teachers_dir_or_none()
    if teachers is None:
        pytest.skip(f"teacher weights not found at {SHARED / 'teachers'} (set LIPSIM_SHARED_DIR)")
    argv = ["--fast", "--weights", str(tiny_weights), "--teachers-dir", str(teachers),
            "--image", str(photos / "val" / "photo_0.jpg"), "--out-dir", str(tmp_path)]
    # Exit code 0 also means that no attack flipped LipSim inside its certified radius.
    assert load_example("robustness_demo").main(argv) == 0
    assert (tmp_path / "robustness.png").is_file()
    document = json.loads((tmp_path / "robustness.json").read_text())
    assert {row["metric"] for row in document["attacks"]} == {"LPIPS-Alex", "LipSim"}


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_cli_walkthrough(tiny_weights: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable, "LIPSIM_SCORE": f"{sys.executable} -m lipsim_metric.cli",
           "HF_HUB_OFFLINE": "1"}
    # The script exits 0 only if every lipsim-score call returned the exit code the walkthrough expects (1, 1, 1,
    # 0, 2 for the corrupt file, a clean pair and a missing folder).
    proc = subprocess.run(["bash", str(EXAMPLES / "cli_walkthrough.sh"), "--weights", str(tiny_weights),
                           "--workdir", str(tmp_path)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "[exit code: 1]" in proc.stdout and "[exit code: 0]" in proc.stdout and "[exit code: 2]" in proc.stdout
    assert "scene_2.png" in proc.stderr  # the corrupt file is named
    assert (tmp_path / "scores.csv").read_text().startswith("name,path_a,path_b,distance,radius")
    document = json.loads((tmp_path / "scores.json").read_text())
    assert document["summary"]["n"] == 2 and document["summary"]["n_failed"] == 1
    assert document["unmatched"] == {"only_a": ["scene_3.png"], "only_b": ["extra.png"]}


def test_retrieval_without_the_shared_photos_says_what_to_pass(tiny_weights: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Outside this project ../shared does not exist: the example must say which data to give it (issue 16 item 11)."""
    with pytest.raises(SystemExit) as exc:
        load_example("retrieval").main(["--fast", "--weights", str(tiny_weights), "--gallery",
                                        str(tmp_path / "missing")])
    assert exc.value.code == 2
    assert "any folder of at least 6 photos" in capsys.readouterr().err


def test_calibration_script_runs_and_renders_its_table(tiny_weights: Path, photos: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("calibration", REPO / "benchmarks" / "calibration.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "calibration.json"
    argv = ["--images", str(photos / "val"), "--count", "3", "--weights", str(tiny_weights), "--out", str(out),
            "--no-lpips"]  # LPIPS-VGG at 224x224 would take minutes on 2 cores; the teachers have their own tests
    assert module.main(argv) == 0
    table = capsys.readouterr().out
    document = json.loads(out.read_text())
    assert module.format_table(document) in table
    assert set(document["results"]) == {label for label, _ in module.DISTORTIONS} | {module.DIFFERENT}
    assert document["results"]["identical copy"]["LipSim"] < 1e-6
