"""Training and evaluation data: photo crops, packed image shards, human 2AFC sets and generated 2AFC triplets.

Sources of the formats read here:

* NIGHT (NIGHTS), the DreamSim 2AFC set: Fu et al., "DreamSim: Learning New Dimensions of Human Visual Similarity
  using Synthetic Data", NeurIPS 2023, https://arxiv.org/abs/2306.09344; layout and split logic of
  ``dataset/dataset.py`` in https://github.com/ssundaram21/dreamsim (``test_imagenet`` / ``test_no_imagenet`` are
  the rows with ``split == "test"`` and ``is_imagenet`` true / false; rows with fewer than 6 ``votes`` are dropped).
* BAPPS 2AFC: Zhang et al., "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric", CVPR 2018,
  https://arxiv.org/abs/1801.03924, layout of https://github.com/richzhang/PerceptualSimilarity
  (``<subset>/{ref,p0,p1,judge}/<id>``; ``judge`` holds the fraction of humans who preferred ``p1``).
* LipSim (Ghazanfari et al., ICLR 2024, https://arxiv.org/abs/2310.18274) distils a teacher on natural photos
  and evaluates 2AFC accuracy on NIGHT; the generated triplets here stand in for human sets where none is at hand.

Conventions shared by every loader: files are decoded by :func:`lipsim_metric.io.load_image` (the decoder of the
metric's CLI: EXIF orientation applied, transparency composited onto white); images are float RGB tensors in [0, 1],
``(3, S, S)``; 2AFC items are dicts ``{"ref", "x0", "x1", "target"}`` where ``target`` is the probability (vote share)
that ``x1`` is judged closer to ``ref`` than ``x0`` -- the NIGHT/BAPPS convention, 1.0 = everyone picked ``x1``.
Resizing to ``size x size`` uses the metric's own antialiased bilinear resize
(:func:`lipsim_metric.preprocess.to_backbone_input`); aspect ratio is not preserved, as in LPIPS and DreamSim. Files
are paired by name (CSV rows, file stems), never by sort order.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, NoReturn, Union

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import Dataset

from ..io import IMAGE_EXTENSIONS, find_images, load_image
from ..preprocess import to_backbone_input
from .distortions import RECIPE_VERSION, Distortion, list_families, sample_distortion

__all__ = [
    "PathLike",
    "list_images",
    "PhotoCropDataset",
    "PackResult",
    "pack_images",
    "ShardDataset",
    "Triplet",
    "TripletFileDataset",
    "NightDataset",
    "BAPPS2AFCDataset",
    "TripletCSVDataset",
    "TripletSpec",
    "make_distortion_triplets",
    "render_triplet",
    "DistortionTripletDataset",
    "TeacherVotes",
    "label_triplets",
    "build_val_triplets",
    "TripletSetDataset",
    "load_triplet_set",
]

PathLike = Union[str, "os.PathLike[str]"]
#: A teacher maps two float image batches ``(N, 3, H, W)`` in [0, 1] to distances ``(N,)``.
DistanceFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_SHARD_FORMAT = "lipsim_metric.image_shard"
_TRIPLET_SET_FORMAT = "lipsim_metric.triplet_set"
_TRIPLET_TENSORS = "triplets.safetensors"
_TRIPLET_MANIFEST = "manifest.json"


# ---------------------------------------------------------------------------------------------------------------
# Image I/O helpers
# ---------------------------------------------------------------------------------------------------------------


def _check_size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int (output side in pixels), got {size!r}.")
    return size


def _check_optional_size(size: int | None) -> int | None:
    return None if size is None else _check_size(size)


def _resize_square(img: torch.Tensor, size: int | None) -> torch.Tensor:
    """Resize ``(3, H, W)`` in [0, 1] to ``(3, size, size)`` exactly as the metric's preprocessing does."""
    if size is None or tuple(img.shape[-2:]) == (size, size):
        return img
    return to_backbone_input(img.unsqueeze(0), size, "[0,1]")[0].clamp_(0.0, 1.0)


def _center_box(height: int, width: int) -> tuple[int, int, int, int]:
    """``(top, left, height, width)`` of the central square."""
    side = min(height, width)
    return ((height - side) // 2, (width - side) // 2, side, side)


def _crop_resize(img: torch.Tensor, box: tuple[int, int, int, int], size: int) -> torch.Tensor:
    top, left, height, width = box
    return _resize_square(img[:, top : top + height, left : left + width], size)


def _quantize(img: torch.Tensor) -> torch.Tensor:
    return (img.clamp(0.0, 1.0) * 255.0).round_().to(torch.uint8)


# ---------------------------------------------------------------------------------------------------------------
# Photo folders
# ---------------------------------------------------------------------------------------------------------------


def list_images(root: PathLike, recursive: bool = True) -> list[str]:
    """List the image files under a folder, as strings (a thin wrapper of :func:`lipsim_metric.io.find_images`).

    Args:
        root: Folder to scan.
        recursive: Also scan sub-folders.

    Returns:
        Sorted POSIX paths relative to ``root`` of files whose extension (any case) is one of
        :data:`lipsim_metric.io.IMAGE_EXTENSIONS` (jpg, jpeg, png, bmp, webp, tif, gif, ...); hidden files and
        folders (name starting with ``.``) are skipped. Empty if there are none.

    Raises:
        FileNotFoundError: If ``root`` does not exist.
        NotADirectoryError: If ``root`` is a file.

    Example:
        >>> list_images("../shared/images/val")[:1]  # doctest: +SKIP
        ['caltech101_00037c.jpg']
    """
    return [path.as_posix() for path in find_images(root, recursive=recursive)]


def _resolve_files(
    root_or_files: PathLike | Sequence[PathLike], root: PathLike | None = None
) -> tuple[list[Path], list[str]]:
    """Turn a folder or a list of files into (paths, names relative to a common root)."""
    if isinstance(root_or_files, (str, os.PathLike)):
        base = Path(root_or_files)
        if base.is_dir():
            names = list_images(base)
            if not names:
                raise ValueError(
                    f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) found under '{base}'; "
                    "point to a folder of photos."
                )
            return [base / name for name in names], names
        if not base.exists():
            raise FileNotFoundError(f"'{base}' is neither an image folder nor an image file; check the path.")
        root_or_files = [base]
    files = [Path(f) for f in root_or_files]
    if not files:
        raise ValueError("the list of image files is empty; pass a folder or at least one file.")
    if root is not None:
        base = Path(root)
        try:
            names = [f.relative_to(base).as_posix() for f in files]
        except ValueError as err:
            raise ValueError(f"every file must lie under root='{base}': {err}") from err
    else:
        common = Path(os.path.commonpath([str(f.absolute().parent) for f in files]))
        names = [f.absolute().relative_to(common).as_posix() for f in files]
    if len(set(names)) != len(names):
        raise ValueError("the file list contains duplicate names; pass each image once.")
    return files, names


def _item_rng(seed: int | None, epoch: int, index: int) -> np.random.Generator:
    if seed is None:
        # Fresh randomness from torch's global RNG, which DataLoader seeds differently per worker and epoch.
        return np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))
    return np.random.default_rng([seed, epoch, index])


class PhotoCropDataset(Dataset):
    """Square crops of natural photos, for distillation (train) or evaluation (eval).

    Train mode: a random-resized crop (area fraction in ``scale``, aspect ratio in ``ratio``, the torchvision
    ``RandomResizedCrop`` recipe) resized to ``size``, then a horizontal flip with probability 0.5.
    Eval mode: resize the short side to ``size`` and take the centre ``size x size`` crop (done as one resample
    of the central square).

    Randomness is a pure function of ``(seed, epoch, index)``, so results do not depend on the number of
    DataLoader workers; call :meth:`set_epoch` before each epoch (the copies held by persistent DataLoader
    workers do not see it). ``seed=None`` uses torch's global RNG instead (not reproducible).

    Args:
        root_or_files: A folder (scanned with :func:`list_images`) or a sequence of image files.
        size: Output side in pixels.
        train: Random crops and flips if True, deterministic centre crops if False.
        seed: Base seed of the augmentation, or None.
        skip_unreadable: If True, a file that cannot be read is reported once with a warning and replaced by the
            next readable item; if False, reading it raises.
        scale: Range of the crop's area as a fraction of the image (train mode).
        ratio: Range of the crop's aspect ratio (train mode).

    Raises:
        FileNotFoundError: If the folder does not exist.
        ValueError: If there are no images or an argument is out of range.

    Example:
        >>> data = PhotoCropDataset("../shared/images/val", size=224, train=False)  # doctest: +SKIP
        >>> data[0].shape  # doctest: +SKIP
        torch.Size([3, 224, 224])
    """

    def __init__(
        self,
        root_or_files: PathLike | Sequence[PathLike],
        size: int = 224,
        train: bool = True,
        seed: int | None = 0,
        skip_unreadable: bool = False,
        scale: tuple[float, float] = (0.25, 1.0),
        ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
    ) -> None:
        self.size = _check_size(size)
        if not (0.0 < scale[0] <= scale[1] <= 1.0):
            raise ValueError(f"scale must satisfy 0 < low <= high <= 1, got {scale}.")
        if not (0.0 < ratio[0] <= ratio[1]):
            raise ValueError(f"ratio must satisfy 0 < low <= high, got {ratio}.")
        self.files, self.names = _resolve_files(root_or_files)
        self.train = bool(train)
        self.seed = seed
        self.skip_unreadable = bool(skip_unreadable)
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.epoch = 0
        self._unreadable: set[int] = set()

    def __len__(self) -> int:
        return len(self.files)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draw for this epoch (train mode)."""
        self.epoch = int(epoch)

    def _random_box(self, rng: np.random.Generator, height: int, width: int) -> tuple[int, int, int, int]:
        area = height * width
        log_low, log_high = math.log(self.ratio[0]), math.log(self.ratio[1])
        for _ in range(10):
            target = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(log_low, log_high))
            crop_w, crop_h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
            if 0 < crop_w <= width and 0 < crop_h <= height:
                top = int(rng.integers(0, height - crop_h + 1))
                left = int(rng.integers(0, width - crop_w + 1))
                return (top, left, crop_h, crop_w)
        return _center_box(height, width)

    def load(self, index: int) -> torch.Tensor:
        """Read item ``index`` (decoded by :func:`lipsim_metric.io.load_image`) without the unreadable-file fallback.

        Raises:
            FileNotFoundError: If the file disappeared.
            ValueError: If it cannot be decoded.
        """
        try:
            image = load_image(self.files[index])
        except ValueError as err:
            raise ValueError(f"{err}; or pass skip_unreadable=True to skip such files.") from err
        height, width = image.shape[-2:]
        if not self.train:
            return _crop_resize(image, _center_box(height, width), self.size)
        rng = _item_rng(self.seed, self.epoch, index)
        image = _crop_resize(image, self._random_box(rng, height, width), self.size)
        return image.flip(-1) if rng.random() < 0.5 else image

    def __getitem__(self, index: int) -> torch.Tensor:
        """Return image ``index`` as a float ``(3, size, size)`` tensor in [0, 1]."""
        if not self.skip_unreadable:
            return self.load(index)
        for offset in range(len(self)):
            candidate = (index + offset) % len(self)
            if candidate in self._unreadable:
                continue
            try:
                return self.load(candidate)
            except (FileNotFoundError, ValueError) as err:
                self._unreadable.add(candidate)
                warnings.warn(f"skipping unreadable image: {err}", RuntimeWarning, stacklevel=2)
        raise ValueError("no file of this dataset could be read; check the image folder.")


# ---------------------------------------------------------------------------------------------------------------
# Packed shards
# ---------------------------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------------------------
# Human-labelled 2AFC sets
# ---------------------------------------------------------------------------------------------------------------

ImageSource = Union[Path, torch.Tensor]  # noqa: UP007 (a runtime alias; ``|`` on classes needs Python 3.10+)


def _check_target(value: float, where: str) -> float:
    target = float(value)
    if not 0.0 <= target <= 1.0:  # also rejects NaN
        raise ValueError(f"{where}: target must be a vote share in [0, 1], got {value!r}.")
    return target


@dataclass(frozen=True)
class Triplet:
    """One 2AFC judgement.

    Attributes:
        ref: Reference image: a file path or a float ``(3, H, W)`` tensor in [0, 1].
        x0: First alternative (NIGHT: the left image, BAPPS: ``p0``).
        x1: Second alternative (NIGHT: the right image, BAPPS: ``p1``).
        target: Probability / vote share that ``x1`` is closer to ``ref`` than ``x0``; 0 or 1 for hard labels.
    """

    ref: ImageSource
    x0: ImageSource
    x1: ImageSource
    target: float

    def __post_init__(self) -> None:
        for name in ("ref", "x0", "x1"):
            source = getattr(self, name)
            if isinstance(source, torch.Tensor):
                if not source.is_floating_point() or source.dim() != 3 or source.shape[0] != 3:
                    raise TypeError(f"Triplet.{name} must be a float (3, H, W) tensor in [0, 1] or a path, got "
                                    f"{source.dtype} {tuple(source.shape)}; divide uint8 images by 255.")
            elif isinstance(source, (str, os.PathLike)):
                object.__setattr__(self, name, Path(source))
            else:
                raise TypeError(f"Triplet.{name} must be a path or a tensor, got {type(source).__name__}.")
        object.__setattr__(self, "target", _check_target(self.target, "Triplet"))


class TripletFileDataset(Dataset):
    """2AFC items ``{"ref", "x0", "x1", "target"}`` from a list of :class:`Triplet` records.

    Base of the NIGHT, BAPPS and CSV loaders; usable directly for in-memory triplets.

    Args:
        triplets: The records; relative paths are resolved against ``root``.
        root: Dataset root (named in error messages).
        size: Side the images are resized to, or None to keep their size.
        check_files: Verify at construction that every image file exists.
        name: Dataset name used in error messages.

    Raises:
        FileNotFoundError: If ``check_files`` and an image file is missing.
    """

    def __init__(
        self,
        triplets: Sequence[Triplet],
        root: PathLike = ".",
        size: int | None = 224,
        check_files: bool = True,
        name: str = "triplet dataset",
    ) -> None:
        self.triplets = list(triplets)
        self.root = Path(root)
        self.size = _check_optional_size(size)
        self.name = name
        if check_files:
            for triplet in self.triplets:
                for source in (triplet.ref, triplet.x0, triplet.x1):
                    if not isinstance(source, torch.Tensor) and not self._resolve(source).is_file():
                        self._missing(source)

    def _resolve(self, source: Path) -> Path:
        return source if source.is_absolute() else self.root / source

    def _missing(self, source: Path) -> NoReturn:
        raise FileNotFoundError(
            f"{self.name}: image file '{self._resolve(source)}' is missing (dataset root '{self.root}'); "
            "download/extract the complete dataset or fix the path in its index."
        )

    def _load(self, source: ImageSource) -> torch.Tensor:
        if isinstance(source, torch.Tensor):
            image = source.float()
        else:
            try:
                image = load_image(self._resolve(source))
            except FileNotFoundError:
                self._missing(source)
            except ValueError as err:
                raise ValueError(f"{self.name} (dataset root '{self.root}'): {err}") from err
        return _resize_square(image, self.size)

    def __len__(self) -> int:
        return len(self.triplets)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        """Return ``{"ref", "x0", "x1"}`` float ``(3, S, S)`` tensors and ``"target"`` (float32 scalar)."""
        triplet = self.triplets[index]
        return {
            "ref": self._load(triplet.ref),
            "x0": self._load(triplet.x0),
            "x1": self._load(triplet.x1),
            "target": torch.tensor(triplet.target, dtype=torch.float32),
        }


def _read_csv(path: Path, required: Sequence[str], what: str) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in required if c not in columns]
        if missing:
            raise ValueError(f"{what} '{path}' lacks column(s) {missing}; found {columns}.")
        return [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]


def _parse_bool(value: str, where: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes", "t"):
        return True
    if lowered in ("false", "0", "no", "f"):
        return False
    raise ValueError(f"{where}: expected a boolean (True/False), got {value!r}.")


class NightDataset(TripletFileDataset):
    """The NIGHT(S) 2AFC set of DreamSim (Fu et al., NeurIPS 2023).

    Layout: ``root/data.csv`` with (at least) the columns ``id, left_vote, right_vote, ref_path, left_path,
    right_path, split`` and, for the test splits, ``is_imagenet``; the released file also has ``votes`` (number of
    raters), ``idx`` and ``prompt``. Paths are relative to ``root`` (``ref/000/0.png``, ``distort/000/0_0.png``,
    ``distort/000/0_1.png``). ``x0`` is the left image, ``x1`` the right one, and ``target = right_vote /
    (left_vote + right_vote)`` (1 = everyone judged the right image closer).

    Splits, as in the official ``TwoAFCDataset``: ``"train"``, ``"val"``, ``"test"`` select ``split``;
    ``"test_imagenet"`` / ``"test_no_imagenet"`` are the test rows with ``is_imagenet`` true / false. Rows with
    fewer than ``min_votes`` votes are dropped when the ``votes`` column exists (the official code keeps
    ``votes >= 6``).

    Args:
        root: NIGHT root folder.
        split: One of ``"train"``, ``"val"``, ``"test"``, ``"test_imagenet"``, ``"test_no_imagenet"``.
        size: Image side after resizing (None keeps the stored 768 px).
        min_votes: Minimum ``votes``; None keeps every row.
        check_files: Verify at construction that every image exists.

    Raises:
        FileNotFoundError: If ``data.csv`` or (with ``check_files``) an image is missing.
        ValueError: If the split is unknown, a column is missing or a row holds invalid votes.

    Example:
        >>> test = NightDataset("data/nights", split="test_imagenet")  # doctest: +SKIP
        >>> item = test[0]; item["ref"].shape, float(item["target"])  # doctest: +SKIP
    """

    SPLITS = ("train", "val", "test", "test_imagenet", "test_no_imagenet")

    def __init__(
        self,
        root: PathLike,
        split: str = "test_imagenet",
        size: int | None = 224,
        min_votes: int | None = 6,
        check_files: bool = True,
    ) -> None:
        if split not in self.SPLITS:
            raise ValueError(f"unknown NIGHT split {split!r}; choose one of {list(self.SPLITS)}.")
        base = Path(root)
        index = base / "data.csv"
        if not index.is_file():
            raise FileNotFoundError(
                f"NIGHT index '{index}' is missing; root must be the folder holding data.csv, ref/ and distort/ "
                "(download with dreamsim's dataset/download_dataset.sh)."
            )
        required = ["left_vote", "right_vote", "ref_path", "left_path", "right_path", "split"]
        if split in ("test_imagenet", "test_no_imagenet"):
            required.append("is_imagenet")
        rows = _read_csv(index, required, "NIGHT index")
        wanted_split = "test" if split.startswith("test") else split
        triplets: list[Triplet] = []
        ids: list[str] = []
        for line, row in enumerate(rows, start=2):
            where = f"{index}, line {line}"
            if row["split"] != wanted_split:
                continue
            if split != wanted_split and _parse_bool(row["is_imagenet"], where) != (split == "test_imagenet"):
                continue
            if min_votes is not None and row.get("votes", "") != "" and float(row["votes"]) < min_votes:
                continue
            try:
                left, right = float(row["left_vote"]), float(row["right_vote"])
            except ValueError as err:
                raise ValueError(f"{where}: left_vote/right_vote must be numbers ({err}).") from err
            if not (left >= 0 and right >= 0 and left + right > 0):
                raise ValueError(f"{where}: votes must be non-negative and not both 0, got {left}, {right}.")
            triplets.append(
                Triplet(Path(row["ref_path"]), Path(row["left_path"]), Path(row["right_path"]), right / (left + right))
            )
            ids.append(row.get("id", str(line)))
        self.split = split
        self.ids = ids
        super().__init__(triplets, root=base, size=size, check_files=check_files, name=f"NIGHT[{split}]")


class BAPPS2AFCDataset(TripletFileDataset):
    """The 2AFC part of BAPPS (Zhang et al., CVPR 2018).

    Layout: ``root/<subset>/{ref,p0,p1}/<id>.png`` and ``root/<subset>/judge/<id>.npy`` (e.g. ``root`` =
    ``dataset/2afc/val``; subsets ``traditional``, ``cnn``, ``superres``, ``deblur``, ``color``, ``frameinterp``
    for val, ``traditional``, ``cnn``, ``mix`` for train). ``judge`` holds the fraction of humans who judged
    ``p1`` closer, which is ``target``. Files are paired by ``<id>``; extra files in ``p0``/``p1``/``judge``
    without a reference are ignored.

    Args:
        root: Folder holding the subset folders.
        subsets: Subsets to load; None loads every sub-folder that has a ``ref`` folder.
        size: Image side after resizing (BAPPS images are 64 px; None keeps them).
        check_files: Kept for symmetry with the other loaders; pairing already checks that every file exists.

    Raises:
        FileNotFoundError: If ``root``, a requested subset, or a ``p0``/``p1``/``judge`` file of a reference is
            missing.
        ValueError: If a judge file does not hold one fraction in [0, 1].

    Example:
        >>> val = BAPPS2AFCDataset("dataset/2afc/val", subsets=("traditional", "cnn"))  # doctest: +SKIP
    """

    def __init__(
        self,
        root: PathLike,
        subsets: Sequence[str] | None = None,
        size: int | None = 224,
        check_files: bool = True,
    ) -> None:
        base = Path(root)
        if not base.is_dir():
            raise FileNotFoundError(f"BAPPS root '{base}' does not exist; pass e.g. '<bapps>/dataset/2afc/val'.")
        available = sorted(p.name for p in base.iterdir() if (p / "ref").is_dir())
        if isinstance(subsets, str):
            subsets = (subsets,)
        chosen = list(available if subsets is None else subsets)
        if not chosen:
            raise FileNotFoundError(f"no BAPPS subset (a folder with ref/, p0/, p1/, judge/) found under '{base}'.")
        triplets: list[Triplet] = []
        self.subset_of: list[str] = []
        self.ids: list[str] = []
        for subset in chosen:
            folder = base / subset
            if not (folder / "ref").is_dir():
                raise FileNotFoundError(
                    f"BAPPS subset '{subset}' not found under '{base}' (no '{folder / 'ref'}'); available: {available}."
                )
            by_stem = {kind: self._stems(folder / kind) for kind in ("ref", "p0", "p1")}
            for stem in sorted(by_stem["ref"]):
                paths = []
                for kind in ("p0", "p1"):
                    if stem not in by_stem[kind]:
                        raise FileNotFoundError(
                            f"BAPPS: '{folder / kind / (stem + '.png')}' is missing for reference "
                            f"'{by_stem['ref'][stem]}' (dataset root '{base}'); re-extract the subset."
                        )
                    paths.append(by_stem[kind][stem])
                judge = folder / "judge" / f"{stem}.npy"
                if not judge.is_file():
                    raise FileNotFoundError(
                        f"BAPPS: judge file '{judge}' is missing (dataset root '{base}'); re-extract the subset."
                    )
                values = np.load(judge).reshape(-1)
                if values.size != 1:
                    raise ValueError(f"BAPPS judge file '{judge}' holds {values.size} values; expected one fraction.")
                triplets.append(Triplet(by_stem["ref"][stem], paths[0], paths[1], _check_target(values[0], str(judge))))
                self.subset_of.append(subset)
                self.ids.append(stem)
        self.subsets = chosen
        super().__init__(triplets, root=base, size=size, check_files=False, name="BAPPS 2AFC")

    @staticmethod
    def _stems(folder: Path) -> dict[str, Path]:
        if not folder.is_dir():
            return {}
        return {p.stem: p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS}


class TripletCSVDataset(TripletFileDataset):
    """2AFC triplets listed in a CSV file -- the generic format for your own judgements.

    Format: a header with (at least) the columns ``ref,x0,x1,target``; one triplet per row. Paths are relative to
    the CSV file's folder (absolute paths also work); ``target`` is the probability that ``x1`` is closer to
    ``ref`` (1 or 0 for a hard label, e.g. 0.75 when 3 of 4 raters chose ``x1``). Extra columns are ignored::

        ref,x0,x1,target
        images/ref_001.png,images/a_001.png,images/b_001.png,1
        images/ref_002.png,images/a_002.png,images/b_002.png,0.25

    Args:
        csv_path: The CSV file.
        size: Image side after resizing, or None.
        check_files: Verify at construction that every image exists.

    Raises:
        FileNotFoundError: If the CSV or (with ``check_files``) an image is missing.
        ValueError: If a column is missing, the file has no rows, or a target is not in [0, 1].
    """

    def __init__(self, csv_path: PathLike, size: int | None = 224, check_files: bool = True) -> None:
        path = Path(csv_path)
        if not path.is_file():
            raise FileNotFoundError(f"triplet CSV '{path}' does not exist; check the path.")
        rows = _read_csv(path, ("ref", "x0", "x1", "target"), "triplet CSV")
        if not rows:
            raise ValueError(f"triplet CSV '{path}' has a header but no rows.")
        triplets = []
        for line, row in enumerate(rows, start=2):
            try:
                target = float(row["target"])
            except ValueError as err:
                raise ValueError(f"{path}, line {line}: target must be a number in [0, 1] ({err}).") from err
            triplets.append(
                Triplet(Path(row["ref"]), Path(row["x0"]), Path(row["x1"]),
                        _check_target(target, f"{path}, line {line}"))
            )
        super().__init__(triplets, root=path.parent, size=size, check_files=check_files, name=f"CSV '{path.name}'")


# ---------------------------------------------------------------------------------------------------------------
# Generated 2AFC triplets
# ---------------------------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------------------------
# Stored generated triplet sets
# ---------------------------------------------------------------------------------------------------------------


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
