"""LipSim as a training loss: a small denoising CNN trained with L1, L2, LipSim (+ L1) and LPIPS-VGG (+ L1).

Every loss trains the same network (same seed, so the same initial weights) on the same sequence of batches: random
crops of natural photos with additive Gaussian noise (``--sigma``, in [0, 1] pixel units; the noisy image is clipped
to [0, 1] like an 8-bit camera would). The models are then scored on held-out photo crops under every metric --
PSNR, SSIM, L1, LipSim distance and, when ``--teachers-dir`` is given, LPIPS-VGG -- so one can see what each loss
optimises for. LipSim is used exactly as a user would: ``LipSim(weights=...)(output, clean).mean()``; its
parameters are frozen and the gradient flows to the denoiser's output.

The perceptual losses get a small L1 term (``--l1-weight``): a perceptual distance alone does not pin down absolute
colour and brightness (LipSim compares normalised embeddings), and the L1 term is the usual anchor (e.g. LPIPS-based
restoration losses). The same weight is used for LipSim and LPIPS-VGG so that the comparison is fair.

Usage (from the repository root)::

    # full run, ~5-10 min on 2 CPU cores (LPIPS-VGG training is the slowest part)
    python examples/loss_denoise.py --teachers-dir ../shared/teachers --out-dir runs/loss_denoise

    # CI smoke run (seconds)
    python examples/loss_denoise.py --fast --weights path/to/weights.safetensors --out-dir /tmp/denoise

Outputs in ``--out-dir``: ``results.json`` (configuration, machine, date, every metric per loss), ``results.md``
(the markdown table also printed on stdout) and ``denoise_grid.png`` (noisy | output per loss | clean).

References: LipSim -- Ghazanfari et al., ICLR 2024, arXiv:2310.18274. LPIPS -- Zhang et al., CVPR 2018,
arXiv:1801.03924. PSNR and SSIM (Wang et al., IEEE TIP 2004; Gaussian 11x11 window, sigma 1.5, per RGB channel)
are those of :mod:`lipsim_metric.evaluation.baselines`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lipsim_metric import LipSim
from lipsim_metric.evaluation.baselines import NegativePSNR, ssim
from lipsim_metric.images import find_images, load_image
from lipsim_metric.train.denoiser_adversary import TinyDenoiser

SHARED_DIR = Path(os.environ.get("LIPSIM_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))
LOSSES = ("l1", "l2", "lipsim", "lpips-vgg")
MIN_CROP = 32  # LPIPS needs at least 32 px; SSIM's 11 px window needs room too
_NEGATIVE_PSNR = NegativePSNR()

# Settings that --fast changes (an explicit flag always wins over both columns).
FULL = {"steps": 300, "batch_size": 8, "crop": 64, "train_count": 256, "val_count": 32, "width": 32, "depth": 5,
        "grid_rows": 4}
FAST = {"steps": 3, "batch_size": 4, "crop": 32, "train_count": 4, "val_count": 4, "width": 16, "depth": 3,
        "grid_rows": 2}


# ----------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------


def load_photos(folder: Path, count: int, min_side: int, seed: int) -> list[torch.Tensor]:
    """``count`` photos of ``folder`` (a seeded random subset, in a fixed order), each at least ``min_side`` px."""
    files = find_images(folder)
    if not files:
        raise FileNotFoundError(f"no images found in {folder}; pass --images / --val-images")
    order = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed)).tolist()
    photos: list[torch.Tensor] = []
    for index in order:
        image = load_image(folder / files[index])
        if min(image.shape[-2:]) >= min_side:
            photos.append(image)
        if len(photos) == count:
            break
    if len(photos) < count:
        raise ValueError(f"{folder} has only {len(photos)} images of at least {min_side} px; {count} were asked for")
    return photos


def random_crops(photos: Sequence[torch.Tensor], count: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` random ``size x size`` crops at native resolution (no resampling), ``(count, 3, size, size)``."""
    crops = []
    for _ in range(count):
        image = photos[int(torch.randint(len(photos), (1,), generator=generator))]
        top = int(torch.randint(image.shape[-2] - size + 1, (1,), generator=generator))
        left = int(torch.randint(image.shape[-1] - size + 1, (1,), generator=generator))
        crops.append(image[:, top:top + size, left:left + size])
    return torch.stack(crops)


def center_crops(photos: Sequence[torch.Tensor], size: int) -> torch.Tensor:
    """Central ``size x size`` crop of every photo, ``(N, 3, size, size)``."""
    out = []
    for image in photos:
        top, left = (image.shape[-2] - size) // 2, (image.shape[-1] - size) // 2
        out.append(image[:, top:top + size, left:left + size])
    return torch.stack(out)


def add_noise(clean: torch.Tensor, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """Additive white Gaussian noise of std ``sigma``, clipped to [0, 1]."""
    noise = torch.randn(clean.shape, generator=generator)
    return (clean + sigma * noise).clamp(0.0, 1.0)


def training_batches(photos: Sequence[torch.Tensor], steps: int, batch_size: int, crop: int, sigma: float,
                     seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The (noisy, clean) batches of one training run; the same ``seed`` gives the same sequence."""
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        clean = random_crops(photos, batch_size, crop, generator)
        yield add_noise(clean, sigma, generator), clean


# ----------------------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------------------


#: DnCNN-style residual denoiser (Zhang et al., IEEE TIP 2017), shrunk: ``depth`` 3x3 convs of ``width``; it predicts
#: the noise, outputs ``clamp(noisy - noise, 0, 1)`` and starts as the identity (its last conv is zero), so every loss
#: starts from the same point. Training with ``hard_kind: denoiser`` uses the same network as an adversary.
Denoiser = TinyDenoiser


# ----------------------------------------------------------------------------------------------------------------
# Image-quality measures (per image, shape (N,))
# ----------------------------------------------------------------------------------------------------------------


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB for images in [0, 1] (the library's PSNR distance is its negative)."""
    return -_NEGATIVE_PSNR(x, y)


def l1_error(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean absolute error per image."""
    return (x - y).abs().flatten(1).mean(1)


@torch.no_grad()
def evaluate(output: torch.Tensor, clean: torch.Tensor, measures: dict[str, Callable[..., torch.Tensor]],
             chunk: int = 16) -> dict[str, torch.Tensor]:
    """Every measure per image, computed in chunks of ``chunk`` images."""
    results: dict[str, list[torch.Tensor]] = {name: [] for name in measures}
    for start in range(0, len(output), chunk):
        for name, fn in measures.items():
            results[name].append(fn(output[start:start + chunk], clean[start:start + chunk]).float().cpu())
    return {name: torch.cat(values) for name, values in results.items()}


# ----------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------


def make_loss(name: str, l1_weight: float, lipsim: LipSim,
              lpips: nn.Module | None) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The training loss ``name`` as a function of (output, clean)."""
    if name == "l1":
        return lambda out, clean: (out - clean).abs().mean()
    if name == "l2":
        return lambda out, clean: (out - clean).pow(2).mean()
    if name == "lipsim":
        return lambda out, clean: lipsim(out, clean).mean() + l1_weight * (out - clean).abs().mean()
    if name == "lpips-vgg":
        if lpips is None:
            raise ValueError("the lpips-vgg loss needs --teachers-dir")
        return lambda out, clean: lpips(out, clean).mean() + l1_weight * (out - clean).abs().mean()
    raise ValueError(f"unknown loss {name!r}; choose from {LOSSES}")


def loss_label(name: str, l1_weight: float) -> str:
    if name in ("lipsim", "lpips-vgg") and l1_weight > 0:
        return f"{name} + {l1_weight:g} l1"
    return name


LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Batches = Iterator[tuple[torch.Tensor, torch.Tensor]]


def train(loss_fn: LossFn, batches: Batches, args: argparse.Namespace, label: str,
          device: torch.device) -> tuple[Denoiser, float]:
    """Train a fresh :class:`Denoiser` (seeded) with ``loss_fn``; returns it and the mean loss of the last 10% steps."""
    torch.manual_seed(args.seed)  # the same initial weights for every loss
    model = Denoiser(args.width, args.depth).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    losses: list[float] = []
    start = time.perf_counter()
    report_every = max(1, args.steps // 10)
    for step, (noisy, clean) in enumerate(batches, start=1):
        loss = loss_fn(model(noisy.to(device)), clean.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step % report_every == 0 or step == args.steps:
            elapsed = time.perf_counter() - start
            print(f"[{label}] step {step}/{args.steps}  loss {loss.item():.5f}  "
                  f"{elapsed:.0f}s elapsed, ~{elapsed / step * (args.steps - step):.0f}s left",
                  file=sys.stderr, flush=True)
    tail = losses[-max(1, len(losses) // 10):]
    return model.eval(), sum(tail) / len(tail)


# ----------------------------------------------------------------------------------------------------------------
# Reporting
# ----------------------------------------------------------------------------------------------------------------

COLUMNS = (("psnr", "PSNR (dB) ↑", "{:.2f}"), ("ssim", "SSIM ↑", "{:.4f}"), ("l1", "L1 ↓", "{:.4f}"),
           ("lipsim", "LipSim ↓", "{:.4f}"), ("lpips_vgg", "LPIPS-VGG ↓", "{:.4f}"))


def markdown_table(results: dict[str, dict[str, Any]]) -> str:
    """One row per model, one column per measure (mean over the held-out crops)."""
    present = [c for c in COLUMNS if any(c[0] in r["metrics"] for r in results.values())]
    header = "| trained with | " + " | ".join(title for _, title, _ in present) + " | train time (s) |"
    lines = [header, "|---|" + "---:|" * (len(present) + 1)]
    for label, row in results.items():
        cells = [fmt.format(row["metrics"][key]) if key in row["metrics"] else "n/a" for key, _, fmt in present]
        seconds = row.get("train_seconds")
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {'' if seconds is None else f'{seconds:.1f}'} |")
    return "\n".join(lines)


def save_grid(path: Path, noisy: torch.Tensor, outputs: dict[str, torch.Tensor], clean: torch.Tensor,
              rows: int) -> None:
    """PNG grid, one row per crop: noisy | output of each loss | clean, each tile titled with its PSNR."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    columns = [("noisy", noisy), *outputs.items(), ("clean", clean)]
    rows = min(rows, len(clean))
    fig = Figure(figsize=(1.9 * len(columns), 2.1 * rows), layout="constrained")
    axes = fig.subplots(rows, len(columns), squeeze=False)
    for r in range(rows):
        for c, (title, images) in enumerate(columns):
            ax = axes[r][c]
            ax.imshow(images[r].permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            caption = title if title == "clean" else f"{title}\n{psnr(images[r:r + 1], clean[r:r + 1]).item():.1f} dB"
            ax.set_title(caption if r == 0 else caption.split("\n")[-1], fontsize=8)
    fig.savefig(path, dpi=120)


# ----------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, default=SHARED_DIR / "images" / "train",
                        help="training photos, searched recursively (default: $LIPSIM_SHARED_DIR/images/train, "
                             "else ../shared/images/train beside the checkout)")
    parser.add_argument("--val-images", type=Path, default=SHARED_DIR / "images" / "val",
                        help="held-out photos for the evaluation (default: $LIPSIM_SHARED_DIR/images/val, else "
                             "../shared/images/val beside the checkout)")
    parser.add_argument("--teachers-dir", type=Path, default=None,
                        help="folder of teacher weights (e.g. ../shared/teachers); enables LPIPS-VGG as a loss and "
                             "as an evaluation measure")
    parser.add_argument("--weights", default=None,
                        help="LipSim weights: registered name or .safetensors path (default: the package default)")
    parser.add_argument("--losses", default=None,
                        help=f"comma-separated subset of {','.join(LOSSES)} "
                             "(default: all available; --fast: l1,lipsim)")
    parser.add_argument("--sigma", type=float, default=0.1,
                        help="noise std in [0, 1] pixel units (default: %(default)s)")
    parser.add_argument("--l1-weight", type=float, default=0.1,
                        help="weight of the L1 term added to the perceptual losses (LipSim, LPIPS-VGG; "
                             "default: %(default)s)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default: %(default)s)")
    parser.add_argument("--constant", type=float, default=None, help="LipSim's appended constant (default: LipSim's)")
    for key, kind, text in (("steps", int, "training steps per loss"), ("batch_size", int, "crops per step"),
                            ("crop", int, f"crop side in pixels (>= {MIN_CROP})"),
                            ("train_count", int, "training photos loaded (random subset)"),
                            ("val_count", int, "held-out photos (one centre crop each)"),
                            ("width", int, "denoiser channels"), ("depth", int, "denoiser conv layers"),
                            ("grid_rows", int, "crops shown in the PNG grid")):
        parser.add_argument("--" + key.replace("_", "-"), type=kind, default=None,
                            help=f"{text} (default {FULL[key]}; --fast: {FAST[key]})")
    parser.add_argument("--fast", action="store_true", help="tiny run for CI (seconds)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the data, the noise and the initial weights (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    parser.add_argument("--out-dir", type=Path, default=Path("runs/loss_denoise"),
                        help="output folder (default: %(default)s)")
    return parser


def resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the size settings from FULL / FAST and check the values."""
    preset = FAST if args.fast else FULL
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for key in ("steps", "batch_size", "train_count", "val_count", "width", "grid_rows"):
        if getattr(args, key) < 1:
            raise ValueError(f"--{key.replace('_', '-')} must be >= 1, got {getattr(args, key)}")
    if args.crop < MIN_CROP:
        raise ValueError(f"--crop must be at least {MIN_CROP} pixels (LPIPS and SSIM need room), got {args.crop}")
    if not 0.0 <= args.sigma <= 1.0:
        raise ValueError(f"--sigma is a std in [0, 1] pixel units, got {args.sigma}")
    if args.losses is None:
        losses = ["l1", "lipsim"] if args.fast else [n for n in LOSSES if n != "lpips-vgg" or args.teachers_dir]
    else:
        losses = [name.strip() for name in args.losses.split(",") if name.strip()]
    unknown = [name for name in losses if name not in LOSSES]
    if unknown or not losses:
        raise ValueError(f"--losses must be a comma-separated subset of {','.join(LOSSES)}, got {args.losses!r}")
    if "lpips-vgg" in losses and args.teachers_dir is None:
        raise ValueError("the lpips-vgg loss needs --teachers-dir (e.g. ../shared/teachers)")
    args.losses = losses
    return args


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.constant is not None and not args.constant > 0:
        parser.error(f"--constant must be > 0 (LipSim's appended coordinate), got {args.constant}")
    try:
        args = resolve_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    device = torch.device(args.device)

    try:
        extra = {} if args.constant is None else {"constant": args.constant}
        lipsim = LipSim(weights=args.weights, **extra).to(device)
    except FileNotFoundError as exc:
        print(f"cannot load LipSim weights: {exc}\nPass --weights <name or .safetensors file>.", file=sys.stderr)
        return 2
    lpips: nn.Module | None = None
    if args.teachers_dir is not None:
        from lipsim_metric.train.teachers import build_distance_teacher  # needs only torchvision + the weight files

        lpips = build_distance_teacher("lpips-vgg", teachers_dir=args.teachers_dir).to(device)

    t0 = time.perf_counter()
    train_photos = load_photos(args.images, args.train_count, args.crop, args.seed)
    val_photos = load_photos(args.val_images, args.val_count, args.crop, args.seed)
    clean_val = center_crops(val_photos, args.crop)
    noisy_val = add_noise(clean_val, args.sigma, torch.Generator().manual_seed(args.seed + 1))
    print(f"loaded {len(train_photos)} training and {len(val_photos)} held-out photos in "
          f"{time.perf_counter() - t0:.1f}s", file=sys.stderr)

    measures: dict[str, Callable[..., torch.Tensor]] = {"psnr": psnr, "ssim": ssim, "l1": l1_error,
                                                        "lipsim": lipsim}
    if lpips is not None:
        measures["lpips_vgg"] = lpips

    def score(images: torch.Tensor) -> dict[str, float]:
        per_image = evaluate(images.to(device), clean_val.to(device), measures)
        return {name: values.mean().item() for name, values in per_image.items()}

    results: dict[str, dict[str, Any]] = {"noisy input (no training)": {"metrics": score(noisy_val)}}
    outputs: dict[str, torch.Tensor] = {}
    for name in args.losses:
        label = loss_label(name, args.l1_weight)
        batches = training_batches(train_photos, args.steps, args.batch_size, args.crop, args.sigma, args.seed)
        start = time.perf_counter()
        model, final_loss = train(make_loss(name, args.l1_weight, lipsim, lpips), batches, args, label, device)
        seconds = time.perf_counter() - start
        with torch.no_grad():
            outputs[label] = model(noisy_val.to(device)).cpu()
        results[label] = {"loss": name, "metrics": score(outputs[label]), "train_seconds": seconds,
                          "final_train_loss": final_loss}

    table = markdown_table(results)
    print(table)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    command = "python examples/loss_denoise.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None
                                                                                       else sys.argv[1:]))
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    document = {
        "command": command,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "device": str(device)},
        "weights": lipsim.weights_name or (str(lipsim.weights_path) if lipsim.weights_path else None),
        "config": config,
        "results": results,
    }
    (args.out_dir / "results.json").write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    (args.out_dir / "results.md").write_text(
        f"Command: `{command}`\n\nDate: {document['date']}; machine: {platform.platform()}, "
        f"{torch.get_num_threads()} torch threads.\n\n{table}\n", encoding="utf-8")
    save_grid(args.out_dir / "denoise_grid.png", noisy_val, outputs, clean_val, args.grid_rows)
    print(f"wrote {args.out_dir / 'results.json'}, {args.out_dir / 'results.md'}, "
          f"{args.out_dir / 'denoise_grid.png'}", file=sys.stderr)
    if any(not math.isfinite(v) for row in results.values() for v in row["metrics"].values()):
        print("warning: some metric is not finite", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
