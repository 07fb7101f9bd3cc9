"""Quartiles of ``||[f(x); 1]||`` on photos: how the appended constant ``c`` of a weights file is chosen.

The ``"append"`` projection compares ``[f(x); c] / ||[f(x); c]||``; with ``c`` small against ``||f(x)||`` the cosine
distance barely sees a common scale of the features (model card, "Selection rule for a pixel-branch default",
addendum). The project's rule sets ``c`` to the rounded median of ``||[f(x); 1]||`` over the first ``--count``
*training* photos (sorted by name, each resized to the backbone's input size), under the weights being trained::

    python benchmarks/embedding_norms.py --images ../shared/images/train --count 256 \\
        runs/pixel_v2_a010_init/student.safetensors runs/pixel_v2_a006_init/student.safetensors

(the ``*_init`` files are ``python -m lipsim_metric.train.engine --config CONFIG --set max_steps=0 --set
output_dir=...``: the starting weights with the config's architecture, untrained). Prints one line per weights file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from lipsim_metric import LipSim
from lipsim_metric.images import find_images, load_image_resized
from lipsim_metric.metric import EmbeddingResult


def norm_quartiles(weights: str, images: list[torch.Tensor], batch_size: int = 32) -> list[float]:
    """25/50/75% quantiles of ``||[f(x); 1]||`` over ``images`` (each ``(3, S, S)`` in [0, 1])."""
    metric = LipSim(weights=weights, constant=1.0).eval()
    norms = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            out = metric.embed(torch.stack(images[i:i + batch_size]), return_norm=True)
            assert isinstance(out, EmbeddingResult)
            norms.append(out.augmented_norm)
    return torch.quantile(torch.cat(norms), torch.tensor([0.25, 0.5, 0.75])).tolist()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("weights", nargs="+", help="weights files (or registered names)")
    parser.add_argument("--images", type=Path, required=True, help="folder of photos (the training photos)")
    parser.add_argument("--count", type=int, default=256, help="photos used, first by name (default: %(default)s)")
    parser.add_argument("--size", type=int, default=224, help="side the photos are resized to (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error(f"--count must be >= 1, got {args.count}")
    if not args.images.is_dir():
        parser.error(f"--images {args.images} is not a folder of photos")
    files = sorted(find_images(args.images))[: args.count]
    if not files:
        parser.error(f"no images found in {args.images}")
    images = [load_image_resized(args.images / name, args.size)[0] for name in files]
    failed = 0
    for weights in args.weights:  # a bad file is reported and the others are still measured
        try:
            q = norm_quartiles(weights, images)
        except (OSError, ValueError, KeyError) as exc:
            print(f"error: {weights}: {exc}", file=sys.stderr)
            failed += 1
            continue
        print(f"{weights}: ||[f(x); 1]|| quartiles {q[0]:.2f} / {q[1]:.2f} / {q[2]:.2f} over {len(images)} photos "
              f"of {args.images} -> c = {round(q[1])}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
