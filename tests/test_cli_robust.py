"""``lipsim-score`` never loses work and explains bad input (issue 16 items 1-3, 5, 6; issue 17 item 5).

Output target checked before scoring, rows streamed per batch, the JSON document finalised on interrupt, ``--resume``,
SIGTERM, the pixel limit, unreadable folders and symlinks, ``--variant``, ``--pairs`` and ``--2afc``. Untrained
weights in temporary folders.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from lipsim_metric import LipSim, create_backbone
from lipsim_metric import cli as cli_module
from lipsim_metric.cli import main
from lipsim_metric.images import load_image
from lipsim_metric.pretrained import save_weights

TINY = {"input_size": 64, "embed_dim": 256, "linear_hidden": 64}
RNG = np.random.default_rng(7)


def run_main(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def save_noise(path: Path, height: int = 24, width: int = 24) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(RNG.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_weights(create_backbone("lipsim-fast", **TINY), tmp_path_factory.mktemp("w") / "tiny.safetensors",
                        "lipsim-fast", backbone_kwargs=TINY)


@pytest.fixture(scope="module")
def six(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("six")
    for i in range(6):
        save_noise(root / "A" / f"{i}.png")
        save_noise(root / "B" / f"{i}.png")
    return root / "A", root / "B"


def _interrupt_on_call(at: int, exc: type[BaseException] = KeyboardInterrupt):  # noqa: ANN202
    """A LipSim.forward that raises ``exc`` on call number ``at`` (1-based)."""
    original, calls = LipSim.forward, []

    def forward(metric: LipSim, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append(1)
        if len(calls) == at:
            raise exc()
        return original(metric, *args, **kwargs)

    return forward


def base(six: tuple[Path, Path], weights: Path, *extra: str) -> list[str]:
    return [str(six[0]), str(six[1]), "--weights", str(weights), "--batch-size", "2", "--workers", "0", *extra]


# --- item 1: the output target is checked before scoring; write errors never lose the run silently ---------------


def test_output_folder_is_refused_before_scoring(six: tuple[Path, Path], weights: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    def no_model(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("the model must not be built before the output is checked")

    monkeypatch.setattr(cli_module, "LipSim", no_model)
    code, stdout, stderr = run_main(base(six, weights, "--format", "csv", "--output", str(tmp_path)))
    assert code == 2 and stdout == ""
    assert "is a folder" in stderr and "scores.csv" in stderr and "Traceback" not in stderr


def test_full_disk_is_found_before_scoring(six: tuple[Path, Path], weights: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full")
    monkeypatch.setattr(LipSim, "forward", _interrupt_on_call(at=1, exc=AssertionError))  # must not score
    code, _, stderr = run_main(base(six, weights, "--format", "csv", "--output", "/dev/full"))
    assert code == 2 and "No space left" in stderr and "Traceback" not in stderr


def test_write_failure_mid_run_keeps_the_written_rows(six: tuple[Path, Path], weights: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from lipsim_metric.cli_output import ResultWriter

    output, write, calls = tmp_path / "s.csv", ResultWriter.write, []

    def failing(self: ResultWriter, rows: list) -> None:  # type: ignore[type-arg]
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        write(self, rows)

    monkeypatch.setattr(ResultWriter, "write", failing)
    code, _, stderr = run_main(base(six, weights, "--format", "csv", "--output", str(output)))
    assert code == 2 and "Traceback" not in stderr
    assert "cannot write the results" in stderr and "No space left" in stderr and "--resume" in stderr
    assert [r["name"] for r in csv.DictReader(output.open())] == ["0.png", "1.png"]


# --- item 2: streamed rows, interrupt, --resume ---------------------------------------------------------------------


def test_interrupted_csv_keeps_finished_batches_and_resume_completes(six: tuple[Path, Path], weights: Path,
                                                                    tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    output = tmp_path / "scores.csv"
    monkeypatch.setattr(LipSim, "forward", _interrupt_on_call(at=2))
    code, _, stderr = run_main(base(six, weights, "--format", "csv", "--output", str(output)))
    assert code == 130 and "interrupted" in stderr and "--resume" in stderr
    rows = list(csv.DictReader(output.open()))
    assert [r["name"] for r in rows] == ["0.png", "1.png"]  # the first batch was on disk before the interrupt

    monkeypatch.undo()
    code, _, stderr = run_main(base(six, weights, "--format", "csv", "--output", str(output), "--resume"))
    assert code == 0, stderr
    assert "2 of 6 pair(s) already in" in stderr and "n=6" in stderr
    rows = list(csv.DictReader(output.open()))
    assert sorted(r["name"] for r in rows) == [f"{i}.png" for i in range(6)]  # no pair twice, none missing
    assert output.read_text().count("name,path_a") == 1  # one header


def test_interrupted_json_document_is_finalised(six: tuple[Path, Path], weights: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    output = tmp_path / "scores.json"
    monkeypatch.setattr(LipSim, "forward", _interrupt_on_call(at=3, exc=cli_module._Terminated))
    code, _, _ = run_main(base(six, weights, "--format", "json", "--output", str(output)))
    assert code == 143
    doc = json.loads(output.read_text())
    assert doc["interrupted"] is True and [p["name"] for p in doc["pairs"]] == ["0.png", "1.png", "2.png", "3.png"]
    assert not (tmp_path / "scores.json.partial").exists()
    monkeypatch.undo()
    code, _, _ = run_main(base(six, weights, "--format", "json", "--output", str(output), "--resume"))
    doc = json.loads(output.read_text())
    assert code == 0 and doc["interrupted"] is False and doc["summary"]["n"] == 6
    assert sorted(p["name"] for p in doc["pairs"]) == [f"{i}.png" for i in range(6)]


def test_resume_reads_json_partial_rows_left_by_a_kill(six: tuple[Path, Path], weights: Path, tmp_path: Path) -> None:
    """SIGKILL cannot be caught: the rows in FILE.partial (flushed per batch) must then be enough to resume."""
    output = tmp_path / "scores.json"
    code, _, _ = run_main(base(six, weights, "--format", "jsonl", "--output", str(tmp_path / "all.jsonl")))
    assert code == 0
    lines = (tmp_path / "all.jsonl").read_text().splitlines()
    (tmp_path / "scores.json.partial").write_text("\n".join(lines[:3]) + "\n" + lines[3][:20])  # cut mid-row
    code, _, stderr = run_main(base(six, weights, "--format", "json", "--output", str(output), "--resume"))
    assert code == 0 and "3 of 6 pair(s) already in" in stderr
    assert len(json.loads(output.read_text())["pairs"]) == 6


def test_jsonl_resume_drops_a_cut_last_line(six: tuple[Path, Path], weights: Path, tmp_path: Path) -> None:
    output = tmp_path / "s.jsonl"
    assert run_main(base(six, weights, "--format", "jsonl", "--output", str(output)))[0] == 0
    lines = output.read_text().splitlines()
    output.write_text("\n".join(lines[:4]) + "\n" + lines[4][:30])
    code, _, stderr = run_main(base(six, weights, "--format", "jsonl", "--output", str(output), "--resume"))
    assert code == 0 and "4 of 6" in stderr
    names = [json.loads(line)["name"] for line in output.read_text().splitlines()]
    assert sorted(names) == [f"{i}.png" for i in range(6)]


def test_resume_needs_a_readable_output(six: tuple[Path, Path], weights: Path, tmp_path: Path) -> None:
    assert "needs --output" in run_main(base(six, weights, "--resume"))[2]
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    code, _, stderr = run_main(base(six, weights, "--format", "csv", "--output", str(other), "--resume"))
    assert code == 2 and "header" in stderr


def test_sigterm_leaves_a_valid_csv(six: tuple[Path, Path], weights: Path, tmp_path: Path) -> None:
    """A real SIGTERM to a real process: the rows scored so far are in the file, exit code 143."""
    output = tmp_path / "scores.csv"
    slow = ("import sys, time\nfrom lipsim_metric import LipSim\nfrom lipsim_metric.cli import main\n"
            "forward = LipSim.forward\n"
            "def slow(self, *a, **k):\n    time.sleep(0.5)\n    return forward(self, *a, **k)\n"
            "LipSim.forward = slow\nsys.exit(main(sys.argv[1:]))\n")
    proc = subprocess.Popen([sys.executable, "-c", slow, *base(six, weights, "--batch-size", "1", "--format", "csv",
                                                               "--output", str(output))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not output.exists() or output.read_text().count("\n") < 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    rows = list(csv.DictReader(output.open()))
    assert 1 <= len(rows) < 6 and "interrupted" in stderr


# --- item 3: the pixel limit ----------------------------------------------------------------------------------------


def test_pixel_limit_names_the_cause_once_and_exits_2_when_nothing_was_scored(six: tuple[Path, Path],
                                                                               weights: Path) -> None:
    code, _, stderr = run_main(base(six, weights, "--max-pixels", "500"))
    assert code == 2  # nothing at all was scored
    assert "corrupt" not in stderr and ".. " not in stderr and "DOS attack" not in stderr
    assert "pixel limit" in stderr and stderr.count("rerun with --max-pixels 576") == 1
    assert stderr.count("skipped 0.png") == 1
    assert run_main(base(six, weights, "--max-pixels", "576"))[0] == 0


# --- item 5: unreadable folders, symlinks ---------------------------------------------------------------------------


def test_symlinked_folder_is_followed_and_a_loop_reported(tmp_path: Path, weights: Path) -> None:
    a, b, elsewhere = tmp_path / "a", tmp_path / "b", tmp_path / "elsewhere"
    save_noise(elsewhere / "x.png")
    save_noise(b / "linked" / "x.png")
    save_noise(a / "1.png")
    save_noise(b / "1.png")
    (a / "linked").symlink_to(elsewhere, target_is_directory=True)
    (a / "loop").symlink_to(a, target_is_directory=True)
    code, stdout, stderr = run_main([str(a), str(b), "--weights", str(weights), "--workers", "0"])
    assert code == 0, stderr
    assert "linked/x.png" in stdout  # scored through the link
    assert "link loop" in stderr and "loop" in stderr and "only in" not in stderr


def test_unreadable_subfolder_is_reported_with_the_fix(six: tuple[Path, Path], weights: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        save_noise(folder / "1.png")
        save_noise(folder / "locked" / "2.png")
    scandir = os.scandir

    def locked(path):  # noqa: ANN001, ANN202 (root can read any folder, so simulate the permission error)
        if Path(path).name == "locked" and Path(path).parent == a:
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", locked)
    code, _, stderr = run_main([str(a), str(b), "--weights", str(weights), "--workers", "0"])
    assert code == 1  # 1.png scored, the locked folder was not searched
    assert f"cannot list folder {a / 'locked'}" in stderr and "chmod" in stderr


def test_unreadable_file_is_a_permission_problem_not_corruption(six: tuple[Path, Path], weights: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p).endswith("3.png") else access(p, mode))
    code, _, stderr = run_main(base(six, weights))
    assert code == 1
    assert "permission denied" in stderr and "chmod" in stderr and "corrupt" not in stderr


# --- item 6: --variant ------------------------------------------------------------------------------------------------


def test_variant_option_for_weights_without_metadata(six: tuple[Path, Path], tmp_path: Path) -> None:
    bare = tmp_path / "bare.safetensors"
    save_file({k: v.contiguous() for k, v in create_backbone("lipsim-fast").state_dict().items()}, str(bare))
    code, _, stderr = run_main([str(six[0]), str(six[1]), "--weights", str(bare), "--workers", "0"])
    assert code == 2 and "--variant" in stderr and "lipsim-fast" in stderr
    code, stdout, stderr = run_main([str(six[0]), str(six[1]), "--weights", str(bare), "--variant", "lipsim-fast",
                                     "--workers", "0"])
    assert code == 0, stderr
    assert stdout.splitlines()[-1].startswith("n=6")


# --- issue 17 item 5: --pairs and --2afc ----------------------------------------------------------------------------


def test_pairs_csv_scores_any_paths_with_names(six: tuple[Path, Path], weights: Path, tmp_path: Path) -> None:
    a, b = six
    listing = tmp_path / "pairs.csv"
    listing.write_text(f"path_a,path_b,name\n{a / '0.png'},{b / '1.png'},cross\n{a / '2.png'},missing.png,gone\n")
    code, stdout, stderr = run_main(["--pairs", str(listing), "--weights", str(weights), "--format", "jsonl"])
    assert code == 1  # one pair scored, one file missing
    rows = [json.loads(line) for line in stdout.splitlines()]
    assert [r["name"] for r in rows] == ["cross"] and "missing.png does not exist" in stderr
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n")
    code, _, stderr = run_main(["--pairs", str(bad), "--weights", str(weights)])
    assert code == 2 and "path_a,path_b" in stderr


def test_2afc_over_three_folders_matches_certify_2afc(six: tuple[Path, Path], weights: Path, tmp_path: Path) -> None:
    a, b = six
    c = tmp_path / "c"
    for i in range(5):  # 5.png has no x1: reported as unmatched
        save_noise(c / f"{i}.png", 30, 20)
    code, stdout, stderr = run_main(["--2afc", str(a), str(b), str(c), "--weights", str(weights), "--format", "csv"])
    assert code == 0, stderr
    assert "5.png" in stderr
    rows = list(csv.DictReader(io.StringIO(stdout)))
    assert [r["name"] for r in rows] == [f"{i}.png" for i in range(5)]
    metric = LipSim(weights=weights)
    row = rows[1]
    cert = metric.certify_2afc(*(load_image(row[k])[None] for k in ("path_ref", "path_0", "path_1")))
    assert int(row["prediction"]) == int(cert.prediction) and float(row["d0"]) == pytest.approx(float(cert.d0),
                                                                                                 abs=1e-5)
    assert float(row["radius"]) == pytest.approx(float(cert.radius), rel=1e-4, abs=1e-7)
    assert torch.isfinite(cert.radius).all()
