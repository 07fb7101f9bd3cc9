"""Generate the small example image folders used by the README's main job (``examples/images/{a,b}``).

The images are synthetic (seeded), so the repository ships no third-party photos. Folder ``a`` holds six
"references"; folder ``b`` holds a distorted version of each under the same relative path (blur, noise, JPEG,
shift, contrast, and one identical copy), so ``lipsim-score examples/images/a examples/images/b`` shows a range of
distances, including 0.

    python examples/make_example_images.py            # rewrites examples/images/
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def scene(rng: np.random.Generator, size: int = 256) -> Image.Image:
    """A smooth colour gradient with random shapes and fine texture: something with edges and detail."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    c0, c1, c2 = rng.uniform(0, 1, (3, 3))
    base = (c0 * (1 - xx[..., None]) + c1 * xx[..., None]) * (1 - yy[..., None]) + c2 * yy[..., None]
    img = Image.fromarray((np.clip(base, 0, 1) * 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(12):
        x0, y0 = rng.integers(0, size, 2)
        w, h = rng.integers(10, size // 2, 2)
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.ellipse([x0, y0, x0 + w, y0 + h], fill=colour)
        else:
            draw.rectangle([x0, y0, x0 + w, y0 + h], fill=colour, outline=(0, 0, 0))
    for _ in range(20):
        pts = [tuple(int(v) for v in rng.integers(0, size, 2)) for _ in range(2)]
        draw.line(pts, fill=tuple(int(v) for v in rng.integers(0, 256, 3)), width=int(rng.integers(1, 4)))
    arr = np.asarray(img).astype(np.float32) + rng.normal(0, 6, (size, size, 3))  # texture
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def distort(img: Image.Image, kind: str, rng: np.random.Generator) -> Image.Image:
    if kind == "blur":
        return img.filter(ImageFilter.GaussianBlur(2.0))
    if kind == "noise":
        arr = np.asarray(img).astype(np.float32) + rng.normal(0, 20, np.asarray(img).shape)
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if kind == "jpeg":
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=10)
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    if kind == "shift":
        return Image.fromarray(np.roll(np.asarray(img), 3, axis=1))
    if kind == "contrast":
        arr = np.asarray(img).astype(np.float32)
        return Image.fromarray(np.clip((arr - 128) * 0.6 + 128, 0, 255).astype(np.uint8))
    return img.copy()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(Path(__file__).parent / "images"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    out = Path(args.out)
    kinds = ["blur", "noise", "jpeg", "shift", "contrast", "identical"]
    for i, kind in enumerate(kinds):
        rel = Path("scenes") / f"{i:02d}_{kind}.png" if i >= 4 else Path(f"{i:02d}_{kind}.png")
        ref = scene(rng)
        for folder, img in (("a", ref), ("b", distort(ref, kind, rng))):
            path = out / folder / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            img.save(path)
    print(f"wrote {2 * len(kinds)} images under {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
