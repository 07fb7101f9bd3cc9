"""Regenerate ``tests/data/teacher_golden.json``: LPIPS / DISTS values from the reference packages.

The golden values come from the original implementations, not from ``lipsim_metric``:

* LPIPS v0.1 (Zhang et al., CVPR 2018) from PyPI ``lpips==0.1.4``, with the package's own
  ``weights/v0.1/{vgg,alex}.pth`` heads;
* DISTS (Ding et al., TPAMI 2020) from PyPI ``DISTS_pytorch==0.1``, with the package's own ``weights.pt``.

Neither package ships its ImageNet trunk (both call ``torchvision.models.vgg16/alexnet(pretrained=True)``, which
downloads). Here those two constructors are replaced, for this process only, by ones that load the shared
``*_imagenet_features.safetensors`` trunks, so nothing is downloaded.

The images are two deterministic synthetic 64x64 pairs (smooth gradients + hash noise, quantised to 8 bits), made
by :func:`make_pairs` with integer arithmetic only, so the test rebuilds them bit-exactly on any machine; their
SHA-256 is recorded as well.

Usage (reference packages go into a throwaway folder, never into the project's dependencies)::

    pip download --no-deps -d /tmp/ref lpips==0.1.4 DISTS_pytorch==0.1
    pip install --no-deps --target /tmp/refsite /tmp/ref/*.whl
    python tests/data/make_teacher_golden.py --refsite /tmp/refsite --teachers-dir ../shared/teachers

(``lpips`` also imports ``scipy`` and ``tqdm``.)
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import platform
import sys
from pathlib import Path

import numpy as np
import torch

SIZE = 64
GOLDEN_FILE = Path(__file__).with_name("teacher_golden.json")
COMMAND = "python tests/data/make_teacher_golden.py --refsite /tmp/refsite --teachers-dir ../shared/teachers"

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _hash_noise(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Uniform [0, 1) noise from the SplitMix64 finaliser of (index, seed): identical on every platform."""
    with np.errstate(over="ignore"):
        z = np.arange(int(np.prod(shape)), dtype=np.uint64) + np.uint64(seed) * np.uint64(0x100000001B3)
        z = z * np.uint64(0x9E3779B97F4A7C15) & _MASK64
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9) & _MASK64
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB) & _MASK64
        z = z ^ (z >> np.uint64(31))
    return ((z >> np.uint64(40)).astype(np.float64) / float(1 << 24)).reshape(shape)


def _quantise(image: np.ndarray) -> np.ndarray:
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def make_pairs_uint8() -> tuple[np.ndarray, np.ndarray]:
    """Two image pairs as uint8 arrays ``(2, 3, 64, 64)``: ``(x0, x1)``.

    Pair 0: a smooth colour gradient vs. the same gradient plus +-0.08 hash noise (a small distortion).
    Pair 1: a noisy texture on a low-frequency pattern vs. the pattern alone, shifted by 3 px and contrast-reduced.
    """
    v, u = np.meshgrid(np.arange(SIZE) / (SIZE - 1), np.arange(SIZE) / (SIZE - 1), indexing="ij")
    gradient = np.stack([u, v, 0.5 + 0.5 * np.sin(2 * np.pi * (u + 0.5 * v))])
    pattern = np.stack([
        0.5 + 0.4 * np.cos(4 * np.pi * u) * np.cos(2 * np.pi * v),
        0.5 + 0.4 * np.sin(2 * np.pi * (u - v)),
        0.3 + 0.4 * u * v,
    ])
    pair0 = (gradient, gradient + 0.16 * (_hash_noise(gradient.shape, seed=1) - 0.5))
    noisy = 0.6 * pattern + 0.4 * _hash_noise(pattern.shape, seed=2)
    pair1 = (noisy, 0.25 + 0.5 * np.roll(pattern, shift=(3, 3), axis=(1, 2)))
    x0 = np.stack([_quantise(pair0[0]), _quantise(pair1[0])])
    x1 = np.stack([_quantise(pair0[1]), _quantise(pair1[1])])
    return x0, x1


def make_pairs() -> tuple[torch.Tensor, torch.Tensor]:
    """The pairs of :func:`make_pairs_uint8` as float32 tensors ``(2, 3, 64, 64)`` in [0, 1]."""
    x0, x1 = make_pairs_uint8()
    return torch.from_numpy(x0).float() / 255, torch.from_numpy(x1).float() / 255


def pairs_sha256() -> str:
    """SHA-256 of the uint8 bytes of ``x0`` followed by ``x1``."""
    x0, x1 = make_pairs_uint8()
    return hashlib.sha256(x0.tobytes() + x1.tobytes()).hexdigest()


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--refsite", type=Path, required=True, help="folder with lpips and DISTS_pytorch installed")
    parser.add_argument("--teachers-dir", type=Path, required=True, help="folder with *_imagenet_features files")
    args = parser.parse_args()

    import torchvision
    from safetensors.torch import load_file

    def features_state(filename: str) -> dict[str, torch.Tensor]:
        state = load_file(str(args.teachers_dir / filename))
        return {k.removeprefix("features."): v for k, v in state.items()}

    original_vgg16, original_alexnet = torchvision.models.vgg16, torchvision.models.alexnet

    def vgg16(*_args: object, **_kwargs: object) -> torch.nn.Module:
        model = original_vgg16(weights=None)
        model.features.load_state_dict(features_state("vgg16_imagenet_features.safetensors"), strict=True)
        return model

    def alexnet(*_args: object, **_kwargs: object) -> torch.nn.Module:
        model = original_alexnet(weights=None)
        model.features.load_state_dict(features_state("alexnet_imagenet_features.safetensors"), strict=True)
        return model

    torchvision.models.vgg16, torchvision.models.alexnet = vgg16, alexnet
    sys.path.insert(0, str(args.refsite))
    from importlib.metadata import version

    import DISTS_pytorch
    import lpips

    torch.manual_seed(0)  # the packages draw (then overwrite) random alpha/beta and heads
    x0, x1 = make_pairs()
    values: dict[str, dict[str, object]] = {}
    weights_check: dict[str, float] = {}
    for net in ("vgg", "alex"):
        model = lpips.LPIPS(net=net, verbose=False).eval()
        package_heads = torch.load(Path(lpips.__file__).parent / "weights" / "v0.1" / f"{net}.pth",
                                   map_location="cpu", weights_only=True)
        # lpips loads heads with strict=False; make sure they really were loaded.
        for key, tensor in package_heads.items():
            if not torch.equal(model.state_dict()[key], tensor):
                raise RuntimeError(f"lpips did not load {key}")
        shared_heads = load_file(str(args.teachers_dir / f"lpips_v0.1_{net}_heads.safetensors"))
        weights_check[f"lpips_v0.1_{net}_heads.safetensors vs lpips/weights/v0.1/{net}.pth max|diff|"] = max(
            float((shared_heads[k] - package_heads[k]).abs().max()) for k in package_heads)
        with torch.no_grad():
            d = model(x0, x1, normalize=True).flatten()
        values[f"lpips-{net}"] = {
            "value": [float(v) for v in d],
            "package": "lpips",
            "version": version("lpips"),
            "call": f"lpips.LPIPS(net='{net}', verbose=False)(x0, x1, normalize=True), package heads",
        }

    model = DISTS_pytorch.DISTS(load_weights=False).eval()
    package_weights = torch.load(Path(DISTS_pytorch.__file__).parent / "weights.pt", map_location="cpu",
                                 weights_only=True)
    model.alpha.data, model.beta.data = package_weights["alpha"], package_weights["beta"]
    shared = load_file(str(args.teachers_dir / "dists_alpha_beta.safetensors"))
    weights_check["dists_alpha_beta.safetensors vs DISTS_pytorch/weights.pt max|diff|"] = max(
        float((shared[k] - package_weights[k]).abs().max()) for k in ("alpha", "beta"))
    with torch.no_grad():
        d = model(x0, x1).flatten()
    values["dists"] = {
        "value": [float(v) for v in d],
        "package": "DISTS_pytorch",
        "version": version("DISTS_pytorch"),
        "call": "DISTS_pytorch.DISTS(load_weights=False) + package weights.pt; model(x0, x1)",
    }

    golden = {
        "description": "LPIPS v0.1 and DISTS of make_teacher_golden.make_pairs() computed by the reference "
                       "packages with the shared ImageNet trunks; checked by tests/test_teachers.py (rel 1e-5).",
        "command": COMMAND,
        "generated": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()} {platform.system()}, python {platform.python_version()}, "
                   f"torch {torch.__version__}, torchvision {torchvision.__version__}, numpy {np.__version__}",
        "images": {"function": "make_pairs", "shape": list(x0.shape), "sha256_uint8_x0_x1": pairs_sha256()},
        "trunk_sha256": {
            name: _sha256_file(args.teachers_dir / name)
            for name in ("vgg16_imagenet_features.safetensors", "alexnet_imagenet_features.safetensors")
        },
        "reference_weights_vs_shared": weights_check,
        "values": values,
    }
    GOLDEN_FILE.write_text(json.dumps(golden, indent=2) + "\n")
    print(json.dumps(values, indent=2))


if __name__ == "__main__":
    main()
