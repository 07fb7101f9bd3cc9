"""Quick start: LipSim distances, certified radii and a certified 2AFC judgement in a few lines.

Usage (from the repository root)::

    python examples/quickstart.py                          # a synthetic test image
    python examples/quickstart.py --image photo.jpg        # your own photo
    python examples/quickstart.py --weights path/to/weights.safetensors

What it shows:

1. ``LipSim()(img0, img1)`` -- the perceptual distance ``1 - cos(e(img0), e(img1))`` between a reference and a few
   distorted copies (blur, noise, JPEG, brightness), in one batch.
2. ``metric(img0, img1, return_radius=True)`` -- with each distance, a certified l2 radius (in [0, 1] pixel units, over
   all pixels and channels): no change of either image smaller than it can make LipSim call the two identical.
3. ``metric.certify_2afc(ref, x0, x1)`` -- which of two distortions is closer to the reference, with a radius: no
   perturbation of the reference with l2 norm below it can flip that judgement.
"""

from __future__ import annotations

import argparse
import io
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from lipsim_metric import LipSim
from lipsim_metric.images import load_image


def synthetic_image(size: int = 128) -> torch.Tensor:
    """A deterministic test image ``(3, size, size)`` in [0, 1]: colour gradients, a disc and stripes."""
    coords = torch.linspace(0, 1, size)
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    red = x
    green = 0.5 + 0.5 * torch.sin(2 * math.pi * 3 * y)
    blue = ((x - 0.6) ** 2 + (y - 0.4) ** 2 < 0.06).float() * 0.8 + 0.1
    stripes = (torch.sin(2 * math.pi * 12 * (x + y)) > 0).float() * (x < 0.35).float() * 0.3
    return (torch.stack([red, green, blue]) * 0.8 + stripes).clamp(0, 1)


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = int(3 * sigma + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=image.dtype)
    g = torch.exp(-(t**2) / (2 * sigma**2))
    g = g / g.sum()
    x = F.pad(image[None], (radius,) * 4, mode="reflect")
    x = F.conv2d(x, g.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)
    x = F.conv2d(x, g.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)
    return x[0]


def jpeg(image: torch.Tensor, quality: int) -> torch.Tensor:
    """JPEG round trip through Pillow."""
    array = (image.permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    decoded = torch.from_numpy(np.asarray(Image.open(buffer).convert("RGB")).copy())
    return decoded.permute(2, 0, 1).float() / 255


def distortions(ref: torch.Tensor, seed: int = 0) -> dict[str, torch.Tensor]:
    """A few distorted copies of ``ref``, all in [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    return {
        "identical": ref.clone(),
        "blur sigma=1": gaussian_blur(ref, 1.0),
        "blur sigma=2": gaussian_blur(ref, 2.0),
        "noise std=0.05": (ref + 0.05 * torch.randn(ref.shape, generator=generator)).clamp(0, 1),
        "jpeg q=20": jpeg(ref, 20),
        "brightness +0.1": (ref + 0.1).clamp(0, 1),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", type=Path, default=None, help="reference photo (default: a synthetic image)")
    parser.add_argument("--weights", default=None,
                        help="LipSim weights: registered name or .safetensors path (default: the package default)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise distortion")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    ref = load_image(args.image) if args.image is not None else synthetic_image()
    print(f"reference: {args.image or 'synthetic image'}, {ref.shape[-2]}x{ref.shape[-1]} px")

    # 1. The metric. LipSim() loads the shipped pretrained weights; it never falls back to random ones.
    try:
        metric = LipSim(weights=args.weights)
    except FileNotFoundError as exc:
        print(f"cannot load LipSim weights: {exc}\nPass --weights <name or .safetensors file>.", file=sys.stderr)
        return 2
    print(f"metric: {metric.extra_repr()}\n")

    # 2. Distances (and certified radii) for a batch of pairs: images are (N, 3, H, W) floats in [0, 1].
    copies = distortions(ref, args.seed)
    batch = torch.stack(list(copies.values()))
    refs = ref.expand_as(batch)
    with torch.no_grad():
        distance = metric(refs, batch)  # shape (N,); differentiable w.r.t. the images outside no_grad
        result = metric(refs, batch, return_radius=True)  # DistanceResult(distance, radius), float32
    print(f"metric(refs, batch) -> {tuple(distance.shape)} distances")
    print(f"{'distortion':<16} {'distance':>10} {'certified radius (l2)':>22}")
    for name, d, r in zip(copies, result.distance.tolist(), result.radius.tolist(), strict=True):
        print(f"{name:<16} {d:>10.5f} {r:>22.4f}")
    print("radius: an l2 change (RGB in [0, 1], all pixels) of either image smaller than this cannot make the "
          "distance 0.\n")

    # 3. A certified two-alternative forced choice: which distortion is closer to the reference?
    x0, x1 = copies["blur sigma=2"], copies["noise std=0.05"]
    cert = metric.certify_2afc(ref[None], x0[None], x1[None])
    closer = "x1 (noise std=0.05)" if cert.prediction.item() == 1 else "x0 (blur sigma=2)"
    print("2AFC: ref vs x0 = blur sigma=2, x1 = noise std=0.05")
    print(f"  d0 = {cert.d0.item():.5f}, d1 = {cert.d1.item():.5f} -> {closer} is closer "
          f"(margin {cert.margin.item():.5f})")
    print(f"  certified radius {cert.radius.item():.4f}: every perturbation of the reference with l2 norm below it "
          "gives the same answer")
    print(f"  (for scale: an 8-bit change of one level on every pixel is l2 "
          f"{math.sqrt(ref.numel()) / 255:.3f} for this image)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
