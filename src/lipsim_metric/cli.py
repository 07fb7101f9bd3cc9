"""``lipsim-score``: LipSim distances and certified radii between two folders of images (or two image files).

Images are paired by relative path (:func:`lipsim_metric.io.pair_images`), decoded and resized in DataLoader workers
(:class:`lipsim_metric.io.ImagePairDataset`) and scored in batches by one :class:`lipsim_metric.LipSim` model. Radii
are reported for the original images (see :mod:`lipsim_metric.io` for the resize accounting). Run
``lipsim-score --help`` for the options and exit codes.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from .io import IMAGE_EXTENSIONS, ImagePairDataset, pair_images, pair_input_norm
from .metric import LipSim
from .pretrained import DEFAULT_WEIGHTS, list_pretrained
from .version import __version__

__all__ = ["main", "build_parser", "PairScore", "EXIT_OK", "EXIT_FAILED_IMAGES", "EXIT_USAGE"]

#: Every pair was scored.
EXIT_OK = 0
#: Some images could not be read; the other pairs were scored and reported.
EXIT_FAILED_IMAGES = 1
#: Nothing was scored: bad arguments, missing paths, no pairs, weights that cannot be loaded, unavailable device.
EXIT_USAGE = 2

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

pairing:
  Folders are searched recursively for image files, any case, hidden files and folders skipped:
  {" ".join(sorted(IMAGE_EXTENSIONS))}.
  a/x/1.png is paired with b/x/1.png; a file without such a partner is paired with the one file
  whose path differs only in extension (x/1.png with x/1.jpg) when that is unambiguous. Pairing
  never relies on sort order. Unmatched files are listed on stderr. Images are read as RGB in
  [0, 1] (grayscale replicated, transparency composited onto white, EXIF orientation applied) and
  resized to the model's input size.

output (results on stdout, or in --output; messages and the progress bar on stderr):
  distance  LipSim distance 1 - cos(e(a), e(b)), in [0, 2]; 0 for identical images.
  radius    certified l2 radius in the original image's units (RGB values in [0, 1]; multiply by 255
            for 8-bit units; the norm is over all pixels and channels): changing one image of
            the pair (either one) by less than this cannot bring the distance to 0, i.e. the
            model cannot be made to call the two images identical. For two images of different
            sizes the radius is a sound, possibly slightly conservative, bound.
  summary   n (pairs scored), mean distance and its standard error (sample std / sqrt(n)). With
            --format csv the summary line goes to stderr so that the file stays plain CSV.

exit codes:
  {EXIT_OK}  every pair was scored
  {EXIT_FAILED_IMAGES}  some images could not be read (each is reported on stderr and under "failed" in
     JSON); all other pairs were scored and reported
  {EXIT_USAGE}  nothing was scored: invalid arguments, a missing path, no pairs to score, weights that
     cannot be loaded, or an unavailable device
"""


class UsageError(Exception):
    """A problem with the command line or its paths; reported with exit code 2."""


@dataclass(frozen=True)
class PairScore:
    """Result for one pair of images.

    Attributes:
        name: relative path of the first image (or its file name in file-vs-file mode).
        path_a: first image file.
        path_b: second image file.
        distance: LipSim distance in ``[0, 2]``.
        radius: certified l2 radius for threshold 0, in the original images' ``[0, 1]`` RGB units.
        shape_a: original ``(height, width)`` of the first image.
        shape_b: original ``(height, width)`` of the second image.
    """

    name: str
    path_a: str
    path_b: str
    distance: float
    radius: float
    shape_a: tuple[int, int]
    shape_b: tuple[int, int]

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path_a": self.path_a,
            "path_b": self.path_b,
            "distance": self.distance,
            "radius": self.radius,
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
    parser.add_argument("path_a", metavar="A", help="first image file or folder")
    parser.add_argument("path_b", metavar="B", help="second image file or folder (same kind as A)")
    parser.add_argument("--format", choices=("table", "csv", "json"), default="table",
                        help="output format (default: table)")
    parser.add_argument("-o", "--output", metavar="FILE", help="write the results to FILE instead of stdout")
    parser.add_argument("--weights", metavar="NAME_OR_PATH", default=None,
                        help=f"registered weights name or .safetensors file (default: {DEFAULT_WEIGHTS}; "
                             f"registered: {', '.join(list_pretrained())})")
    parser.add_argument("--batch-size", type=_positive_int, default=16, metavar="N",
                        help="pairs per batch (default: 16)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default: cpu)")
    parser.add_argument("--workers", type=_non_negative_int, default=_default_workers(), metavar="N",
                        help="DataLoader worker processes decoding images; 0 decodes in the main process "
                             "(default: min(4, CPU count) = %(default)s)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def _resolve_pairs(path_a: Path, path_b: Path) -> tuple[list[tuple[Path, Path, str]], list[str], list[str]]:
    for path in (path_a, path_b):
        if not path.exists():
            raise UsageError(f"{path} does not exist; give two image files or two folders")
    if path_a.is_dir() and path_b.is_dir():
        return pair_images(path_a, path_b)
    if path_a.is_file() and path_b.is_file():
        return [(path_a, path_b, path_a.name)], [], []
    kind_a = "a folder" if path_a.is_dir() else "a file"
    kind_b = "a folder" if path_b.is_dir() else "a file"
    raise UsageError(f"{path_a} is {kind_a} but {path_b} is {kind_b}; give two image files or two folders")


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


def _summary(scores: Sequence[PairScore], n_failed: int, n_unmatched: int) -> dict[str, Any]:
    n = len(scores)
    distances = [s.distance for s in scores]
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


def _write_table(scores: Sequence[PairScore], summary: dict[str, Any], out: TextIO) -> None:
    width = max([4] + [len(s.name) for s in scores])
    out.write(f"{'name':<{width}}  {'distance':>10}  {'radius':>12}\n")
    for s in scores:
        out.write(f"{s.name:<{width}}  {s.distance:>10.6f}  {s.radius:>12.6g}\n")
    out.write(_summary_line(summary) + "\n")


def _write_csv(scores: Sequence[PairScore], out: TextIO) -> None:
    fields = ["name", "path_a", "path_b", "distance", "radius", "height_a", "width_a", "height_b", "width_b"]
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for s in scores:
        writer.writerow({**s.as_dict(), "distance": repr(s.distance), "radius": repr(s.radius)})


def _score(metric: LipSim, pairs: list[tuple[Path, Path, str]], device: torch.device, batch_size: int,
           workers: int, progress: bool, err: TextIO) -> tuple[list[PairScore], list[dict[str, str]]]:
    dataset = ImagePairDataset(pairs, metric.input_size)
    n_batches = math.ceil(len(pairs) / batch_size)
    # One batch gains nothing from a worker process; never start more workers than batches.
    workers = 0 if n_batches <= 1 else min(workers, n_batches)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=list,
                        pin_memory=device.type == "cuda")
    scores: list[PairScore] = []
    failed: list[dict[str, str]] = []
    with torch.inference_mode(), tqdm(total=len(pairs), unit="pair", file=err, disable=not progress) as bar:
        for records in loader:
            good = []
            for record in records:
                path_a, path_b, name = pairs[record["index"]]
                if "error" in record:
                    failed.append({"name": name, "path_a": str(path_a), "path_b": str(path_b),
                                   "error": record["error"]})
                    tqdm.write(f"{_PROG}: skipped {name}: {record['error']}", file=err)
                else:
                    good.append(record)
            if good:
                x0 = torch.stack([r["x0"] for r in good]).to(device, non_blocking=True)
                x1 = torch.stack([r["x1"] for r in good]).to(device, non_blocking=True)
                result = metric(x0, x1, return_radius=True, threshold=0.0)
                distances = result.distance.double().cpu().tolist()
                radii = result.radius.double().cpu().tolist()
                for record, distance, radius in zip(good, distances, radii, strict=True):
                    path_a, path_b, name = pairs[record["index"]]
                    # LipSim saw size x size inputs (input norm 1); restate the radius for the original images.
                    norm = pair_input_norm(record["shape0"], record["shape1"], metric.input_size)
                    scores.append(PairScore(name, str(path_a), str(path_b), distance, radius / norm,
                                            record["shape0"], record["shape1"]))
            bar.update(len(records))
    return scores, failed


def _run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    pairs, only_a, only_b = _resolve_pairs(Path(args.path_a), Path(args.path_b))
    _report_unmatched(only_a, Path(args.path_a), err)
    _report_unmatched(only_b, Path(args.path_b), err)
    if not pairs:
        raise UsageError(
            f"no image pairs to score: {len(only_a)} image(s) in {args.path_a} and {len(only_b)} in {args.path_b}, "
            "none with the same relative path. Point both arguments at folders with matching file names."
        )
    if args.output is not None:
        parent = Path(args.output).resolve().parent
        if not parent.is_dir():
            raise UsageError(f"cannot write --output {args.output}: folder {parent} does not exist")
    device = _resolve_device(args.device)
    try:
        metric = LipSim(weights=args.weights)
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(f"cannot load weights: {exc}") from None
    metric = metric.to(device)

    progress = not args.quiet and err.isatty()
    scores, failed = _score(metric, pairs, device, args.batch_size, args.workers, progress, err)
    summary = _summary(scores, len(failed), len(only_a) + len(only_b))

    buffer = io.StringIO()
    if args.format == "table":
        _write_table(scores, summary, buffer)
    elif args.format == "csv":
        _write_csv(scores, buffer)
        print(_summary_line(summary), file=err)
    else:
        document = {
            "pairs": [s.as_dict() for s in scores],
            "summary": summary,
            "failed": failed,
            "unmatched": {"only_a": only_a, "only_b": only_b},
            "weights": metric.weights_name or (str(metric.weights_path) if metric.weights_path else None),
            "variant": metric.variant,
        }
        json.dump(document, buffer, indent=2)
        buffer.write("\n")
    if args.output is not None:
        with open(args.output, "w", encoding="utf-8", newline="") as fh:
            fh.write(buffer.getvalue())
    else:
        out.write(buffer.getvalue())
        out.flush()

    if failed:
        print(f"{_PROG}: {len(failed)} of {len(pairs)} pair(s) could not be scored (see above)", file=err)
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
