"""Generated 2AFC triplets: distortion recipes (:class:`TripletSpec`), rendering, and labelling by teachers.

The generated triplets stand in for human 2AFC sets where none is at hand (LipSim, Ghazanfari et al., ICLR 2024,
https://arxiv.org/abs/2310.18274, evaluates 2AFC accuracy on NIGHT). :func:`label_triplets` records every distance
teacher's vote (:class:`TeacherVotes`); distortions come from :mod:`lipsim_metric.train.distortions`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence, Sized
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from .distortions import Distortion, list_families, sample_distortion

__all__ = ["DistanceFn", "TripletSpec", "make_distortion_triplets", "render_triplet", "DistortionTripletDataset",
           "TeacherVotes", "label_triplets"]

#: A teacher maps two float image batches ``(N, 3, H, W)`` in [0, 1] to distances ``(N,)``.
DistanceFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


#: Strength range of the matched-strength pair of a hard triplet.
_HARD_STRENGTH = (0.2, 0.8)
#: Minimum strength gap between the two distortions of an easy triplet.
_EASY_MIN_GAP = 0.25


class TripletSpec(NamedTuple):
    """Recipe of one generated triplet: ``x0 = d0.apply(images[ref_index])``, ``x1 = d1.apply(...)``."""

    ref_index: int
    d0: Distortion
    d1: Distortion
    is_hard: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form; :meth:`from_dict` inverts it."""
        return {"ref_index": self.ref_index, "d0": self.d0.to_dict(), "d1": self.d1.to_dict(),
                "is_hard": self.is_hard}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TripletSpec:
        """Rebuild a spec written by :meth:`to_dict`."""
        return cls(int(data["ref_index"]), Distortion.from_dict(data["d0"]), Distortion.from_dict(data["d1"]),
                   bool(data["is_hard"]))


def make_distortion_triplets(
    images: Sized | int,
    rng: np.random.Generator,
    n: int,
    hard_fraction: float = 0.3,
    families: Sequence[str] | None = None,
    combine_probability: float = 0.2,
) -> list[TripletSpec]:
    """Draw ``n`` 2AFC triplet recipes over a set of reference images.

    Difficulty mix:

    * **hard** (``round(hard_fraction * n)`` triplets, at random positions): two *different single* families at
      the *same* strength, drawn from U(0.2, 0.8). Which one is closer is a genuine perceptual question, and
      teachers often disagree on it.
    * **easy** (the rest): the two strengths differ by at least 0.25 (weak ~ U(0, 0.75), strong ~ U(weak + 0.25,
      1)). Half of them use one family with identical random choices for both (only the magnitude differs, so
      the weaker one is unambiguously closer); the other half draw both distortions independently from all
      families, with two-family combinations at ``combine_probability``.

    The weaker / first distortion lands in ``x0`` or ``x1`` with probability 1/2 each. Reference indices cycle
    through random permutations of ``range(len(images))``, so every image is used about equally often. Only
    specs are returned; :func:`render_triplet` (or :class:`DistortionTripletDataset`) produces the images.

    Args:
        images: The reference images (only ``len`` is used) or their number.
        rng: Source of randomness; the result is a pure function of its state and the other arguments.
        n: Number of triplets.
        hard_fraction: Fraction of hard triplets, in [0, 1].
        families: Families to draw from (default: all); hard triplets need at least two.
        combine_probability: Probability of a two-family combination in the independent easy half.

    Returns:
        A list of :class:`TripletSpec` ``(ref_index, d0, d1, is_hard)``.

    Raises:
        TypeError: If ``rng`` is not a ``numpy.random.Generator``.
        ValueError: If ``n`` < 0, there are no images, ``hard_fraction`` is outside [0, 1], or hard triplets are
            asked for with fewer than two families.

    Example:
        >>> specs = make_distortion_triplets(10, np.random.default_rng(0), n=4)
        >>> len(specs), specs[0].ref_index < 10
        (4, True)
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}; use np.random.default_rng.")
    count = images if isinstance(images, int) else len(images)
    if count < 1:
        raise ValueError("there are no reference images; pass a non-empty image set.")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}.")
    if not 0.0 <= hard_fraction <= 1.0:
        raise ValueError(f"hard_fraction must lie in [0, 1], got {hard_fraction}.")
    pool = list_families() if families is None else list(dict.fromkeys(families))
    n_hard = int(round(hard_fraction * n))
    if n_hard and len(pool) < 2:
        raise ValueError("hard triplets need at least two different families; add families or set hard_fraction=0.")

    hard = np.zeros(n, dtype=bool)
    hard[rng.permutation(n)[:n_hard]] = True
    repeats = max(1, math.ceil(n / count))
    ref_order = np.concatenate([rng.permutation(count) for _ in range(repeats)])[:n]

    specs: list[TripletSpec] = []
    for i in range(n):
        if hard[i]:
            strength = float(rng.uniform(*_HARD_STRENGTH))
            first, second = rng.choice(len(pool), size=2, replace=False)
            da = sample_distortion(rng, strength, [pool[int(first)]], combine_probability=0.0)
            db = sample_distortion(rng, strength, [pool[int(second)]], combine_probability=0.0)
        else:
            weak = float(rng.uniform(0.0, 1.0 - _EASY_MIN_GAP))
            strong = float(rng.uniform(weak + _EASY_MIN_GAP, 1.0))
            if rng.random() < 0.5:
                family = [pool[int(rng.integers(len(pool)))]]
                child_seed = int(rng.integers(0, 2**63 - 1))
                da = sample_distortion(np.random.default_rng(child_seed), weak, family, combine_probability=0.0)
                db = sample_distortion(np.random.default_rng(child_seed), strong, family, combine_probability=0.0)
            else:
                da = sample_distortion(rng, weak, pool, combine_probability)
                db = sample_distortion(rng, strong, pool, combine_probability)
        if rng.random() < 0.5:
            da, db = db, da
        specs.append(TripletSpec(int(ref_order[i]), da, db, bool(hard[i])))
    return specs


def render_triplet(
    images: Sequence[torch.Tensor], spec: TripletSpec
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Produce ``(ref, x0, x1)`` for one spec.

    Each distortion is applied to the single ``(3, H, W)`` reference, so the result does not depend on batching.

    Args:
        images: Indexable set of float ``(3, H, W)`` images in [0, 1] (e.g. a :class:`ShardDataset`).
        spec: The recipe.

    Returns:
        The reference and its two distorted copies.
    """
    ref = images[spec.ref_index]
    return ref, spec.d0.apply(ref), spec.d1.apply(ref)


class DistortionTripletDataset(Dataset):
    """Lazily rendered generated triplets: items ``{"ref", "x0", "x1", "is_hard"}``.

    Args:
        images: Indexable set of float ``(3, H, W)`` images in [0, 1].
        specs: Recipes from :func:`make_distortion_triplets`.
    """

    def __init__(self, images: Sequence[torch.Tensor], specs: Sequence[TripletSpec]) -> None:
        self.images = images
        self.specs = list(specs)
        bad = [s.ref_index for s in self.specs if not 0 <= s.ref_index < len(images)]
        if bad:
            raise ValueError(f"spec ref_index {bad[:5]} out of range for {len(images)} images; "
                             "were the specs made for another image set?")

    def __len__(self) -> int:
        return len(self.specs)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        """Render triplet ``index``."""
        ref, x0, x1 = render_triplet(self.images, self.specs[index])
        return {"ref": ref, "x0": x0, "x1": x1, "is_hard": torch.tensor(self.specs[index].is_hard)}


@dataclass(frozen=True)
class TeacherVotes:
    """Teacher judgements of a set of triplets (from :func:`label_triplets`).

    Attributes:
        d0: Per teacher, distances ``d(ref, x0)``, float32 ``(N,)``.
        d1: Per teacher, distances ``d(ref, x1)``, float32 ``(N,)``.
        votes: Per teacher, int64 ``(N,)``: 1 if ``d1 < d0`` (the teacher finds ``x1`` closer), else 0.
        unanimous: bool ``(N,)``: every teacher voted the same way and none had a tie ``d0 == d1``.
    """

    d0: dict[str, torch.Tensor]
    d1: dict[str, torch.Tensor]
    votes: dict[str, torch.Tensor]
    unanimous: torch.Tensor

    @property
    def target(self) -> torch.Tensor:
        """Share of teachers voting for ``x1``, float32 ``(N,)`` -- a teacher analogue of the human vote share."""
        return torch.stack(list(self.votes.values())).float().mean(0)


def _as_distances(value: Any, name: str, batch: int) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"teacher '{name}' returned {type(value).__name__}; a teacher must return a tensor (N,).")
    flat = value.detach().reshape(value.shape[0], -1) if value.dim() else value.reshape(1, 1)
    if flat.shape != (batch, 1):
        raise ValueError(f"teacher '{name}' returned shape {tuple(value.shape)} for a batch of {batch}; "
                         "expected one distance per pair, (N,) or (N, 1, 1, 1).")
    return flat[:, 0].float().cpu()


def _triplet_batches(
    triplets: Any, images: Sequence[torch.Tensor] | None, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    is_tensors = isinstance(triplets, (tuple, list)) and len(triplets) == 3
    if is_tensors and all(isinstance(t, torch.Tensor) for t in triplets):
        ref, x0, x1 = triplets
        if not (ref.dim() == 4 and ref.shape == x0.shape == x1.shape):
            raise ValueError(f"ref, x0, x1 must be batches (N, 3, H, W) of one shape, got {tuple(ref.shape)}, "
                             f"{tuple(x0.shape)}, {tuple(x1.shape)}.")
        for start in range(0, ref.shape[0], batch_size):
            yield ref[start : start + batch_size], x0[start : start + batch_size], x1[start : start + batch_size]
        return
    total = len(triplets)
    if total and isinstance(triplets[0], TripletSpec):
        if images is None:
            raise ValueError("label_triplets got TripletSpecs but no images; pass images=<the reference images>.")
        get = lambda i: render_triplet(images, triplets[i])  # noqa: E731
    else:
        def get(i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            item = triplets[i]
            if not isinstance(item, Mapping) or not {"ref", "x0", "x1"} <= set(item):
                raise TypeError("triplets must be (ref, x0, x1) tensors, a list of TripletSpec, or a dataset of "
                                f"dicts with 'ref', 'x0', 'x1'; item {i} is {type(item).__name__}.")
            return item["ref"], item["x0"], item["x1"]
    for start in range(0, total, batch_size):
        parts = [get(i) for i in range(start, min(total, start + batch_size))]
        yield tuple(torch.stack([p[k] for p in parts]) for k in range(3))  # type: ignore[misc]


def label_triplets(
    triplets: Any,
    distance_teachers: Mapping[str, DistanceFn],
    batch_size: int = 32,
    images: Sequence[torch.Tensor] | None = None,
    device: torch.device | str | None = None,
) -> TeacherVotes:
    """Ask each teacher which alternative of each triplet is closer to the reference.

    Args:
        triplets: One of: a tuple ``(ref, x0, x1)`` of float ``(N, 3, H, W)`` tensors; a list of
            :class:`TripletSpec` (with ``images``); or an indexable of dicts with ``"ref"``, ``"x0"``, ``"x1"``
            (e.g. :class:`DistortionTripletDataset`, :class:`NightDataset`).
        distance_teachers: Name -> callable ``(a, b) -> (N,)`` distances for float image batches in [0, 1]
            (e.g. LPIPS, DISTS); evaluated under ``torch.inference_mode``.
        batch_size: Triplets per teacher call.
        images: The reference images when ``triplets`` are specs.
        device: Move each batch here before calling the teachers (default: leave where it is).

    Returns:
        :class:`TeacherVotes` with distances, per-teacher votes (1 = ``x1`` closer) and the unanimity mask.

    Raises:
        ValueError: If there are no teachers, ``batch_size`` < 1, or a teacher returns the wrong shape.
        TypeError: If ``triplets`` has none of the accepted forms or a teacher returns a non-tensor.

    Example:
        >>> mse = lambda a, b: ((a - b) ** 2).mean(dim=(1, 2, 3))
        >>> ref = torch.zeros(2, 3, 8, 8); x0 = ref + 0.1; x1 = ref + torch.tensor([0.05, 0.2]).view(2, 1, 1, 1)
        >>> label_triplets((ref, x0, x1), {"mse": mse}).votes["mse"].tolist()
        [1, 0]
    """
    if not distance_teachers:
        raise ValueError("distance_teachers is empty; pass at least one {'name': callable(a, b) -> (N,)}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
    d0: dict[str, list[torch.Tensor]] = {name: [] for name in distance_teachers}
    d1: dict[str, list[torch.Tensor]] = {name: [] for name in distance_teachers}
    with torch.inference_mode():
        for ref, x0, x1 in _triplet_batches(triplets, images, batch_size):
            if device is not None:
                ref, x0, x1 = ref.to(device), x0.to(device), x1.to(device)
            for name, teacher in distance_teachers.items():
                d0[name].append(_as_distances(teacher(ref, x0), name, ref.shape[0]))
                d1[name].append(_as_distances(teacher(ref, x1), name, ref.shape[0]))
    dist0 = {k: torch.cat(v) if v else torch.zeros(0) for k, v in d0.items()}
    dist1 = {k: torch.cat(v) if v else torch.zeros(0) for k, v in d1.items()}
    votes = {k: (dist1[k] < dist0[k]).long() for k in distance_teachers}
    stacked = torch.stack(list(votes.values()))
    tied = torch.stack([dist0[k] == dist1[k] for k in distance_teachers]).any(0)
    unanimous = (stacked == stacked[:1]).all(0) & ~tied
    return TeacherVotes(d0=dist0, d1=dist1, votes=votes, unanimous=unanimous)
