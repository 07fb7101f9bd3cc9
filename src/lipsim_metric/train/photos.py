"""Photo folders and random crops (:class:`PhotoCropDataset`), plus the square-resizing helpers the loaders share.

LipSim (Ghazanfari et al., ICLR 2024, https://arxiv.org/abs/2310.18274) distils a teacher on natural photos; this
module lists such photos and serves reproducible random square crops of them.

Conventions shared by every loader (see :mod:`lipsim_metric.train.data`): files are decoded by
:func:`lipsim_metric.images.load_image` (the decoder of the metric's CLI: EXIF orientation applied, transparency
composited onto white); images are float RGB tensors in [0, 1], ``(3, S, S)``; resizing to ``size x size`` uses the
metric's own antialiased bilinear resize (:func:`lipsim_metric.preprocess.to_backbone_input`); aspect ratio is not
preserved, as in LPIPS and DreamSim. Files are paired by name (CSV rows, file stems), never by sort order.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Union

import numpy as np
import torch
from torch.utils.data import Dataset

from ..images import IMAGE_EXTENSIONS, find_images, load_image
from ..preprocess import to_backbone_input

__all__ = ["PathLike", "list_images", "PhotoCropDataset"]

PathLike = Union[str, "os.PathLike[str]"]


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
    """List the image files under a folder, as strings (a thin wrapper of :func:`lipsim_metric.images.find_images`).

    Args:
        root: Folder to scan.
        recursive: Also scan sub-folders.

    Returns:
        Sorted POSIX paths relative to ``root`` of files whose extension (any case) is one of
        :data:`lipsim_metric.images.IMAGE_EXTENSIONS` (jpg, jpeg, png, bmp, webp, tif, gif, ...); hidden files and
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
        """Read item ``index`` (decoded by :func:`lipsim_metric.images.load_image`), without the unreadable fallback.

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
