"""Attacking a 2AFC judgement: LPIPS-Alex versus LipSim on the same triplet, with LipSim's certificate.

A triplet is a reference photo and two distorted copies (``x0``: blur, ``x1``: noise). Each metric judges which copy
is closer to the reference. An attacker then perturbs the *reference* (l2 PGD, Madry et al. 2018, via
:func:`lipsim_metric.evaluation.attacks.attack_2afc`) within budgets ``eps`` -- l2 norms in [0, 1] pixel units over all
pixels and channels; at 224x224, eps = 1 is an RMS change of 0.66 of one 8-bit level -- and tries to flip the
judgement. LPIPS-Alex (Zhang et al., CVPR 2018) is not robust: tiny budgets usually flip it. LipSim is 1-Lipschitz:
``LipSim.certify_2afc`` returns a radius below which *no* perturbation of the reference can flip its judgement, so
for every ``eps`` below the radius the attack must fail. LipSim is also attacked at 0.99 x its radius; the script
exits 1 if any attack inside the radius flips it.

Usage (from the repository root)::

    python examples/robustness_demo.py --teachers-dir ../shared/teachers              # a val photo, 224x224
    python examples/robustness_demo.py --fast --teachers-dir ../shared/teachers --weights path/to/weights.safetensors

Outputs in ``--out-dir``: ``robustness.json`` (distances, judgements and flips per metric and eps, the certificate)
and ``robustness.png`` (the triplet, and for each metric the attacked reference at the largest eps with its
perturbation, amplified).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lipsim_metric import LipSim
from lipsim_metric.evaluation.attacks import attack_2afc
from lipsim_metric.images import find_images, load_image
from lipsim_metric.train.distortions import sample_distortion
from lipsim_metric.train.teachers import build_distance_teacher

SHARED_DIR = Path(os.environ.get("LIPSIM_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))
FULL = {"size": 224, "steps": 50}
FAST = {"size": 64, "steps": 3}

Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def center_square(image: torch.Tensor, size: int) -> torch.Tensor:
    """Central square of ``image`` resized (antialiased) to ``size x size``, shape ``(3, size, size)``."""
    h, w = image.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = image[None, :, top:top + side, left:left + side]
    return F.interpolate(square, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0].clamp(0, 1)


def make_triplet(image: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(ref, x0, x1)`` batches of one: x0 a blurred copy, x1 a noisy copy (seeded distortions of the library)."""
    rng = np.random.default_rng(seed)
    blur = sample_distortion(rng, strength=0.35, families=["blur"], combine_probability=0.0)
    noise = sample_distortion(rng, strength=0.35, families=["noise"], combine_probability=0.0)
    return image[None], blur.apply(image)[None], noise.apply(image)[None]


@torch.no_grad()
def judge(metric: Distance, ref: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``(d0, d1, judgement)`` with judgement 1 when x1 is closer (the rule of ``LipSim.certify_2afc``)."""
    d0, d1 = metric(ref, x0).float(), metric(ref, x1).float()
    return d0, d1, (d1 < d0).long()


def attack_metric(name: str, metric: Distance, ref: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor,
                  epsilons: Sequence[float], steps: int, seed: int) -> tuple[list[dict[str, Any]], torch.Tensor]:
    """PGD on the reference at every eps (one batch, one budget per row); returns rows and the attacked refs."""
    n = len(epsilons)
    refs, x0s, x1s = ref.expand(n, -1, -1, -1), x0.expand(n, -1, -1, -1), x1.expand(n, -1, -1, -1)
    d0, d1, clean = judge(metric, ref, x0, x1)
    adversarial = attack_2afc(metric, refs, x0s, x1s, eps=torch.tensor(epsilons), norm="l2", method="pgd",
                              steps=steps, seed=seed)
    a0, a1, after = judge(metric, adversarial, x0s, x1s)
    size = (adversarial - refs).flatten(1).norm(dim=1)
    rows = [{"metric": name, "eps": eps, "perturbation_l2": float(size[i]), "clean_d0": float(d0),
             "clean_d1": float(d1), "clean_judgement": int(clean), "attacked_d0": float(a0[i]),
             "attacked_d1": float(a1[i]), "attacked_judgement": int(after[i]), "flipped": bool(after[i] != clean)}
            for i, eps in enumerate(epsilons)]
    return rows, adversarial


def save_figure(path: Path, ref: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor,
                attacked: dict[str, tuple[torch.Tensor, dict[str, Any]]], eps: float) -> None:
    """Row 1: the triplet. Row 2: per metric, the attacked reference at ``eps`` and its amplified perturbation."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    columns = max(3, 2 * len(attacked))
    fig = Figure(figsize=(2.3 * columns, 5.0), layout="constrained")
    axes = fig.subplots(2, columns, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()

    def show(ax: Any, image: torch.Tensor, title: str) -> None:
        ax.imshow(image.permute(1, 2, 0).clamp(0, 1).numpy())
        ax.set_title(title, fontsize=8)

    show(axes[0][0], ref[0], "reference")
    show(axes[0][1], x0[0], "x0 (blur)")
    show(axes[0][2], x1[0], "x1 (noise)")
    for k, (name, (adv, row)) in enumerate(attacked.items()):
        delta = adv - ref[0]
        scale = 0.5 / max(float(delta.abs().max()), 1e-12)
        verdict = "FLIPPED" if row["flipped"] else "not flipped"
        closer = lambda j: "x1" if j == 1 else "x0"  # noqa: E731
        show(axes[1][2 * k], adv, f"{name}, ref attacked\neps={eps:g}: {closer(row['clean_judgement'])} -> "
                                  f"{closer(row['attacked_judgement'])} ({verdict})")
        show(axes[1][2 * k + 1], (0.5 + scale * delta).clamp(0, 1), f"{name} perturbation\n(x{scale:.0f}, grey = 0)")
    fig.savefig(path, dpi=110)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", type=Path, default=None,
                        help="reference photo, any JPEG/PNG (default: the first photo of ../shared/images/val if "
                             "that folder exists, else examples/images/a)")
    parser.add_argument("--teachers-dir", type=Path, default=SHARED_DIR / "teachers" if (SHARED_DIR / "teachers")
                        .is_dir() else None,
                        help="folder with the LPIPS-Alex files (alexnet_imagenet_features.safetensors, "
                             "lpips_v0.1_alex_heads.safetensors); default ../shared/teachers if present, else "
                             "$LIPSIM_TEACHERS_DIR, else online: torchvision's AlexNet weights "
                             "(AlexNet_Weights.IMAGENET1K_V1) and the heads of the lpips package (pip install lpips)")
    parser.add_argument("--weights", default=None,
                        help="LipSim weights: registered name or .safetensors path (default: the package default)")
    parser.add_argument("--eps", type=float, nargs="+", default=[0.5, 1.0, 2.0],
                        help="l2 budgets, [0, 1] pixel units over all pixels and channels")
    parser.add_argument("--size", type=int, default=None,
                        help=f"side of the square images (default {FULL['size']}; --fast: {FAST['size']})")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"PGD steps (default {FULL['steps']}; --fast: {FAST['steps']})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the distortions and of the PGD random start")
    parser.add_argument("--out-dir", type=Path, default=Path("runs/robustness_demo"), help="output folder")
    parser.add_argument("--fast", action="store_true", help="tiny run for CI (seconds)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    preset = FAST if args.fast else FULL
    size = args.size if args.size is not None else preset["size"]
    steps = args.steps if args.steps is not None else preset["steps"]
    if size < 32:
        parser.error(f"--size must be at least 32 (LPIPS needs 32 px), got {size}")
    if steps < 1 or any(e <= 0 for e in args.eps):
        parser.error("--steps must be >= 1 and every --eps > 0")
    epsilons = sorted(args.eps)

    try:
        lipsim = LipSim(weights=args.weights)
    except FileNotFoundError as exc:
        print(f"cannot load LipSim weights: {exc}\nPass --weights <name or .safetensors file>.", file=sys.stderr)
        return 2
    try:
        lpips_alex = build_distance_teacher("lpips-alex", teachers_dir=args.teachers_dir)
    except (FileNotFoundError, OSError, RuntimeError) as exc:  # missing files, or no network for torchvision
        print(f"cannot build LPIPS-Alex: {exc}\nPass --teachers-dir FOLDER with alexnet_imagenet_features.safetensors "
              "and lpips_v0.1_alex_heads.safetensors, or run once with a network connection (torchvision downloads "
              "AlexNet_Weights.IMAGENET1K_V1; the heads come from `pip install lpips`).", file=sys.stderr)
        return 2

    if args.image is None:
        folder = SHARED_DIR / "images" / "val"
        if not folder.is_dir():  # outside this project: the repository's own example images
            folder = Path(__file__).resolve().parent / "images" / "a"
        args.image = folder / find_images(folder)[0]
    ref, x0, x1 = make_triplet(center_square(load_image(args.image), size), args.seed)
    print(f"triplet: {args.image} at {size}x{size}; x0 = blur, x1 = noise; l2 PGD on the reference, {steps} steps")

    cert = lipsim.certify_2afc(ref, x0, x1)
    radius = float(cert.radius)
    rows: list[dict[str, Any]] = []
    attacked: dict[str, tuple[torch.Tensor, dict[str, Any]]] = {}
    # LipSim is also attacked just inside its certified radius: that attack must fail.
    lipsim_epsilons = epsilons + ([0.99 * radius] if radius > 0 else [])
    for name, metric, budgets in (("LPIPS-Alex", lpips_alex, epsilons), ("LipSim", lipsim, lipsim_epsilons)):
        metric_rows, adversarial = attack_metric(name, metric, ref, x0, x1, budgets, steps, args.seed)
        rows += metric_rows
        shown = budgets.index(epsilons[-1])
        attacked[name] = (adversarial[shown], metric_rows[shown])

    print(f"\nLipSim certificate: judgement {'x1' if int(cert.prediction) == 1 else 'x0'} closer, margin "
          f"{float(cert.margin):.5f}, certified radius {radius:.4f} (no perturbation of the reference with l2 norm "
          "below it can flip it)\n")
    print("| metric | clean d0 | clean d1 | closer | eps | attacked d0 | attacked d1 | flipped | LipSim certified |")
    print("|---|---:|---:|---|---:|---:|---:|---|---|")
    unsound = []
    for row in rows:
        certified = row["metric"] == "LipSim" and row["eps"] < radius
        if certified and row["flipped"]:
            unsound.append(row)
        budget = f"{row['eps']:.4g}" if row["eps"] in epsilons else f"{row['eps']:.4g} (0.99 x radius)"
        print(f"| {row['metric']} | {row['clean_d0']:.5f} | {row['clean_d1']:.5f} | "
              f"{'x1' if row['clean_judgement'] == 1 else 'x0'} | {budget} | {row['attacked_d0']:.5f} | "
              f"{row['attacked_d1']:.5f} | {'yes' if row['flipped'] else 'no'} | "
              f"{'yes' if certified else ('no' if row['metric'] == 'LipSim' else '-')} |")

    args.out_dir.mkdir(parents=True, exist_ok=True)
    document = {"image": str(args.image), "size": size, "steps": steps, "epsilons": epsilons, "seed": args.seed,
                "weights": lipsim.weights_name or (str(lipsim.weights_path) if lipsim.weights_path else None),
                "lipsim_certificate": {"prediction": int(cert.prediction), "margin": float(cert.margin),
                                       "radius": radius, "d0": float(cert.d0), "d1": float(cert.d1)},
                "attacks": rows}
    (args.out_dir / "robustness.json").write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    save_figure(args.out_dir / "robustness.png", ref, x0, x1, attacked, epsilons[-1])
    print(f"\nwrote {args.out_dir / 'robustness.json'} and {args.out_dir / 'robustness.png'}", file=sys.stderr)
    if unsound:
        print(f"ERROR: the attack flipped LipSim inside its certified radius: {unsound}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
