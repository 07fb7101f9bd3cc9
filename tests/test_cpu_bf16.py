"""bf16 autocast only where the CPU runs bf16 in hardware (emulated bf16 is ~8x slower for the VGG teachers)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from data_fixtures import smooth_photos
from lipsim_metric.train import cpu_bf16

X86_NO = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw\n\nprocessor\t: 1\nflags\t\t: fpu sse2 avx2\n"
X86_YES = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile\n"
ARM_YES = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"


def test_cpu_flags_and_native_detection() -> None:
    assert "avx512bw" in cpu_bf16.cpu_flags(X86_NO) and "avx512_bf16" not in cpu_bf16.cpu_flags(X86_NO)
    assert cpu_bf16._native(cpu_bf16.cpu_flags(X86_YES), "x86_64")
    assert not cpu_bf16._native(cpu_bf16.cpu_flags(X86_NO), "x86_64")
    assert cpu_bf16._native(cpu_bf16.cpu_flags(ARM_YES), "aarch64")
    assert not cpu_bf16._native(cpu_bf16.cpu_flags("Features\t: fp asimd\n"), "aarch64")
    assert cpu_bf16.cpu_flags("") == set()
    assert isinstance(cpu_bf16.native_bf16_cpu(), bool)


def test_environment_override(monkeypatch: pytest.MonkeyPatch) -> None:
    for value, expected in (("1", True), ("0", False)):
        monkeypatch.setenv("LIPSIM_NATIVE_BF16", value)
        cpu_bf16.native_bf16_cpu.cache_clear()
        assert cpu_bf16.native_bf16_cpu() is expected
    cpu_bf16.native_bf16_cpu.cache_clear()


def test_resolve_bf16_teachers(monkeypatch: pytest.MonkeyPatch) -> None:
    teachers = ["lpips-vgg", "dists", "lpips-alex"]
    monkeypatch.setattr(cpu_bf16, "native_bf16_cpu", lambda: True)
    assert cpu_bf16.resolve_bf16_teachers("auto", teachers) == ["lpips-vgg", "dists"]
    assert cpu_bf16.resolve_bf16_teachers("auto", ["lpips-alex"]) == []
    monkeypatch.setattr(cpu_bf16, "native_bf16_cpu", lambda: False)
    with pytest.warns(RuntimeWarning, match="float32"):
        assert cpu_bf16.resolve_bf16_teachers("auto", teachers) == []
    # an explicit list is obeyed (continuing a set built with bf16), in the teachers' order, unknown names dropped
    assert cpu_bf16.resolve_bf16_teachers("dists,lpips-vgg,clip", teachers) == ["lpips-vgg", "dists"]
    assert cpu_bf16.resolve_bf16_teachers("", teachers) == []
    assert cpu_bf16.resolve_bf16_teachers(["dists"], teachers) == ["dists"]


def test_mixed_precision_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    from lipsim_metric.train import engine

    assert engine.resolve_mixed_precision("no") == "no" and engine.resolve_mixed_precision("bf16") == "bf16"
    monkeypatch.setattr(cpu_bf16, "native_bf16_cpu", lambda: False)
    assert engine.resolve_mixed_precision("auto") == ("bf16" if torch.cuda.is_available() else "no")
    monkeypatch.setattr(cpu_bf16, "native_bf16_cpu", lambda: True)
    assert engine.resolve_mixed_precision("auto") == "bf16"
    assert engine.load_config(None, ["mixed_precision=auto", "stage=distill"]).mixed_precision == "auto"
    with pytest.raises(ValueError, match="auto"):
        engine.load_config(None, ["mixed_precision=bf17"])


def test_label_build_auto_and_continue_refusal(shared_dir: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """'auto' on a CPU without bf16 labels in float32; continuing with other bf16 teachers says how to match."""
    from lipsim_metric.train import labels

    monkeypatch.setattr(cpu_bf16, "native_bf16_cpu", lambda: False)
    monkeypatch.setattr(labels, "native_bf16_cpu", lambda: False)
    photos = smooth_photos(tmp_path / "photos", 2)
    out = tmp_path / "set"
    args = ["build", "--images", str(photos), "--out", str(out), "--teachers", "lpips-alex",
            "--teachers-dir", str(shared_dir / "teachers"), "--copies", "2", "--size", "64", "--chunk-size", "2",
            "--quiet"]
    with pytest.warns(RuntimeWarning, match="float32"):
        assert labels.main(args) == 0
    assert labels.read_manifest(out)["bf16_teachers"] == []
    with pytest.raises(ValueError, match="--bf16-teachers ''"), pytest.warns(RuntimeWarning, match="emulated"):
        labels.build_label_set(photos, out, ["lpips-alex"], shared_dir / "teachers",
                               labels.LabelSetConfig(copies=2, size=64, chunk_size=2), ["lpips-alex"], progress=False)


def test_bench_bf16_script_reports_both_precisions(shared_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_bf16.py"
    spec = importlib.util.spec_from_file_location("lipsim_bench_bf16", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--teachers-dir", str(shared_dir / "teachers"), "--teachers", "lpips-alex", "--batch", "1",
                        "--size", "64", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    row = [line for line in out.splitlines() if line.startswith("| lpips-alex |")]
    assert len(row) == 1 and row[0].rstrip().endswith("x |") and "native_bf16_cpu()" in out
    with pytest.raises(SystemExit):
        module.main(["--batch", "0"])
