"""Frozen perceptual "teacher" networks: distance teachers, embedding teachers and their weight loading.

Teachers are non-robust perceptual networks used by the training code in three ways: to label 2AFC triplets
(distance teachers), as the regression target of embedding distillation (embedding teachers, the role DreamSim
plays in LipSim), and as baselines that are attacked in evaluation. Every teacher takes float RGB images
``(N, 3, H, W)`` in ``[0, 1]`` with ``H, W >= 32``, converts them to its own input convention internally, is
differentiable with respect to its inputs, and is frozen (parameters with ``requires_grad=False``, always in eval
mode).

Implemented methods:

* **LPIPS v0.1** -- Zhang, Isola, Efros, Shechtman, Wang. "The Unreasonable Effectiveness of Deep Features as a
  Perceptual Metric". CVPR 2018. https://arxiv.org/abs/1801.03924, official code
  github.com/richzhang/PerceptualSimilarity (PyPI ``lpips==0.1.4``). Eq. (1) of the paper:
  ``d(x, x0) = sum_l 1/(H_l W_l) sum_{h,w} || w_l * (yhat_l - yhat0_l)_{hw} ||^2`` with ``yhat_l`` the
  channel-unit-normalised ReLU activations of layer ``l`` of an ImageNet trunk and ``w_l`` the learned heads.
* **DISTS** -- Ding, Ma, Wang, Simoncelli. "Image Quality Assessment: Unifying Structure and Texture Similarity".
  IEEE TPAMI 2020 (vol. 44(5), 2022). https://arxiv.org/abs/2004.07728, official code github.com/dingkeyan93/DISTS
  (PyPI ``DISTS_pytorch==0.1``). Eqs. (5)-(9): per-channel texture (mean) and structure (covariance) similarities
  on an L2-pooled VGG16, weighted by learned ``alpha``/``beta``; ``D = 1 - sum (alpha l + beta s)``.
* **Feature-statistics embeddings** (:class:`AlexNetStats`, :class:`VGGStats`) -- a global embedding made of the
  per-channel spatial mean and standard deviation of the LPIPS layers, i.e. the "texture" statistics of DISTS;
  an offline stand-in for DreamSim.
* **DreamSim** -- Fu, Tamir, Sundaram, Chai, Zhang, Dekel, Isola. "DreamSim: Learning New Dimensions of Human
  Visual Similarity using Synthetic Data". NeurIPS 2023. https://arxiv.org/abs/2306.09344 -- the teacher of LipSim
  (Ghazanfari, Araujo, Krishnamurthy, Garg, Khorrami. ICLR 2024, https://arxiv.org/abs/2310.18274), wrapped from
  the optional ``dreamsim`` package.

Weights. The ImageNet trunks are torchvision's VGG16 / AlexNet ``features`` weights (BSD-3-Clause). Every loader
resolves a weight file in this order: an explicit path argument; the folder named by the environment variable
``LIPSIM_TEACHERS_DIR`` (holding the files named in :data:`WEIGHT_FILES`); then the original distribution channel
(torchvision's weight API for the trunks, which downloads when online; the installed ``lpips`` / ``DISTS_pytorch``
packages for the LPIPS heads / DISTS weights). When none is available a :class:`FileNotFoundError` says how to
provide one; nothing ever falls back to random weights, and every load is strict (missing, unexpected or
mis-shaped keys raise :class:`ValueError` naming them).

Example:
    >>> teacher = build_distance_teacher("lpips-alex", teachers_dir="../shared/teachers")  # doctest: +SKIP
    >>> teacher(x0, x1).shape  # x0, x1: (N, 3, H, W) in [0, 1]                              # doctest: +SKIP
    torch.Size([N])
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeAlias, Union, cast
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

__all__ = [
    "TEACHERS_DIR_ENV",
    "WEIGHT_FILES",
    "default_teachers_dir",
    "load_vgg16_features",
    "load_alexnet_features",
    "LPIPS",
    "DISTS",
    "L2Pooling",
    "AlexNetStats",
    "VGGStats",
    "DreamSimTeacher",
    "build_distance_teacher",
    "build_embedding_teacher",
    "list_teachers",
]

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

MIN_IMAGE_SIZE = 32
# Inputs may exceed [0, 1] by this much (float rounding of resizing / colour conversion); more is a caller bug.
_RANGE_TOLERANCE = 1e-4

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
# LPIPS v0.1 ScalingLayer (lpips/lpips.py), applied to images in [-1, 1].
_LPIPS_SHIFT = (-0.030, -0.088, -0.188)
_LPIPS_SCALE = (0.458, 0.448, 0.450)
# Indices of the ReLU outputs tapped in torchvision's ``features`` (LPIPS slices relu1_2 .. relu5_3 for VGG16,
# relu1 .. relu5 for AlexNet); DISTS taps the same VGG16 indices.
_VGG16_TAPS = (3, 8, 15, 22, 29)
_ALEXNET_TAPS = (1, 4, 7, 9, 11)
_VGG16_CHANNELS = (64, 128, 256, 512, 512)
_ALEXNET_CHANNELS = (64, 192, 384, 256, 256)
# VGG16 max-pools that DISTS replaces by L2 pooling, with the channel count they see.
_DISTS_POOLS = {4: 64, 9: 128, 16: 256, 23: 512}


# ----------------------------------------------------------------------------------------------------------------
# Weight files
# ----------------------------------------------------------------------------------------------------------------


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
    shape = torch.Size((1, sum(DISTS.CHANNELS), 1, 1))
    return _check_state(_read_tensor_file(file), {"alpha": shape, "beta": shape}, str(file))


# ----------------------------------------------------------------------------------------------------------------
# Shared pieces
# ----------------------------------------------------------------------------------------------------------------


def _check_images(x: object, name: str) -> Tensor:
    """Validate a float RGB batch ``(N, 3, H, W)`` in [0, 1] with ``H, W >= 32``; return it unchanged."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (N, 3, H, W), got {type(x).__name__}.")
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(
            f"{name} must have shape (N, 3, H, W) (RGB, channels first), got {tuple(x.shape)}; use "
            f"x.unsqueeze(0) for a single image or x.permute(0, 3, 1, 2) for channels-last."
        )
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a float tensor in [0, 1], got {x.dtype}; use x.float() / 255 for uint8.")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch; pass at least one image.")
    if min(x.shape[2], x.shape[3]) < MIN_IMAGE_SIZE:
        raise ValueError(
            f"{name} is {x.shape[2]}x{x.shape[3]}; teachers need H, W >= {MIN_IMAGE_SIZE}. Resize the images up."
        )
    values = x.detach()
    if not bool(torch.isfinite(values).all()):
        raise ValueError(f"{name} contains NaN or Inf values.")
    lo, hi = float(values.min()), float(values.max())
    if lo < -_RANGE_TOLERANCE or hi > 1.0 + _RANGE_TOLERANCE:
        raise ValueError(
            f"{name} must be in [0, 1], got values in [{lo:.4g}, {hi:.4g}]; convert [-1, 1] images with "
            f"(x + 1) / 2, 0..255 images with x / 255, or clamp with x.clamp(0, 1)."
        )
    return x


def _check_pair(x0: object, x1: object) -> tuple[Tensor, Tensor]:
    a, b = _check_images(x0, "x0"), _check_images(x1, "x1")
    if a.shape != b.shape:
        raise ValueError(f"x0 and x1 must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}.")
    return a, b


def _per_channel_buffer(values: Sequence[float]) -> Tensor:
    return torch.tensor(values, dtype=torch.float32).reshape(1, -1, 1, 1)


class _FrozenTeacher(nn.Module):
    """Base class: parameters never require grad and the module never leaves eval mode."""

    def _freeze(self) -> None:
        for parameter in self.parameters():
            parameter.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> _FrozenTeacher:
        """Keep the teacher in eval mode whatever ``mode`` is (teachers are frozen).

        Args:
            mode: ignored.

        Returns:
            self.
        """
        return super().train(False)


class _TappedTrunk(nn.Module):
    """Run a ``features`` Sequential and return the outputs of the layers at ``taps`` (nothing after the last)."""

    def __init__(self, features: nn.Sequential, taps: Sequence[int]) -> None:
        super().__init__()
        self.taps = tuple(taps)
        # Slicing a Sequential keeps the layer names ("0", "1", ...), so state-dict keys stay torchvision's.
        self.features = features[: max(self.taps) + 1]

    def forward(self, x: Tensor) -> list[Tensor]:
        outputs = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self.taps:
                outputs.append(x)
        return outputs


def _unit_normalize(features: Tensor, eps: float = 1e-10) -> Tensor:
    """``f / (||f||_2 over channels + eps)``, lpips.normalize_tensor.

    ``torch.linalg.vector_norm`` equals ``sqrt(sum f^2)`` but has a finite gradient where a feature vector is all
    zero (where the reference's ``sqrt`` gives NaN), which keeps attacks on the teacher NaN-free.
    """
    norm: Tensor = torch.linalg.vector_norm(features, dim=1, keepdim=True)
    return features / (norm + eps)


# ----------------------------------------------------------------------------------------------------------------
# Distance teachers
# ----------------------------------------------------------------------------------------------------------------


class LPIPS(_FrozenTeacher):
    """LPIPS v0.1 distance (Zhang et al., CVPR 2018), numerically the ``lpips==0.1.4`` package.

    ``forward`` maps images in [0, 1] to [-1, 1], applies LPIPS's ``(x - shift) / scale``, taps the ReLU outputs
    relu1_2..relu5_3 (VGG16) or relu1..relu5 (AlexNet), unit-normalises each over channels (eps 1e-10), takes the
    squared difference, applies the learned 1x1 head of each layer, averages spatially and sums over layers
    (Eq. 1 of the paper; ``spatial=False``, ``normalize=True`` in the package).

    Args:
        net: trunk, ``"vgg"`` or ``"alex"``.
        trunk_path: ImageNet trunk weights (see :func:`load_vgg16_features`); None to resolve as documented there.
        heads_path: ``lpips_v0.1_{net}_heads.safetensors`` (keys ``lin{k}.model.1.weight``, or the package's
            ``weights/v0.1/{net}.pth``); None for ``$LIPSIM_TEACHERS_DIR`` or an installed ``lpips`` package.

    Raises:
        ValueError: if ``net`` is not ``"vgg"``/``"alex"`` or a weight file does not match.
        FileNotFoundError: if weights cannot be found.

    Example:
        >>> metric = LPIPS("alex", trunk_path=".../alexnet_imagenet_features.safetensors",
        ...                heads_path=".../lpips_v0.1_alex_heads.safetensors")  # doctest: +SKIP
        >>> metric(x0, x1)  # (N,) distances, 0 for identical images                # doctest: +SKIP
    """

    NETS = ("vgg", "alex")
    shift: Tensor
    scale: Tensor

    def __init__(self, net: str = "vgg", trunk_path: PathLike | None = None,
                 heads_path: PathLike | None = None) -> None:
        super().__init__()
        if net not in self.NETS:
            raise ValueError(f"net must be one of {self.NETS}, got {net!r}.")
        self.net = net
        if net == "vgg":
            features, taps, channels = load_vgg16_features(trunk_path), _VGG16_TAPS, _VGG16_CHANNELS
        else:
            features, taps, channels = load_alexnet_features(trunk_path), _ALEXNET_TAPS, _ALEXNET_CHANNELS
        self.trunk = _TappedTrunk(features, taps)
        head_weights = _load_lpips_heads(net, heads_path, channels)
        heads = []
        for k, c in enumerate(channels):
            with torch.device("meta"):  # no random init; the weight is replaced right away
                head = nn.Conv2d(c, 1, kernel_size=1, bias=False)
            head.weight = nn.Parameter(head_weights[f"lin{k}.model.1.weight"])
            heads.append(head)
        self.heads = nn.ModuleList(heads)
        self.register_buffer("shift", _per_channel_buffer(_LPIPS_SHIFT), persistent=False)
        self.register_buffer("scale", _per_channel_buffer(_LPIPS_SCALE), persistent=False)
        self._freeze()

    def forward(self, x0: Tensor, x1: Tensor) -> Tensor:
        """LPIPS distance between corresponding images.

        Args:
            x0: images ``(N, 3, H, W)`` in [0, 1], ``H, W >= 32``.
            x1: images of the same shape.

        Returns:
            Distances ``(N,)`` (0 for identical images, larger is more different).

        Raises:
            TypeError: for non-tensor or non-float input.
            ValueError: for a wrong shape, size < 32, values outside [0, 1], NaN, or mismatched shapes.
        """
        x0, x1 = _check_pair(x0, x1)
        n = x0.shape[0]
        both = self.features(torch.cat([x0, x1]))
        return self.distance_from_features([f[:n] for f in both], [f[n:] for f in both])

    def features(self, x: Tensor) -> list[Tensor]:
        """Unit-normalised trunk features of ``x`` (``(N, 3, H, W)`` in [0, 1], not checked), one per stage.

        ``distance_from_features(features(a), features(b))`` equals ``forward(a, b)``; attacks use the split to
        compute fixed images' features once.
        """
        return [_unit_normalize(f) for f in self.trunk((x * 2 - 1 - self.shift) / self.scale)]

    def distance_from_features(self, f0: Sequence[Tensor], f1: Sequence[Tensor]) -> Tensor:
        """LPIPS distance ``(N,)`` from two lists of :meth:`features`."""
        total = f0[0].new_zeros(f0[0].shape[0])
        for a, b, head in zip(f0, f1, self.heads, strict=True):
            total = total + head((a - b) ** 2).mean(dim=(1, 2, 3))  # head has one output channel
        return total


class L2Pooling(nn.Module):
    """L2 pooling of DISTS (Ding et al., TPAMI 2020, Sec. 3.1), replacing VGG's max-pooling.

    ``y = sqrt(conv(x^2, g) + 1e-12)`` with ``g`` the normalised outer product of ``hanning(5)[1:-1]`` (a 3x3
    kernel), stride 2, padding 1, applied depthwise; exactly ``L2pooling`` of ``DISTS_pytorch``.

    Args:
        channels: number of input channels.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.filter: Tensor
        window = torch.tensor([0.5, 1.0, 0.5], dtype=torch.float64)  # numpy.hanning(5)[1:-1], exactly
        kernel = window[:, None] * window[None, :]
        kernel = (kernel / kernel.sum()).to(torch.float32)
        self.register_buffer("filter", kernel.expand(channels, 1, 3, 3).contiguous(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """Pool ``(N, C, H, W)`` to ``(N, C, floor((H - 1) / 2) + 1, floor((W - 1) / 2) + 1)``.

        Args:
            x: feature maps with ``C == channels``.

        Returns:
            The L2-pooled maps.
        """
        out = F.conv2d(x**2, self.filter, stride=2, padding=1, groups=self.channels)
        return (out + 1e-12).sqrt()


class DISTS(_FrozenTeacher):
    """DISTS distance (Ding et al., TPAMI 2020), numerically the ``DISTS_pytorch==0.1`` package.

    The image itself (3 channels) and the VGG16 ReLU outputs relu1_2..relu5_3 (max-pools replaced by
    :class:`L2Pooling`, input normalised with ImageNet mean/std) give 1475 channels. Per channel, with
    ``c1 = c2 = 1e-6``: texture ``l = (2 mu_x mu_y + c1) / (mu_x^2 + mu_y^2 + c1)`` and structure
    ``s = (2 cov_xy + c2) / (var_x + var_y + c2)``; ``alpha``, ``beta`` are divided by their joint sum and
    ``D = 1 - sum_c (alpha_c l_c + beta_c s_c)``.

    Args:
        trunk_path: ImageNet VGG16 weights (see :func:`load_vgg16_features`).
        alpha_beta_path: ``dists_alpha_beta.safetensors`` (keys ``alpha``, ``beta``, shape (1, 1475, 1, 1), or the
            package's ``weights.pt``); None for ``$LIPSIM_TEACHERS_DIR`` or an installed ``DISTS_pytorch``.

    Raises:
        FileNotFoundError: if weights cannot be found.
        ValueError: if a weight file does not match.
    """

    CHANNELS = (3, 64, 128, 256, 512, 512)
    mean: Tensor
    std: Tensor
    C1 = 1e-6
    C2 = 1e-6

    def __init__(self, trunk_path: PathLike | None = None, alpha_beta_path: PathLike | None = None) -> None:
        super().__init__()
        features = load_vgg16_features(trunk_path)
        for index, channels in _DISTS_POOLS.items():
            features[index] = L2Pooling(channels)
        self.trunk = _TappedTrunk(features, _VGG16_TAPS)
        weights = _load_dists_alpha_beta(alpha_beta_path)
        self.alpha = nn.Parameter(weights["alpha"])
        self.beta = nn.Parameter(weights["beta"])
        self.register_buffer("mean", _per_channel_buffer(_IMAGENET_MEAN), persistent=False)
        self.register_buffer("std", _per_channel_buffer(_IMAGENET_STD), persistent=False)
        self._freeze()

    def forward(self, x0: Tensor, x1: Tensor) -> Tensor:
        """DISTS distance between corresponding images.

        Args:
            x0: images ``(N, 3, H, W)`` in [0, 1], ``H, W >= 32``.
            x1: images of the same shape.

        Returns:
            Distances ``(N,)``; about 0 (within float rounding, ~1e-6) for identical images.

        Raises:
            TypeError: for non-tensor or non-float input.
            ValueError: for a wrong shape, size < 32, values outside [0, 1], NaN, or mismatched shapes.
        """
        x0, x1 = _check_pair(x0, x1)
        n = x0.shape[0]
        both = self.features(torch.cat([x0, x1]))
        return self.distance_from_features([f[:n] for f in both], [f[n:] for f in both])

    def features(self, x: Tensor) -> list[Tensor]:
        """The image and its trunk features (``x``: ``(N, 3, H, W)`` in [0, 1], not checked), one per stage.

        ``distance_from_features(features(a), features(b))`` equals ``forward(a, b)``; attacks use the split to
        compute fixed images' features once.
        """
        return [x, *self.trunk((x - self.mean) / self.std)]

    def distance_from_features(self, stages0: Sequence[Tensor], stages1: Sequence[Tensor]) -> Tensor:
        """DISTS distance ``(N,)`` from two lists of :meth:`features`."""
        n = stages0[0].shape[0]
        total = self.alpha.sum() + self.beta.sum()
        alphas = torch.split(self.alpha / total, list(self.CHANNELS), dim=1)
        betas = torch.split(self.beta / total, list(self.CHANNELS), dim=1)
        texture = stages0[0].new_zeros(n, 1, 1, 1)
        structure = stages0[0].new_zeros(n, 1, 1, 1)
        for f0, f1, alpha, beta in zip(stages0, stages1, alphas, betas, strict=True):
            mean0 = f0.mean([2, 3], keepdim=True)
            mean1 = f1.mean([2, 3], keepdim=True)
            similarity_l = (2 * mean0 * mean1 + self.C1) / (mean0**2 + mean1**2 + self.C1)
            texture = texture + (alpha * similarity_l).sum(1, keepdim=True)
            var0 = ((f0 - mean0) ** 2).mean([2, 3], keepdim=True)
            var1 = ((f1 - mean1) ** 2).mean([2, 3], keepdim=True)
            cov = (f0 * f1).mean([2, 3], keepdim=True) - mean0 * mean1
            similarity_s = (2 * cov + self.C2) / (var0 + var1 + self.C2)
            structure = structure + (beta * similarity_s).sum(1, keepdim=True)
        return 1 - (texture + structure).reshape(n)


# ----------------------------------------------------------------------------------------------------------------
# Embedding teachers
# ----------------------------------------------------------------------------------------------------------------


class _FeatureStats(_FrozenTeacher):
    """Unit-norm embedding of per-channel spatial mean and std at the LPIPS layers of an ImageNet trunk.

    Input normalised with ImageNet mean/std (as DISTS). For each tapped ReLU stage ``s`` with ``C_s`` channels:
    ``v_s = [mean_c; std_c]`` (length ``2 C_s``, population std ``sqrt(var + 1e-10)``, the epsilon keeping the
    gradient finite for constant channels), ``e_s = v_s / ||v_s|| / sqrt(S)``; the output is the concatenation of
    the ``e_s`` in layer order, so it has unit l2 norm (unless a whole stage is zero).
    """

    _STD_EPS = 1e-10
    mean: Tensor
    std: Tensor

    def __init__(self, features: nn.Sequential, taps: Sequence[int], channels: Sequence[int]) -> None:
        super().__init__()
        self.trunk = _TappedTrunk(features, taps)
        self.stage_channels = tuple(channels)
        self.embed_dim = 2 * sum(channels)
        self.register_buffer("mean", _per_channel_buffer(_IMAGENET_MEAN), persistent=False)
        self.register_buffer("std", _per_channel_buffer(_IMAGENET_STD), persistent=False)
        self._freeze()

    def forward(self, x: Tensor) -> Tensor:
        """Embed images.

        Args:
            x: images ``(N, 3, H, W)`` in [0, 1], ``H, W >= 32``.

        Returns:
            Embeddings ``(N, embed_dim)`` with unit l2 norm.

        Raises:
            TypeError: for non-tensor or non-float input.
            ValueError: for a wrong shape, size < 32, values outside [0, 1] or NaN.
        """
        x = _check_images(x, "x")
        stages = self.trunk((x - self.mean) / self.std)
        scale = 1.0 / math.sqrt(len(stages))
        parts = []
        for features in stages:
            mean = features.mean(dim=(2, 3))
            std = ((features - mean[:, :, None, None]) ** 2).mean(dim=(2, 3)).add(self._STD_EPS).sqrt()
            parts.append(F.normalize(torch.cat([mean, std], dim=1), dim=1) * scale)
        return torch.cat(parts, dim=1)


class AlexNetStats(_FeatureStats):
    """Feature-statistics embedding on ImageNet AlexNet relu1..relu5 (LPIPS-Alex layers); ``embed_dim`` 2304.

    See :class:`_FeatureStats` for the definition (texture statistics in the sense of DISTS, Ding et al. 2020,
    on the layers of LPIPS, Zhang et al. 2018).

    Args:
        trunk_path: AlexNet weights (see :func:`load_alexnet_features`).

    Raises:
        FileNotFoundError: if weights cannot be found.
        ValueError: if the weight file does not match.
    """

    def __init__(self, trunk_path: PathLike | None = None) -> None:
        super().__init__(load_alexnet_features(trunk_path), _ALEXNET_TAPS, _ALEXNET_CHANNELS)


class VGGStats(_FeatureStats):
    """Feature-statistics embedding on ImageNet VGG16 relu1_2..relu5_3 (LPIPS-VGG layers); ``embed_dim`` 2944.

    See :class:`_FeatureStats` for the definition. Uses VGG's max-pooling (not DISTS's L2 pooling).

    Args:
        trunk_path: VGG16 weights (see :func:`load_vgg16_features`).

    Raises:
        FileNotFoundError: if weights cannot be found.
        ValueError: if the weight file does not match.
    """

    def __init__(self, trunk_path: PathLike | None = None) -> None:
        super().__init__(load_vgg16_features(trunk_path), _VGG16_TAPS, _VGG16_CHANNELS)


class DreamSimTeacher(_FrozenTeacher):
    """DreamSim embedding (Fu et al., NeurIPS 2023), the teacher of the original LipSim, from the ``dreamsim`` package.

    Images are resized to 224x224 (bicubic, antialiased, clamped to [0, 1], mirroring DreamSim's PIL preprocessing)
    and embedded with ``model.embed``. Weights are downloaded by ``dreamsim`` into ``cache_dir`` on first use.

    Args:
        cache_dir: where ``dreamsim`` keeps its checkpoints; default ``<torch hub dir>/dreamsim`` (never the
            current directory).
        dreamsim_type: the ``dreamsim`` variant, e.g. ``"ensemble"`` (DINO + CLIP + OpenCLIP ViT-B).
        device: device the package builds the model on (``dreamsim`` defaults to CUDA; this wrapper to CPU).

    Raises:
        ImportError: if ``dreamsim`` is not installed (with the install command).
    """

    INPUT_SIZE = 224

    def __init__(self, cache_dir: PathLike | None = None, dreamsim_type: str = "ensemble",
                 device: str | torch.device = "cpu") -> None:
        super().__init__()
        try:
            from dreamsim import dreamsim
        except ImportError as error:
            raise ImportError(
                "DreamSimTeacher needs the optional `dreamsim` package: `pip install dreamsim` (its weights are "
                "then downloaded on first use). Offline, use the 'alex-stats' or 'vgg-stats' embedding teachers."
            ) from error
        if cache_dir is None:
            cache_dir = Path(torch.hub.get_dir()) / "dreamsim"
        model, _ = dreamsim(pretrained=True, device=str(device), cache_dir=str(cache_dir),
                            dreamsim_type=dreamsim_type)
        self.model = model
        self._freeze()
        with torch.no_grad():
            probe = torch.zeros(1, 3, self.INPUT_SIZE, self.INPUT_SIZE, device=torch.device(device))
            self.embed_dim = int(self.model.embed(probe).shape[-1])

    def forward(self, x: Tensor) -> Tensor:
        """Embed images.

        Args:
            x: images ``(N, 3, H, W)`` in [0, 1], ``H, W >= 32``.

        Returns:
            DreamSim embeddings ``(N, embed_dim)``.

        Raises:
            TypeError: for non-tensor or non-float input.
            ValueError: for a wrong shape, size < 32, values outside [0, 1] or NaN.
        """
        x = _check_images(x, "x")
        if x.shape[-2:] != (self.INPUT_SIZE, self.INPUT_SIZE):
            x = F.interpolate(x, size=(self.INPUT_SIZE, self.INPUT_SIZE), mode="bicubic", align_corners=False,
                              antialias=True).clamp(0, 1)
        embedding: Tensor = self.model.embed(x)
        return embedding


# ----------------------------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------------------------


def _teachers_folder(teachers_dir: PathLike | None) -> Path | None:
    if teachers_dir is None:
        return None
    if not isinstance(teachers_dir, (str, os.PathLike)):
        raise TypeError(f"teachers_dir must be a str or os.PathLike, got {type(teachers_dir).__name__}.")
    folder = Path(teachers_dir).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(
            f"teachers_dir '{folder}' is not a directory. Pass a folder holding {sorted(WEIGHT_FILES.values())}, "
            f"or None to use ${TEACHERS_DIR_ENV} / the online sources."
        )
    return folder


def _file_in(folder: Path | None, key: str) -> Path | None:
    return None if folder is None else folder / WEIGHT_FILES[key]


def _lpips_vgg(folder: Path | None) -> nn.Module:
    return LPIPS("vgg", _file_in(folder, "vgg16"), _file_in(folder, "lpips-vgg-heads"))


def _lpips_alex(folder: Path | None) -> nn.Module:
    return LPIPS("alex", _file_in(folder, "alexnet"), _file_in(folder, "lpips-alex-heads"))


def _dists(folder: Path | None) -> nn.Module:
    return DISTS(_file_in(folder, "vgg16"), _file_in(folder, "dists-alpha-beta"))


def _alex_stats(folder: Path | None) -> nn.Module:
    return AlexNetStats(_file_in(folder, "alexnet"))


def _vgg_stats(folder: Path | None) -> nn.Module:
    return VGGStats(_file_in(folder, "vgg16"))


def _dreamsim(folder: Path | None) -> nn.Module:
    return DreamSimTeacher(cache_dir=folder)  # DreamSim keeps its checkpoints in the teachers folder if given


_DISTANCE_TEACHERS: dict[str, Callable[[Path | None], nn.Module]] = {
    "lpips-vgg": _lpips_vgg,
    "lpips-alex": _lpips_alex,
    "dists": _dists,
}
_EMBEDDING_TEACHERS: dict[str, Callable[[Path | None], nn.Module]] = {
    "alex-stats": _alex_stats,
    "vgg-stats": _vgg_stats,
    "dreamsim": _dreamsim,
}
_KINDS = {"distance": _DISTANCE_TEACHERS, "embedding": _EMBEDDING_TEACHERS}


def list_teachers(kind: str | None = None) -> list[str]:
    """Names accepted by :func:`build_distance_teacher` / :func:`build_embedding_teacher`.

    Args:
        kind: ``"distance"``, ``"embedding"``, or None for both.

    Returns:
        Sorted teacher names.

    Raises:
        ValueError: for an unknown ``kind``.

    Example:
        >>> list_teachers("distance")
        ['dists', 'lpips-alex', 'lpips-vgg']
    """
    if kind is None:
        return sorted([*_DISTANCE_TEACHERS, *_EMBEDDING_TEACHERS])
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {sorted(_KINDS)} or None, got {kind!r}.")
    return sorted(_KINDS[kind])


def _build(kind: str, name: str, teachers_dir: PathLike | None) -> nn.Module:
    registry = _KINDS[kind]
    if not isinstance(name, str):
        raise TypeError(f"{kind} teacher name must be a str, got {type(name).__name__}.")
    if name not in registry:
        raise ValueError(f"Unknown {kind} teacher {name!r}; valid names: {sorted(registry)}.")
    return registry[name](_teachers_folder(teachers_dir))


def build_distance_teacher(name: str, teachers_dir: PathLike | None = None) -> nn.Module:
    """Build a frozen distance teacher: ``teacher(x0, x1) -> (N,)`` for images in [0, 1].

    Args:
        name: ``"lpips-vgg"``, ``"lpips-alex"`` or ``"dists"`` (see :func:`list_teachers`).
        teachers_dir: folder holding the files of :data:`WEIGHT_FILES`; every weight path is taken from it. None
            resolves each file through ``$LIPSIM_TEACHERS_DIR`` and then the online/installed sources.

    Returns:
        The teacher module (:class:`LPIPS` or :class:`DISTS`), on the CPU, frozen.

    Raises:
        ValueError: for an unknown name (lists the valid ones) or a mismatched weight file.
        TypeError: if ``name`` is not a str.
        FileNotFoundError: if ``teachers_dir`` or a weight file is missing.

    Example:
        >>> lpips = build_distance_teacher("lpips-vgg", teachers_dir="../shared/teachers")  # doctest: +SKIP
    """
    return _build("distance", name, teachers_dir)


def build_embedding_teacher(name: str, teachers_dir: PathLike | None = None) -> nn.Module:
    """Build a frozen embedding teacher: ``teacher(x) -> (N, teacher.embed_dim)`` for images in [0, 1].

    Args:
        name: ``"alex-stats"``, ``"vgg-stats"`` or ``"dreamsim"`` (see :func:`list_teachers`).
        teachers_dir: folder holding the files of :data:`WEIGHT_FILES` (for ``"dreamsim"``: its checkpoint
            cache). None resolves through ``$LIPSIM_TEACHERS_DIR`` and then the online sources.

    Returns:
        The teacher module (:class:`AlexNetStats`, :class:`VGGStats` or :class:`DreamSimTeacher`), frozen.

    Raises:
        ValueError: for an unknown name (lists the valid ones) or a mismatched weight file.
        TypeError: if ``name`` is not a str.
        FileNotFoundError: if ``teachers_dir`` or a weight file is missing.
        ImportError: for ``"dreamsim"`` without the ``dreamsim`` package.

    Example:
        >>> teacher = build_embedding_teacher("alex-stats", teachers_dir="../shared/teachers")  # doctest: +SKIP
        >>> teacher.embed_dim                                                                   # doctest: +SKIP
        2304
    """
    return _build("embedding", name, teachers_dir)
