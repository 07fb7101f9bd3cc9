"""Teacher weight files: resolution (explicit path, ``$LIPSIM_TEACHERS_DIR``, original channel) and strict loading.

Every loader resolves a weight file in this order: an explicit path argument; the folder named by the environment
variable ``LIPSIM_TEACHERS_DIR`` (holding the files named in :data:`WEIGHT_FILES`); then the original distribution
channel (torchvision's weight API for the ImageNet trunks, which downloads when online; the installed ``lpips`` /
``DISTS_pytorch`` packages for the LPIPS heads / DISTS weights). When none is available a
:class:`FileNotFoundError` says how to provide one; nothing ever falls back to random weights, and every load is
strict (missing, unexpected or mis-shaped keys raise :class:`ValueError` naming them).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeAlias, Union, cast
from urllib.parse import urlparse

import torch
import torchvision
from torch import Tensor, nn

from ._common import DISTS_CHANNELS

PathLike: TypeAlias = Union[str, "os.PathLike[str]"]

TEACHERS_DIR_ENV = "LIPSIM_TEACHERS_DIR"
"""Environment variable naming a folder of teacher weight files (see :data:`WEIGHT_FILES`)."""

WEIGHT_FILES: dict[str, str] = {
    "vgg16": "vgg16_imagenet_features.safetensors",
    "alexnet": "alexnet_imagenet_features.safetensors",
    "lpips-vgg-heads": "lpips_v0.1_vgg_heads.safetensors",
    "lpips-alex-heads": "lpips_v0.1_alex_heads.safetensors",
    "dists-alpha-beta": "dists_alpha_beta.safetensors",
}
"""File names of the teacher weights inside a teachers folder (``teachers_dir`` / ``$LIPSIM_TEACHERS_DIR``)."""

def default_teachers_dir() -> Path | None:
    """Return the teachers folder named by ``$LIPSIM_TEACHERS_DIR``, or None when the variable is unset.

    Only the environment variable is honoured (an installed package has no meaningful location relative to a
    source checkout); pass paths explicitly otherwise.

    Returns:
        The folder as a :class:`~pathlib.Path`, or ``None`` if ``LIPSIM_TEACHERS_DIR`` is unset or empty.

    Raises:
        FileNotFoundError: if ``LIPSIM_TEACHERS_DIR`` is set but is not an existing directory.
    """
    value = os.environ.get(TEACHERS_DIR_ENV, "")
    if not value:
        return None
    folder = Path(value).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{TEACHERS_DIR_ENV}={value!r} is not a directory. Point it at a folder holding the teacher weight "
            f"files {sorted(WEIGHT_FILES.values())}, or unset it."
        )
    return folder


def _resolve_local_file(filename: str, path: PathLike | None, what: str) -> Path | None:
    """Find a weight file from an explicit path or ``$LIPSIM_TEACHERS_DIR``; None if neither is given."""
    if path is not None:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"{what} path must be a str or os.PathLike, got {type(path).__name__}.")
        file = Path(path).expanduser()
        if not file.is_file():
            raise FileNotFoundError(
                f"{what} weights not found at '{file}'. Pass the path of an existing '{filename}' file, or pass "
                f"None to look in ${TEACHERS_DIR_ENV}."
            )
        return file
    folder = default_teachers_dir()
    if folder is None:
        return None
    file = folder / filename
    if not file.is_file():
        raise FileNotFoundError(
            f"{what} weights not found: '{file}' does not exist ({TEACHERS_DIR_ENV}={str(folder)!r}). Put "
            f"'{filename}' in that folder, pass an explicit path, or unset {TEACHERS_DIR_ENV}."
        )
    return file


def _read_tensor_file(file: Path) -> dict[str, Tensor]:
    """Read a flat ``{name: tensor}`` mapping from a ``.safetensors`` file or a tensors-only torch pickle."""
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(file), device="cpu")
    # weights_only=True refuses arbitrary pickled code (lpips/DISTS ship plain tensor dicts).
    state = torch.load(file, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"'{file}' does not hold a flat dict of tensors; convert it to .safetensors.")
    return dict(state)


def _check_state(state: Mapping[str, Tensor], expected: Mapping[str, torch.Size], source: str) -> dict[str, Tensor]:
    """Strictly match ``state`` against expected names and shapes; return float32 copies in expected order."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"Weights from '{source}' do not match the network: missing keys {missing}, unexpected keys "
            f"{unexpected}. Use the unmodified file named in lipsim_metric.train.teachers.WEIGHT_FILES."
        )
    wrong = [
        f"{name}: file {tuple(state[name].shape)} vs network {tuple(shape)}"
        for name, shape in expected.items()
        if state[name].shape != shape
    ]
    if wrong:
        raise ValueError(f"Weights from '{source}' have wrong shapes: {wrong}. Use the unmodified file.")
    return {name: state[name].detach().to(torch.float32).contiguous() for name in expected}


def _torchvision_features_state(weights: torchvision.models.WeightsEnum, arch: str, filename: str,
                                download: bool) -> tuple[dict[str, Tensor], str]:
    """Fetch ImageNet ``features`` weights through torchvision's weight API (cache first, then download)."""
    url = weights.url
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)
    hint = (
        f"No ImageNet {arch} weights available. Either pass path= to a '{filename}' file, or set "
        f"{TEACHERS_DIR_ENV} to a folder containing it, or go online so torchvision can download {url} "
        f"into '{cached.parent}'"
    )
    if not cached.is_file() and not download:
        raise FileNotFoundError(hint + " (download=False and it is not cached).")
    try:
        full = weights.get_state_dict(progress=False, check_hash=True)
    except OSError as error:  # URLError / HTTPError / socket errors are OSErrors
        raise FileNotFoundError(f"{hint} (download failed: {error}).") from error
    state = {k.removeprefix("features."): v for k, v in full.items() if k.startswith("features.")}
    return state, url


def _load_features(arch: str, path: PathLike | None, download: bool) -> nn.Sequential:
    """Build torchvision's ``<arch>().features`` and load ImageNet weights strictly (see module docstring)."""
    if arch == "vgg16":
        builder: Callable[[], nn.Module] = torchvision.models.vgg16
        weights: torchvision.models.WeightsEnum = torchvision.models.VGG16_Weights.IMAGENET1K_V1
    else:
        builder, weights = torchvision.models.alexnet, torchvision.models.AlexNet_Weights.IMAGENET1K_V1
    filename = WEIGHT_FILES[arch]
    file = _resolve_local_file(filename, path, f"ImageNet {arch} trunk")
    if file is not None:
        # Files hold ``features.N.*`` keys (or bare ``N.*``); strip the prefix to match the ``features`` module.
        state = {k.removeprefix("features."): v for k, v in _read_tensor_file(file).items()}
        source = str(file)
    else:
        state, source = _torchvision_features_state(weights, arch, filename, download)
    # Build on the meta device: no time spent on random init, and any tensor not loaded would stay unusable
    # (meta) instead of silently random.
    with torch.device("meta"):
        features = cast(nn.Sequential, builder().features)
    expected = {name: tensor.shape for name, tensor in features.state_dict().items()}
    features.load_state_dict(_check_state(state, expected, source), strict=True, assign=True)
    for module in features.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False  # tapped activations must not be overwritten; keeps autograd simple for attacks
    return features


def load_vgg16_features(path: PathLike | None = None, *, download: bool = True) -> nn.Sequential:
    """Return torchvision's ``vgg16().features`` with ImageNet (``IMAGENET1K_V1``) weights.

    Weights come from ``path`` if given, else from ``$LIPSIM_TEACHERS_DIR/vgg16_imagenet_features.safetensors``
    if that variable is set, else from ``torchvision.models.VGG16_Weights.IMAGENET1K_V1`` (torch hub cache, or a
    download when online). Loading is strict. ReLUs are made non-inplace; parameters are left trainable (the
    teachers freeze them).

    Args:
        path: a ``.safetensors`` (or tensors-only ``.pt``) file with keys ``features.{0,2,...,28}.{weight,bias}``
            (the ``features.`` prefix is optional).
        download: whether the torchvision fallback may download; with False only its cache is used.

    Returns:
        An ``nn.Sequential`` of 31 layers (13 conv + 13 ReLU + 5 max-pool) on the CPU, float32.

    Raises:
        FileNotFoundError: if ``path`` does not exist, if ``$LIPSIM_TEACHERS_DIR`` lacks the file, or if no source
            is available (message names the path and environment-variable options).
        ValueError: if the file's keys or shapes do not match (names the missing/unexpected keys).
        TypeError: if ``path`` is not a str or path.

    Example:
        >>> trunk = load_vgg16_features("../shared/teachers/vgg16_imagenet_features.safetensors")  # doctest: +SKIP
    """
    return _load_features("vgg16", path, download)


def load_alexnet_features(path: PathLike | None = None, *, download: bool = True) -> nn.Sequential:
    """Return torchvision's ``alexnet().features`` with ImageNet (``IMAGENET1K_V1``) weights.

    Resolution order, strictness and conventions are those of :func:`load_vgg16_features`, with the file
    ``alexnet_imagenet_features.safetensors`` and ``torchvision.models.AlexNet_Weights.IMAGENET1K_V1``.

    Args:
        path: a ``.safetensors`` (or tensors-only ``.pt``) file with keys ``features.{0,3,6,8,10}.{weight,bias}``.
        download: whether the torchvision fallback may download; with False only its cache is used.

    Returns:
        An ``nn.Sequential`` of 13 layers (5 conv + 5 ReLU + 3 max-pool) on the CPU, float32.

    Raises:
        FileNotFoundError: if no weights are found (message names the options).
        ValueError: if the file's keys or shapes do not match.
        TypeError: if ``path`` is not a str or path.
    """
    return _load_features("alexnet", path, download)


def _package_file(package: str, *relative: str) -> Path | None:
    """Path of a data file inside an installed (not imported) package, or None."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location, *relative)
        if candidate.is_file():
            return candidate
    return None


def _load_lpips_heads(net: str, path: PathLike | None, channels: Sequence[int]) -> dict[str, Tensor]:
    """LPIPS v0.1 head weights ``lin{k}.model.1.weight`` of shape (1, C_k, 1, 1)."""
    filename = WEIGHT_FILES[f"lpips-{net}-heads"]
    file = _resolve_local_file(filename, path, f"LPIPS v0.1 {net} heads")
    if file is None:
        file = _package_file("lpips", "weights", "v0.1", f"{net}.pth")
    if file is None:
        raise FileNotFoundError(
            f"No LPIPS v0.1 {net} head weights available. Pass heads_path= to a '{filename}' file, or set "
            f"{TEACHERS_DIR_ENV} to a folder containing it, or `pip install lpips==0.1.4` (its bundled "
            f"weights/v0.1/{net}.pth is then used)."
        )
    expected = {f"lin{k}.model.1.weight": torch.Size((1, c, 1, 1)) for k, c in enumerate(channels)}
    return _check_state(_read_tensor_file(file), expected, str(file))


def _load_dists_alpha_beta(path: PathLike | None) -> dict[str, Tensor]:
    """DISTS ``alpha`` and ``beta``, each of shape (1, 1475, 1, 1)."""
    filename = WEIGHT_FILES["dists-alpha-beta"]
    file = _resolve_local_file(filename, path, "DISTS alpha/beta")
    if file is None:
        file = _package_file("DISTS_pytorch", "weights.pt")
        if file is None and importlib.util.find_spec("DISTS_pytorch") is not None:
            # DISTS_pytorch 0.1 also installs weights.pt as a data file into sys.prefix and loads it from there.
            prefix_file = Path(sys.prefix, "weights.pt")
            file = prefix_file if prefix_file.is_file() else None
    if file is None:
        raise FileNotFoundError(
            f"No DISTS weights available. Pass alpha_beta_path= to a '{filename}' file, or set "
            f"{TEACHERS_DIR_ENV} to a folder containing it, or `pip install DISTS_pytorch==0.1` (its bundled "
            f"weights.pt is then used)."
        )
    shape = torch.Size((1, sum(DISTS_CHANNELS), 1, 1))
    return _check_state(_read_tensor_file(file), {"alpha": shape, "beta": shape}, str(file))
