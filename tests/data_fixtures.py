"""Tiny image fixtures shared by the data tests (test_photos, test_shards, test_human_2afc, test_triplets,
test_valsets, test_pair_labels, test_hard_pairs): deterministic noise photos and solid images written into tmp_path."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

#: Backbone settings of the small saved-weights file of the ``small_file`` fixture (conftest.py): lipsim-fast at 64x64.
TINY_BACKBONE = {"input_size": 64, "embed_dim": 128, "linear_hidden": 32}


def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a - b) ** 2).mean(dim=(1, 2, 3))


def mae(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).abs().mean(dim=(1, 2, 3))


TEACHERS = {"mse": mse, "mae": mae}


def save_image(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)
    return path


def solid(path: Path, rgb: tuple[int, int, int], size: tuple[int, int] = (12, 12)) -> Path:
    """Write a solid-colour image of (width, height) = size."""
    return save_image(path, np.broadcast_to(np.array(rgb, dtype=np.uint8), (size[1], size[0], 3)).copy())


def noise_image(path: Path, seed: int, width: int = 40, height: int = 30) -> Path:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(4, 4, 3)).astype(np.uint8)
    image = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path




def make_photo_dir(tmp_path: Path) -> Path:
    """Five photos of mixed formats and sizes (two in ``sub/``), a text file and a hidden image."""
    root = tmp_path / "photos"
    noise_image(root / "b.jpg", 1)
    noise_image(root / "a.PNG", 2, 30, 40)
    noise_image(root / "sub" / "c.bmp", 3)
    noise_image(root / "sub" / "d.webp", 4)
    noise_image(root / "e.jpeg", 5)
    (root / "notes.txt").write_text("not an image")
    noise_image(root / ".hidden.jpg", 6)
    return root


def smooth_photos(folder: Path, n: int) -> Path:
    """``n`` smooth random 96x96 PNG photos in a new ``folder`` (blocky colour fields, not white noise)."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):  # smooth random images (noise photos would make every distortion look alike)
        low = rng.random((8, 8, 3))
        img = np.kron(low, np.ones((12, 12, 1)))
        Image.fromarray((img * 255).astype(np.uint8)).save(folder / f"p{i}.png")
    return folder


def tiny_pairs_run(shared_dir: Path, tmp_path: Path) -> list[str]:
    """A 2-photo LPIPS-Alex pair label set at 64 px and the stage-"pairs" config overrides that train on it.

    The overrides name no ``output_dir``; callers add theirs (and the hard-pair keys they test).
    """
    from lipsim_metric.train import labels

    photos = smooth_photos(tmp_path / "photos", 2)
    out = tmp_path / "set"
    assert labels.main(["build", "--images", str(photos), "--out", str(out), "--teachers", "lpips-alex",
                        "--teachers-dir", str(shared_dir / "teachers"), "--copies", "3", "--size", "64",
                        "--bf16-teachers", "", "--quiet"]) == 0
    kwargs = {"input_size": 64, "pooling": "mean_std", "channel_scale": True, "linear_depth": 0, "embed_dim": None}
    return ["stage=pairs", f"labels={out}", f"labels_images={photos}", "regress_weight=0", "image_size=64",
            f"backbone_kwargs={json.dumps(kwargs)}", "batch_size=2", "num_workers=0", "log_every=1",
            "warmup_steps=1", "checkpoint_every=2", f"teachers_dir={shared_dir / 'teachers'}"]


def tiny_embedder() -> tuple[torch.nn.Module, Callable[[torch.Tensor], torch.Tensor]]:
    """A seeded mean/std ``lipsim-fast`` at 64 px (eval mode) and its projected embedder (no autocast)."""
    import contextlib

    from lipsim_metric import create_backbone
    from lipsim_metric.train.hard_pairs import projected_embedder

    torch.manual_seed(0)
    net = create_backbone("lipsim-fast", input_size=64, pooling="mean_std", channel_scale=True, linear_depth=0,
                          embed_dim=None).eval()
    return net, projected_embedder(net, "append", 1.0, contextlib.nullcontext)
