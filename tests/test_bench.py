"""Smoke tests of ``benchmarks/bench.py``: it runs, and its report has the documented columns.

Speed itself is never asserted here (CONVENTIONS.md, habit 8): the figures come from running the script.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lipsim_bench", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class body runs
    spec.loader.exec_module(module)
    return module


def _row_cells(report: str, prefix: str) -> list[str]:
    lines = [line for line in report.splitlines() if line.startswith(prefix)]
    assert lines, f"no line starting with {prefix!r} in:\n{report}"
    return [cell.strip() for cell in lines[0].strip("|").split("|")]


def test_quick_model_section(bench: ModuleType, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    argv = ["--quick", "--models", "lipsim-fast", "--batch-sizes", "1", "--dtypes", "fp32", "--device", "cpu",
            "--seconds", "0.2", "--sections", "model", "--write", "--results", str(results)]
    assert bench.main(argv) == 0
    report = capsys.readouterr().out
    header = "| " + " | ".join(bench.MODEL_COLUMNS) + " |"
    assert header == ("| model | device | dtype | variant | batch | pairs/s | ms/batch | repeats | peak MiB | MiB/pair "
                      "| note |")
    assert header in report
    cells = _row_cells(report, "| lipsim-fast | cpu | fp32 | default | 1 |")
    assert len(cells) == len(bench.MODEL_COLUMNS)
    assert float(cells[5].replace(",", "")) > 0  # pairs/s
    assert float(cells[6].replace(",", "")) > 0  # ms/batch
    assert int(cells[7]) >= 1  # repeats
    assert cells[8] != "-"  # peak memory was measured
    for fact in ("command: `", "python benchmarks/bench.py --quick", "machine: ", "torch threads (CPU): ",
                 "### Targets"):
        assert fact in report
    written = results.read_text(encoding="utf-8")
    assert written.startswith("# Benchmark results")
    assert report.strip() in written


def test_quick_cli_section(bench: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--quick", "--device", "cpu", "--sections", "cli", "--cli-pairs", "3", "--cli-image-size", "64",
            "--cli-batch-size", "2", "--cli-workers", "0", "--seconds", "0"]
    assert bench.main(argv) == 0
    report = capsys.readouterr().out
    assert "| " + " | ".join(bench.CLI_COLUMNS) + " |" in report
    cells = _row_cells(report, "| cpu | 3 | 64x64 |")
    assert len(cells) == len(bench.CLI_COLUMNS)
    assert cells[-1] == ""  # no error note
    assert cells[-2].endswith("%")  # CLI / model-only ratio
    assert float(cells[-4]) > 0  # decode ms per pair
    assert cells[-3].endswith("%")  # overlap bound


def test_cli_overlap_bound(bench: ModuleType) -> None:
    # model 20 pairs/s on 2 cores (0.1 core-s per pair) + 0.025 core-s decoding -> at best 80% of model speed
    result = bench.CliResult("cpu", 10, 64, 2, 2, 1.0, seconds=1.0, model_pairs_per_s=20.0, decode_s_per_pair=0.025,
                             cores=2)
    assert abs(result.bound - 0.8) < 1e-12
    assert abs(result.ratio - 0.5) < 1e-12
    gpu = bench.CliResult("cuda", 10, 64, 2, 4, 1.0, model_pairs_per_s=1000.0, decode_s_per_pair=0.008)
    assert abs(gpu.bound - 0.5) < 1e-12  # 4 workers decode 500 pairs/s


def test_ratio_and_targets_tables(bench: ModuleType) -> None:
    def row(model: str, pairs_per_s: float, batch: int = 8, dtype: str = "fp32") -> object:
        return bench.Row("model", model, "cpu", dtype, "default", batch, seconds_per_call=batch / pairs_per_s)

    rows = [row("lipsim-fast", 50.0), row("lipsim-paper-small", 2.0), row("lpips-alex", 100.0)]
    table = bench.ratio_table(rows)
    assert "| device | dtype | variant | batch | lipsim-fast pairs/s | vs lipsim-paper-small | vs lpips-alex |" in table
    assert "| cpu | fp32 | default | 8 | 50.0 | 25.0x | 0.50x |" in table
    machine = {"cpu": "test cpu", "threads": 2}
    targets = bench.targets_table(rows, [], [], machine)
    assert "| CPU batch 8 fp32: >= 25 pairs/s | 50.0 pairs/s (met) |" in targets
    assert "| CPU batch 8 fp32: >= 10x paper network | 25.0x (met) |" in targets
    assert "| GPU bf16 batch 128: >= 10,000 pairs/s | not measured |" in targets


def test_bad_arguments_exit_2(bench: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--models", "lipsim-fast,nope"]) == 2
    assert "unknown ['nope']" in capsys.readouterr().err
    assert bench.main(["--batch-sizes", "0"]) == 2
    capsys.readouterr()
    assert bench.main(["--lipsim-weights", "missing.safetensors", "--sections", "model", "--quick"]) == 2
    assert "--lipsim-weights missing.safetensors: no such file" in capsys.readouterr().err


def test_results_file_appends(bench: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    bench.write_results("## first\n", path)
    bench.write_results("## second\n", path)
    text = path.read_text(encoding="utf-8")
    assert text.index("## first") < text.index("## second")
    assert text.count("# Benchmark results") == 1


def test_one_script_per_question_runs_its_section_alone(bench: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("lipsim_bench_model", BENCH.with_name("bench_model.py"))
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    argv = ["--quick", "--models", "lipsim-fast", "--batch-sizes", "1", "--dtypes", "fp32", "--device", "cpu",
            "--seconds", "0"]
    assert script.main(argv) == 0
    report = capsys.readouterr().out
    assert "python benchmarks/bench.py --sections model --quick" in report  # the equivalent driver command
    assert "| " + " | ".join(bench.MODEL_COLUMNS) + " |" in report and "### Training throughput" not in report
    for name in ("bench_model", "bench_train", "bench_resize", "bench_cli"):  # every section has its own script
        assert callable(importlib.import_module(name).main)
