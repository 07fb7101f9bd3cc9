"""Shared fixtures. The suite never touches the network: the Hub is forced offline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# At most 2 threads (the CI machine has 2 cores); an explicit OMP_NUM_THREADS wins.
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", max(1, min(2, os.cpu_count() or 1)))))

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LIPSIM_SHARED_DIR", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not (SHARED / "teachers").is_dir():
        pytest.skip(f"shared data folder not found at {SHARED} (set LIPSIM_SHARED_DIR)")
    return SHARED


#: A lipsim-fast network at 64x64 input: the same layers as the default, about 12x cheaper, for attack-heavy tests.
SMALL_BACKBONE = {"input_size": 64, "embed_dim": 256, "linear_hidden": 64}


@pytest.fixture(scope="session")
def small_weights(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A random small lipsim-fast (seed 0), saved and loaded like real weights (``LipSim(weights=...)``)."""
    from lipsim_metric import create_backbone
    from lipsim_metric.pretrained import save_weights

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "small.safetensors"
    save_weights(create_backbone("lipsim-fast", **SMALL_BACKBONE), path, "lipsim-fast",
                 backbone_kwargs=SMALL_BACKBONE)
    return str(path)


@pytest.fixture()
def small_file(tmp_path: Path) -> Path:
    """A random tiny lipsim-fast (seed 0, ``data_fixtures.TINY_BACKBONE``) saved as a weights file in ``tmp_path``."""
    from data_fixtures import TINY_BACKBONE
    from lipsim_metric import create_backbone
    from lipsim_metric.pretrained import save_weights

    torch.manual_seed(0)
    return save_weights(create_backbone("lipsim-fast", **TINY_BACKBONE), tmp_path / "small.safetensors",
                        "lipsim-fast", backbone_kwargs=TINY_BACKBONE)


def write_noise_photos(folder: Path, n: int, height: int = 64, width: int = 64) -> Path:
    """Create ``folder`` with ``n`` uniform-noise RGB PNGs (``img{i}.png``, seed 0) and return it."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8)).save(folder / f"img{i}.png")
    return folder


@pytest.fixture()
def noise_photos(tmp_path: Path):
    """``noise_photos(n, height=64, width=64)``: a fresh folder of ``n`` noise PNGs (:func:`write_noise_photos`)."""
    counter = iter(range(1_000_000))
    return lambda n, height=64, width=64: write_noise_photos(tmp_path / f"photos{next(counter)}", n, height, width)


@pytest.fixture()
def rng() -> torch.Generator:
    return torch.Generator().manual_seed(0)
