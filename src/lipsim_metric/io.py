"""Image I/O for LipSim: decoding files to ``[0, 1]`` RGB tensors, finding images, pairing folders, batch loading.

Used by the ``lipsim-score`` command line tool (:mod:`lipsim_metric.cli`) and usable on its own::

    pairs, only_a, only_b = pair_images("reference/", "distorted/")
    dataset = ImagePairDataset(pairs, size=metric.input_size)

Folders are paired by each file's path relative to its folder, never by sort order (a missing or extra file would
otherwise shift every later pair). :class:`ImagePairDataset` decodes and resizes in DataLoader workers, so decoding
overlaps with the model; a file that cannot be read yields an error record instead of an exception.

Certified radii and resizing: LipSim's certificates are stated in the units of the tensor it is given. When images
are resized *before* they reach :class:`~lipsim_metric.LipSim` (as :class:`ImagePairDataset` does, to move the
resize into the workers), LipSim sees ``size x size`` inputs, for which its preprocessing norm is 1, so the radius it
returns is in resized-image units. A perturbation ``delta`` of the original ``h x w`` image becomes ``R delta`` after
the resize ``R``, with ``||R delta|| <= ||R|| ||delta||``; dividing the radius by ``||R||``
(:func:`lipsim_metric.preprocess.input_operator_norm` for the original ``h, w``) gives the radius for the original
image, exactly what LipSim itself returns when given the original-size tensor. :func:`pair_input_norm` computes the
divisor for a pair (see its docstring for pairs whose two images differ in size).
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from .preprocess import MIN_IMAGE_SIZE, input_operator_norm, to_backbone_input

__all__ = [
    "IMAGE_EXTENSIONS",
    "load_image",
    "find_images",
    "pair_images",
    "pair_input_norm",
    "ImagePairDataset",
]

#: File extensions (lower case) treated as images when searching folders; all are decoded by Pillow.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm", ".tga"}
)

#: Colour that transparent pixels are composited onto (white, as most viewers show them), in [0, 1].
_BACKGROUND = 1.0
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_16BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


def _to_rgb_array(img: Image.Image) -> np.ndarray:
    """Float32 ``(H, W, 3)`` array in [0, 1] from a loaded PIL image of any common mode."""
    mode = img.mode
    if mode in _16BIT_MODES or mode in ("I", "F"):
        # convert("RGB") would clip 16-bit values at 255, so scale these modes ourselves.
        values = np.asarray(img).astype(np.float32)
        scale = 1.0 if mode == "F" else 65535.0  # "I" (32-bit integer) is taken to hold 16-bit data
        low, high = float(values.min()), float(values.max())
        if low < 0.0 or high > scale:
            raise ValueError(
                f"{mode} image has values in [{low:.6g}, {high:.6g}], outside the expected [0, {scale:g}]; "
                "save it as 8- or 16-bit RGB/grayscale"
            )
        gray = values / scale
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode in _ALPHA_MODES or "transparency" in img.info:
        # Pixels under zero alpha hold arbitrary colours; composite so that only what is visible is compared.
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float32) / 255.0
        alpha = rgba[:, :, 3:]
        return rgba[:, :, :3] * alpha + _BACKGROUND * (1.0 - alpha)
    return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0


def load_image(path: str | os.PathLike[str]) -> torch.Tensor:
    """Decode an image file into a float RGB tensor in ``[0, 1]``.

    Palette, grayscale, 1-bit, CMYK and YCbCr images are converted to RGB (grayscale is replicated); transparent
    images (RGBA, LA, palette with transparency) are composited onto white; 16-bit images keep their precision
    (divided by 65535). The EXIF orientation is applied, so the tensor is the image as viewers display it. Only the
    first frame of animated files is read. Colour profiles (ICC) are not applied.

    Args:
        path: image file.

    Returns:
        Float32 tensor ``(3, H, W)`` with values in ``[0, 1]``.

    Raises:
        FileNotFoundError: ``path`` does not exist or is not a file.
        ValueError: the file is not a readable image (unknown format, corrupt or truncated data, unsupported mode).

    Example:
        >>> import tempfile, pathlib
        >>> from PIL import Image
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "gray.png"
        >>> Image.new("L", (20, 10), 255).save(path)
        >>> x = load_image(path)
        >>> tuple(x.shape), float(x.min()), float(x.max())
        ((3, 10, 20), 1.0, 1.0)
    """
    path = Path(path)
    if not path.is_file():
        what = "is not a file" if path.exists() else "does not exist"
        raise FileNotFoundError(f"image {path} {what}; check the path")
    try:
        with Image.open(path) as img:
            img.load()  # decode now, so corrupt or truncated data fails here and not later
            array = _to_rgb_array(ImageOps.exif_transpose(img))
    except MemoryError:
        raise
    except Exception as exc:  # Pillow raises many types for bad data (OSError, SyntaxError, struct.error, ...)
        raise ValueError(
            f"cannot read image {path}: {type(exc).__name__}: {exc}. The file is corrupt, truncated or not an image; "
            "re-export it or remove it"
        ) from exc
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).contiguous()


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def find_images(root: str | os.PathLike[str], recursive: bool = True) -> list[Path]:
    """Image files under ``root``, as paths relative to ``root``.

    A file counts as an image when its extension (any case) is in :data:`IMAGE_EXTENSIONS`. Hidden files and
    folders (name starting with ``.``, e.g. macOS ``._*`` resource forks) are skipped; symbolic links to files are
    followed, links to folders are not (no cycles).

    Args:
        root: folder to search.
        recursive: also search sub-folders.

    Returns:
        Relative paths, sorted by their POSIX form (the order is for display only; pairing never relies on it).

    Raises:
        FileNotFoundError: ``root`` does not exist.
        NotADirectoryError: ``root`` is not a folder.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"folder {root} does not exist; check the path")
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is not a folder")
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        if recursive:
            dirnames[:] = [d for d in dirnames if not _is_hidden(d)]
        else:
            dirnames[:] = []
        for name in filenames:
            if _is_hidden(name) or Path(name).suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            full = Path(dirpath) / name
            if full.is_file():
                found.append(full.relative_to(root))
    return sorted(found, key=lambda p: p.as_posix())


def pair_images(
    dir_a: str | os.PathLike[str], dir_b: str | os.PathLike[str]
) -> tuple[list[tuple[Path, Path, str]], list[str], list[str]]:
    """Pair the images of two folders by their relative path (searched recursively).

    ``a/x/1.png`` pairs with ``b/x/1.png``. A file left without a partner is then paired with the file whose
    relative path differs only in its extension (``x/1.png`` with ``x/1.jpg``, e.g. a folder and its compressed
    copy) when that partner is unique on both sides; ambiguous files stay unpaired. Pairing never uses sort order.

    Args:
        dir_a: first folder.
        dir_b: second folder.

    Returns:
        ``(pairs, only_a, only_b)``: ``pairs`` is a list of ``(path_a, path_b, name)`` with full paths and ``name`` the
        POSIX relative path in ``dir_a``, sorted by name; ``only_a`` and ``only_b`` are the sorted POSIX relative paths
        of the images without a partner.

    Raises:
        FileNotFoundError: a folder does not exist.
        NotADirectoryError: a path is not a folder.

    Example:
        >>> import tempfile, pathlib
        >>> from PIL import Image
        >>> a, b = pathlib.Path(tempfile.mkdtemp()), pathlib.Path(tempfile.mkdtemp())
        >>> for folder, names in ((a, ["1.png", "2.png"]), (b, ["2.png", "3.png"])):
        ...     for name in names:
        ...         Image.new("RGB", (8, 8)).save(folder / name)
        >>> pairs, only_a, only_b = pair_images(a, b)
        >>> [name for _, _, name in pairs], only_a, only_b
        (['2.png'], ['1.png'], ['3.png'])
    """
    dir_a, dir_b = Path(dir_a), Path(dir_b)
    rel_a = {p.as_posix(): p for p in find_images(dir_a)}
    rel_b = {p.as_posix(): p for p in find_images(dir_b)}
    pairs = [(dir_a / rel_a[key], dir_b / rel_b[key], key) for key in rel_a.keys() & rel_b.keys()]

    # Second pass: same relative path up to the extension, only where that is unambiguous on both sides.
    def by_stem(keys: set[str]) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = defaultdict(list)
        for key in keys:
            groups[Path(key).with_suffix("").as_posix()].append(key)
        return groups

    stems_a = by_stem(set(rel_a) - set(rel_b))
    stems_b = by_stem(set(rel_b) - set(rel_a))
    used_a: set[str] = set()
    used_b: set[str] = set()
    for stem, keys_a in stems_a.items():
        keys_b = stems_b.get(stem, [])
        if len(keys_a) == 1 and len(keys_b) == 1:
            pairs.append((dir_a / rel_a[keys_a[0]], dir_b / rel_b[keys_b[0]], keys_a[0]))
            used_a.add(keys_a[0])
            used_b.add(keys_b[0])
    only_a = sorted(set(rel_a) - set(rel_b) - used_a)
    only_b = sorted(set(rel_b) - set(rel_a) - used_b)
    return sorted(pairs, key=lambda pair: pair[2]), only_a, only_b


def pair_input_norm(shape0: Sequence[int], shape1: Sequence[int], size: int) -> float:
    """Divisor that turns a radius computed on resized ``size x size`` inputs into original-image units.

    ``LipSim(x0_resized, x1_resized, return_radius=True).radius / pair_input_norm(...)`` is a certified l2 radius for
    perturbations of the original RGB ``[0, 1]`` images (see the module docstring). LipSim's pair radius is the
    smaller of the two one-sided radii, ``min(r0, r1)``; for the originals it is ``min(r0 / n0, r1 / n1)`` with
    ``n_i`` the resize norm of each image. When both images have the same size (``n0 = n1``) dividing by that norm
    reproduces LipSim's value on the original tensors exactly; when they differ, dividing by ``max(n0, n1)`` is a
    sound, possibly slightly smaller, radius (``min(r0, r1) / max(n0, n1) <= min(r0 / n0, r1 / n1)``).

    Args:
        shape0: ``(height, width)`` of the first original image.
        shape1: ``(height, width)`` of the second original image.
        size: side the images were resized to (``LipSim.input_size``).

    Returns:
        ``max(input_operator_norm(h0, w0, 3, size, "[0,1]"), input_operator_norm(h1, w1, 3, size, "[0,1]"))``.
    """
    (h0, w0), (h1, w1) = shape0, shape1
    return max(input_operator_norm(int(h0), int(w0), 3, size, "[0,1]"),
               input_operator_norm(int(h1), int(w1), 3, size, "[0,1]"))


class ImagePairDataset(Dataset):
    """Image pairs decoded and resized to ``size x size``, for a ``DataLoader`` with worker processes.

    Each item is a dict. A readable pair gives ``{"index", "x0", "x1", "shape0", "shape1"}``: the two images as
    float ``(3, size, size)`` tensors in ``[0, 1]``, resized with LipSim's own resize
    (:func:`lipsim_metric.preprocess.to_backbone_input`, so distances equal those of LipSim on the original images),
    and the original ``(height, width)`` of each. A pair with an unreadable or too small image gives
    ``{"index", "error"}`` with a message naming the file(s), so one bad file never stops a run. Use
    ``collate_fn=list`` to keep the records as a list per batch.

    Radii computed on the resized tensors are in resized-image units; divide them by
    :func:`pair_input_norm` ``(shape0, shape1, size)`` to state them for the original images.

    Args:
        pairs: sequence of ``(path_a, path_b, ...)`` tuples, e.g. from :func:`pair_images`.
        size: output side in pixels (``LipSim.input_size``).

    Raises:
        ValueError: ``size`` is below the smallest image side LipSim accepts.

    Example:
        >>> import tempfile, pathlib
        >>> from PIL import Image
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> Image.new("RGB", (40, 30)).save(folder / "a.png")
        >>> (folder / "bad.png").write_bytes(b"not an image")
        12
        >>> dataset = ImagePairDataset([(folder / "a.png", folder / "a.png"), (folder / "a.png", folder / "bad.png")],
        ...                            size=16)
        >>> tuple(dataset[0]["x0"].shape), dataset[0]["shape0"]
        ((3, 16, 16), (30, 40))
        >>> "bad.png" in dataset[1]["error"]
        True
    """

    def __init__(self, pairs: Sequence[tuple[Any, ...]], size: int) -> None:
        if int(size) < MIN_IMAGE_SIZE:
            raise ValueError(f"size must be at least {MIN_IMAGE_SIZE} pixels, got {size}")
        self.pairs = list(pairs)
        self.size = int(size)

    def __len__(self) -> int:
        return len(self.pairs)

    def _load(self, path: Any) -> torch.Tensor:
        image = load_image(path)
        height, width = image.shape[-2:]
        if min(height, width) < MIN_IMAGE_SIZE:
            raise ValueError(
                f"image {path} is {height}x{width} pixels; LipSim needs at least {MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE}"
            )
        return image

    def __getitem__(self, index: int) -> dict[str, Any]:
        images: list[torch.Tensor] = []
        errors: list[str] = []
        for path in self.pairs[index][:2]:
            try:
                images.append(self._load(path))
            except (FileNotFoundError, ValueError) as exc:
                errors.append(str(exc))
        if errors:
            return {"index": index, "error": "; ".join(errors)}
        x0, x1 = images
        return {
            "index": index,
            "x0": to_backbone_input(x0[None], self.size, "[0,1]")[0],
            "x1": to_backbone_input(x1[None], self.size, "[0,1]")[0],
            "shape0": (int(x0.shape[-2]), int(x0.shape[-1])),
            "shape1": (int(x1.shape[-2]), int(x1.shape[-1])),
        }
