"""Tests for lipsim_metric.train.triplets (generated triplets, teacher labelling).

Tiny fixtures are generated in tmp_path (layouts copy the originals); moved from tests/test_data.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from data_fixtures import TEACHERS
from lipsim_metric.train.triplets import (
    DistortionTripletDataset,
    TripletSpec,
    label_triplets,
    make_distortion_triplets,
    render_triplet,
)


def test_make_distortion_triplets_mix_and_determinism() -> None:
    specs = make_distortion_triplets(7, np.random.default_rng(0), n=40, hard_fraction=0.3)
    assert specs == make_distortion_triplets(range(7), np.random.default_rng(0), n=40, hard_fraction=0.3)
    assert len(specs) == 40 and sum(s.is_hard for s in specs) == 12
    counts = np.bincount([s.ref_index for s in specs], minlength=7)
    assert counts.min() >= 5 and counts.max() <= 6, "references are used about equally often"
    for spec in specs:
        if spec.is_hard:
            assert len(spec.d0.families) == len(spec.d1.families) == 1
            assert spec.d0.families != spec.d1.families
            assert spec.d0.strength == spec.d1.strength and 0.2 <= spec.d0.strength <= 0.8
        else:
            assert abs(spec.d0.strength - spec.d1.strength) >= 0.25 - 1e-12
    assert TripletSpec.from_dict(json.loads(json.dumps(specs[0].to_dict()))) == specs[0]
    with pytest.raises(ValueError, match="at least two different families"):
        make_distortion_triplets(3, np.random.default_rng(0), n=4, families=["blur"])
    with pytest.raises(ValueError, match="no reference images"):
        make_distortion_triplets([], np.random.default_rng(0), n=4)


def test_label_triplets_votes_and_unanimity() -> None:
    ref = torch.zeros(3, 3, 8, 8)
    x0 = torch.full_like(ref, 0.1)  # mse 0.01, mae 0.1
    x1 = torch.zeros_like(ref)
    x1[0, :, :2, :2] = 0.5  # first: mse 0.0156, mae 0.031: the teachers disagree
    x1[1] = 0.05  # second: closer for both
    x1[2] = 0.1  # third: tie for both
    votes = label_triplets((ref, x0, x1), TEACHERS, batch_size=2)
    assert votes.votes["mse"].tolist() == [0, 1, 0]
    assert votes.votes["mae"].tolist() == [1, 1, 0]
    assert votes.unanimous.tolist() == [False, True, False]
    assert votes.target.tolist() == [0.5, 1.0, 0.0]
    assert torch.allclose(votes.d0["mse"], torch.full((3,), 0.01))


def test_label_triplets_accepts_specs_and_datasets() -> None:
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 16, 16, generator=g) for _ in range(4)]
    specs = make_distortion_triplets(images, np.random.default_rng(1), n=9)
    from_specs = label_triplets(specs, TEACHERS, batch_size=4, images=images)
    from_dataset = label_triplets(DistortionTripletDataset(images, specs), TEACHERS, batch_size=9)
    rendered = [render_triplet(images, s) for s in specs]
    from_tensors = label_triplets(tuple(torch.stack(p) for p in zip(*rendered, strict=True)), TEACHERS)
    for name in TEACHERS:
        assert torch.equal(from_specs.votes[name], from_dataset.votes[name])
        assert torch.allclose(from_specs.d1[name], from_tensors.d1[name])
    with pytest.raises(ValueError, match="no images"):
        label_triplets(specs, TEACHERS)
    with pytest.raises(ValueError, match="at least one"):
        label_triplets(specs, {}, images=images)
    with pytest.raises(ValueError, match="returned shape"):
        label_triplets(specs, {"bad": lambda a, b: (a - b).mean(dim=1)}, images=images)
