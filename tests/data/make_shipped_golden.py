"""Regenerate ``tests/data/shipped_golden.json``: the shipped default weights on the committed example images.

    python tests/data/make_shipped_golden.py

Run it only when the default weights change (and say so in the commit); the test compares against these values.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch

from lipsim_metric import DEFAULT_WEIGHTS, LipSim
from lipsim_metric.images import load_image

HERE = Path(__file__).resolve().parent
IMAGES = HERE.parents[1] / "examples" / "images"


def compute() -> dict:
    metric = LipSim()
    rows = []
    for path_a in sorted((IMAGES / "a").rglob("*.png")):
        rel = path_a.relative_to(IMAGES / "a").as_posix()
        a, b = load_image(path_a)[None], load_image(IMAGES / "b" / rel)[None]
        with torch.no_grad():
            res = metric(a, b, return_radius=True)
        rows.append({"pair": rel, "distance": float(res.distance), "radius": float(res.radius)})
    ref = load_image(IMAGES / "a" / "00_blur.png")[None]
    x0 = load_image(IMAGES / "b" / "00_blur.png")[None]
    x1 = load_image(IMAGES / "b" / "01_noise.png")[None]
    cert = metric.certify_2afc(ref, x0, x1)
    return {
        "weights": DEFAULT_WEIGHTS,
        "pairs": rows,
        "twoafc": {"prediction": int(cert.prediction), "radius": float(cert.radius), "d0": float(cert.d0),
                   "d1": float(cert.d1)},
        "made_with": f"torch {torch.__version__}, {platform.machine()}, {time.strftime('%Y-%m-%d')}",
    }


if __name__ == "__main__":
    out = HERE / "shipped_golden.json"
    out.write_text(json.dumps(compute(), indent=2) + "\n")
    print(f"wrote {out}")
