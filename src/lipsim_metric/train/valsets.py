"""Stored generated triplet sets (validation sets): :func:`build_val_triplets` writes one, :func:`load_triplet_set`
reads and verifies it (:class:`TripletSetDataset`, uint8 safetensors + a JSON manifest with hashes).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import Dataset

from .distortions import RECIPE_VERSION
from .photos import PathLike, PhotoCropDataset, _check_optional_size, _check_size, _quantize, _resize_square
from .shards import _metadata
from .triplets import DistanceFn, TripletSpec, label_triplets, make_distortion_triplets

__all__ = ["build_val_triplets", "TripletSetDataset", "load_triplet_set"]

_TRIPLET_SET_FORMAT = "lipsim_metric.triplet_set"
_TRIPLET_TENSORS = "triplets.safetensors"
_TRIPLET_MANIFEST = "manifest.json"


class _UInt8Triplets(Dataset):
    """Triplets stored as uint8 tensors; items ``{"ref", "x0", "x1"}`` as float ``(3, S, S)`` in [0, 1]."""

    def __init__(
        self,
        refs: torch.Tensor,
        ref_row: torch.Tensor,
        x0: torch.Tensor,
        x1: torch.Tensor,
        size: int | None = None,
    ) -> None:
        self.refs, self.ref_row, self.x0, self.x1 = refs, ref_row, x0, x1
        self.size = _check_optional_size(size)

    def __len__(self) -> int:
        return int(self.x0.shape[0])

    def _image(self, tensor: torch.Tensor) -> torch.Tensor:
        return _resize_square(tensor.float().div_(255.0), self.size)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {
            "ref": self._image(self.refs[int(self.ref_row[index])]),
            "x0": self._image(self.x0[index]),
            "x1": self._image(self.x1[index]),
        }


class TripletSetDataset(_UInt8Triplets):
    """A stored generated triplet set (see :func:`build_val_triplets` / :func:`load_triplet_set`).

    Items: ``{"ref", "x0", "x1"}`` float ``(3, S, S)`` tensors in [0, 1], ``"target"`` (share of teachers voting
    ``x1``, float32), ``"is_hard"`` and ``"unanimous"`` (bool), ``"votes"`` (dict teacher -> int64 0/1) and
    ``"index"``.

    Attributes:
        manifest: The parsed ``manifest.json``.
        specs: The :class:`TripletSpec` of every triplet.
        teachers: Teacher names.
        is_hard, unanimous, target, votes: Per-triplet labels as tensors, for filtering without loading images.
    """

    def __init__(
        self,
        refs: torch.Tensor,
        ref_row: torch.Tensor,
        x0: torch.Tensor,
        x1: torch.Tensor,
        manifest: Mapping[str, Any],
        size: int | None = None,
    ) -> None:
        super().__init__(refs, ref_row, x0, x1, size=size)
        self.manifest = dict(manifest)
        entries = self.manifest["triplets"]
        self.specs = [TripletSpec.from_dict(e) for e in entries]
        self.teachers: list[str] = list(self.manifest["teachers"])
        self.is_hard = torch.tensor([bool(e["is_hard"]) for e in entries], dtype=torch.bool)
        self.unanimous = torch.tensor([bool(e["unanimous"]) for e in entries], dtype=torch.bool)
        self.votes = {t: torch.tensor([int(e["votes"][t]) for e in entries], dtype=torch.int64) for t in self.teachers}
        self.target = torch.stack(list(self.votes.values())).float().mean(0)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Return triplet ``index`` (see the class docstring for the keys)."""
        item = super().__getitem__(index)
        item.update(
            target=self.target[index].clone(),
            is_hard=self.is_hard[index].clone(),
            unanimous=self.unanimous[index].clone(),
            votes={t: v[index].clone() for t, v in self.votes.items()},
            index=torch.tensor(index),
        )
        return item


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def build_val_triplets(
    image_dir: PathLike,
    out_dir: PathLike,
    teachers: Mapping[str, DistanceFn],
    n: int = 960,
    seed: int = 0,
    version: str = "v1",
    size: int = 224,
    hard_fraction: float = 0.3,
    batch_size: int = 32,
    device: torch.device | str | None = None,
    overwrite: bool = False,
) -> Path:
    """Build a reproducible, teacher-labelled 2AFC validation set from a folder of photos.

    Recipe (a pure function of the file list, ``seed``, ``n``, ``size``, ``hard_fraction`` and the distortion
    recipe :data:`~lipsim_metric.train.distortions.RECIPE_VERSION`): the references are the eval-mode centre crops
    (:class:`PhotoCropDataset`, ``train=False``) of the images under ``image_dir`` in sorted relative-path order;
    ``make_distortion_triplets(len(files), numpy.random.default_rng(seed), n, hard_fraction)`` draws the recipes
    (difficulty mix: ``hard_fraction`` hard triplets -- two different families at one strength in [0.2, 0.8] --
    and easy ones with a strength gap of at least 0.25, half of them within one family; see that function).
    The distorted images are quantised to uint8 *before* the teachers see them, so the stored labels describe
    exactly the stored images.

    Output in ``out_dir``:

    * ``triplets.safetensors``: uint8 ``refs`` (R, 3, S, S) (each used reference once), int64 ``ref_row`` (N,)
      (row of ``refs`` for each triplet), uint8 ``x0`` and ``x1`` (N, 3, S, S). At S = 224 that is 294 KiB per
      triplet plus 147 KiB per reference (about 360 MiB for the defaults and 480 photos).
    * ``manifest.json``: format, ``version``, seed, size, n, hard_fraction, distortion recipe version, the file
      list, the sha256 of the tensor file, the teacher names, and per triplet: reference file and index, both
      distortion specs, ``is_hard``, each teacher's two distances and vote (1 = ``x1`` closer), ``unanimous``;
      plus summary counts.

    Args:
        image_dir: Folder of validation photos (e.g. ``../shared/images/val``).
        out_dir: Output folder (created).
        teachers: Name -> distance callable ``(a, b) -> (N,)`` on float batches in [0, 1].
        n: Number of triplets.
        seed: Seed of the triplet recipes.
        version: Label of this set, stored in the manifest.
        size: Side of the stored images in pixels.
        hard_fraction: Fraction of hard triplets.
        batch_size: Triplets per teacher call.
        device: Device the teachers run on (batches are moved there).
        overwrite: Replace an existing set in ``out_dir``.

    Returns:
        Path of the written ``manifest.json``.

    Raises:
        FileExistsError: If ``out_dir`` already holds a set and ``overwrite`` is False.
        FileNotFoundError: If ``image_dir`` does not exist.
        ValueError: If there are no images or teachers, or an argument is out of range.

    Example:
        >>> build_val_triplets("../shared/images/val", "runs/val_triplets", {"lpips": lpips_fn})  # doctest: +SKIP
    """
    if not teachers:
        raise ValueError("teachers is empty; pass at least one {'name': callable(a, b) -> (N,)}.")
    size = _check_size(size)
    out = Path(out_dir)
    manifest_path, tensor_path = out / _TRIPLET_MANIFEST, out / _TRIPLET_TENSORS
    if (manifest_path.exists() or tensor_path.exists()) and not overwrite:
        raise FileExistsError(f"'{out}' already holds a triplet set; pass overwrite=True or choose another out_dir.")
    photos = PhotoCropDataset(image_dir, size=size, train=False)
    specs = make_distortion_triplets(len(photos), np.random.default_rng(seed), n, hard_fraction)

    used = sorted({s.ref_index for s in specs})
    row_of = {ref_index: row for row, ref_index in enumerate(used)}
    refs = torch.empty((len(used), 3, size, size), dtype=torch.uint8)
    for row, ref_index in enumerate(used):
        refs[row] = _quantize(photos[ref_index])
    ref_row = torch.tensor([row_of[s.ref_index] for s in specs], dtype=torch.int64)
    x0 = torch.empty((len(specs), 3, size, size), dtype=torch.uint8)
    x1 = torch.empty_like(x0)
    for i, spec in enumerate(specs):
        # Distort the quantised reference, so the stored triplet is reproducible from refs + specs.
        ref = refs[row_of[spec.ref_index]].float() / 255.0
        x0[i], x1[i] = _quantize(spec.d0.apply(ref)), _quantize(spec.d1.apply(ref))

    manifest: dict[str, Any] = {
        "format": _TRIPLET_SET_FORMAT,
        "version": version,
        "seed": seed,
        "size": size,
        "n": len(specs),
        "hard_fraction": hard_fraction,
        "distortion_recipe": RECIPE_VERSION,
        "image_dir": str(image_dir),
        "files": photos.names,
        "teachers": list(teachers),
        "tensor_file": _TRIPLET_TENSORS,
    }
    labels = label_triplets(_UInt8Triplets(refs, ref_row, x0, x1), teachers, batch_size=batch_size, device=device)

    entries = []
    for i, spec in enumerate(specs):
        entries.append({
            **spec.to_dict(),
            "ref_file": photos.names[spec.ref_index],
            "distances": {t: [float(labels.d0[t][i]), float(labels.d1[t][i])] for t in teachers},
            "votes": {t: int(labels.votes[t][i]) for t in teachers},
            "unanimous": bool(labels.unanimous[i]),
        })
    hard = torch.tensor([s.is_hard for s in specs], dtype=torch.bool)
    manifest["summary"] = {
        "hard": int(hard.sum()),
        "easy": int((~hard).sum()),
        "unanimous": int(labels.unanimous.sum()),
        "unanimous_hard": int((labels.unanimous & hard).sum()),
        "references": len(used),
    }
    manifest["triplets"] = entries

    out.mkdir(parents=True, exist_ok=True)
    tmp = tensor_path.with_name(tensor_path.name + ".tmp")
    save_file({"refs": refs, "ref_row": ref_row, "x0": x0, "x1": x1}, str(tmp),
              metadata=_metadata({"format": _TRIPLET_SET_FORMAT, "version": version}))
    os.replace(tmp, tensor_path)
    manifest["sha256"] = _sha256(tensor_path)
    tmp_manifest = manifest_path.with_name(manifest_path.name + ".tmp")
    tmp_manifest.write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp_manifest, manifest_path)
    return manifest_path


def load_triplet_set(path: PathLike, size: int | None = None, verify: bool = True) -> TripletSetDataset:
    """Load a set written by :func:`build_val_triplets`.

    Args:
        path: The set's folder or its ``manifest.json``.
        size: Resize the images to this side (default: keep the stored size).
        verify: Check the tensor file's sha256 against the manifest.

    Returns:
        A :class:`TripletSetDataset`.

    Raises:
        FileNotFoundError: If the manifest or the tensor file is missing.
        ValueError: If the files are not a triplet set, or the checksum or the counts do not match.
    """
    given = Path(path)
    manifest_path = given / _TRIPLET_MANIFEST if given.is_dir() else given
    if not manifest_path.is_file():
        raise FileNotFoundError(f"no triplet-set manifest at '{manifest_path}'; build one with build_val_triplets().")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    if manifest.get("format") != _TRIPLET_SET_FORMAT:
        raise ValueError(f"'{manifest_path}' is not a triplet-set manifest (format {manifest.get('format')!r}).")
    tensor_path = manifest_path.parent / manifest.get("tensor_file", _TRIPLET_TENSORS)
    if not tensor_path.is_file():
        raise FileNotFoundError(f"tensor file '{tensor_path}' named by '{manifest_path}' is missing; "
                                "copy it next to the manifest or rebuild the set.")
    if verify and _sha256(tensor_path) != manifest.get("sha256"):
        raise ValueError(f"'{tensor_path}' does not match the sha256 in '{manifest_path}'; the set is corrupt or "
                         "its files come from different builds. Rebuild it, or pass verify=False to skip the check.")
    with safe_open(str(tensor_path), framework="pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in ("refs", "ref_row", "x0", "x1")}
    if tensors["x0"].shape[0] != len(manifest["triplets"]):
        raise ValueError(f"'{tensor_path}' holds {tensors['x0'].shape[0]} triplets but the manifest lists "
                         f"{len(manifest['triplets'])}; rebuild the set.")
    return TripletSetDataset(tensors["refs"], tensors["ref_row"], tensors["x0"], tensors["x1"], manifest, size=size)
