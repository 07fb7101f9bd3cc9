"""Typed pretrained configs and their registry, and the weight-file format (safetensors with LipSim metadata).

Every registered weight file is described by a :class:`PretrainedCfg` (the timm/open_clip habit): the backbone variant
and architecture overrides it was trained with, the embedding projection, its input size, its file name, sha256 and Hub
location, license and how it was trained. Weight files are safetensors only; loading is strict (missing, unexpected or
mis-shaped tensors are named in the error) and the sha256 of a registered file is verified before use. Nothing ever
falls back to random weights. Where a file is found (shipped folder, ``$LIPSIM_WEIGHTS_DIR``, Hugging Face Hub) is
:mod:`lipsim_metric.hub`; building the metric from a config is :meth:`lipsim_metric.LipSim.from_pretrained`.

The configs live here rather than next to the architectures in :mod:`lipsim_metric.backbones` because they describe
*files*, not networks: one architecture has several weight files (``lipsim-paper-small`` has three), and a config
carries hub ids, hashes, licenses and training notes that the architecture code has no business knowing; this keeps
:mod:`~lipsim_metric.backbones` free of I/O, and a new weight file is one ``register_pretrained`` call in one place.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .backbones import LipschitzBackbone, create_backbone
from .certificates import Projection

__all__ = [
    "PretrainedCfg",
    "DEFAULT_WEIGHTS",
    "list_pretrained",
    "get_pretrained_cfg",
    "default_pretrained",
    "register_pretrained",
    "untrained_cfg",
    "load_state_dict_strict",
    "read_weights_metadata",
    "save_weights",
]


@dataclass(frozen=True)
class PretrainedCfg:
    """Description of one pretrained weight file, checked when it is made.

    Attributes:
        name: registry name, ``"<variant>.<tag>"`` (for a file loaded by path: the file's stem).
        variant: backbone registry name (see :func:`lipsim_metric.list_backbones`).
        filename: file name inside the shipped folder and inside the Hub repository.
        hf_hub_id: Hugging Face repository id, or ``None`` for files the user must supply.
        revision: Hub revision (branch, tag or commit) to download.
        sha256: expected hash of the file, or ``None`` for user-supplied files that vary.
        backbone_kwargs: architecture overrides passed to :func:`lipsim_metric.create_backbone`.
        projection: embedding projection the weights were trained/evaluated with, ``"append"`` or ``"normalize"``.
        constant: the appended coordinate ``c`` of the ``"append"`` projection the weights were trained with (> 0;
            files record it as metadata ``constant``, 1 when absent); ``LipSim(constant=...)`` overrides it.
        input_size: backbone input side in pixels (input is RGB in [0, 1] after LipSim's preprocessing), checked
            against the built backbone's ``input_size``; ``None``: whatever ``variant`` + ``backbone_kwargs`` build.
        license: license of the weights.
        paper: reference.
        training: one-line training summary (details in the model card).
        model_card: path of the model card in the repository.

    Raises:
        ValueError: on construction, for an empty name/variant/filename, a projection other than ``"append"`` /
            ``"normalize"``, a non-positive ``input_size``, or an ``input_size`` that contradicts
            ``backbone_kwargs["input_size"]``; at :meth:`build_backbone`, when the built backbone's input size is not
            ``input_size``.
        TypeError: ``backbone_kwargs`` is not a dict.
    """

    name: str
    variant: str
    filename: str
    hf_hub_id: str | None = None
    revision: str | None = "main"
    sha256: str | None = None
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    projection: Projection = "append"
    constant: float = 1.0
    input_size: int | None = None
    license: str = "MIT"
    paper: str = "Ghazanfari et al., LipSim, ICLR 2024, arXiv:2310.18274"
    training: str = ""
    model_card: str = ""

    def __post_init__(self) -> None:
        for attr in ("name", "variant", "filename"):
            if not isinstance(getattr(self, attr), str) or not getattr(self, attr):
                raise ValueError(f"PretrainedCfg.{attr} must be a non-empty string, got {getattr(self, attr)!r}")
        if self.projection not in get_args(Projection):
            raise ValueError(
                f"PretrainedCfg {self.name!r}: projection must be one of {list(get_args(Projection))}, got "
                f"{self.projection!r}. Use 'append' (always certifiable) unless the weights were trained for the "
                "paper's 'normalize' protocol."
            )
        if isinstance(self.constant, bool) or not isinstance(self.constant, (int, float)) or not self.constant > 0:
            raise ValueError(f"PretrainedCfg {self.name!r}: constant (the appended coordinate c) must be a number "
                             f"> 0, got {self.constant!r}")
        if not isinstance(self.backbone_kwargs, dict):
            raise TypeError(f"PretrainedCfg {self.name!r}: backbone_kwargs must be a dict, got "
                            f"{type(self.backbone_kwargs).__name__}")
        if self.input_size is not None:
            if isinstance(self.input_size, bool) or not isinstance(self.input_size, int) or self.input_size <= 0:
                raise ValueError(f"PretrainedCfg {self.name!r}: input_size must be a positive int or None, got "
                                 f"{self.input_size!r}")
            kw_size = self.backbone_kwargs.get("input_size")
            if kw_size is not None and kw_size != self.input_size:
                raise ValueError(
                    f"PretrainedCfg {self.name!r}: input_size={self.input_size} contradicts "
                    f"backbone_kwargs['input_size']={kw_size}. Set both to the size the weights were trained at "
                    "(or leave input_size=None to take the backbone's)."
                )

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], variant: str | None = None) -> PretrainedCfg:
        """The config recorded in a weight file's metadata (``variant``, ``backbone_kwargs``, ``projection``).

        Args:
            path: a safetensors file written by :func:`save_weights` or ``lipsim-convert``.
            variant: the expected backbone variant; required when the file does not record one.

        Raises:
            FileNotFoundError: no such file.
            ValueError: unreadable file; no variant recorded and none given; a different variant recorded; bad
                metadata (e.g. an unknown projection).
        """
        path = Path(path)
        meta = read_weights_metadata(path)
        file_variant = meta.get("variant")
        if variant is None:
            if file_variant is None:
                raise ValueError(f"{path} does not record its backbone variant; pass variant=...")
            variant = file_variant
        elif file_variant is not None and file_variant != variant:
            raise ValueError(f"{path} holds weights for variant {file_variant!r}, not {variant!r}")
        return cls(name=path.stem, variant=str(variant), filename=path.name, hf_hub_id=None, revision=None,
                   backbone_kwargs=dict(meta.get("backbone_kwargs", {})),
                   projection=meta.get("projection", "append"), constant=_float_meta(meta, "constant", path),
                   license=meta.get("license", "unknown"))

    def build_backbone(self) -> LipschitzBackbone:
        """Build the (untrained) backbone these weights are for, checking its input size against :attr:`input_size`.

        Raises:
            ValueError: unknown variant, bad ``backbone_kwargs``, or a backbone whose ``input_size`` is not this
                config's (fix ``input_size`` or ``backbone_kwargs['input_size']`` of the config).
        """
        backbone = create_backbone(self.variant, **self.backbone_kwargs)
        if self.input_size is not None and backbone.input_size != self.input_size:
            raise ValueError(
                f"PretrainedCfg {self.name!r} declares input_size={self.input_size}, but variant {self.variant!r} "
                f"with backbone_kwargs={self.backbone_kwargs} builds a backbone for {backbone.input_size}x"
                f"{backbone.input_size} inputs. Set backbone_kwargs['input_size']={self.input_size} (or correct "
                "input_size) in the config."
            )
        return backbone


def untrained_cfg(variant: str) -> PretrainedCfg:
    """The config of a randomly initialised ``variant`` (``LipSim(pretrained=False, variant=...)``): no file."""
    return PretrainedCfg(name=f"{variant}.untrained", variant=variant, filename="-", hf_hub_id=None, revision=None,
                         license="-", paper="", training="random initialisation")


_PRETRAINED: dict[str, PretrainedCfg] = {}

#: Name of the weights :class:`lipsim_metric.LipSim` loads by default.
DEFAULT_WEIGHTS = "lipsim-fast.perceptual-cpu-v4"


def register_pretrained(cfg: PretrainedCfg) -> PretrainedCfg:
    """Add ``cfg`` to the registry (``ValueError`` on a duplicate name)."""
    if cfg.name in _PRETRAINED:
        raise ValueError(f"pretrained weights {cfg.name!r} are already registered")
    _PRETRAINED[cfg.name] = cfg
    return cfg


def list_pretrained(variant: str | None = None) -> list[str]:
    """Names of the registered weights, optionally only those of one backbone ``variant``."""
    return sorted(n for n, c in _PRETRAINED.items() if variant is None or c.variant == variant)


def default_pretrained(variant: str) -> str:
    """The weights a bare variant name stands for (``create_metric("lipsim-fast")``): :data:`DEFAULT_WEIGHTS` for its
    variant, otherwise the variant's first registered weights (``ValueError`` if it has none)."""
    if get_pretrained_cfg(DEFAULT_WEIGHTS).variant == variant:
        return DEFAULT_WEIGHTS
    names = [n for n, c in _PRETRAINED.items() if c.variant == variant]  # registration order
    if not names:
        raise ValueError(f"no pretrained weights are registered for variant {variant!r}; registered: "
                         f"{list_pretrained()}. Pass pretrained=False for a random network, or a weights file.")
    return names[0]


#: Weights this project shipped once and no longer registers: name -> a commit whose ``weights/`` holds the file.
RETIRED_WEIGHTS: dict[str, str] = {
    "lipsim-fast.distill-alex-cpu-v1": "b100586",
    "lipsim-fast.robust-alex-cpu-v1": "8bfd9a7",
    "lipsim-fast.robust-alex-cpu-v3": "32e8c6f",
    "lipsim-fast.robust-alex-cpu-v4": "139315c",
    "lipsim-fast.perceptual-cpu-v1": "aa7c61e",
    "lipsim-fast.perceptual-cpu-v2": "aa7c61e",
    "lipsim-fast.perceptual-cpu-v3": "98a5b69",
}


def get_pretrained_cfg(name: str) -> PretrainedCfg:
    """The :class:`PretrainedCfg` registered as ``name`` (``ValueError`` listing valid names otherwise; for weights
    that are no longer shipped, the error says how to get the file from git history)."""
    if name in RETIRED_WEIGHTS and name not in _PRETRAINED:
        short = name.split(".", 1)[1]
        raise ValueError(
            f"pretrained weights {name!r} are no longer shipped (their cards: docs/model_card_history.md); the default "
            f"is now {DEFAULT_WEIGHTS!r}. To use the old file, take it from the project's git history and load it "
            f"by path: `git show {RETIRED_WEIGHTS[name]}:weights/{name}.safetensors > {short}.safetensors`, then "
            f"LipSim(weights='{short}.safetensors')."
        )
    if name not in _PRETRAINED:
        raise ValueError(f"unknown pretrained weights {name!r}; registered: {list_pretrained()}")
    return _PRETRAINED[name]


def read_weights_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Metadata stored in a LipSim safetensors file (``variant``, ``backbone_kwargs``, ``projection``, ...)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except Exception as exc:
        raise ValueError(f"{path} is not a readable safetensors file ({exc}); re-download or re-export it") from exc
    out: dict[str, Any] = dict(meta)
    if "backbone_kwargs" in out:
        out["backbone_kwargs"] = json.loads(out["backbone_kwargs"])
    return out


def save_weights(module: nn.Module, path: str | os.PathLike[str], variant: str, dtype: torch.dtype | None = None,
                 **metadata: Any) -> Path:
    """Write a backbone's parameters as safetensors with the metadata LipSim reads back.

    Args:
        module: the backbone.
        path: output file.
        variant: backbone registry name.
        dtype: optional storage dtype (e.g. ``torch.float16`` halves the file; loading casts back to float32, and
            certificates stay sound because the 1-Lipschitz rescaling is recomputed from the loaded values).
        **metadata: extra string-able metadata (``backbone_kwargs`` dict, ``projection``, training notes...).
    """
    tensors = {k: (v.detach().to(dtype) if dtype else v.detach()).contiguous().cpu()
               for k, v in module.state_dict().items()}
    meta = {"format": "lipsim-metric", "variant": variant}
    for k, v in metadata.items():
        meta[k] = json.dumps(v) if isinstance(v, (dict, list)) else str(v)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=meta)
    return path


def load_state_dict_strict(module: nn.Module,
                           weights: str | os.PathLike[str] | Mapping[str, torch.Tensor]) -> None:
    """Load a safetensors file (or an in-memory state dict) into ``module``, naming every missing, unexpected or
    mis-shaped tensor.

    Tensors are cast to each parameter's dtype (float16 storage is allowed).

    Args:
        module: the backbone to fill.
        weights: path of a safetensors file, or a mapping of parameter names to tensors.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: unreadable file; missing, unexpected or mis-shaped tensors; or NaN/Inf values (after the cast to
            the parameter dtype). On any error ``module`` is left unchanged.
    """
    if isinstance(weights, Mapping):
        path: Path | str = "the given state dict"
        state = dict(weights)
    else:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"weights file {path} does not exist")
        try:
            state = load_file(str(path))
        except Exception as exc:
            raise ValueError(f"{path} is not a readable safetensors file ({exc}); re-download or re-export it") from exc
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                    for k in set(own) & set(state) if state[k].shape != own[k].shape)
    if missing or unexpected or shapes:
        raise ValueError(
            f"{path} does not fit backbone {type(module).__name__}: missing {missing[:8]}"
            f"{'...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}, "
            f"shape mismatches {shapes[:8]}. Check that the file was made for this variant (see list_pretrained())."
        )
    cast = {k: v.to(own[k].dtype) for k, v in state.items()}
    # A NaN or Inf weight would give NaN distances and radii (or, through t = 1/inf = 0, silently different ones).
    # Checked after the cast, which can overflow (a float64 1e300 becomes inf in float32).
    bad = sorted(k for k, v in cast.items() if v.is_floating_point() and not bool(torch.isfinite(v).all()))
    if bad:
        counts = ", ".join(f"{k} ({int((~torch.isfinite(cast[k])).sum())} of {cast[k].numel()})" for k in bad[:8])
        raise ValueError(
            f"{path} holds non-finite values (NaN or Inf) in {len(bad)} tensor(s): {counts}"
            f"{'...' if len(bad) > 8 else ''}. Nothing was loaded. The file is corrupt, or was saved from a training "
            "run that diverged: re-download it, or export it again from a checkpoint with finite weights."
        )
    module.load_state_dict(cast, strict=True)


# --- registered weights -------------------------------------------------------------------------------------------

# Earlier weights of this project (distill-alex-cpu-v1, robust-alex-cpu-v1/v3/v4, perceptual-cpu-v1/v2/v3) are no
# longer shipped or registered (RETIRED_WEIGHTS);
# their files are in git history and load by path, with their metadata: docs/model_card_history.md.
register_pretrained(
    PretrainedCfg(
        name=DEFAULT_WEIGHTS,
        variant="lipsim-fast",
        filename="lipsim-fast.perceptual-cpu-v4.safetensors",
        hf_hub_id="lipsim-metric/lipsim-fast",
        revision="main",
        sha256="a21ccf6a22280fb3716fe45cb5f22b14febee258da23c0ea0d25687602c7fe51",
        backbone_kwargs={"pooling": "mean_std", "channel_scale": True, "linear_depth": 0, "embed_dim": None},
        input_size=224,
        training="distance distillation (stage 'pairs') of LPIPS-VGG, DISTS and LPIPS-Alex distances on labelled "
        "distortion pairs of ../shared/images/train (recipe 2) with the certified-radius hinge, plus hard pairs from "
        "the loss example's own denoiser trained against the student during training (hard_kind denoiser), labelled "
        "by the same teachers; mean/std pooling; 2 CPU cores (configs/pairs_denoiser2_v3.yaml, from perceptual-cpu-v3)",
        model_card="docs/model_card.md",
    )
)
for _tag, _summary in (
    ("pretrained", "authors' distilled checkpoint (DreamSim teacher, ImageNet), before NIGHT fine-tuning"),
    ("margin0.2", "authors' checkpoint fine-tuned on NIGHT with hinge margin 0.2"),
    ("margin0.5", "authors' checkpoint fine-tuned on NIGHT with hinge margin 0.5"),
):
    register_pretrained(
        PretrainedCfg(
            name=f"lipsim-paper-small.{_tag}",
            variant="lipsim-paper-small",
            filename=f"lipsim-paper-small.{_tag}.safetensors",
            hf_hub_id=None,
            sha256=None,
            input_size=224,
            license="see the authors' repository (github.com/SaraGhazanfari/lipsim)",
            training=_summary + "; convert the released .pth with `lipsim-convert` (docs/paper.md)",
            model_card="docs/paper.md",
        )
    )


# Moved to lipsim_metric.hub (where files come from); still importable from here. Resolved lazily because hub imports
# this module.
_MOVED_TO_HUB = ("resolve_weights", "shipped_weights_dirs", "sha256_file", "_verify_sha256", "_VERIFIED")


def __getattr__(name: str) -> Any:
    if name in _MOVED_TO_HUB:
        from . import hub

        return getattr(hub, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _float_meta(meta: dict[str, Any], key: str, path: Path, default: float = 1.0) -> float:
    """A float metadata entry (stored as a string), or ``default`` when absent; a clear error when unreadable."""
    if key not in meta:
        return default
    try:
        return float(meta[key])
    except (TypeError, ValueError):
        raise ValueError(f"{path}: metadata {key}={meta[key]!r} is not a number; re-export the weights "
                         "(lipsim_metric.pretrained.save_weights)") from None
