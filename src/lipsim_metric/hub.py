"""Where weight files come from: registered name (or config, or path) -> a verified local safetensors file.

This module only finds files; what a file holds and how it is loaded is :mod:`lipsim_metric.pretrained`, and
:meth:`lipsim_metric.LipSim.from_pretrained` builds the metric from the result. Resolution of a registered name or a
:class:`~lipsim_metric.pretrained.PretrainedCfg` (:func:`resolve_weights`), in order:

1. ``$LIPSIM_WEIGHTS_DIR``, then the ``weights/`` folder shipped with the package (installed wheels carry it as
   ``lipsim_metric/weights``; a source checkout has it at the repository root), holding ``cfg.filename``;
2. ``huggingface_hub.hf_hub_download(cfg.hf_hub_id, cfg.filename, revision=cfg.revision, cache_dir=...)``, which
   honours ``HF_HUB_OFFLINE``, ``HF_HOME`` and ``HF_HUB_CACHE`` and reads an existing cache without network.

The shipped default is found by this same function that would download it, so offline use is not a special case.
Every file of a config with a ``sha256`` is checked against it before use (whatever folder it came from); nothing ever
falls back to random weights.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from .pretrained import RETIRED_WEIGHTS, PretrainedCfg, get_pretrained_cfg, list_pretrained

__all__ = [
    "ResolvedWeights",
    "resolve_pretrained",
    "resolve_weights",
    "shipped_weights_dirs",
    "sha256_file",
]


def shipped_weights_dirs() -> list[Path]:
    """Folders searched for shipped weight files, in order: ``$LIPSIM_WEIGHTS_DIR``, the wheel's, the checkout's."""
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


# (path, size, mtime) -> sha256: a file is hashed once per process unless it changes.
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


def resolve_weights(name: str | PretrainedCfg, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Find the file of registered weights (or of a config): shipped folders first, then the Hugging Face Hub.

    Args:
        name: a name from :func:`~lipsim_metric.list_pretrained`, or a :class:`PretrainedCfg` (registered or not).
        cache_dir: Hub cache folder (default: huggingface_hub's, i.e. ``$HF_HUB_CACHE`` or ``$HF_HOME/hub``).

    Returns:
        Path of a verified (sha256) safetensors file.

    Raises:
        ValueError: unknown name, or hash mismatch.
        FileNotFoundError: not shipped and not obtainable from the Hub (offline, or no Hub location registered).
    """
    cfg = name if isinstance(name, PretrainedCfg) else get_pretrained_cfg(name)
    name = cfg.name
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


@dataclass(frozen=True)
class ResolvedWeights:
    """A weight file found and described, ready to build from (the result of :func:`resolve_pretrained`).

    Attributes:
        cfg: what the file holds (for a file given by path: read from its metadata).
        path: the local, verified safetensors file.
        name: the registry name when the weights were asked for by name (or by a registered config), else ``None``.
    """

    cfg: PretrainedCfg
    path: Path
    name: str | None = None


def resolve_pretrained(weights: str | os.PathLike[str] | PretrainedCfg, variant: str | None = None,
                       cache_dir: str | os.PathLike[str] | None = None) -> ResolvedWeights:
    """Turn what a user passes as ``weights`` into a config and a local file.

    Args:
        weights: a registered name (:func:`~lipsim_metric.list_pretrained`), a :class:`PretrainedCfg`, or a path to a
            ``.safetensors`` file written by :func:`~lipsim_metric.pretrained.save_weights` / ``lipsim-convert``.
        variant: the backbone variant the caller expects; must agree with the weights (needed for a file without
            metadata).
        cache_dir: Hub cache folder, used only if a download is needed.

    Returns:
        A :class:`ResolvedWeights`.

    Raises:
        ValueError: ``weights`` is neither a registered name nor a ``.safetensors`` file; the variant disagrees; the
            file records no variant and none was given; a hash mismatch.
        FileNotFoundError: the file cannot be found or downloaded.
    """
    if isinstance(weights, PretrainedCfg):
        cfg: PretrainedCfg = weights
        registered = cfg.name in list_pretrained() and get_pretrained_cfg(cfg.name) == cfg
        name: str | None = cfg.name if registered else None
    elif isinstance(weights, str) and (weights in list_pretrained() or weights in RETIRED_WEIGHTS):
        cfg, name = get_pretrained_cfg(weights), weights  # a retired name raises, saying where its file is
    else:
        path = Path(weights)
        if path.suffix != ".safetensors" and not path.is_file():
            raise ValueError(
                f"weights={str(weights)!r} is neither a registered name ({list_pretrained()}) nor a "
                ".safetensors file. Convert PyTorch checkpoints first (lipsim-convert)."
            )
        return ResolvedWeights(PretrainedCfg.from_file(path, variant=variant), path)
    if variant is not None and variant != cfg.variant:
        raise ValueError(f"weights {cfg.name!r} are for variant {cfg.variant!r}, not {variant!r}")
    return ResolvedWeights(cfg, resolve_weights(cfg, cache_dir=cache_dir), name)
