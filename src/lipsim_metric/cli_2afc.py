"""``lipsim-score --2afc``: certified two-alternative forced choice over three folders or a triplet CSV file.

For each triplet (reference, x0, x1) it prints which candidate LipSim finds closer to the reference
(``prediction``: 1 if x1 is closer), both distances, and the certified radius of
:meth:`lipsim_metric.LipSim.certify_2afc`: no change of the reference with l2 norm below it (in the reference file's
own units) can change the prediction. Same output formats, ``--resume``, exit codes and bad-file handling as the pair
mode (:mod:`lipsim_metric.cli`).
"""

from __future__ import annotations

import argparse
import math
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .cli import (
    _PROG,
    EXIT_FAILED_IMAGES,
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
    _check_output,
    _install_sigterm,
    _load_metric,
    _report_unmatched,
    _resolve_device,
    _Terminated,
    read_list_csv,
)
from .cli_output import TRIPLET_FIELDS, commit_json, open_writer, read_previous
from .images import ImageTooLargeError, load_image_resized, pair_images
from .metric import LipSim
from .preprocess import input_operator_norm

__all__ = ["run_2afc", "TripletDataset", "resolve_triplets"]

Triplet = tuple[Path, Path, Path, str]


class TripletDataset(Dataset):
    """``(ref, x0, x1)`` image triplets decoded and resized like :class:`lipsim_metric.images.ImagePairDataset`."""

    def __init__(self, triplets: list[Triplet], size: int, max_pixels: int | None = None) -> None:
        self.triplets, self.size, self.max_pixels = triplets, int(size), max_pixels

    def __len__(self) -> int:
        return len(self.triplets)

    def __getitem__(self, index: int) -> dict[str, Any]:
        loaded, errors, too_large = [], [], 0
        for path in self.triplets[index][:3]:
            try:
                loaded.append(load_image_resized(path, self.size, self.max_pixels))
            except ImageTooLargeError as exc:
                too_large = max(too_large, exc.pixels)
                errors.append(exc.cause)
            except (OSError, ValueError) as exc:
                errors.append(str(exc))
        if errors:
            return {"index": index, "error": "; ".join(dict.fromkeys(errors)), "too_large": too_large}
        (ref, shape, channels), (x0, _, _), (x1, _, _) = loaded
        return {"index": index, "ref": ref, "x0": x0, "x1": x1, "shape": shape, "channels": channels}


def resolve_triplets(paths: list[str], err: TextIO, problems: list[str]) -> tuple[list[Triplet], int]:
    """Triplets from three folders (paired by relative path, as pairs are) or three files; returns the triplets and
    the number of unmatched files."""
    ref, p0, p1 = (Path(p) for p in paths)
    for path in (ref, p0, p1):
        if not path.exists():
            raise UsageError(f"{path} does not exist; give three folders or three image files (REF X0 X1)")
    if all(p.is_file() for p in (ref, p0, p1)):
        return [(ref, p0, p1, ref.name)], 0
    if not all(p.is_dir() for p in (ref, p0, p1)):
        raise UsageError("give three folders or three image files (REF X0 X1), not a mix")
    try:
        pairs0, only_ref0, only0 = pair_images(ref, p0, problems=problems)
        pairs1, _, only1 = pair_images(ref, p1)
    except PermissionError as exc:
        raise UsageError(str(exc)) from None
    second = {name: path1 for _, path1, name in pairs1}
    triplets = [(r, x0, second[name], name) for r, x0, name in pairs0 if name in second]
    names = {t[3] for t in triplets}
    only_ref = sorted(({n for _, _, n in pairs0} | set(only_ref0)) - names)
    _report_unmatched(only_ref, ref, err)
    _report_unmatched(only0, p0, err)
    _report_unmatched(only1, p1, err)
    return triplets, len(only_ref) + len(only0) + len(only1)


def _judge_batches(metric: LipSim, triplets: list[Triplet], device: torch.device, batch_size: int, workers: int,
                   max_pixels: int) -> Iterator[tuple[int, list[dict[str, Any]], list[dict[str, Any]]]]:
    n_batches = math.ceil(len(triplets) / batch_size)
    workers = 0 if n_batches <= 1 else min(workers, n_batches)
    loader = DataLoader(TripletDataset(triplets, metric.input_size, max_pixels), batch_size=batch_size,
                        shuffle=False, num_workers=workers, collate_fn=list)
    size = metric.input_size
    for records in loader:
        good = [r for r in records if "error" not in r]
        failed = [{"name": triplets[r["index"]][3], "path_ref": str(triplets[r["index"]][0]), "error": r["error"],
                   "too_large": r["too_large"]} for r in records if "error" in r]
        rows = []
        if good:
            batch = [torch.stack([r[k] for r in good]).to(device) for k in ("ref", "x0", "x1")]
            cert = metric.certify_2afc(*batch)
            columns = [c.double().cpu().tolist() for c in (cert.d0, cert.d1, cert.radius)]
            for record, d0, d1, radius, prediction in zip(good, *columns, cert.prediction.tolist(), strict=True):
                ref, x0, x1, name = triplets[record["index"]]
                # certify_2afc saw size x size RGB inputs; restate the radius for the reference file.
                (height, width), channels = record["shape"], record["channels"]
                radius /= input_operator_norm(height, width, channels, size, "[0,1]")
                rows.append({"name": name, "path_ref": str(ref), "path_0": str(x0), "path_1": str(x1), "d0": d0,
                             "d1": d1, "prediction": int(prediction), "radius": radius})
        yield len(records), rows, failed


def run_2afc(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """The ``--2afc`` / ``--triplets`` mode of ``lipsim-score`` (same conventions as the pair mode)."""
    problems: list[str] = []
    if args.triplets is not None:
        if args.paths:
            raise UsageError("give either --triplets FILE.csv or the three paths REF X0 X1, not both")
        triplets = [(p[0], p[1], p[2], name) for p, name in read_list_csv(args.triplets, ["ref", "x0", "x1"])]
        n_unmatched = 0
    elif len(args.paths) != 3:
        raise UsageError(f"--2afc expects three paths REF X0 X1 (folders or files), got {len(args.paths)}; or use "
                         "--triplets FILE.csv")
    else:
        triplets, n_unmatched = resolve_triplets(args.paths, err, problems)
    for problem in problems:
        print(f"{_PROG}: {problem}", file=err)
    if not triplets:
        raise UsageError("no triplets to judge: no relative path is in all three folders")
    output = _check_output(args)
    try:
        previous = read_previous(output, args.format, TRIPLET_FIELDS) if args.resume and output else []
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    done = {row["name"] for row in previous}
    todo = [t for t in triplets if t[3] not in done]
    device = _resolve_device(args.device)
    metric = _load_metric(args, device)
    width = max([4] + [len(t[3]) for t in triplets])
    try:
        writer, streams = open_writer(output, out, args.format, TRIPLET_FIELDS, args.resume, width, previous)
    except OSError as exc:
        raise UsageError(f"cannot write --output {output}: {exc.strerror or exc}") from None
    n_rows, agree, failed, interrupted = len(previous), 0, [], 0
    handler = _install_sigterm()
    try:
        with tqdm(total=len(todo), unit="triplet", file=err, disable=args.quiet or not err.isatty()) as bar:
            for n, rows, bad in _judge_batches(metric, todo, device, args.batch_size, args.workers, args.max_pixels):
                for record in bad:
                    tqdm.write(f"{_PROG}: skipped {record['name']}: {record['error']}", file=err)
                failed += bad
                writer.write(rows)
                n_rows += len(rows)
                agree += sum(r["prediction"] for r in rows)
                bar.update(n)
    except KeyboardInterrupt as exc:
        interrupted = 143 if isinstance(exc, _Terminated) else 130
    finally:
        if handler is not None:
            signal.signal(signal.SIGTERM, handler)
    summary = {"n": n_rows, "n_failed": len(failed), "n_unmatched": n_unmatched}
    line = f"n={n_rows} triplets  x1 closer in {agree} of the {n_rows - len(previous)} judged now"
    writer.finish(line, {"summary": summary, "failed": [{k: v for k, v in f.items() if k != "too_large"}
                                                         for f in failed], "problems": problems,
                         "weights": metric.weights_name or str(metric.weights_path), "variant": metric.variant,
                         "interrupted": bool(interrupted)})
    for stream in streams:
        stream.close()
    if output is not None and args.format == "json":
        commit_json(output)
    if args.format != "table":
        print(line, file=err)
    if interrupted:
        print(f"{_PROG}: interrupted; the judgements so far were written", file=err)
        return interrupted
    if failed:
        print(f"{_PROG}: {len(failed)} of {len(todo)} triplet(s) could not be judged (see above)", file=err)
        return EXIT_FAILED_IMAGES if n_rows > len(previous) else EXIT_USAGE
    return EXIT_OK
