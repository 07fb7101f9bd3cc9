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


@pytest.fixture()
def rng() -> torch.Generator:
    return torch.Generator().manual_seed(0)
