"""examples/feature_inversion.py: the literal and the qualified ("not fooled") inversion criteria."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def _module():
    path = Path(__file__).parents[1] / "examples" / "feature_inversion.py"
    spec = importlib.util.spec_from_file_location("feature_inversion", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["feature_inversion"] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_an_attack_that_reproduces_the_photo_is_not_a_blind_spot(tmp_path: Path) -> None:
    # Under PSNR the attack converges to the photo itself: its distance ends below the JPEG q30 copy's (the literal
    # criterion fails) but its PSNR ends above the copy's, so it is "not fooled".
    folder = tmp_path / "photos"
    folder.mkdir()
    yy, xx = np.mgrid[0:240, 0:240] / 240.0
    rgb = np.stack([0.5 + 0.4 * np.sin(6 * xx), 0.5 + 0.4 * np.cos(5 * yy), 0.3 + 0.4 * xx * yy], axis=-1)
    Image.fromarray((rgb * 255).round().astype(np.uint8)).save(folder / "a.png")
    out = tmp_path / "inv"
    assert _module().main(["--images", str(folder), "--metrics", "psnr", "--steps", "300", "--photos", "1",
                           "--out", str(out)]) == 0
    r = json.loads((out / "results.json").read_text())["results"]["psnr"]
    assert r["above_jpeg_q30"] == "0/1", r
    assert r["psnr_db"][0] >= r["psnr_jpeg_q30_db"][0] and r["not_fooled"] == "1/1", r
