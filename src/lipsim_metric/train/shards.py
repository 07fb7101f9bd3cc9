"""Packed image shards: :func:`pack_images` writes decoded, resized photos as uint8 safetensors shards once;
:class:`ShardDataset` reads them back (fast epochs without re-decoding JPEGs).

Conventions shared by every loader (see :mod:`lipsim_metric.train.data`): files are decoded by
:func:`lipsim_metric.images.load_image` (the decoder of the metric's CLI: EXIF orientation applied, transparency
composited onto white); images are float RGB tensors in [0, 1], ``(3, S, S)``; resizing to ``size x size`` uses the
metric's own antialiased bilinear resize (:func:`lipsim_metric.preprocess.to_backbone_input`); aspect ratio is not
preserved, as in LPIPS and DreamSim. Files are paired by name (CSV rows, file stems), never by sort order.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import Dataset

from ..images import load_image
from .photos import (
    PathLike,
    _center_box,
    _check_size,
    _crop_resize,
    _item_rng,
    _quantize,
    _resize_square,
    _resolve_files,
)

__all__ = ["PackResult", "pack_images", "ShardDataset"]

_SHARD_FORMAT = "lipsim_metric.image_shard"


_METADATA_KEY = "lipsim_metric"


def _metadata(values: Mapping[str, Any]) -> dict[str, str]:
    # One key holding sorted JSON: safetensors writes a multi-key metadata map in hash order, which would make
    # the bytes (and the checksum recorded for a triplet set) differ between identical builds.
    return {_METADATA_KEY: json.dumps(values, sort_keys=True)}


def _read_metadata(metadata: Mapping[str, str] | None) -> dict[str, Any]:
    try:
        return dict(json.loads((metadata or {})[_METADATA_KEY]))
    except (KeyError, ValueError, TypeError):
        return {}


@dataclass(frozen=True)
class PackResult:
    """What :func:`pack_images` wrote.

    Attributes:
        path: The safetensors file.
        names: Relative names of the packed images, in tensor order.
        skipped: Names of files that could not be read (only with ``skip_unreadable=True``).
        nbytes: Size of the written file in bytes.
    """

    path: Path
    names: list[str]
    skipped: list[str]
    nbytes: int


def pack_images(
    files: PathLike | Sequence[PathLike],
    out_path: PathLike,
    size: int = 224,
    crop: str = "center",
    root: PathLike | None = None,
    skip_unreadable: bool = False,
    overwrite: bool = False,
) -> PackResult:
    """Pack images into one safetensors file: a uint8 tensor ``images`` (N, 3, size, size) plus their names.

    Metadata: one key, ``lipsim_metric``, holding a JSON object (sorted keys, so equal inputs give equal bytes)
    with ``format`` = ``lipsim_metric.image_shard``, ``names`` (relative file names, in tensor order), ``size`` and
    ``crop``; read it with ``json.loads(safe_open(path, "pt").metadata()["lipsim_metric"])``. At 224 px an image
    costs 147 KiB, so a shard of a few tens of MiB holds a few hundred images (all 9,146 training photos take
    1.3 GiB at 224 px, 0.4 GiB at 128 px); pack a long list as several shards (e.g. ``files[i::k]``). The whole
    shard is built in memory, then written atomically (temporary file + rename).

    Args:
        files: A folder (all images under it, see :func:`list_images`) or a sequence of image files.
        out_path: Destination ``.safetensors`` file.
        size: Side of the stored images in pixels.
        crop: ``"center"`` (short side to ``size``, centre crop; what eval-mode :class:`PhotoCropDataset` returns)
            or ``"resize"`` (whole image squeezed to ``size x size``, aspect ratio not kept).
        root: For a list of files, store names relative to this folder (default: the deepest folder holding
            every file). A folder given as ``files`` is always the root.
        skip_unreadable: Leave out files that cannot be decoded (with a warning) instead of raising.
        overwrite: Replace an existing ``out_path``.

    Returns:
        A :class:`PackResult`.

    Raises:
        FileExistsError: If ``out_path`` exists and ``overwrite`` is False.
        FileNotFoundError: If a file or the folder is missing.
        ValueError: If ``crop`` is unknown, there is nothing to pack, or a file cannot be decoded.

    Example:
        >>> pack_images("../shared/images/val", "/tmp/val224.safetensors")  # doctest: +SKIP
    """
    size = _check_size(size)
    if crop not in ("center", "resize"):
        raise ValueError(f"crop must be 'center' or 'resize', got {crop!r}.")
    out = Path(out_path)
    if out.exists() and not overwrite:
        raise FileExistsError(f"'{out}' already exists; pass overwrite=True or choose another path.")
    paths, names = _resolve_files(files, root)

    images = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)
    kept: list[str] = []
    skipped: list[str] = []
    for path, name in zip(paths, names, strict=True):
        try:
            image = load_image(path)
        except ValueError as err:
            if not skip_unreadable:
                raise ValueError(f"{err}; or pass skip_unreadable=True to leave such files out.") from err
            warnings.warn(f"skipping unreadable image: {err}", RuntimeWarning, stacklevel=2)
            skipped.append(name)
            continue
        height, width = image.shape[-2:]
        box = _center_box(height, width) if crop == "center" else (0, 0, height, width)
        images[len(kept)] = _quantize(_crop_resize(image, box, size))
        kept.append(name)
    if not kept:
        raise ValueError("none of the files could be read; nothing to pack.")
    metadata = _metadata({"format": _SHARD_FORMAT, "names": kept, "size": size, "crop": crop})
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    save_file({"images": images[: len(kept)].contiguous()}, str(tmp), metadata=metadata)
    os.replace(tmp, out)
    return PackResult(path=out, names=kept, skipped=skipped, nbytes=out.stat().st_size)


class ShardDataset(Dataset):
    """Images from a shard written by :func:`pack_images`, as float ``(3, S, S)`` tensors in [0, 1].

    With ``augment``: a random square crop covering ``crop_scale`` of the area, resized back to ``S`` (antialiased
    bilinear), then a horizontal flip with probability 0.5; randomness is a function of ``(seed, epoch, index)``
    as in :class:`PhotoCropDataset`. The whole uint8 tensor is loaded into memory (``self.images``), so a trainer
    may also move it to the GPU and index it directly.

    Args:
        path: The ``.safetensors`` shard.
        augment: Apply the random crop and flip.
        seed: Base seed of the augmentation, or None for torch's global RNG.
        crop_scale: Range of the crop's area fraction when augmenting.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If the file is not a shard written by :func:`pack_images`.
    """

    def __init__(
        self,
        path: PathLike,
        augment: bool,
        seed: int | None = 0,
        crop_scale: tuple[float, float] = (0.64, 1.0),
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"shard '{self.path}' does not exist; create it with pack_images().")
        if not (0.0 < crop_scale[0] <= crop_scale[1] <= 1.0):
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {crop_scale}.")
        with safe_open(str(self.path), framework="pt") as handle:
            metadata = _read_metadata(handle.metadata())
            if metadata.get("format") != _SHARD_FORMAT or "images" not in handle.keys():
                raise ValueError(f"'{self.path}' is not an image shard written by pack_images().")
            self.images: torch.Tensor = handle.get_tensor("images")
        self.names: list[str] = list(metadata["names"])
        if self.images.dtype != torch.uint8 or self.images.dim() != 4 or self.images.shape[1] != 3:
            raise ValueError(f"'{self.path}': expected uint8 images (N, 3, S, S), got {self.images.dtype} "
                             f"{tuple(self.images.shape)}.")
        if len(self.names) != self.images.shape[0]:
            raise ValueError(f"'{self.path}': {len(self.names)} names for {self.images.shape[0]} images; "
                             "the shard is corrupt, re-create it with pack_images().")
        self.augment = bool(augment)
        self.seed = seed
        self.crop_scale = (float(crop_scale[0]), float(crop_scale[1]))
        self.epoch = 0

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draw for this epoch."""
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> torch.Tensor:
        """Return image ``index`` as a float ``(3, S, S)`` tensor in [0, 1]."""
        image = self.images[index].float().div_(255.0)
        if not self.augment:
            return image
        size = image.shape[-1]
        rng = _item_rng(self.seed, self.epoch, index)
        side = max(1, min(size, int(round(size * math.sqrt(rng.uniform(*self.crop_scale))))))
        top = int(rng.integers(0, size - side + 1))
        left = int(rng.integers(0, size - side + 1))
        crop = image[:, top : top + side, left : left + side]
        crop = _resize_square(crop, size)
        if rng.random() < 0.5:
            crop = crop.flip(-1)
        return crop.contiguous()
