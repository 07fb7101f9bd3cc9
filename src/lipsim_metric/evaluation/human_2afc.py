"""Human 2AFC and JND sets: BAPPS (Zhang et al., CVPR 2018) and NIGHT (Fu et al., NeurIPS 2023), scored as published.

* **2AFC score** (BAPPS, NIGHT): per triplet, the share of humans who agree with the metric's choice (``target``
  when it picks ``x1``, ``1 - target`` when it picks ``x0``, ``0.5`` on a tie), averaged. The certified score at
  ``eps`` counts a triplet only if LipSim's choice is certified for every l2 perturbation of the reference of norm
  ``eps`` (:meth:`lipsim_metric.LipSim.certify_2afc`); LipSim's paper, Table 1.
* **NIGHT weighting** (LipSim's official ``certified_eval``, ``docs/paper.md``): ``test_imagenet`` and
  ``test_no_imagenet`` (rows with at least 6 votes) are scored separately and combined weighted by their sizes,
  which equals pooling both splits.
* **JND mAP** (BAPPS ``jnd``): the pairs sorted by increasing distance, the share of humans who judged the two
  images the same as soft positives, and the area under the precision-recall curve (``voc_ap`` of the LPIPS code).

The 2AFC loaders are those of :mod:`lipsim_metric.train.data`; the JND loader is :class:`BAPPSJNDDataset`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..images import IMAGE_EXTENSIONS, load_image

__all__ = ["twoafc_score", "jnd_average_precision", "BAPPSJNDDataset", "NIGHT_TEST_SPLITS"]

#: The two NIGHT test splits of the paper's protocol, combined weighted by size.
NIGHT_TEST_SPLITS = ("test_imagenet", "test_no_imagenet")


def twoafc_score(d0: np.ndarray, d1: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per-triplet share of humans agreeing with the metric (it picks ``x1`` when ``d1 < d0``; 0.5 on a tie)."""
    d0, d1, t = (np.asarray(v, dtype=np.float64) for v in (d0, d1, target))
    return np.where(d1 < d0, t, np.where(d0 < d1, 1.0 - t, 0.5))


def jnd_average_precision(distance: np.ndarray, same: np.ndarray) -> float:
    """Average precision of "small distance = judged the same" with soft labels (LPIPS ``score_jnd_dataset``).

    Args:
        distance: metric distance per pair.
        same: share of humans who judged the pair identical, in [0, 1].
    """
    d, s = np.asarray(distance, dtype=np.float64), np.asarray(same, dtype=np.float64)
    if d.shape != s.shape or d.size == 0:
        raise ValueError(f"distance and same must be non-empty and of equal length, got {d.size} and {s.size}")
    order = np.argsort(d, kind="mergesort")
    tp = np.cumsum(s[order])
    fp = np.cumsum(1.0 - s[order])
    fn = s.sum() - tp
    precision = tp / np.maximum(tp + fp, 1e-12)
    recall = tp / np.maximum(tp + fn, 1e-12)
    # VOC average precision: precision envelope, summed over the recall steps
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]).sum())


class BAPPSJNDDataset(Dataset):
    """The JND part of BAPPS: ``root/<subset>/{p0,p1}/<id>.png`` and ``root/<subset>/same/<id>.npy``.

    ``root`` is e.g. ``dataset/jnd/val`` (subsets ``traditional`` and ``cnn``); ``same`` holds the share of humans
    who judged ``p0`` and ``p1`` identical. Files are paired by ``<id>``.

    Args:
        root: folder holding the subset folders.
        subsets: subsets to load (default: every sub-folder with ``p0/``).
        size: side the images are resized to, or None (BAPPS images are 64 px).

    Raises:
        FileNotFoundError: a missing root, subset, ``p1`` image or ``same`` file.
        ValueError: a ``same`` file not holding one share in [0, 1].
    """

    def __init__(self, root: str | os.PathLike[str], subsets: Sequence[str] | None = None,
                 size: int | None = None) -> None:
        base = Path(root)
        if not base.is_dir():
            raise FileNotFoundError(f"BAPPS JND root {base} does not exist; pass e.g. '<bapps>/dataset/jnd/val'")
        available = sorted(p.name for p in base.iterdir() if (p / "p0").is_dir())
        chosen = list(available if subsets is None else subsets)
        if not chosen:
            raise FileNotFoundError(f"no BAPPS JND subset (a folder with p0/, p1/, same/) under {base}")
        self.items: list[tuple[Path, Path, float]] = []
        self.subset_of: list[str] = []
        for subset in chosen:
            folder = base / subset
            if not (folder / "p0").is_dir():
                raise FileNotFoundError(f"BAPPS JND subset {subset!r} not found under {base}; available: {available}")
            p1 = {p.stem: p for p in (folder / "p1").glob("*") if p.suffix.lower() in IMAGE_EXTENSIONS}
            for p0 in sorted(p for p in (folder / "p0").iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS):
                same_file = folder / "same" / f"{p0.stem}.npy"
                if p0.stem not in p1 or not same_file.is_file():
                    raise FileNotFoundError(f"BAPPS JND: the p1 image or {same_file} of {p0} is missing; re-extract "
                                            "the subset")
                value = np.load(same_file).reshape(-1)
                if value.size != 1 or not 0.0 <= float(value[0]) <= 1.0:
                    raise ValueError(f"BAPPS JND: {same_file} must hold one share in [0, 1], got {value}")
                self.items.append((p0, p1[p0.stem], float(value[0])))
                self.subset_of.append(subset)
        self.root, self.size = base, size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        """``{"x0", "x1"}`` float ``(3, H, W)`` images and ``"same"`` (float32 scalar)."""
        p0, p1, same = self.items[index]
        images = [load_image(p) for p in (p0, p1)]
        if self.size is not None:
            images = [torch.nn.functional.interpolate(x[None], size=(self.size, self.size), mode="bilinear",
                                                      antialias=True, align_corners=False)[0].clamp(0, 1)
                      for x in images]
        return {"x0": images[0], "x1": images[1], "same": torch.tensor(same, dtype=torch.float32)}
