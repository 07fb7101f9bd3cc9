"""``benchmarks/embedding_norms.py``: the quartiles behind a weights file's appended constant ``c``."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from conftest import write_noise_photos
from lipsim_metric import LipSim

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "embedding_norms.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("lipsim_embedding_norms", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_quartiles_are_those_of_the_augmented_norms(script, small_file: Path) -> None:
    images = list(torch.rand(5, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    q = script.norm_quartiles(str(small_file), images, batch_size=2)
    norms = LipSim(weights=small_file, constant=1.0).embed(torch.stack(images), return_norm=True).augmented_norm
    torch.testing.assert_close(torch.tensor(q), torch.quantile(norms, torch.tensor([0.25, 0.5, 0.75])))
    assert q[0] <= q[1] <= q[2] and q[0] >= 1.0  # ||[f; 1]|| >= 1


def test_a_bad_weights_file_is_reported_and_the_rest_measured(script, small_file: Path, tmp_path: Path,
                                                              capsys) -> None:
    photos = write_noise_photos(tmp_path / "photos", 3)
    rc = script.main([str(tmp_path / "missing.safetensors"), str(small_file), "--images", str(photos), "--size", "64"])
    out = capsys.readouterr()
    assert rc == 1 and "missing.safetensors" in out.err and "does not exist" in out.err
    assert f"{small_file}: ||[f(x); 1]|| quartiles" in out.out and "over 3 photos" in out.out


def test_an_empty_folder_is_refused(script, tmp_path: Path, small_file: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exc:
        script.main([str(small_file), "--images", str(tmp_path / "empty")])
    assert exc.value.code == 2 and "no images found" in capsys.readouterr().err
