"""Scoring a human-rated set with perceptual metrics: tasks, a resumable and shardable cache of distances.

A **task** is a parsed ``--dataset`` spec (:func:`load_task`): a full-reference IQA set (``tid2013:``, ``kadid10k:``,
``csiq:``, ``live:``, ``pipal:``, ``csv:``), a 2AFC set (``bapps2afc:``, ``night:``) or a JND set (``bapps-jnd:``).
:func:`score_task` computes, for each item, the values the report needs and appends them to
``<out>/cache/<metric>/<shard>.jsonl`` after every batch: one header line with the configuration (task digest,
metric, weights digest, image size), then one ``{"i": item, "v": [values]}`` line per item. A rerun skips the items
already in any cache file of that metric whose header matches, so an interrupted run resumes, and ``n`` processes
started with ``shard=(k, n)`` (items ``i`` with ``i % n == k``) fill disjoint files that the next unsharded run merges.

Values per item: IQA: the distance ``d(ref, dist)`` and, for LipSim, ``||g(dist)||`` and the preprocessing norm of
the distorted image (for :mod:`~lipsim_metric.evaluation.certified_order`); 2AFC: ``d0, d1`` and, for LipSim, the
certified radius of the judgement; JND: ``d(p0, p1)``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from ..certificates import cosine_distance
from ..images import load_image
from ..metric import EmbeddingResult, LipSim
from .human_2afc import NIGHT_TEST_SPLITS, BAPPSJNDDataset
from .iqa_datasets import IQA_LOADERS, IQADataset, load_rated_csv

__all__ = ["EvalTask", "load_task", "parse_shard", "shard_from_env", "score_task", "read_cache", "metric_identity",
           "TASK_KINDS"]

#: ``--dataset`` prefixes and the kind of task each one is.
TASK_KINDS = {**{name: "iqa" for name in IQA_LOADERS}, "csv": "iqa", "bapps2afc": "2afc", "night": "2afc",
              "bapps-jnd": "jnd"}
_FORMAT = 1


@dataclass
class EvalTask:
    """A parsed ``--dataset``: what to score and the human data to compare with.

    Attributes:
        kind: ``"iqa"``, ``"2afc"`` or ``"jnd"``.
        name: the spec's prefix (``"kadid10k"``...).
        root: the dataset's folder or file.
        n: number of items.
        groups: per item, its distortion type (IQA), BAPPS subset or NIGHT split.
        refs: per item, its reference (IQA; pairs of one reference form the same-reference figures).
        human: per item, the quality oriented higher = better (IQA), the 2AFC target (share of humans who chose
            ``x1``) or the JND share judging the pair the same.
        description: what the human numbers are.
        iqa: the IQA dataset (IQA tasks).
        items: a dataset of image dicts indexed like the items (2AFC and JND tasks).
    """

    kind: str
    name: str
    root: str
    n: int
    groups: list[str]
    refs: list[str]
    human: np.ndarray
    description: str
    iqa: IQADataset | None = None
    items: Dataset | None = None
    digest: str = field(default="")

    def __post_init__(self) -> None:
        if not self.digest:
            text = json.dumps([self.kind, self.name, self.groups, self.refs, self.human.round(6).tolist(),
                               [[str(p.ref), str(p.dist)] for p in self.iqa] if self.iqa is not None else None])
            self.digest = hashlib.sha256(text.encode()).hexdigest()[:16]


def load_task(spec: str, higher_is_better: bool | None = None, size: int | None = None) -> EvalTask:
    """Parse ``NAME:<path>`` (see :data:`TASK_KINDS`) into an :class:`EvalTask`.

    Args:
        spec: e.g. ``"kadid10k:data/kadid10k"``, ``"csv:ratings.csv"``, ``"night:data/nights"``,
            ``"bapps2afc:dataset/2afc/val"``, ``"bapps-jnd:dataset/jnd/val"``.
        higher_is_better: the direction of a ``csv:`` file's scores (required for it, refused for the others,
            whose direction is known).
        size: square side 2AFC/JND images are resized to (NIGHT defaults to 224 as in the paper; BAPPS to its
            native 64).

    Raises:
        ValueError: a malformed spec, an unknown name, or a missing/needless direction.
        FileNotFoundError: the dataset's files are missing (the message names the first one).
    """
    name, sep, path = spec.partition(":")
    name = name.lower()
    if not sep or not path or name not in TASK_KINDS:
        raise ValueError(f"--dataset must look like NAME:<path> with NAME one of {sorted(TASK_KINDS)}, got {spec!r}")
    if name == "csv" and higher_is_better is None:
        raise ValueError("csv: datasets need --higher-is-better (MOS-like scores) or --lower-is-better (DMOS-like)")
    if name != "csv" and higher_is_better is not None:
        raise ValueError(f"{name} has a known score direction; --higher-is-better/--lower-is-better is only for csv:")
    kind = TASK_KINDS[name]
    if kind == "iqa":
        data = load_rated_csv(path, bool(higher_is_better)) if name == "csv" else IQA_LOADERS[name](path)
        return EvalTask("iqa", name, path, len(data), [p.dist_type for p in data], [p.ref_name for p in data],
                        data.quality(), f"{data.score_name}; correlations use -distance against it, oriented so "
                        "that higher = better", iqa=data)
    from ..train.data import BAPPS2AFCDataset, NightDataset

    if name == "night":
        parts = [NightDataset(path, split=split, size=size or 224) for split in NIGHT_TEST_SPLITS]
        groups = [split for split, ds in zip(NIGHT_TEST_SPLITS, parts, strict=True) for _ in range(len(ds))]
        target = np.array([t.target for ds in parts for t in ds.triplets])
        return EvalTask("2afc", name, path, len(groups), groups, groups, target,
                        "share of (>= 6) NIGHT raters who chose x1", items=ConcatDataset(parts))
    if name == "bapps2afc":
        bapps = BAPPS2AFCDataset(path, size=size)
        target = np.array([t.target for t in bapps.triplets])
        return EvalTask("2afc", name, path, len(bapps), list(bapps.subset_of), list(bapps.subset_of), target,
                        "share of BAPPS raters who chose p1", items=bapps)
    jnd = BAPPSJNDDataset(path, size=size)
    same = np.array([s for _, _, s in jnd.items])
    return EvalTask("jnd", name, path, len(jnd), list(jnd.subset_of), list(jnd.subset_of), same,
                    "share of BAPPS raters who judged the pair the same", items=jnd)


def parse_shard(text: str) -> tuple[int, int]:
    """``"k/n"`` -> ``(k, n)`` with ``0 <= k < n``; ``"auto"`` -> from ``RANK``/``WORLD_SIZE`` (torchrun)."""
    if text == "auto":
        return shard_from_env()
    k, sep, n = text.partition("/")
    if not sep or not k.strip().isdigit() or not n.strip().isdigit() or not 0 <= int(k) < int(n):
        raise ValueError(f"--shard must be k/n with 0 <= k < n (e.g. 0/2 and 1/2) or 'auto', got {text!r}")
    return int(k), int(n)


def shard_from_env() -> tuple[int, int]:
    """``(RANK, WORLD_SIZE)`` as torchrun/accelerate set them; ``(0, 1)`` outside a launcher."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def metric_identity(name: str, metric: nn.Module, teachers_dir: str | None) -> str:
    """What identifies a metric's numbers in the cache: LipSim's weights digest, or the baseline's name + folder."""
    if isinstance(metric, LipSim):
        path = metric.weights_path
        if path is None:
            return f"lipsim:random:{metric.variant}"
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
        return f"lipsim:{metric.weights_name or Path(path).name}:{digest}:{metric.projection}"
    return f"{name}:{teachers_dir or 'default'}"


def _fields(kind: str, is_lipsim: bool) -> list[str]:
    if kind == "iqa":
        return ["distance", "norm", "input_norm"] if is_lipsim else ["distance"]
    if kind == "2afc":
        return ["d0", "d1", "radius"] if is_lipsim else ["d0", "d1"]
    return ["distance"]


def read_cache(folder: Path, config: dict[str, Any]) -> dict[int, list[float]]:
    """Values of every item cached in ``folder/*.jsonl`` under this configuration (other headers are ignored)."""
    done: dict[int, list[float]] = {}
    for file in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
        lines = file.read_text().splitlines()
        if not lines or _header(lines[0]) != config:
            continue
        for line in lines[1:]:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut by an interruption: that item is recomputed
                continue
            done[int(record["i"])] = [float(v) for v in record["v"]]
    return done


def _header(line: str) -> dict[str, Any] | None:
    try:
        return json.loads(line).get("config")
    except (json.JSONDecodeError, AttributeError):
        return None


def _resize(x: Tensor, size: int | None) -> Tensor:
    if size is None:
        return x
    return torch.nn.functional.interpolate(x[None], size=(size, size), mode="bilinear", antialias=True,
                                           align_corners=False)[0].clamp(0.0, 1.0)


class _IQAImages(Dataset):
    def __init__(self, data: IQADataset, indices: Sequence[int], size: int | None, with_ref: bool) -> None:
        self.data, self.indices, self.size, self.with_ref = data, list(indices), size, with_ref

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> tuple[int, Tensor | None, Tensor]:
        pair = self.data[self.indices[k]]
        ref = _resize(load_image(pair.ref), self.size) if self.with_ref else None
        return self.indices[k], ref, _resize(load_image(pair.dist), self.size)


class _Indexed(Dataset):
    def __init__(self, base: Dataset, indices: Sequence[int]) -> None:
        self.base, self.indices = base, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> tuple[int, dict[str, Tensor]]:
        return self.indices[k], self.base[self.indices[k]]


def _by_shape(batch: list[Any], image: Callable[[Any], Tensor]) -> list[list[Any]]:
    """Split a batch into runs of items whose images have the same shape (so that they can be stacked)."""
    groups: dict[tuple[int, ...], list[Any]] = {}
    for item in batch:
        groups.setdefault(tuple(image(item).shape), []).append(item)
    return list(groups.values())


def _list_collate(batch: list[Any]) -> list[Any]:
    return batch


@torch.no_grad()
def _embed(metric: LipSim, x: Tensor) -> tuple[Tensor, Tensor]:
    with torch.autocast(device_type=x.device.type, enabled=False):
        result = cast(EmbeddingResult, metric.embed(x.float(), return_norm=True))
    return result.embedding, result.augmented_norm


def _score_iqa(task: EvalTask, metric: nn.Module, todo: list[int], loader_kw: dict[str, Any], device: str,
               size: int | None, emit: Callable[[list[tuple[int, list[float]]]], None]) -> None:
    assert task.iqa is not None  # internal invariant: load_task sets it for IQA tasks
    lipsim = metric if isinstance(metric, LipSim) else None
    ref_cache: dict[Path, Tensor] = {}
    if lipsim is not None:  # each reference is embedded once, not once per distorted image
        for path in sorted({task.iqa[i].ref for i in todo}):
            ref_cache[path] = _embed(lipsim, _resize(load_image(path), size)[None].to(device))[0]
    loader = DataLoader(_IQAImages(task.iqa, todo, size, with_ref=lipsim is None), **loader_kw)
    for batch in loader:
        records: list[tuple[int, list[float]]] = []
        for run in _by_shape(batch, lambda item: item[2]):
            index = [item[0] for item in run]
            dist = torch.stack([item[2] for item in run]).to(device)
            if lipsim is not None:
                e, r = _embed(lipsim, dist)
                e_ref = torch.cat([ref_cache[task.iqa[i].ref] for i in index])
                d = cosine_distance(e_ref, e)
                a = lipsim.input_norm(dist)
                records += [(i, [float(d[k]), float(r[k]), float(a)]) for k, i in enumerate(index)]
            else:
                ref = torch.stack([item[1] for item in run]).to(device)
                with torch.no_grad():
                    d = metric(ref, dist).float()
                records += [(i, [float(d[k])]) for k, i in enumerate(index)]
        emit(records)


def _score_items(task: EvalTask, metric: nn.Module, todo: list[int], loader_kw: dict[str, Any], device: str,
                 emit: Callable[[list[tuple[int, list[float]]]], None]) -> None:
    assert task.items is not None  # internal invariant: load_task sets it for 2AFC/JND tasks
    loader = DataLoader(_Indexed(task.items, todo), **loader_kw)
    first = "ref" if task.kind == "2afc" else "x0"
    for batch in loader:
        records: list[tuple[int, list[float]]] = []
        for run in _by_shape(batch, lambda item: item[1][first]):
            index = [item[0] for item in run]
            x = {k: torch.stack([item[1][k] for item in run]).to(device) for k in ("ref", "x0", "x1")
                 if k in run[0][1]}
            with torch.no_grad():
                if task.kind == "2afc" and isinstance(metric, LipSim):
                    cert = metric.certify_2afc(x["ref"], x["x0"], x["x1"])
                    values = torch.stack([cert.d0, cert.d1, cert.radius], 1)
                elif task.kind == "2afc":
                    values = torch.stack([metric(x["ref"], x["x0"]), metric(x["ref"], x["x1"])], 1)
                else:
                    values = metric(x["x0"], x["x1"])[:, None]
            records += [(i, [float(v) for v in values[k]]) for k, i in enumerate(index)]
        emit(records)


def score_task(task: EvalTask, name: str, metric: nn.Module, cache_dir: Path, identity: str,
               shard: tuple[int, int] = (0, 1), size: int | None = None, batch_size: int = 16, device: str = "cpu",
               num_workers: int = 0, progress: bool = True) -> tuple[dict[int, list[float]], list[str]]:
    """Score this shard's items not yet cached, appending to the cache after every batch.

    Args:
        task: from :func:`load_task`.
        name: the metric's name (the cache folder).
        metric: a distance module ``(a, b) -> (N,)``; LipSim gets its certificates too.
        cache_dir: ``<out>/cache``.
        identity: :func:`metric_identity` of the metric.
        shard: ``(k, n)``: score the items ``i`` with ``i % n == k``.
        size: IQA images are resized to ``size x size`` first (None: native size; radii are then in these units).
        batch_size, device, num_workers: as usual.
        progress: show a progress bar on stderr.

    Returns:
        ``(values, fields)``: every cached item of this configuration (all shards) and the names of its values.
    """
    from tqdm import tqdm

    k, n = shard
    fields = _fields(task.kind, isinstance(metric, LipSim))
    config = {"format": _FORMAT, "task": task.name, "digest": task.digest, "metric": identity,
              "size": size if task.kind == "iqa" else None, "fields": fields}
    folder = cache_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    done = read_cache(folder, config)
    todo = [i for i in range(task.n) if i % n == k and i not in done]
    if todo:
        file = folder / ("all.jsonl" if n == 1 else f"shard{k}of{n}.jsonl")
        lines = file.read_text().splitlines() if file.is_file() else []
        if not lines or _header(lines[0]) != config:  # new, or made under another configuration: start afresh
            file.write_text(json.dumps({"config": config}) + "\n")
        elif not file.read_text().endswith("\n"):  # a line cut by an interruption stays a line of its own
            with file.open("a") as handle:
                handle.write("\n")
        bar = tqdm(total=len(todo), desc=f"{name} {task.name}" + (f" shard {k}/{n}" if n > 1 else ""),
                   disable=not progress, file=sys.stderr)
        with file.open("a") as handle:
            def emit(records: list[tuple[int, list[float]]]) -> None:
                for i, values in records:
                    handle.write(json.dumps({"i": i, "v": values}) + "\n")
                    done[i] = values
                handle.flush()
                bar.update(len(records))

            loader_kw = {"batch_size": batch_size, "shuffle": False, "num_workers": num_workers,
                         "collate_fn": _list_collate}
            metric = metric.to(device).eval()
            if task.kind == "iqa":
                _score_iqa(task, metric, todo, loader_kw, device, size, emit)
            else:
                _score_items(task, metric, todo, loader_kw, device, emit)
        bar.close()
    return done, fields
