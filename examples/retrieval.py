"""Image retrieval with LipSim embeddings, with a certified top-1 radius for every query.

A gallery of photos is embedded once (``metric.embed``: unit vectors, so the LipSim distance is ``1 - <e_a, e_b>``).
Each query is a distorted copy of one gallery photo; the gallery is ranked by LipSim distance to the query. The
top-1 answer comes with a certified radius: no perturbation of the query with l2 norm below it (in [0, 1] pixel
units, over all pixels and channels) can change which gallery image ranks first: the smallest 2AFC radius between the
top-1 image and every other gallery image, with the query as the reference
(:meth:`lipsim_metric.retrieval.EmbeddingIndex.certified_top1`).

Usage (from the repository root)::

    python examples/retrieval.py                                   # 50 photos of ../shared/images/val
    python examples/retrieval.py --fast --weights path/to/weights.safetensors --output /tmp/retrieval.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from lipsim_metric import LipSim
from lipsim_metric.images import find_images, load_image
from lipsim_metric.preprocess import to_backbone_input
from lipsim_metric.retrieval import EmbeddingIndex
from lipsim_metric.train.distortions import sample_distortion

SHARED_DIR = Path(os.environ.get("LIPSIM_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))
QUERY_FAMILIES = ("blur", "noise", "jpeg", "brightness", "contrast", "translate", "rotate_scale")
FULL = {"count": 50, "queries": 8, "top_k": 5}
FAST = {"count": 6, "queries": 2, "top_k": 3}


def build_index(metric: LipSim, images: Sequence[torch.Tensor], names: Sequence[str]) -> EmbeddingIndex:
    """An :class:`~lipsim_metric.retrieval.EmbeddingIndex` of photos of any sizes.

    Each photo is first brought to the backbone size with LipSim's own resize (so they can be batched); the stored
    embeddings are the ones LipSim computes from the original photos.
    """
    batch = torch.cat([to_backbone_input(x[None], metric.input_size) for x in images])
    return EmbeddingIndex.from_tensor(metric, batch, names=names)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gallery", type=Path, default=SHARED_DIR / "images" / "val",
                        help="folder of gallery photos: any folder of JPEG/PNG photos, e.g. your own pictures "
                             "(default: ../shared/images/val, this project's validation photos)")
    parser.add_argument("--weights", default=None,
                        help="LipSim weights: registered name or .safetensors path (default: the package default)")
    parser.add_argument("--count", type=int, default=None, help=f"gallery size (default {FULL['count']}; --fast: "
                                                                 f"{FAST['count']})")
    parser.add_argument("--queries", type=int, default=None,
                        help=f"distorted queries (default {FULL['queries']}; --fast: {FAST['queries']})")
    parser.add_argument("--top-k", type=int, default=None, help=f"results shown per query (default {FULL['top_k']}; "
                                                                f"--fast: {FAST['top_k']})")
    parser.add_argument("--strength", type=float, default=0.5, help="distortion strength of the queries, in [0, 1]")
    parser.add_argument("--seed", type=int, default=0, help="seed of the gallery subset and the distortions")
    parser.add_argument("--output", type=Path, default=None, help="also write the results as JSON here")
    parser.add_argument("--fast", action="store_true", help="tiny run for CI (seconds)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    preset = FAST if args.fast else FULL
    count, queries, top_k = (getattr(args, k) if getattr(args, k) is not None else preset[k]
                             for k in ("count", "queries", "top_k"))
    if count < 2 or not 1 <= queries <= count or not 1 <= top_k <= count:
        parser.error(f"need --count >= 2, 1 <= --queries <= --count and 1 <= --top-k <= --count; got count={count}, "
                     f"queries={queries}, top_k={top_k}")

    try:
        metric = LipSim(weights=args.weights)
    except FileNotFoundError as exc:
        print(f"cannot load LipSim weights: {exc}\nPass --weights <name or .safetensors file>.", file=sys.stderr)
        return 2

    if not args.gallery.is_dir():
        parser.error(f"--gallery {args.gallery} is not a folder. Give any folder of at least {count} photos "
                     "(JPEG/PNG), e.g. --gallery ~/Pictures")
    files = find_images(args.gallery)
    if len(files) < count:
        parser.error(f"{args.gallery} holds {len(files)} images, fewer than --count {count}")
    rng = np.random.default_rng(args.seed)
    chosen = sorted(rng.choice(len(files), size=count, replace=False).tolist())
    names = [files[i].as_posix() for i in chosen]
    images = [load_image(args.gallery / name) for name in names]
    index = build_index(metric, images, names)
    print(f"gallery: {index!r} from {args.gallery}")

    records = []
    hits = 0
    for q, original in enumerate(rng.choice(count, size=queries, replace=False).tolist()):
        family = QUERY_FAMILIES[q % len(QUERY_FAMILIES)]
        distortion = sample_distortion(rng, strength=args.strength, families=[family], combine_probability=0.0)
        query = distortion.apply(images[original])[None]  # the original size: radii are in its pixel units
        found = index.search(query, k=top_k)
        top1 = index.certified_top1(query)
        ranked, distances, radius = found.indices[0], found.distances[0], float(top1.radius[0])
        hit = int(ranked[0]) == original
        hits += hit
        print(f"\nquery {q}: {names[original]} + {distortion.name} (strength {args.strength:g})  "
              f"top-1 {'correct' if hit else 'WRONG'}, certified top-1 radius {radius:.4f}")
        for rank, (i, d) in enumerate(zip(ranked.tolist(), distances.tolist(), strict=True), start=1):
            print(f"  {rank}. {names[i]:<40} distance {d:.5f}{'  <- original' if i == original else ''}")
        records.append({"query": names[original], "distortion": distortion.to_dict(), "top_1_correct": hit,
                        "certified_top1_radius": radius,
                        "results": [{"name": names[i], "distance": d}
                                    for i, d in zip(ranked.tolist(), distances.tolist(), strict=True)]})
    print(f"\ntop-1 accuracy {hits}/{queries}. Radius: no change of the query with l2 norm below it (RGB in [0, 1], "
          "all pixels) can change the top-1 answer.")
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps({"gallery": names, "queries": records, "top1_accuracy": hits / queries},
                                          indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
