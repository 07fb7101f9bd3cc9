"""Tiny IQA datasets laid out exactly like the official distributions (file names, score files, score direction).

Every dataset has 2 references x 2 distortion types x 3 levels. Level ``l`` of type ``A`` adds Gaussian noise of
sigma ``0.04 l``, of type ``B`` shifts the brightness by ``0.07 l``; the human score worsens with the level in the
direction each dataset uses, so any sensible distance gets a positive oriented SRCC.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

LEVELS = (1, 2, 3)
SIZE = 32


def _reference(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.random((4, 4, 3))
    img = np.kron(coarse, np.ones((SIZE // 4, SIZE // 4, 1)))  # smooth-ish blocks
    return np.clip(0.2 + 0.6 * img, 0, 1)


def _distort(ref: np.ndarray, kind: str, level: int, seed: int) -> np.ndarray:
    if kind == "A":
        noise = np.random.default_rng(seed).normal(0, 0.04 * level, ref.shape)
        return np.clip(ref + noise, 0, 1)
    return np.clip(ref + 0.07 * level, 0, 1)


def _save(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = "BMP" if path.suffix.lower() == ".bmp" else "PNG"
    Image.fromarray((array * 255).round().astype(np.uint8)).save(path, format=fmt)


def _items():
    """(ref index, kind, level, seed) for every distorted image."""
    seed = 100
    for r in (1, 2):
        for kind in ("A", "B"):
            for level in LEVELS:
                seed += 1
                yield r, kind, level, seed


def make_tid2013(root: Path) -> Path:
    lines = []
    for r, kind, level, seed in _items():
        ref = _reference(r)
        _save(ref, root / "reference_images" / f"I{r:02d}.BMP")
        type_id = "01" if kind == "A" else "16"
        name = f"i{r:02d}_{type_id}_{level}.bmp"
        _save(_distort(ref, kind, level, seed), root / "distorted_images" / name)
        lines.append(f"{6.5 - level:.5f} {name}")  # MOS, higher = better
    (root / "mos_with_names.txt").write_text("\n".join(lines) + "\n")
    return root


def make_kadid10k(root: Path) -> Path:
    rows = [["dist_img", "ref_img", "dmos", "var"]]
    for r, kind, level, seed in _items():
        ref = _reference(r)
        _save(ref, root / "images" / f"I{r:02d}.png")
        type_id = "11" if kind == "A" else "18"
        name = f"I{r:02d}_{type_id}_{level:02d}.png"
        _save(_distort(ref, kind, level, seed), root / "images" / name)
        rows.append([name, f"I{r:02d}.png", f"{5 - level:.2f}", "0.5"])  # 'dmos' 1-5, higher = better
    with (root / "dmos.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return root


def make_csiq(root: Path) -> Path:
    rows = [["CSIQ DMOS, all by image"], [], ["image", "dst_idx", "dst_type", "dst_lev", "dmos_std", "dmos"]]
    names = {1: "1600", 2: "aerial_city"}
    for r, kind, level, seed in _items():
        ref = _reference(r)
        image = names[r]
        _save(ref, root / "src_imgs" / f"{image}.png")
        folder, token, idx, label = ("awgn", "AWGN", 1, "noise") if kind == "A" else ("blur", "BLUR", 5, "blur")
        _save(_distort(ref, kind, level, seed), root / "dst_imgs" / folder / f"{image}.{token}.{level}.png")
        rows.append([image, str(idx), label, str(level), "0.05", f"{0.15 * level:.3f}"])  # DMOS, lower = better
    with (root / "csiq.DMOS.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return root


def make_live(root: Path) -> Path:
    from scipy.io import savemat

    folders = (("jp2k", 227), ("jpeg", 233), ("wn", 174), ("gblur", 174), ("fastfading", 174))
    total = sum(n for _, n in folders)
    dmos, orgs = np.zeros(total), np.ones(total)  # entries left at orgs = 1 are reference copies (skipped)
    refnames = np.empty((1, total), dtype=object)
    refnames[0, :] = "ref1.bmp"
    offsets = {name: sum(n for _, n in folders[:i]) for i, (name, _) in enumerate(folders)}
    for r, kind, level, seed in _items():
        ref = _reference(r)
        _save(ref, root / "refimgs" / f"ref{r}.bmp")
        folder = "wn" if kind == "A" else "fastfading"
        j = (r - 1) * 3 + level  # img1..img6 of the folder
        k = offsets[folder] + j - 1
        _save(_distort(ref, kind, level, seed), root / folder / f"img{j}.bmp")
        dmos[k], orgs[k], refnames[0, k] = 20.0 * level, 0, f"ref{r}.bmp"  # DMOS, lower = better
    for name, _ in folders:
        (root / name).mkdir(parents=True, exist_ok=True)
    savemat(root / "dmos.mat", {"dmos": dmos[None], "orgs": orgs[None]})
    savemat(root / "refnames_all.mat", {"refnames_all": refnames})
    return root


def make_pipal(root: Path) -> Path:
    for r in (1, 2):
        lines = []
        for rr, kind, level, seed in _items():
            if rr != r:
                continue
            ref = _reference(r)
            _save(ref, root / "Train_Ref" / f"A{r:04d}.bmp")
            name = f"A{r:04d}_{'00' if kind == 'A' else '02'}_{level:02d}.bmp"
            _save(_distort(ref, kind, level, seed), root / "Train_Dis" / name)
            lines.append(f"{name},{1600 - 60 * level:.4f}")  # ELO, higher = better
        (root / "Train_Label").mkdir(parents=True, exist_ok=True)
        (root / "Train_Label" / f"A{r:04d}.txt").write_text("\n".join(lines) + "\n")
    return root


def make_rated_csv(root: Path) -> Path:
    rows = [["ref", "dist", "score", "type"]]
    for r, kind, level, seed in _items():
        ref = _reference(r)
        _save(ref, root / "refs" / f"r{r}.png")
        _save(_distort(ref, kind, level, seed), root / "dist" / f"r{r}_{kind}{level}.png")
        rows.append([f"refs/r{r}.png", f"dist/r{r}_{kind}{level}.png", str(level), kind])  # lower = better
    with (root / "ratings.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return root / "ratings.csv"


MAKERS = {"tid2013": make_tid2013, "kadid10k": make_kadid10k, "csiq": make_csiq, "live": make_live,
          "pipal": make_pipal}


def make_bapps_2afc(root: Path, judge: float = 0.2) -> Path:
    """``root/<subset>/{ref,p0,p1}/<id>.png`` + ``judge/<id>.npy``; p0 is always the less distorted candidate and
    ``judge`` (share of humans choosing p1) is the same for every triplet, so a sensible metric scores ``1 - judge``."""
    for subset, count in (("traditional", 3), ("cnn", 2)):
        for i in range(count):
            ref = _reference(10 + i)
            stem = f"{i:06d}"
            _save(ref, root / subset / "ref" / f"{stem}.png")
            _save(_distort(ref, "A", 1, 50 + i), root / subset / "p0" / f"{stem}.png")
            _save(_distort(ref, "A", 3, 60 + i), root / subset / "p1" / f"{stem}.png")
            (root / subset / "judge").mkdir(parents=True, exist_ok=True)
            np.save(root / subset / "judge" / f"{stem}.npy", np.array([judge]))
    return root


def make_bapps_jnd(root: Path) -> Path:
    """``root/<subset>/{p0,p1}/<id>.png`` + ``same/<id>.npy``: identical pairs judged the same, noisy ones not."""
    for subset in ("traditional", "cnn"):
        for i in range(4):
            img = _reference(20 + i)
            stem = f"{i:06d}"
            _save(img, root / subset / "p0" / f"{stem}.png")
            _save(img if i % 2 == 0 else _distort(img, "A", 3, 70 + i), root / subset / "p1" / f"{stem}.png")
            (root / subset / "same").mkdir(parents=True, exist_ok=True)
            np.save(root / subset / "same" / f"{stem}.npy", np.array([1.0 if i % 2 == 0 else 0.0]))
    return root


def make_night(root: Path) -> Path:
    """NIGHT's ``data.csv`` + ``ref/``, ``distort/``: 3 test_imagenet triplets (humans agree with the less distorted
    left image 5 votes to 1) and 1 test_no_imagenet triplet (they prefer the more distorted left one, 1 to 5), plus a
    train row and a row with too few votes, which the test splits must skip."""
    rows = [["id", "votes", "left_vote", "right_vote", "ref_path", "left_path", "right_path", "split", "is_imagenet"]]
    specs = [(3, "True", 5, 1, 1, 3), (1, "False", 1, 5, 1, 3), (1, "True", 5, 1, 1, 3)]  # (count, imagenet, votes)
    k = 0
    for count, imagenet, left_vote, right_vote, left_level, right_level in specs:
        for _ in range(count):
            ref = _reference(30 + k)
            paths = [f"ref/{k:03d}/0.png", f"distort/{k:03d}/0_0.png", f"distort/{k:03d}/0_1.png"]
            for path, img in zip(paths, (ref, _distort(ref, "A", left_level, 80 + k),
                                         _distort(ref, "A", right_level, 90 + k)), strict=True):
                _save(img, root / path)
            split = "test" if k < 4 else "train"
            rows.append([str(k), "6", str(left_vote), str(right_vote), *paths, split, imagenet])
            k += 1
    rows.append([str(k), "3", "2", "1", *rows[1][4:7], "test", "True"])  # only 3 votes: dropped
    with (root / "data.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return root
