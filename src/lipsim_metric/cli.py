"""``lipsim-score``: LipSim distances and certified radii between two folders of images (or two image files).

Images are paired by relative path (:func:`lipsim_metric.images.pair_images`), decoded and resized in DataLoader workers
(:class:`lipsim_metric.images.ImagePairDataset`) and scored in batches by one :class:`lipsim_metric.LipSim` model. Radii
are reported for the original images (see :mod:`lipsim_metric.images` for the resize accounting). Run
``lipsim-score --help`` for the options and exit codes.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from .backbones import list_backbones
from .cli_output import FIELDS, commit_json, open_writer, read_previous
from .images import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, ImagePairDataset, pair_images
from .metric import LipSim
from .preprocess import input_operator_norm
from .pretrained import DEFAULT_WEIGHTS, list_pretrained
from .version import __version__

__all__ = ["main", "build_parser", "PairScore", "read_pairs_csv", "EXIT_OK", "EXIT_FAILED_IMAGES", "EXIT_USAGE",
           "EXIT_INTERRUPTED", "EXIT_TERMINATED"]

#: Every pair was scored (or, with --resume, already in the output).
EXIT_OK = 0
#: Some pairs could not be scored (unreadable images or folders); the other pairs were scored and written.
EXIT_FAILED_IMAGES = 1
#: Nothing was scored (bad arguments, missing paths, no pairs, weights that cannot be loaded, unavailable device,
#: every pair unreadable), or the results could not be written.
EXIT_USAGE = 2
#: Interrupted by SIGINT (Ctrl-C); the results so far were written.
EXIT_INTERRUPTED = 130
#: Stopped by SIGTERM; the results so far were written.
EXIT_TERMINATED = 143

#: How many unmatched files are named on stderr per side (all of them are in the JSON output).
_MAX_LISTED = 20
_PROG = "lipsim-score"

_DESCRIPTION = """\
LipSim perceptual distance, with a certified robustness radius, between two images or between the
images of two folders (paired by relative path, searched recursively)."""

_EPILOG = f"""\
examples:
  lipsim-score reference.png distorted.jpg
  lipsim-score reference/ distorted/ --format csv --output scores.csv
  lipsim-score reference/ distorted/ --format csv --output scores.csv --resume   # after a kill
  lipsim-score --pairs pairs.csv --format jsonl                  # columns path_a,path_b[,name]
  lipsim-score --2afc ref/ x0/ x1/                               # or --triplets t.csv (ref,x0,x1[,name])

pairing:
  Folders are searched recursively for image files, any case, hidden files and folders skipped:
  {" ".join(sorted(IMAGE_EXTENSIONS))}.
  a/x/1.png is paired with b/x/1.png; a file without such a partner is paired with the one file
  whose path differs only in extension (x/1.png with x/1.jpg) when that is unambiguous. Pairing
  never relies on sort order. Unmatched files are listed on stderr. Images are read as RGB in
  [0, 1] (grayscale replicated, transparency composited onto white, EXIF orientation applied) and
  resized to the model's input size.
  Symbolic links (to files and to folders) are followed; a link back to a folder that contains it
  (a loop) is not followed and is reported. Sub-folders that cannot be listed, broken links and
  unreadable files are reported on stderr with the fix; the rest is scored (exit code 1).
  Images above --max-pixels (default: Pillow's decompression-bomb limit, 179 Mpx) are skipped with
  that reason; raise the limit for trusted files.

output (results on stdout, or in --output; messages and the progress bar on stderr):
  Rows are written as they are scored (table, csv and jsonl: flushed after every batch), so a
  killed run keeps its work; --resume skips the pairs already in --output. json is one document,
  written at the end or when interrupted (Ctrl-C, SIGTERM: then "interrupted": true); meanwhile
  its rows go to FILE.partial, which --resume also reads.
  distance  LipSim distance 1 - cos(e(a), e(b)), in [0, 2]; 0 for identical images (up to float
            rounding, below 1e-6).
  radius    certified l2 radius in each file's own units (values in [0, 1]; multiply by 255 for
            8-bit units; the norm is over all pixels and channels; for a grayscale file over its
            gray values): changing one image of the pair (either one) by less than this cannot
            bring the distance to 0, i.e. the model cannot be made to call the two images
            identical. radius_a / radius_b (csv, jsonl, json): the radius for changing only the
            first / only the second image; radius is the smaller of the two.
  summary   n (pairs scored, including those already in a --resume file), mean distance and its
            standard error (sample std / sqrt(n)); on stderr except in the table.

exit codes:
  {EXIT_OK}    every pair was scored (or was already in the --resume file)
  {EXIT_FAILED_IMAGES}    some pairs could not be scored (unreadable images or sub-folders, each reported on
       stderr and under "failed" in JSON); all other pairs were scored and written
  {EXIT_USAGE}    nothing was scored: invalid arguments, a missing path, no pairs to score, weights that
       cannot be loaded, an unavailable device, or no pair readable; or the results could not
       be written (the rows written before the error are kept; rerun with --resume)
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C); {EXIT_TERMINATED}: stopped by SIGTERM. The scores so far were written.
"""


class UsageError(Exception):
    """A problem with the command line, its paths or the output; reported with exit code 2."""


class _Terminated(KeyboardInterrupt):
    """SIGTERM, turned into an exception so that the results written so far are finalised."""


@dataclass(frozen=True)
class PairScore:
    """Result for one pair of images.

    Attributes:
        name: relative path of the first image (or its file name in file-vs-file mode).
        path_a: first image file.
        path_b: second image file.
        distance: LipSim distance in ``[0, 2]``.
        radius: certified l2 radius for threshold 0 in the files' own units, ``min(radius_a, radius_b)``.
        shape_a: original ``(height, width)`` of the first image.
        shape_b: original ``(height, width)`` of the second image.
        radius_a: radius for changing the first image alone, in its file's units (RGB values in ``[0, 1]``, or gray
            values in ``[0, 1]`` for a grayscale file).
        radius_b: the same for the second image.
    """

    name: str
    path_a: str
    path_b: str
    distance: float
    radius: float
    shape_a: tuple[int, int]
    shape_b: tuple[int, int]
    radius_a: float | None = None
    radius_b: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path_a": self.path_a,
            "path_b": self.path_b,
            "distance": self.distance,
            "radius": self.radius,
            "radius_a": self.radius if self.radius_a is None else self.radius_a,
            "radius_b": self.radius if self.radius_b is None else self.radius_b,
            "height_a": self.shape_a[0],
            "width_a": self.shape_a[1],
            "height_b": self.shape_b[0],
            "width_b": self.shape_b[1],
        }


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def _default_workers() -> int:
    return min(4, os.cpu_count() or 1)


def build_parser() -> argparse.ArgumentParser:
    """The ``lipsim-score`` argument parser."""
    parser = argparse.ArgumentParser(
        prog=_PROG,
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("paths", metavar="PATH", nargs="*",
                        help="A B: two image files or two folders; with --2afc: REF X0 X1 (three folders or files)")
    parser.add_argument("--pairs", metavar="FILE.csv", type=Path, default=None,
                        help="score the pairs listed in a CSV file (columns path_a,path_b and optionally name; "
                             "relative paths are relative to the CSV file) instead of A B")
    parser.add_argument("--2afc", dest="two_afc", action="store_true",
                        help="2AFC mode: for each triplet (reference, x0, x1), which of x0, x1 is closer to the "
                             "reference, with the certified radius; give REF X0 X1 or --triplets FILE.csv")
    parser.add_argument("--triplets", metavar="FILE.csv", type=Path, default=None,
                        help="2AFC triplets from a CSV file (columns ref,x0,x1 and optionally name)")
    parser.add_argument("--format", choices=("table", "csv", "jsonl", "json"), default="table",
                        help="output format (default: table)")
    parser.add_argument("-o", "--output", metavar="FILE", help="write the results to FILE instead of stdout")
    parser.add_argument("--resume", action="store_true",
                        help="skip the pairs already in --output FILE (written by an earlier, interrupted run of "
                             "the same command, --format csv, jsonl or json) and add the others to it")
    parser.add_argument("--weights", metavar="NAME_OR_PATH", default=None,
                        help=f"registered weights name or .safetensors file (default: {DEFAULT_WEIGHTS}; "
                             f"registered: {', '.join(list_pretrained())})")
    parser.add_argument("--variant", metavar="NAME", default=None,
                        help=f"backbone of a weights file that does not record it (one of: "
                             f"{', '.join(list_backbones())}); normally read from the file")
    parser.add_argument("--max-pixels", type=_non_negative_int, default=DEFAULT_MAX_PIXELS, metavar="N",
                        help="largest image (width x height) that is decoded; larger files are skipped as possible "
                             "decompression bombs. Default %(default)s (Pillow's limit); 0 = no limit")
    parser.add_argument("--batch-size", type=_positive_int, default=16, metavar="N",
                        help="pairs per batch (default: 16)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default: cpu)")
    parser.add_argument("--workers", type=_non_negative_int, default=_default_workers(), metavar="N",
                        help="DataLoader worker processes decoding images; 0 decodes in the main process "
                             "(default: min(4, CPU count) = %(default)s)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def _resolve_pairs(path_a: Path, path_b: Path, problems: list[str]
                   ) -> tuple[list[tuple[Path, Path, str]], list[str], list[str]]:
    for path in (path_a, path_b):
        if not path.exists():
            raise UsageError(f"{path} does not exist; give two image files or two folders")
    if path_a.is_dir() and path_b.is_dir():
        try:
            return pair_images(path_a, path_b, problems=problems)
        except PermissionError as exc:
            raise UsageError(str(exc)) from None
    if path_a.is_file() and path_b.is_file():
        return [(path_a, path_b, path_a.name)], [], []
    kind_a = "a folder" if path_a.is_dir() else "a file"
    kind_b = "a folder" if path_b.is_dir() else "a file"
    raise UsageError(f"{path_a} is {kind_a} but {path_b} is {kind_b}; give two image files or two folders")


def read_list_csv(path: Path, columns: Sequence[str]) -> list[tuple[list[Path], str]]:
    """Rows of a CSV file listing image paths: ``([path per column], name)`` per row.

    Relative paths are taken relative to the CSV file's folder. ``name`` is the optional ``name`` column, else the
    first path as written; a repeated name gets ``#<row>`` appended so that every row stays distinct (``--resume``
    matches rows by name).

    Raises:
        UsageError: the file is missing, unreadable, or lacks a column (the message names the columns).
    """
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in (reader.fieldnames or [])]
            missing = [c for c in columns if c not in header]
            if missing:
                raise UsageError(f"{path} needs the columns {','.join(columns)} (and optionally name) in its "
                                 f"header line; it has {','.join(header) or 'no header'}")
            raw = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    rows, seen = [], set()
    for number, row in enumerate(raw, start=2):
        if not any(row.get(c) for c in columns):
            continue  # blank line
        if not all(row.get(c) for c in columns):
            raise UsageError(f"{path} line {number}: every row needs {','.join(columns)}")
        paths = [Path(row[c]) if Path(row[c]).is_absolute() else path.parent / row[c] for c in columns]
        name = row.get("name") or row[columns[0]]
        if name in seen:
            name = f"{name}#{number}"
        seen.add(name)
        rows.append((paths, name))
    return rows


def read_pairs_csv(path: Path) -> list[tuple[Path, Path, str]]:
    """``(path_a, path_b, name)`` for each row of a ``--pairs`` CSV file (see :func:`read_list_csv`)."""
    return [(paths[0], paths[1], name) for paths, name in read_list_csv(path, ["path_a", "path_b"])]


def _resolve_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as exc:
        raise UsageError(f"--device {name!r} is not a torch device ({exc}); use e.g. cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name} was asked for but CUDA is not available here; use --device cpu")
    return device


def _report_unmatched(only: list[str], folder: Path, err: TextIO) -> None:
    if not only:
        return
    print(f"{_PROG}: {len(only)} image(s) only in {folder} (not scored):", file=err)
    for name in only[:_MAX_LISTED]:
        print(f"  {name}", file=err)
    if len(only) > _MAX_LISTED:
        print(f"  ... and {len(only) - _MAX_LISTED} more (--format json lists all)", file=err)


def _summary(distances: Sequence[float], n_failed: int, n_unmatched: int) -> dict[str, Any]:
    n = len(distances)
    mean = math.fsum(distances) / n if n else None
    if n >= 2 and mean is not None:
        variance = math.fsum((d - mean) ** 2 for d in distances) / (n - 1)
        standard_error: float | None = math.sqrt(variance / n)
    else:
        standard_error = None
    return {"n": n, "mean_distance": mean, "standard_error": standard_error, "n_failed": n_failed,
            "n_unmatched": n_unmatched}


def _summary_line(summary: dict[str, Any]) -> str:
    def fmt(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.6f}"

    line = (f"n={summary['n']}  mean distance={fmt(summary['mean_distance'])}  "
            f"standard error={fmt(summary['standard_error'])}")
    if summary["n_failed"]:
        line += f"  failed={summary['n_failed']}"
    return line


def _check_output(args: argparse.Namespace) -> Path | None:
    """Validate ``--output`` and ``--resume`` before anything is loaded or scored."""
    if args.output is None:
        if args.resume:
            raise UsageError("--resume needs --output FILE (the file an earlier run wrote)")
        return None
    output = Path(args.output)
    if output.is_dir():
        raise UsageError(f"--output {output} is a folder; give a file name, e.g. --output {output / 'scores.csv'}")
    parent = output.resolve().parent
    if not parent.is_dir():
        raise UsageError(f"cannot write --output {output}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK) or (output.exists() and not os.access(output, os.W_OK)):
        raise UsageError(f"cannot write --output {output}: permission denied; choose a file in a folder you can "
                         "write to")
    if args.resume and args.format == "table":
        raise UsageError("--resume works with --format csv, jsonl or json (the table cannot be read back)")
    return output


def _load_metric(args: argparse.Namespace, device: torch.device) -> LipSim:
    try:
        metric = LipSim(weights=args.weights, variant=args.variant)
    except (FileNotFoundError, ValueError) as exc:
        message = str(exc).replace("pass variant=...", "pass --variant NAME")
        if "variant" in message and args.variant is None:
            message += f" (backbones: {', '.join(list_backbones())})"
        raise UsageError(f"cannot load weights: {message}") from None
    return metric.to(device)


def _score_batches(metric: LipSim, pairs: list[tuple[Path, Path, str]], device: torch.device, batch_size: int,
                   workers: int, max_pixels: int) -> Iterator[tuple[int, list[PairScore], list[dict[str, Any]]]]:
    """Score ``pairs`` batch by batch; yields ``(pairs done, scores, failed records)`` per batch."""
    dataset = ImagePairDataset(pairs, metric.input_size, max_pixels=max_pixels)
    n_batches = math.ceil(len(pairs) / batch_size)
    # One batch gains nothing from a worker process; never start more workers than batches.
    workers = 0 if n_batches <= 1 else min(workers, n_batches)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=list,
                        pin_memory=device.type == "cuda")
    size = metric.input_size
    with torch.inference_mode():
        for records in loader:
            good, failed = [], []
            for record in records:
                path_a, path_b, name = pairs[record["index"]]
                if "error" in record:
                    failed.append({"name": name, "path_a": str(path_a), "path_b": str(path_b),
                                   "error": record["error"], "too_large": record["too_large"]})
                else:
                    good.append(record)
            scores = []
            if good:
                x0 = torch.stack([r["x0"] for r in good]).to(device, non_blocking=True)
                x1 = torch.stack([r["x1"] for r in good]).to(device, non_blocking=True)
                result = metric(x0, x1, return_radius=True, threshold=0.0)
                columns = (result.distance, result.radius_x0, result.radius_x1)
                for record, distance, r0, r1 in zip(good, *(c.double().cpu().tolist() for c in columns), strict=True):
                    path_a, path_b, name = pairs[record["index"]]
                    # LipSim saw size x size RGB inputs (input norm 1); restate each side's radius for its original
                    # file: its resize gain, and sqrt(3) for a gray file replicated to RGB. The pair radius is the
                    # smaller side (sound for a change of either image).
                    (h0, w0), (h1, w1) = record["shape0"], record["shape1"]
                    r0 /= input_operator_norm(h0, w0, record["channels0"], size, "[0,1]")
                    r1 /= input_operator_norm(h1, w1, record["channels1"], size, "[0,1]")
                    scores.append(PairScore(name, str(path_a), str(path_b), distance, min(r0, r1),
                                            record["shape0"], record["shape1"], r0, r1))
            yield len(records), scores, failed


def _install_sigterm() -> Any:
    """Turn SIGTERM into :class:`_Terminated` (main thread only); returns the previous handler, or None."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum: int, frame: Any) -> None:
        raise _Terminated()

    return signal.signal(signal.SIGTERM, handler)


def _run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.two_afc or args.triplets is not None:
        from .cli_2afc import run_2afc  # the 2AFC mode reuses this module's helpers

        return run_2afc(args, out, err)
    problems: list[str] = []
    if args.pairs is not None:
        if args.paths:
            raise UsageError("give either --pairs FILE.csv or the two paths A B, not both")
        pairs, only_a, only_b = read_pairs_csv(args.pairs), list[str](), list[str]()
    elif len(args.paths) != 2:
        raise UsageError(f"expected two paths A B (files or folders), got {len(args.paths)}; or use --pairs FILE.csv")
    else:
        pairs, only_a, only_b = _resolve_pairs(Path(args.paths[0]), Path(args.paths[1]), problems)
        _report_unmatched(only_a, Path(args.paths[0]), err)
        _report_unmatched(only_b, Path(args.paths[1]), err)
    for problem in problems:
        print(f"{_PROG}: {problem}", file=err)
    if not pairs:
        raise UsageError(
            f"no image pairs to score: {len(only_a)} image(s) in {args.paths[0]} and {len(only_b)} in "
            f"{args.paths[1]}, none with the same relative path. Point both arguments at folders with matching "
            "file names." if args.pairs is None else f"{args.pairs} lists no pairs"
        )
    output = _check_output(args)
    previous: list[dict[str, Any]] = []
    if args.resume and output is not None:
        try:
            previous = read_previous(output, args.format, FIELDS)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    done = {row["name"] for row in previous}
    todo = [pair for pair in pairs if pair[2] not in done]
    if previous:
        print(f"{_PROG}: --resume: {len(pairs) - len(todo)} of {len(pairs)} pair(s) already in {output}; "
              f"scoring the other {len(todo)}", file=err)
    device = _resolve_device(args.device)
    metric = _load_metric(args, device)
    width = max([4] + [len(name) for _, _, name in pairs])
    try:
        writer, streams = open_writer(output, out, args.format, FIELDS, args.resume, width, previous)
    except OSError as exc:
        raise UsageError(f"cannot write --output {output}: {exc.strerror or exc}") from None

    distances = [float(row["distance"]) for row in previous]
    failed: list[dict[str, Any]] = []
    progress = not args.quiet and err.isatty()
    interrupted, write_error = 0, None
    previous_handler = _install_sigterm()
    try:
        with tqdm(total=len(todo), unit="pair", file=err, disable=not progress) as bar:
            for n_done, scores, bad in _score_batches(metric, todo, device, args.batch_size, args.workers,
                                                      args.max_pixels):
                for record in bad:
                    tqdm.write(f"{_PROG}: skipped {record['name']}: {record['error']}", file=err)
                failed += bad
                try:
                    writer.write([s.as_dict() for s in scores])
                except OSError as exc:
                    write_error = exc
                    break
                distances += [s.distance for s in scores]
                bar.update(n_done)
    except KeyboardInterrupt as exc:
        interrupted = 143 if isinstance(exc, _Terminated) else 130
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
    summary = _summary(distances, len(failed), len(only_a) + len(only_b))
    if write_error is None:
        document = {
            "summary": summary,
            "failed": [{k: v for k, v in f.items() if k != "too_large"} for f in failed],
            "unmatched": {"only_a": only_a, "only_b": only_b},
            "problems": problems,
            "weights": metric.weights_name or (str(metric.weights_path) if metric.weights_path else None),
            "variant": metric.variant,
            "interrupted": bool(interrupted),
        }
        try:
            writer.finish(_summary_line(summary), document)
            for stream in streams:
                stream.close()
            if output is not None and args.format == "json":
                commit_json(output)
        except OSError as exc:
            write_error = exc
    if write_error is not None:
        reason = write_error.strerror or write_error
        print(f"{_PROG}: error: cannot write the results to {output or 'stdout'}: {reason}."
              f" Rows written before the error are kept; free the space or fix the permissions, then rerun the "
              f"same command with --resume to score the rest", file=err)
        return EXIT_USAGE
    if args.format != "table":
        print(_summary_line(summary), file=err)

    too_large = max([f["too_large"] for f in failed], default=0)
    if too_large:
        print(f"{_PROG}: {sum(1 for f in failed if f['too_large'])} pair(s) have an image above the pixel limit "
              f"(--max-pixels {args.max_pixels}), a guard against decompression bombs: the files may be fine. If you "
              f"trust them, rerun with --max-pixels {too_large} (or 0 for no limit)", file=err)
    if interrupted:
        where = f"in {output}; rerun the same command with --resume to score the rest" if output else "above"
        print(f"{_PROG}: interrupted after {len(distances) - len(previous)} of {len(todo)} pair(s); the scores so "
              f"far are {where}", file=err)
        return interrupted
    if failed:
        scored = len(distances) - len(previous)
        what = f"{len(failed)} of {len(todo)} pair(s) could not be scored" if scored else \
            f"nothing was scored: none of the {len(todo)} pair(s) could be read"
        print(f"{_PROG}: {what} (see above)", file=err)
        return EXIT_FAILED_IMAGES if scored else EXIT_USAGE
    if any(p.startswith("cannot list folder") for p in problems):
        print(f"{_PROG}: some folders could not be searched (see above); their images were not scored", file=err)
        return EXIT_FAILED_IMAGES
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Run ``lipsim-score``; returns the exit code (see ``lipsim-score --help``).

    Args:
        argv: arguments without the program name; default ``sys.argv[1:]``.

    Returns:
        0 when every pair was scored, 1 when some images could not be read (the rest were scored), 2 for usage
        errors (nothing scored).

    Example:
        >>> main(["--version"])  # doctest: +ELLIPSIS
        lipsim-score ...
        0
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and argparse errors; return the code instead of exiting
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_USAGE)
    try:
        return _run(args, sys.stdout, sys.stderr)
    except UsageError as exc:
        print(f"{_PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{_PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
