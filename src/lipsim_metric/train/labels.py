"""Teacher distances of distortion pairs, computed once and stored as seeds and distances, not pixels.

Distilling slow teachers (LPIPS-VGG, DISTS: a VGG16 pass per image, about 0.2-0.5 s on two CPU cores) on the fly
would spend most of a CPU training run in the teachers. A *pair label set* instead fixes, for every reference photo,
``copies`` seeded distortions (:func:`lipsim_metric.train.distortions.sample_distortion` of a recipe, usually the
IQA-style recipe ``"2"``) and stores each teacher's distance from the reference to each copy. The images are never
stored: the reference is a pure function of the photo file and the seed (:class:`~lipsim_metric.train.data.
PhotoCropDataset`, epoch 0), and the copy is a pure function of the reference, the seed and the pair's index, so
:class:`PairLabelSet` renders exactly the labelled images again at training time (``verify`` checks it).

Layout of a label set folder::

    manifest.json                 format, seed, recipe, copies, size, crop mode, teachers, the sorted photo names
    chunks/00000.safetensors      ref_index (C,) int64, distances (T, C, K) float32; metadata: the C*K specs (JSON)
    chunks/00001.safetensors      ...

References are taken in a seeded random order, ``chunk_size`` per chunk, so a partly built set is a random subset
of the photos and a build can be stopped (``--max-minutes``, Ctrl-C) and resumed at any chunk. Each reference's
teacher features are computed once for its ``copies`` distances (``1 + K`` trunk passes per teacher, not ``2K``).

Command::

    python -m lipsim_metric.train.labels build --images ../shared/images/train --out data_cache/pairs-v2 \\
        --teachers lpips-vgg,dists,lpips-alex --teachers-dir ../shared/teachers --copies 6 --seed 0
    python -m lipsim_metric.train.labels info data_cache/pairs-v2
    python -m lipsim_metric.train.labels verify data_cache/pairs-v2 --images ../shared/images/train --n 8
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import ConcatDataset, Dataset

from .cpu_bf16 import native_bf16_cpu, resolve_bf16_teachers
from .data import PathLike, PhotoCropDataset, list_images
from .distortions import RECIPES, Distortion, list_families, sample_distortion

__all__ = ["LabelSetConfig", "build_label_set", "PairLabelSet", "ConcatPairLabelSets", "read_manifest",
           "label_set_info", "main"]

_FORMAT = "lipsim_metric.pair_labels"


class _FeatureDistanceTeacher(Protocol):
    """What :func:`build_label_set` needs of a distance teacher (LPIPS and DISTS both have it): features computed
    once per reference and reused for all its copies. ``build_distance_teacher`` is typed ``nn.Module``, on which
    mypy sees ``features`` as a tensor attribute."""

    def features(self, x: torch.Tensor) -> list[torch.Tensor]: ...

    def distance_from_features(self, f0: Sequence[torch.Tensor], f1: Sequence[torch.Tensor]) -> torch.Tensor: ...
_MANIFEST = "manifest.json"
_CHUNKS = "chunks"


@dataclass(frozen=True)
class LabelSetConfig:
    """What a label set is a function of (stored in its manifest)."""

    seed: int = 0
    copies: int = 6
    size: int = 224
    crop: str = "train"  # "train": seeded random-resized crop + flip (epoch 0); "center": centre crop
    recipe: str = "2"
    combine_probability: float = 0.25
    chunk_size: int = 32

    def check(self) -> None:
        if self.copies < 2:
            raise ValueError(f"copies must be >= 2 (pairs of copies of one reference make 2AFC triplets), got "
                             f"{self.copies}.")
        if self.crop not in ("train", "center"):
            raise ValueError(f"crop must be 'train' or 'center', got {self.crop!r}.")
        if self.recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {RECIPES}, got {self.recipe!r}.")
        if not 0.0 <= self.combine_probability <= 1.0:
            raise ValueError(f"combine_probability must lie in [0, 1], got {self.combine_probability}.")
        if self.chunk_size < 1 or self.size < 32:
            raise ValueError("chunk_size must be >= 1 and size >= 32.")


#: Strengths are drawn as ``u ** STRENGTH_POWER`` with ``u`` uniform in [0, 1]: more mild distortions than strong
#: ones (median strength 0.35), since a metric used as a loss or for quality ranking works mostly in that range.
STRENGTH_POWER = 1.5


def _distortion(cfg: LabelSetConfig, ref_index: int, copy: int) -> Distortion:
    rng = np.random.default_rng([cfg.seed, ref_index, copy, 2])
    strength = float(rng.random()) ** STRENGTH_POWER
    return sample_distortion(rng, strength, families=list_families(cfg.recipe),
                             combine_probability=cfg.combine_probability)


def _order(cfg: LabelSetConfig, count: int) -> np.ndarray:
    return np.random.default_rng([cfg.seed, 1]).permutation(count)


def _photos(files: Sequence[str], cfg: LabelSetConfig) -> PhotoCropDataset:
    return PhotoCropDataset(list(files), size=cfg.size, train=cfg.crop == "train", seed=cfg.seed)


def read_manifest(root: PathLike) -> dict[str, Any]:
    """Read and check ``manifest.json`` of a label set.

    Raises:
        FileNotFoundError: if ``root`` holds no manifest.
        ValueError: if it is not a pair label set.
    """
    path = Path(root) / _MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; build the set with `python -m lipsim_metric.train.labels "
                                "build`.")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != _FORMAT:
        raise ValueError(f"{path} is not a pair label set (format {manifest.get('format')!r}).")
    return manifest


def _config(manifest: dict[str, Any]) -> LabelSetConfig:
    names = {f for f in LabelSetConfig.__dataclass_fields__}
    return LabelSetConfig(**{k: v for k, v in manifest["config"].items() if k in names})


def _chunk_path(root: Path, index: int) -> Path:
    return root / _CHUNKS / f"{index:05d}.safetensors"


def build_label_set(
    images: PathLike,
    out: PathLike,
    teachers: Sequence[str],
    teachers_dir: PathLike | None = None,
    cfg: LabelSetConfig | None = None,
    bf16_teachers: Sequence[str] = (),
    max_refs: int | None = None,
    max_minutes: float | None = None,
    batch_refs: int = 4,
    progress: bool = True,
) -> int:
    """Build (or continue) a pair label set; returns the number of labelled references now in it.

    Args:
        images: folder of photos (all images in it, recursively, sorted by relative path).
        out: output folder; an existing set with the same manifest is continued, a different one is refused.
        teachers: distance teacher names (:func:`lipsim_metric.train.teachers.list_teachers`).
        teachers_dir: folder of teacher weights (``../shared/teachers``) or None for the defaults.
        cfg: the set's parameters.
        bf16_teachers: teachers run under bfloat16 autocast (with channels_last, LPIPS-VGG is ~5x and DISTS ~3x
            faster on CPUs with AMX/AVX512-BF16; the manifest records it; distances then carry about 1e-3 relative
            rounding, far below the gaps the training uses).
        max_refs: stop after this many labelled references (whole chunks).
        max_minutes: stop after the chunk that passes this wall time.
        batch_refs: references per teacher batch (memory: about ``(1 + copies) * batch_refs`` images).
        progress: show a progress bar on stderr.

    Raises:
        ValueError: a different set already lives in ``out``, or an argument is invalid.
    """
    from tqdm import tqdm

    from .teachers import build_distance_teacher

    cfg = cfg or LabelSetConfig()
    cfg.check()
    if set(bf16_teachers) & set(teachers) and not native_bf16_cpu():
        warnings.warn(f"bf16 autocast for {sorted(set(bf16_teachers) & set(teachers))} on a CPU without bf16 "
                      "hardware is emulated and several times slower than float32; pass bf16_teachers=() "
                      "(--bf16-teachers '' or auto) unless you continue a set built with bf16",
                      RuntimeWarning, stacklevel=2)
    root, out_dir = Path(images), Path(out)
    names = list_images(root)
    files = [str(root / n) for n in names]
    manifest = {
        "format": _FORMAT,
        "version": 1,
        "config": cfg.__dict__,
        "teachers": list(teachers),
        "bf16_teachers": sorted(set(bf16_teachers) & set(teachers)),
        "images": names,
        "images_root_hint": str(root),
    }
    if (out_dir / _MANIFEST).is_file():
        old = read_manifest(out_dir)
        differ = [k for k, v in manifest.items() if k != "images_root_hint" and old.get(k) != v]
        if differ == ["bf16_teachers"]:
            raise ValueError(f"{out_dir} was labelled with bf16 teachers {old.get('bf16_teachers')}, not "
                             f"{manifest['bf16_teachers']}; to continue it pass --bf16-teachers "
                             f"'{','.join(old.get('bf16_teachers') or [])}' (emulated bf16 is slow on CPUs without "
                             "bf16 hardware), or choose another --out.")
        if differ:
            raise ValueError(f"{out_dir} holds a label set with other settings or photos; choose another --out.")
    (out_dir / _CHUNKS).mkdir(parents=True, exist_ok=True)
    (out_dir / _MANIFEST).write_text(json.dumps(manifest, indent=1))

    # channels_last makes oneDNN's bf16 convolutions several times faster on CPUs with AMX/AVX512-BF16.
    nets = [cast(_FeatureDistanceTeacher,
                 build_distance_teacher(n, teachers_dir=teachers_dir).eval().to(memory_format=torch.channels_last))
            for n in teachers]
    photos = _photos(files, cfg)
    order = _order(cfg, len(files))
    n_chunks = -(-len(files) // cfg.chunk_size)
    limit = n_chunks if max_refs is None else min(n_chunks, -(-max_refs // cfg.chunk_size))
    start = time.time()
    bar = tqdm(total=limit, desc="label chunks", disable=not progress, file=sys.stderr)
    for chunk in range(limit):
        path = _chunk_path(out_dir, chunk)
        if path.is_file():
            bar.update(1)
            continue
        if max_minutes is not None and time.time() - start > 60 * max_minutes:
            break
        refs = [int(i) for i in order[chunk * cfg.chunk_size : (chunk + 1) * cfg.chunk_size]]
        dists = torch.zeros(len(nets), len(refs), cfg.copies)
        specs: list[dict[str, Any]] = []
        for lo in range(0, len(refs), batch_refs):
            part = refs[lo : lo + batch_refs]
            ref = torch.stack([photos[i] for i in part])
            copies = []
            for j, i in enumerate(part):
                ds = [_distortion(cfg, i, k) for k in range(cfg.copies)]
                specs.extend(d.to_dict() for d in ds)
                copies.append(torch.stack([d.apply(ref[j]) for d in ds]))
            flat = torch.stack(copies).flatten(0, 1).contiguous(memory_format=torch.channels_last)
            ref = ref.contiguous(memory_format=torch.channels_last)
            for t, (name, net) in enumerate(zip(teachers, nets, strict=True)):
                with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=name in bf16_teachers):
                    f_ref = [f.repeat_interleave(cfg.copies, dim=0) for f in net.features(ref)]
                    d = net.distance_from_features(f_ref, net.features(flat)).float()
                dists[t, lo : lo + len(part)] = d.view(len(part), cfg.copies)
        tmp = path.with_name(path.name + ".tmp")
        save_file({"ref_index": torch.tensor(refs, dtype=torch.int64), "distances": dists.contiguous()}, str(tmp),
                  metadata={"specs": json.dumps(specs)})
        os.replace(tmp, path)
        bar.update(1)
    bar.close()
    return sum(len(_read_chunk(p)[0]) for p in _chunk_files(out_dir))


def _chunk_files(root: Path) -> list[Path]:
    return sorted((root / _CHUNKS).glob("*.safetensors"))


def _read_chunk(path: Path) -> tuple[torch.Tensor, torch.Tensor, list[dict[str, Any]]]:
    with safe_open(str(path), framework="pt") as handle:
        specs = json.loads((handle.metadata() or {}).get("specs", "[]"))
        return handle.get_tensor("ref_index"), handle.get_tensor("distances"), specs


class PairLabelSet(Dataset):
    """A pair label set as a dataset: item = ``{"ref", "copies", "distances", "index"}``.

    ``ref``: ``(3, S, S)``; ``copies``: ``(K, 3, S, S)`` (the labelled distortions of ``ref``, re-rendered);
    ``distances``: ``(T, K)`` teacher distances (order of :attr:`teachers`); ``index``: the photo index.

    Args:
        root: the label set folder.
        images: the photo folder it was built from (its sorted file list must match the manifest's).
        max_refs: use only the first ``max_refs`` labelled references (in build order).
        flip: mirror the reference and its copies together with probability 1/2 (torch's global RNG): the teachers'
            distances are (almost exactly) mirror-invariant, so the labels stay valid and the data doubles.
        cache: keep every rendered item in memory as float16 (about ``(1 + K) * 0.3`` MB per reference at 224 px),
            so epochs after the first skip the rendering; the cache lives in the process that reads the item (use
            it with ``num_workers=0``).

    Raises:
        FileNotFoundError: no manifest or no chunk yet.
        ValueError: the photo folder does not match the manifest.
    """

    def __init__(self, root: PathLike, images: PathLike, max_refs: int | None = None, cache: bool = False,
                 flip: bool = False) -> None:
        self.root = Path(root)
        self.cache, self.flip = cache, flip
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.manifest = read_manifest(self.root)
        self.cfg = _config(self.manifest)
        self.teachers: list[str] = list(self.manifest["teachers"])
        image_root = Path(images)
        names = list_images(image_root)
        files = [str(image_root / n) for n in names]
        if names != self.manifest["images"]:
            raise ValueError(f"the photos in {image_root} are not the ones {self.root} was labelled on "
                             f"({len(names)} files vs {len(self.manifest['images'])} in the manifest); pass the "
                             "folder the set was built from.")
        chunks = _chunk_files(self.root)
        if not chunks:
            raise FileNotFoundError(f"{self.root} has no labelled chunk yet; run the build first.")
        idx, dist, specs = [], [], []
        for path in chunks:
            i, d, s = _read_chunk(path)
            idx.append(i)
            dist.append(d)
            specs.extend(s)
        self.ref_index = torch.cat(idx)
        self.distances = torch.cat(dist, dim=1).permute(1, 0, 2).contiguous()  # (N, T, K)
        self.specs = specs
        if max_refs is not None:
            self.ref_index, self.distances = self.ref_index[:max_refs], self.distances[:max_refs]
            self.specs = self.specs[: max_refs * self.cfg.copies]
        self.photos = _photos(files, self.cfg)

    def __len__(self) -> int:
        return int(self.ref_index.shape[0])

    def distortion(self, item: int, copy: int) -> Distortion:
        """The stored distortion of pair ``(item, copy)`` (equal to the one the seed gives)."""
        return Distortion.from_dict(self.specs[item * self.cfg.copies + copy])

    def families(self) -> list[str]:
        """Distortion name (``"blur"``, ``"noise+jpeg"``, ...) of every pair, item-major."""
        return [Distortion.from_dict(s).name for s in self.specs]

    def __getitem__(self, item: int) -> dict[str, Any]:
        index = int(self.ref_index[item])
        if item in self._cache:
            ref16, copies16 = self._cache[item]
            ref, copies = ref16.float(), copies16.float()
        else:
            ref = self.photos[index]
            copies = torch.stack([self.distortion(item, k).apply(ref) for k in range(self.cfg.copies)])
            if self.cache:  # every epoch, the first included, sees the same float16-rounded pixels
                self._cache[item] = (ref.half(), copies.half())
                ref, copies = self._cache[item][0].float(), self._cache[item][1].float()
        if self.flip and bool(torch.rand(()) < 0.5):
            ref, copies = ref.flip(-1), copies.flip(-1)
        return {"ref": ref, "copies": copies, "distances": self.distances[item], "index": index}


class ConcatPairLabelSets(ConcatDataset):
    """Several pair label sets as one dataset (e.g. ``pairs-train-v2`` plus a recipe-3 supplement).

    The sets must share their teachers (same order) and number of copies, so items stack into one batch and the
    consensus statistics (:class:`~lipsim_metric.train.pair_objective.ConsensusTarget` over :attr:`distances`) cover
    all of them. :attr:`cfg` and :attr:`manifest` are the first set's.

    Raises:
        ValueError: if the sets' teachers or copies differ, or no set is given.
    """

    def __init__(self, sets: Sequence[PairLabelSet]) -> None:
        if not sets:
            raise ValueError("ConcatPairLabelSets needs at least one label set.")
        first = sets[0]
        for other in sets[1:]:
            if other.teachers != first.teachers or other.cfg.copies != first.cfg.copies:
                raise ValueError(f"label sets {first.root} and {other.root} differ in teachers ({first.teachers} vs "
                                 f"{other.teachers}) or copies ({first.cfg.copies} vs {other.cfg.copies}); build "
                                 "the supplement with the same --teachers and --copies.")
        super().__init__(sets)
        self.teachers, self.cfg, self.manifest = first.teachers, first.cfg, first.manifest
        self.distances = torch.cat([s.distances for s in sets])


def label_set_info(root: PathLike) -> dict[str, Any]:
    """Counts and per-family teacher statistics of a label set (no images needed)."""
    root = Path(root)
    manifest = read_manifest(root)
    refs, dists, specs = 0, [], []
    for path in _chunk_files(root):
        i, d, s = _read_chunk(path)
        refs += len(i)
        dists.append(d.flatten(1))
        specs.extend(s)
    names = (Distortion.from_dict(s).name for s in specs)
    families = Counter("combination" if "+" in name else name for name in names)
    info: dict[str, Any] = {"references": refs, "pairs": len(specs), "teachers": manifest["teachers"],
                            "families": dict(sorted(families.items()))}
    if dists:
        d = torch.cat(dists, dim=1)
        info["median_distance"] = {t: float(d[k].median()) for k, t in enumerate(manifest["teachers"])}
    return info


def _verify(args: argparse.Namespace) -> int:
    from .teachers import build_distance_teacher

    data = PairLabelSet(args.root, args.images)
    nets = [build_distance_teacher(n, teachers_dir=args.teachers_dir).eval() for n in data.teachers]
    bf16 = set(data.manifest["bf16_teachers"])
    worst = 0.0
    for item in range(min(args.n, len(data))):
        sample = data[item]
        ref = sample["ref"][None].expand_as(sample["copies"])
        for t, (name, net) in enumerate(zip(data.teachers, nets, strict=True)):
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=name in bf16):
                d = net(ref, sample["copies"]).float()
            err = float(((d - sample["distances"][t]).abs() / (sample["distances"][t].abs() + 1e-3)).max())
            worst = max(worst, err)
    print(json.dumps({"checked_refs": min(args.n, len(data)), "max_relative_error": worst}))
    return 0 if worst < args.tolerance else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lipsim_metric.train.labels", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="label distortion pairs with teachers (resumable)")
    b.add_argument("--images", required=True)
    b.add_argument("--out", required=True)
    b.add_argument("--teachers", default="lpips-vgg,dists,lpips-alex")
    b.add_argument("--teachers-dir", default=None)
    b.add_argument("--bf16-teachers", default="auto",
                   help="teachers run under bf16 autocast: 'auto' (lpips-vgg,dists where the CPU has bf16 hardware, "
                        "else none), '' for none, or a comma-separated list")
    b.add_argument("--copies", type=int, default=6)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--size", type=int, default=224)
    b.add_argument("--crop", default="train", choices=["train", "center"])
    b.add_argument("--recipe", default="2", choices=list(RECIPES))
    b.add_argument("--combine-probability", type=float, default=0.25)
    b.add_argument("--chunk-size", type=int, default=32)
    b.add_argument("--max-refs", type=int, default=None)
    b.add_argument("--max-minutes", type=float, default=None)
    b.add_argument("--quiet", action="store_true")
    i = sub.add_parser("info", help="counts and teacher statistics")
    i.add_argument("root")
    v = sub.add_parser("verify", help="re-render pairs and recompute their teacher distances")
    v.add_argument("root")
    v.add_argument("--images", required=True)
    v.add_argument("--teachers-dir", default=None)
    v.add_argument("--n", type=int, default=4)
    v.add_argument("--tolerance", type=float, default=0.02)
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            cfg = LabelSetConfig(seed=args.seed, copies=args.copies, size=args.size, crop=args.crop,
                                 recipe=args.recipe, combine_probability=args.combine_probability,
                                 chunk_size=args.chunk_size)
            teachers = [t for t in args.teachers.split(",") if t]
            n = build_label_set(args.images, args.out, teachers,
                                args.teachers_dir, cfg, resolve_bf16_teachers(args.bf16_teachers, teachers),
                                args.max_refs, args.max_minutes, progress=not args.quiet)
            print(json.dumps({"labelled_references": n, "out": args.out}))
            return 0
        if args.command == "info":
            print(json.dumps(label_set_info(args.root), indent=1))
            return 0
        return _verify(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
