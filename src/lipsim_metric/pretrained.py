"""Registry of pretrained weights and their resolution: explicit path -> shipped ``weights/`` -> Hugging Face Hub.

Every entry is a :class:`PretrainedCfg` (the timm/open_clip habit): where the file lives on the Hub, its sha256, the
backbone variant and input contract it expects, its license and how it was trained. Weight files are safetensors
only; loading is strict (missing, unexpected or mis-shaped tensors are named in the error) and the sha256 of a
registered file is verified before use. Nothing ever falls back to random weights.

Resolution order for a registered name (:func:`resolve_weights`):

1. a folder in ``$LIPSIM_WEIGHTS_DIR`` or the ``weights/`` folder shipped with the package (installed wheels carry it
   as ``lipsim_metric/weights``; a source checkout has it at the repository root) holding ``cfg.filename``;
2. ``huggingface_hub.hf_hub_download(cfg.hf_hub_id, cfg.filename, revision=cfg.revision, cache_dir=...)``, which
   honours ``HF_HUB_OFFLINE``, ``HF_HOME`` and ``HF_HUB_CACHE`` and reads an existing cache without network.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

__all__ = [
    "PretrainedCfg",
    "DEFAULT_WEIGHTS",
    "list_pretrained",
    "get_pretrained_cfg",
    "register_pretrained",
    "resolve_weights",
    "shipped_weights_dirs",
    "load_state_dict_strict",
    "read_weights_metadata",
    "save_weights",
    "sha256_file",
]


@dataclass(frozen=True)
class PretrainedCfg:
    """Description of one pretrained weight file.

    Attributes:
        name: registry name, ``"<variant>.<tag>"``.
        variant: backbone registry name (see :func:`lipsim_metric.list_backbones`).
        filename: file name inside the shipped folder and inside the Hub repository.
        hf_hub_id: Hugging Face repository id, or ``None`` for files the user must supply.
        revision: Hub revision (branch, tag or commit) to download.
        sha256: expected hash of the file, or ``None`` for user-supplied files that vary.
        backbone_kwargs: architecture overrides passed to :func:`lipsim_metric.create_backbone`.
        projection: embedding projection the weights were trained/evaluated with (``"append"`` or ``"normalize"``).
        input_size: backbone input side in pixels; input is RGB in [0, 1] after LipSim's preprocessing.
        license: license of the weights.
        paper: reference.
        training: one-line training summary (details in the model card).
        model_card: path of the model card in the repository.
    """

    name: str
    variant: str
    filename: str
    hf_hub_id: str | None = None
    revision: str | None = "main"
    sha256: str | None = None
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    projection: str = "append"
    input_size: int = 224
    license: str = "MIT"
    paper: str = "Ghazanfari et al., LipSim, ICLR 2024, arXiv:2310.18274"
    training: str = ""
    model_card: str = ""


_PRETRAINED: dict[str, PretrainedCfg] = {}

#: Name of the weights :class:`lipsim_metric.LipSim` loads by default.
DEFAULT_WEIGHTS = "lipsim-fast.perceptual-cpu-v1"


def register_pretrained(cfg: PretrainedCfg) -> PretrainedCfg:
    """Add ``cfg`` to the registry (``ValueError`` on a duplicate name)."""
    if cfg.name in _PRETRAINED:
        raise ValueError(f"pretrained weights {cfg.name!r} are already registered")
    _PRETRAINED[cfg.name] = cfg
    return cfg


def list_pretrained(variant: str | None = None) -> list[str]:
    """Names of the registered weights, optionally only those of one backbone ``variant``."""
    return sorted(n for n, c in _PRETRAINED.items() if variant is None or c.variant == variant)


def get_pretrained_cfg(name: str) -> PretrainedCfg:
    """The :class:`PretrainedCfg` registered as ``name`` (``ValueError`` listing valid names otherwise)."""
    if name not in _PRETRAINED:
        raise ValueError(f"unknown pretrained weights {name!r}; registered: {list_pretrained()}")
    return _PRETRAINED[name]


def shipped_weights_dirs() -> list[Path]:
    """Folders searched for shipped weight files, in order."""
    here = Path(__file__).resolve().parent
    dirs = []
    if os.environ.get("LIPSIM_WEIGHTS_DIR"):
        dirs.append(Path(os.environ["LIPSIM_WEIGHTS_DIR"]))
    dirs += [here / "weights", here.parent.parent / "weights"]  # wheel layout, then source checkout
    return dirs


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


_VERIFIED: dict[tuple[str, int, int], str] = {}


def _verify_sha256(path: Path, expected: str | None, name: str) -> None:
    if expected is None:
        return
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _VERIFIED:
        _VERIFIED[key] = sha256_file(path)
    if _VERIFIED[key] != expected:
        raise ValueError(
            f"{path} does not match the sha256 registered for {name!r} (expected {expected}, got {_VERIFIED[key]}). "
            "The file is corrupt or a different version: delete it and download again, or pass the file explicitly "
            "with weights=<path> to use it unverified."
        )


def resolve_weights(name: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Find the file of the registered weights ``name``: shipped folder first, then the Hugging Face Hub.

    Args:
        name: a name from :func:`list_pretrained`.
        cache_dir: Hub cache folder (default: huggingface_hub's, i.e. ``$HF_HUB_CACHE`` or ``$HF_HOME/hub``).

    Returns:
        Path of a verified (sha256) safetensors file.

    Raises:
        ValueError: unknown name, or hash mismatch.
        FileNotFoundError: not shipped and not obtainable from the Hub (offline, or no Hub location registered).
    """
    cfg = get_pretrained_cfg(name)
    for folder in shipped_weights_dirs():
        candidate = folder / cfg.filename
        if candidate.is_file():
            _verify_sha256(candidate, cfg.sha256, name)
            return candidate
    if cfg.hf_hub_id is None:
        raise FileNotFoundError(
            f"weights {name!r} are not shipped and have no download location. Obtain {cfg.filename} "
            f"(see {cfg.model_card or 'the README'}), then pass weights=<path> or put it in $LIPSIM_WEIGHTS_DIR."
        )
    from huggingface_hub import hf_hub_download  # imported lazily: only this path needs it

    try:
        path = Path(hf_hub_download(cfg.hf_hub_id, cfg.filename, revision=cfg.revision,
                                    cache_dir=None if cache_dir is None else str(cache_dir)))
    except Exception as exc:  # offline mode, no network, missing repo: all end here
        raise FileNotFoundError(
            f"could not get weights {name!r} ({cfg.hf_hub_id}/{cfg.filename}@{cfg.revision}) from the shipped "
            f"folders {[str(d) for d in shipped_weights_dirs()]} or the Hugging Face Hub ({type(exc).__name__}: "
            f"{exc}). Pass weights=<path to a .safetensors file> or set LIPSIM_WEIGHTS_DIR."
        ) from exc
    _verify_sha256(path, cfg.sha256, name)
    return path


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


def load_state_dict_strict(module: nn.Module, path: str | os.PathLike[str]) -> None:
    """Load a safetensors file into ``module``, naming every missing, unexpected or mis-shaped tensor.

    Tensors are cast to each parameter's dtype (float16 storage is allowed).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: unreadable file; missing, unexpected or mis-shaped tensors; or NaN/Inf values (after the cast to
            the parameter dtype). On any error ``module`` is left unchanged.
    """
    path = Path(path)
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

# Earlier weights of this project (distill-alex-cpu-v1, robust-alex-cpu-v1/v3/v4) are no longer shipped or registered;
# their files are in git history and load by path, with their metadata: docs/model_card.md, "Earlier weights".
register_pretrained(
    PretrainedCfg(
        name=DEFAULT_WEIGHTS,
        variant="lipsim-fast",
        filename="lipsim-fast.perceptual-cpu-v1.safetensors",
        hf_hub_id="lipsim-metric/lipsim-fast",
        revision="main",
        sha256="9aa3133c337446667416d04e1871da587a50f37b00e2304304cbbcd432910d96",
        backbone_kwargs={"pooling": "mean_std", "channel_scale": True, "linear_depth": 0, "embed_dim": None},
        training="distance distillation (stage 'pairs') of LPIPS-VGG, DISTS and LPIPS-Alex distances on 544 x 6 "
        "labelled distortion pairs of ../shared/images/train (recipe 2), with the certified-radius hinge; mean/std "
        "pooling, convolutions from robust-alex-cpu-v4; 2 CPU cores (configs/pairs_main_cpu.yaml)",
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
            license="see the authors' repository (github.com/SaraGhazanfari/lipsim)",
            training=_summary + "; convert the released .pth with `lipsim-convert` (docs/paper.md)",
            model_card="docs/paper.md",
        )
    )
