"""What does a LipSim distance of 0.01 or 0.1 mean? Distances of common distortions of real photos, next to LPIPS.

Takes ``--count`` photos (sorted by name) from a folder, centre-crops them to 224x224, applies each distortion below
and reports the mean distance from the clean photo under LipSim (the weights given, default: the package default),
LPIPS-Alex and LPIPS-VGG (from ``lipsim_metric.train.teachers``), plus LipSim's mean certified radius (threshold 0;
l2 in [0, 1] units over the 224x224x3 values; x 0.657 gives the RMS change in 8-bit levels at which the pair could
first be judged identical). "a different photo" pairs each photo with the next one.

The README's calibration table is this script's output; rerun it whenever the default weights change::

    python benchmarks/calibration.py --images ../shared/images/val --teachers-dir ../shared/teachers
    python benchmarks/calibration.py --images ~/Pictures --count 8          # any folder of photos; teachers online

Without ``--teachers-dir`` the LPIPS trunks come from torchvision's weight API (needs a network connection the first
time) and the LPIPS heads from an installed ``lpips`` package; see docs/training.md for the offline files. Writes the
markdown table to stdout and, with ``--out``, a JSON file with every number and the command.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import platform
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from lipsim_metric import LipSim
from lipsim_metric.images import find_images, load_image

SIDE = 224
Distortion = Callable[[torch.Tensor, int], torch.Tensor]


def center_crop(image: torch.Tensor, side: int = SIDE) -> torch.Tensor:
    """Central square of ``image`` resized (antialiased) to ``side x side``."""
    h, w = image.shape[-2:]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    square = image[None, :, top:top + s, left:left + s]
    return F.interpolate(square, size=(side, side), mode="bilinear", antialias=True, align_corners=False)[0].clamp(0, 1)


def gaussian_blur(sigma: float) -> Distortion:
    def apply(x: torch.Tensor, seed: int) -> torch.Tensor:
        radius = int(np.ceil(3 * sigma))
        t = torch.arange(-radius, radius + 1, dtype=torch.float32)
        kernel = torch.exp(-0.5 * (t / sigma) ** 2)
        kernel = kernel / kernel.sum()
        y = F.pad(x[None], (radius, radius, radius, radius), mode="reflect")
        y = F.conv2d(y, kernel.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)
        y = F.conv2d(y, kernel.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)
        return y[0].clamp(0, 1)
    return apply


def gaussian_noise(sigma: float) -> Distortion:
    def apply(x: torch.Tensor, seed: int) -> torch.Tensor:
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
        return (x + sigma * noise).clamp(0, 1)
    return apply


def jpeg(quality: int) -> Distortion:
    def apply(x: torch.Tensor, seed: int) -> torch.Tensor:
        pixels = (x.permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
        buffer.seek(0)
        return torch.from_numpy(np.asarray(Image.open(buffer).convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)
    return apply


def brightness(delta: float) -> Distortion:
    return lambda x, seed: (x + delta).clamp(0, 1)


#: (label, distortion); "different photo" is handled separately.
DISTORTIONS: list[tuple[str, Distortion]] = [
    ("identical copy", lambda x, seed: x.clone()),
    ("8-bit rounding (PNG round trip of a float image)", lambda x, seed: (x * 255).round() / 255),
    ("brightness +2/255", brightness(2 / 255)),
    ("brightness +10/255", brightness(10 / 255)),
    ("Gaussian noise sigma 2/255", gaussian_noise(2 / 255)),
    ("Gaussian noise sigma 0.02 (5/255)", gaussian_noise(0.02)),
    ("Gaussian noise sigma 0.05", gaussian_noise(0.05)),
    ("Gaussian noise sigma 0.1", gaussian_noise(0.1)),
    ("Gaussian blur sigma 1 px", gaussian_blur(1.0)),
    ("Gaussian blur sigma 2 px", gaussian_blur(2.0)),
    ("Gaussian blur sigma 4 px", gaussian_blur(4.0)),
    ("JPEG quality 75", jpeg(75)),
    ("JPEG quality 30", jpeg(30)),
    ("JPEG quality 10", jpeg(10)),
]
DIFFERENT = "a different photo"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, default=None,
                        help="folder of photos (any images; e.g. ../shared/images/val in this project)")
    parser.add_argument("--count", type=int, default=16, help="photos used (default: %(default)s)")
    parser.add_argument("--weights", default=None, help="LipSim weights (default: the package default)")
    parser.add_argument("--teachers-dir", type=Path, default=None,
                        help="folder of the LPIPS teacher files (default: torchvision / lpips sources, online)")
    parser.add_argument("--no-lpips", action="store_true", help="LipSim only (no teacher weights needed)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None, help="also write every number as JSON here")
    parser.add_argument("--table-from", type=Path, default=None,
                        help="print the table of an earlier --out JSON file instead of measuring")
    return parser


def format_table(document: dict) -> str:  # type: ignore[type-arg]
    """The README's markdown table (and its caption) from the JSON document :func:`main` writes."""
    results = document["results"]
    names = [k for k in next(iter(results.values())) if k != "LipSim radius"]
    lines = [f"Mean distance from the clean photo over {len(document['photos'])} photos (224x224 centre crops); LipSim "
             f"weights `{document['weights']}`; made by `{document['command']}` ({document['machine']}, "
             f"{document['date']}).", "",
             "| distortion | " + " | ".join(names) + " | LipSim radius (l2, [0,1]) |",
             "|---|" + "---:|" * (len(names) + 1)]
    for label, row in results.items():
        lines.append(f"| {label} | " + " | ".join(f"{row[n]:.3g}" for n in names) + f" | {row['LipSim radius']:.3g} |")
    return "\n".join(lines)


@torch.no_grad()
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.table_from is not None:
        print(format_table(json.loads(args.table_from.read_text(encoding="utf-8"))))
        return 0
    if args.images is None:
        parser.error("--images FOLDER is required (any folder of photos)")
    files = find_images(args.images)
    if len(files) < max(2, args.count):
        print(f"{args.images} holds {len(files)} images; need --count {args.count} (at least 2)", file=sys.stderr)
        return 2
    photos = torch.stack([center_crop(load_image(args.images / f)) for f in files[:args.count]])
    metric = LipSim(weights=args.weights)
    metrics: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {"LipSim": lambda a, b: metric(a, b)}
    if not args.no_lpips:
        from lipsim_metric.train.teachers import build_distance_teacher

        for name, label in (("lpips-alex", "LPIPS-Alex"), ("lpips-vgg", "LPIPS-VGG")):
            metrics[label] = build_distance_teacher(name, teachers_dir=args.teachers_dir)

    conditions = [(label, torch.stack([fn(x, i) for i, x in enumerate(photos)])) for label, fn in DISTORTIONS]
    conditions.append((DIFFERENT, photos.roll(1, dims=0)))
    results: dict[str, dict[str, float]] = {}
    for label, distorted in conditions:
        row: dict[str, float] = {}
        for name, fn in metrics.items():
            values = torch.cat([fn(photos[i:i + args.batch_size], distorted[i:i + args.batch_size]).float()
                                for i in range(0, len(photos), args.batch_size)])
            row[name] = float(values.mean())
        radii = torch.cat([metric(photos[i:i + args.batch_size], distorted[i:i + args.batch_size],
                                  return_radius=True).radius for i in range(0, len(photos), args.batch_size)])
        row["LipSim radius"] = float(radii.mean())
        results[label] = row
        print(f"{label}: " + ", ".join(f"{k} {v:.4g}" for k, v in row.items()), file=sys.stderr)

    command = "python benchmarks/calibration.py " + " ".join(sys.argv[1:] if argv is None else argv)
    document = {"command": command, "date": datetime.date.today().isoformat(),
                "machine": f"{platform.machine()} CPU", "weights": metric.weights_name or str(metric.weights_path),
                "photos": [f.as_posix() for f in files[:args.count]], "results": results}
    print(format_table(document))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
