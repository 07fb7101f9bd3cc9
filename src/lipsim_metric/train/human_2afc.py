"""Human-labelled 2AFC sets for training and validation: NIGHT, BAPPS 2AFC and a generic CSV of triplets.

Sources of the formats read here:

* NIGHT (NIGHTS), the DreamSim 2AFC set: Fu et al., "DreamSim: Learning New Dimensions of Human Visual Similarity
  using Synthetic Data", NeurIPS 2023, https://arxiv.org/abs/2306.09344; layout and split logic of
  ``dataset/dataset.py`` in https://github.com/ssundaram21/dreamsim (``test_imagenet`` / ``test_no_imagenet`` are
  the rows with ``split == "test"`` and ``is_imagenet`` true / false; rows with fewer than 6 ``votes`` are dropped).
* BAPPS 2AFC: Zhang et al., "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric", CVPR 2018,
  https://arxiv.org/abs/1801.03924, layout of https://github.com/richzhang/PerceptualSimilarity
  (``<subset>/{ref,p0,p1,judge}/<id>``; ``judge`` holds the fraction of humans who preferred ``p1``).

2AFC items are dicts ``{"ref", "x0", "x1", "target"}`` where ``target`` is the probability (vote share) that ``x1``
is judged closer to ``ref`` than ``x0`` -- the NIGHT/BAPPS convention, 1.0 = everyone picked ``x1``.

Conventions shared by every loader (see :mod:`lipsim_metric.train.data`): files are decoded by
:func:`lipsim_metric.images.load_image` (the decoder of the metric's CLI: EXIF orientation applied, transparency
composited onto white); images are float RGB tensors in [0, 1], ``(3, S, S)``; resizing to ``size x size`` uses the
metric's own antialiased bilinear resize (:func:`lipsim_metric.preprocess.to_backbone_input`); aspect ratio is not
preserved, as in LPIPS and DreamSim. Files are paired by name (CSV rows, file stems), never by sort order.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from ..images import IMAGE_EXTENSIONS, load_image
from .photos import PathLike, _check_optional_size, _resize_square

__all__ = ["Triplet", "TripletFileDataset", "NightDataset", "BAPPS2AFCDataset", "TripletCSVDataset"]

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
