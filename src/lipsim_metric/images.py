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

import contextlib
import os
import stat
import threading
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from .preprocess import MIN_IMAGE_SIZE, input_operator_norm, resize_matrix, to_backbone_input

__all__ = [
    "IMAGE_EXTENSIONS",
    "DEFAULT_MAX_PIXELS",
    "ImageTooLargeError",
    "load_image",
    "load_image_resized",
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
#: Modes whose files hold one gray value per pixel (replicated to RGB); radii are stated per gray value for them.
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "F"} | _16BIT_MODES)

#: Default pixel limit: Pillow's own decompression-bomb limit (``2 * PIL.Image.MAX_IMAGE_PIXELS``, 179 Mpx: a
#: 13,379 x 13,379 image). A trusted larger image needs ``max_pixels`` raised (``lipsim-score --max-pixels``).
DEFAULT_MAX_PIXELS = 2 * int(1024 * 1024 * 1024 // 4 // 3)
#: Images with more pixels than this are resized strip by strip (:func:`load_image_resized`), never as a whole
#: float tensor: a 10000 x 10000 photo then costs its 8-bit decode (300 MB) instead of 1.2 GB per float copy.
STRIP_RESIZE_PIXELS = 4096 * 4096
#: Values (rows x width x 3) per decoded strip in the strip resize.
_STRIP_VALUES = 1 << 20
_PILLOW_LIMIT_LOCK = threading.Lock()


class ImageTooLargeError(ValueError):
    """An image has more pixels than the allowed limit (a guard against decompression bombs), not a corrupt file.

    Attributes:
        path: the file.
        pixels: its pixel count (width x height).
        limit: the limit it exceeded.
    """

    def __init__(self, path: Path, width: int, height: int, limit: int) -> None:
        self.path, self.pixels, self.limit = path, width * height, limit
        #: The cause without the fix (``lipsim-score`` prints the fix once per run).
        self.cause = f"image {path} is {width}x{height} = {width * height:,} pixels, above the pixel limit of {limit:,}"
        super().__init__(
            f"{self.cause} (a guard against decompression bombs; the file itself may be fine); if you trust it, raise "
            f"the limit (max_pixels={width * height}, or lipsim-score --max-pixels {width * height}; 0 = no limit)"
        )


@contextlib.contextmanager
def _open_image(path: Path, max_pixels: int | None) -> Iterator[Image.Image]:
    """``Image.open`` with our own pixel limit in place of Pillow's (which calls a large image a "DOS attack").

    Pillow's limit is a module global; it is switched off only while the header is read and the file decoded, under
    a lock (so concurrent threads in this module agree), and always restored.
    """
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else int(max_pixels)
    if limit < 0:
        raise ValueError(f"max_pixels must be >= 0 (0 = no limit), got {max_pixels}")
    with _PILLOW_LIMIT_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            with Image.open(path) as img:
                width, height = img.size
                if limit and width * height > limit:
                    raise ImageTooLargeError(path, width, height, limit)
                img.load()  # decode now, so corrupt or truncated data fails here and not later
                yield img
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _check_readable(path: Path) -> None:
    """Raise ``FileNotFoundError``/``PermissionError`` with the fix when ``path`` is not a readable file."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise FileNotFoundError(f"image {path} does not exist; check the path") from None
    except PermissionError:
        raise PermissionError(f"cannot read image {path}: a folder on its path cannot be searched (permission "
                              "denied); check the folders' permissions (chmod u+x)") from None
    if not stat.S_ISREG(st.st_mode):
        raise FileNotFoundError(f"image {path} is not a file (a folder?); check the path")
    if not os.access(path, os.R_OK):
        raise _permission_error(path)


def _permission_error(path: Path) -> PermissionError:
    return PermissionError(f"cannot read image {path}: permission denied; make it readable (chmod u+r '{path}') or "
                           "run as a user who can read it")


def _upright(img: Image.Image) -> Image.Image:
    """The image as viewers show it (EXIF orientation applied); the image itself when no rotation is needed.

    ``ImageOps.exif_transpose`` returns a copy even then, which for a 10000 x 10000 photo is another 400 MB.
    """
    if img.getexif().get(0x0112, 1) in (0, 1):  # 0x0112: Orientation; 1 = upright (0: invalid, ignored by viewers)
        return img
    return ImageOps.exif_transpose(img)


def _decode_error(path: Path, exc: Exception) -> ValueError:
    detail = str(exc).rstrip(".")
    return ValueError(f"cannot read image {path}: {type(exc).__name__}: {detail}. The file is corrupt, truncated or "
                      "not an image; re-export it or remove it")


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
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float32)
        rgba /= 255.0
        alpha = rgba[:, :, 3:]
        return rgba[:, :, :3] * alpha + _BACKGROUND * (1.0 - alpha)
    rgb = np.asarray(img.convert("RGB"), dtype=np.float32)  # a float copy; divide in place (no second copy)
    rgb /= 255.0
    return rgb


def load_image(path: str | os.PathLike[str], max_pixels: int | None = None) -> torch.Tensor:
    """Decode an image file into a float RGB tensor in ``[0, 1]``.

    Palette, grayscale, 1-bit, CMYK and YCbCr images are converted to RGB (grayscale is replicated); transparent
    images (RGBA, LA, palette with transparency) are composited onto white; 16-bit images keep their precision
    (divided by 65535). The EXIF orientation is applied, so the tensor is the image as viewers display it. Only the
    first frame of animated files is read. Colour profiles (ICC) are not applied.

    Args:
        path: image file.
        max_pixels: largest accepted width x height (default :data:`DEFAULT_MAX_PIXELS`, Pillow's
            decompression-bomb limit; ``0`` = no limit).

    Returns:
        Float32 tensor ``(3, H, W)`` with values in ``[0, 1]``.

    Raises:
        FileNotFoundError: ``path`` does not exist or is not a file.
        PermissionError: the file (or a folder on its path) cannot be read by this user.
        ImageTooLargeError: the image has more than ``max_pixels`` pixels (a ``ValueError``).
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
    _check_readable(path)
    try:
        with _open_image(path, max_pixels) as img:
            array = _to_rgb_array(_upright(img))
    except (MemoryError, ImageTooLargeError):
        raise
    except PermissionError as exc:
        raise _permission_error(path) from exc
    except Exception as exc:  # Pillow raises many types for bad data (OSError, SyntaxError, struct.error, ...)
        raise _decode_error(path, exc) from exc
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).contiguous()


def _strip_resize(img: Image.Image, size: int) -> torch.Tensor:
    """``to_backbone_input`` of a large image, computed strip by strip from the 8-bit decode.

    The antialiased resize is separable, ``Y = A_h X A_w^T`` per channel. Each strip of rows is resized along its
    width with the same ``F.interpolate`` call (its height kept, for which the operator is the identity), then the
    strips are combined along the height with the exact 1-D matrix ``A_h``
    (:func:`lipsim_metric.preprocess.resize_matrix`, built by pushing basis vectors through that same call). That is
    the same linear map (equal up to float rounding, about 1e-6) while only one strip is ever held in floating point.
    """
    width, height = img.size
    a_h = resize_matrix(height, size).float()  # (size, H)
    out = torch.zeros(3, size, size, dtype=torch.float32)
    rows = max(1, _STRIP_VALUES // (3 * width))
    for top in range(0, height, rows):
        bottom = min(height, top + rows)
        strip = torch.from_numpy(np.ascontiguousarray(_to_rgb_array(img.crop((0, top, width, bottom)))))
        strip = strip.permute(2, 0, 1)[None]  # (1, 3, rows, W)
        narrow = F.interpolate(strip, size=(bottom - top, size), mode="bilinear", antialias=True,
                               align_corners=False)[0]  # (3, rows, size)
        out += a_h[:, top:bottom] @ narrow  # (size, rows) @ (3, rows, size) -> (3, size, size)
    return out


def load_image_resized(path: str | os.PathLike[str], size: int, max_pixels: int | None = None
                       ) -> tuple[torch.Tensor, tuple[int, int], int]:
    """Decode an image and resize it to ``size x size`` as LipSim does, with memory bounded for huge images.

    Equal to ``to_backbone_input(load_image(path)[None], size)[0]``. Images above :data:`STRIP_RESIZE_PIXELS` are
    resized strip by strip from their 8-bit decode (the same linear operator, equal up to float rounding), so a
    10000 x 10000 photo needs about 0.4 GB instead of several GB.

    Args:
        path: image file.
        size: output side (``LipSim.input_size``).
        max_pixels: as in :func:`load_image`.

    Returns:
        ``(image, (height, width), channels)``: the float32 ``(3, size, size)`` tensor in ``[0, 1]``, the original
        size (after the EXIF orientation), and ``1`` for files that store one gray value per pixel (replicated to RGB;
        :data:`GRAY_MODES`) or ``3``.

    Raises:
        The errors of :func:`load_image`.
    """
    path = Path(path)
    _check_readable(path)
    try:
        with _open_image(path, max_pixels) as img:
            channels = 1 if img.mode in GRAY_MODES else 3
            upright = _upright(img)
            width, height = upright.size
            image: torch.Tensor | None = None
            if min(width, height) < MIN_IMAGE_SIZE:
                pass  # reported below, outside the decode-error wrapper
            elif width * height > STRIP_RESIZE_PIXELS:
                image = _strip_resize(upright, int(size))
            else:
                full = torch.from_numpy(np.ascontiguousarray(_to_rgb_array(upright))).permute(2, 0, 1)[None]
                image = to_backbone_input(full, int(size), "[0,1]")[0].contiguous()
    except (MemoryError, ImageTooLargeError):
        raise
    except PermissionError as exc:
        raise _permission_error(path) from exc
    except Exception as exc:  # Pillow raises many types for bad data (OSError, SyntaxError, struct.error, ...)
        raise _decode_error(path, exc) from exc
    if image is None:
        raise ValueError(f"image {path} is {height}x{width} pixels; LipSim needs at least "
                         f"{MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE}")
    return image, (height, width), channels


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def find_images(root: str | os.PathLike[str], recursive: bool = True,
                problems: list[str] | None = None) -> list[Path]:
    """Image files under ``root``, as paths relative to ``root``.

    A file counts as an image when its extension (any case) is in :data:`IMAGE_EXTENSIONS`. Hidden files and
    folders (name starting with ``.``, e.g. macOS ``._*`` resource forks) are skipped. Symbolic links are followed,
    to files and to folders, with loop protection: a link to a folder that is already on the way down (a loop) is
    not followed again. What cannot be searched is never dropped silently: a sub-folder that cannot be listed
    (permissions), a broken link and a link loop are each described, with what to do, in ``problems``.

    Args:
        root: folder to search.
        recursive: also search sub-folders.
        problems: if given, a list that receives one message per sub-folder that could not be searched, broken link
            or link loop (the search goes on around them).

    Returns:
        Relative paths, sorted by their POSIX form (the order is for display only; pairing never relies on it).

    Raises:
        FileNotFoundError: ``root`` does not exist.
        NotADirectoryError: ``root`` is not a folder.
        PermissionError: ``root`` itself cannot be listed.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"folder {root} does not exist; check the path")
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is not a folder")
    if not os.access(root, os.R_OK | os.X_OK):
        raise PermissionError(f"cannot list folder {root}: permission denied; make it readable (chmod u+rx {root})")
    notes: list[str] = [] if problems is None else problems

    def unreadable(exc: OSError) -> None:
        where = exc.filename if exc.filename is not None else root
        notes.append(f"cannot list folder {where}: {exc.strerror or exc}; its images were not searched. Make it "
                     f"readable (chmod u+rx '{where}') or move the images out of it")

    def folder_id(path: str) -> tuple[int, int] | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return st.st_dev, st.st_ino

    # The real folders on the way from root down to each folder: a link back to one of them is a loop.
    chains: dict[str, tuple[tuple[int, int] | None, ...]] = {os.fspath(root): (folder_id(os.fspath(root)),)}
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable, followlinks=True):
        chain = chains.pop(dirpath, ())
        kept = []
        for name in dirnames if recursive else []:
            if _is_hidden(name):
                continue
            full = os.path.join(dirpath, name)
            key = folder_id(full)
            if key is not None and key in chain:
                target = os.path.realpath(full)
                notes.append(f"{full} is a symbolic link to {target}, a folder that contains it (a link loop); not "
                             "followed. Remove the link or point it elsewhere")
                continue
            chains[full] = (*chain, key)
            kept.append(name)
        dirnames[:] = kept
        for name in filenames:
            if _is_hidden(name) or Path(name).suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            file = Path(dirpath) / name
            if file.is_file():
                found.append(file.relative_to(root))
            elif file.is_symlink():
                notes.append(f"{file} is a broken symbolic link (to {os.readlink(file)}); skipped. Fix or remove it")
    return sorted(found, key=lambda p: p.as_posix())


def pair_images(
    dir_a: str | os.PathLike[str], dir_b: str | os.PathLike[str], problems: list[str] | None = None
) -> tuple[list[tuple[Path, Path, str]], list[str], list[str]]:
    """Pair the images of two folders by their relative path (searched recursively).

    ``a/x/1.png`` pairs with ``b/x/1.png``. A file left without a partner is then paired with the file whose
    relative path differs only in its extension (``x/1.png`` with ``x/1.jpg``, e.g. a folder and its compressed
    copy) when that partner is unique on both sides; ambiguous files stay unpaired. Pairing never uses sort order.

    Args:
        dir_a: first folder.
        dir_b: second folder.
        problems: if given, receives the messages of :func:`find_images` for both folders (unreadable sub-folders,
            broken links, link loops).

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
    rel_a = {p.as_posix(): p for p in find_images(dir_a, problems=problems)}
    rel_b = {p.as_posix(): p for p in find_images(dir_b, problems=problems)}
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

    Each item is a dict. A readable pair gives ``{"index", "x0", "x1", "shape0", "shape1", "channels0",
    "channels1"}``: the two images as float ``(3, size, size)`` tensors in ``[0, 1]``, resized with LipSim's own
    resize (:func:`load_image_resized`, so distances equal those of LipSim on the original images), the original
    ``(height, width)`` of each, and its channel count in the file (1 for grayscale files). A pair with an unreadable
    or too small image gives ``{"index", "error", "too_large"}`` with a message naming the file(s) (``too_large``: the
    largest pixel count over the limit, 0 if none; the message then names the cause only), so one bad file never
    stops a run. Use ``collate_fn=list`` to
    keep the records as a list per batch.

    Radii computed on the resized tensors are in resized-image units; divide them by
    :func:`pair_input_norm` ``(shape0, shape1, size)`` to state them for the original images.

    Args:
        pairs: sequence of ``(path_a, path_b, ...)`` tuples, e.g. from :func:`pair_images`.
        size: output side in pixels (``LipSim.input_size``).
        max_pixels: pixel limit per image, as in :func:`load_image`.

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

    def __init__(self, pairs: Sequence[tuple[Any, ...]], size: int, max_pixels: int | None = None) -> None:
        if int(size) < MIN_IMAGE_SIZE:
            raise ValueError(f"size must be at least {MIN_IMAGE_SIZE} pixels, got {size}")
        if max_pixels is not None and int(max_pixels) < 0:
            raise ValueError(f"max_pixels must be >= 0 (0 = no limit), got {max_pixels}")
        self.pairs = list(pairs)
        self.size = int(size)
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        loaded: list[tuple[torch.Tensor, tuple[int, int], int]] = []
        errors: list[str] = []
        too_large = 0
        paths = self.pairs[index][:2]
        # The same file on both sides is decoded once (and, if bad, reported once).
        for path in dict.fromkeys(paths) if paths[0] == paths[1] else paths:
            try:
                loaded.append(load_image_resized(path, self.size, self.max_pixels))
            except ImageTooLargeError as exc:
                too_large = max(too_large, exc.pixels)
                errors.append(exc.cause)
            except (OSError, ValueError) as exc:  # OSError: missing or unreadable files
                errors.append(str(exc))
        if errors:
            return {"index": index, "error": "; ".join(errors), "too_large": too_large}
        (x0, shape0, channels0), (x1, shape1, channels1) = loaded[0], loaded[-1]
        return {"index": index, "x0": x0, "x1": x1, "shape0": shape0, "shape1": shape1, "channels0": channels0,
                "channels1": channels1}
