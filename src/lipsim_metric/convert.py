"""Convert the authors' LipSim checkpoints (``.pth``) to LipSim safetensors files.

The published LipSim network (Ghazanfari et al., "LipSim: A Provably Robust Perceptual Similarity Metric", ICLR 2024,
https://arxiv.org/abs/2310.18274; official code https://github.com/SaraGhazanfari/lipsim) is an SLL network
(Araujo et al., ICLR 2023). Its training scripts save ``torch.save({"epoch": ..., "model_state_dict": ...,
"optimizer_state_dict": ..., ...})`` where the model is ``DataParallel(NormalizedModel(L2LipschitzNetwork))``:

* keys carry a ``module.`` prefix (DataParallel) and a ``model.`` prefix (the input-normalisation wrapper, mean 0 and
  std 1 for LipSim; if ``mean``/``std`` buffers are stored they are checked, because a std other than 1 would change
  the Lipschitz constant and a mean other than 0 would change the function);
* every SLL layer is registered twice: ``convs.{i}`` and ``base.1.{i}`` for the 20 convolutions, ``linear.{i+1}``
  and ``base.2.{i+1}`` for the 7 dense layers (index offset by a ``Flatten``);
* SLL convolutions hold ``kernel (hidden, 45, 3, 3)``, ``bias (1, hidden, 1, 1)``, ``q (hidden,)``; SLL dense layers
  hold ``weight (hidden, 8820)``, ``bias (1, hidden)``, ``q (hidden,)``;
* stray entries such as ``alpha`` may be present; they are not part of the network.

The converter does not rely on those exact names. It groups tensors into modules (key minus its last component),
modules into *families* (module path minus its trailing integer index, e.g. ``module.model.convs``), sorts each
family numerically by index, classifies each module by its tensors (SLL convolution: has a 4-d ``kernel``; SLL dense
layer: has a 2-d ``weight`` and a ``q``), checks that every family holding the same kind of layer holds *the same*
tensors (aliases are deduplicated; conflicting aliases are an error) and maps the layers in order onto
``convs.{i}`` / ``linear.{i}`` of :class:`lipsim_metric.backbones.PaperSmall`. Hidden widths and depths are inferred
and stored as ``backbone_kwargs`` metadata, so ``LipSim(weights=out)`` rebuilds the right network.

Loading uses ``torch.load(..., weights_only=True)``: no code from the pickle is ever executed.

Example (shell)::

    lipsim-convert model.ckpt-1.pth -o lipsim-paper-small.margin0.5.safetensors

Example (Python)::

    from lipsim_metric import LipSim
    from lipsim_metric.convert import convert_checkpoint
    out = convert_checkpoint("model.ckpt-1.pth", "paper.safetensors")
    metric = LipSim(weights=out, projection="normalize")   # the paper's evaluation protocol
"""

from __future__ import annotations

import argparse
import fnmatch
import math
import os
import pickle
import re
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import torch
from torch import nn

from .backbones import create_backbone
from .hub import sha256_file
from .pretrained import save_weights
from .version import __version__

__all__ = [
    "ConvertedCheckpoint",
    "PAPER_ARCHITECTURE",
    "PAPER_EMBED_DIM",
    "SUPPORTED_VARIANTS",
    "convert_checkpoint",
    "load_paper_checkpoint",
    "main",
]

#: Backbone variants the converter can target.
SUPPORTED_VARIANTS = ("lipsim-paper-small",)

#: Output dimension of the published network (the DreamSim ensemble's 768 + 512 + 512 features).
PAPER_EMBED_DIM = 1792

#: The published LipSim network (architecture of the released checkpoints), as ``PaperSmall`` keyword arguments.
PAPER_ARCHITECTURE = {"channels": 45, "conv_depth": 20, "conv_hidden": 5, "linear_depth": 7, "linear_hidden": 1024,
                      "embed_dim": PAPER_EMBED_DIM, "input_size": 224}

_STATE_DICT_KEYS = ("model_state_dict", "state_dict", "model")
_NORMALIZATION_NAMES = {"mean": 0.0, "std": 1.0}
# "<family>.<index>": the trailing integer index of a module path (nn.Sequential position)
_INDEX = re.compile(r"^(?:(?P<family>.*)\.)?(?P<index>\d+)$")


@dataclass
class ConvertedCheckpoint:
    """An authors' checkpoint mapped onto a LipSim backbone (the result of :func:`load_paper_checkpoint`).

    Attributes:
        state_dict: tensors named as in the backbone (``convs.{i}.kernel``, ``linear.{i}.weight`` ...), float32.
        backbone_kwargs: inferred architecture, passed to :func:`lipsim_metric.create_backbone`.
        variant: backbone registry name.
        source_name: file name of the checkpoint.
        source_sha256: sha256 of the checkpoint file.
        mapping: ``our name -> source module`` for every layer (e.g. ``"convs.0" -> "module.model.convs.0"``).
        duplicates: source modules dropped because they alias a kept one with equal tensors.
        ignored_keys: source keys that are not part of the network (e.g. ``alpha``), ignored.
        checked_keys: normalisation buffers that were verified to be mean 0 / std 1 and dropped.
        extra_entries: top-level entries of the checkpoint other than the state dict (``epoch``, optimiser...).
        notes: warnings worth a look, e.g. an architecture that differs from the published one.
    """

    state_dict: dict[str, torch.Tensor]
    backbone_kwargs: dict[str, int]
    variant: str
    source_name: str
    source_sha256: str
    mapping: dict[str, str] = field(default_factory=dict)
    duplicates: list[str] = field(default_factory=list)
    ignored_keys: list[str] = field(default_factory=list)
    checked_keys: list[str] = field(default_factory=list)
    extra_entries: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """A human-readable, multi-line report of what was converted, dropped and ignored."""
        kw = self.backbone_kwargs
        lines = [
            f"source: {self.source_name} (sha256 {self.source_sha256})",
            f"variant: {self.variant} with {kw}",
            f"conv layers: {kw['conv_depth']} from {self.mapping.get('convs.0', '?').rsplit('.', 1)[0]}.*; "
            f"dense layers: {kw['linear_depth']} from {self.mapping.get('linear.0', '?').rsplit('.', 1)[0]}.*",
        ]
        if self.duplicates:
            lines.append(f"identical aliases dropped: {_short(self.duplicates)}")
        if self.checked_keys:
            lines.append(f"normalisation buffers checked (mean 0, std 1): {_short(self.checked_keys)}")
        if self.ignored_keys:
            lines.append(f"ignored keys (not part of the network): {_short(self.ignored_keys)}")
        if self.extra_entries:
            lines.append(f"other checkpoint entries not converted: {_short(self.extra_entries)}")
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


def _short(items: Sequence[str], limit: int = 12) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")


# --- reading -------------------------------------------------------------------------------------------------------


def _read_checkpoint(path: Path) -> Any:
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if not path.is_file():
        raise ValueError(f"checkpoint {path} is not a file")
    if path.suffix == ".safetensors":
        raise ValueError(f"{path} is already a safetensors file; load it with LipSim(weights=...) directly")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = _unpickler_reason(str(exc))
        if "global" not in reason.lower():  # not a refused class/function: the bytes are not a valid pickle
            raise ValueError(
                f"{path} is not a readable PyTorch checkpoint ({reason}). Check that the download is complete "
                "(compare its sha256 with the release) and that it is a torch.save file."
            ) from exc
        raise ValueError(
            f"{path} cannot be loaded safely: besides tensors and plain containers it pickles a class or function "
            f"({reason}), and lipsim-convert never executes code from a pickle (it loads with weights_only=True). "
            "If you trust the file's origin, extract the state dict yourself in a separate Python session, e.g. "
            "torch.save(torch.load(p, weights_only=False)['model_state_dict'], 'clean.pth'), and convert 'clean.pth'."
        ) from exc
    except Exception as exc:  # truncated download, not a torch file, ...
        raise ValueError(
            f"{path} is not a readable PyTorch checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0]}). Check "
            "that the download is complete (compare its sha256 with the release) and that it is a torch.save file."
        ) from exc


def _unpickler_reason(message: str) -> str:
    """The informative part of torch's weights-only error (its message is mostly boilerplate)."""
    marker = "WeightsUnpickler error:"
    if marker not in message:
        return message.strip().splitlines()[0] if message.strip() else "unpickling failed"
    tail = message.split(marker, 1)[1].split("Check the documentation", 1)[0]
    return " ".join(tail.split()).split(" Please use ", 1)[0] or "unpickling failed"


def _extract_state_dict(obj: Any, path: Path) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """Return ``(tensors, non-tensor keys ignored, other top-level entries)``."""
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} holds a {type(obj).__name__}; expected a dict (a checkpoint or a state dict)")
    extra: list[str] = []
    state: Mapping[str, Any] = obj
    for key in _STATE_DICT_KEYS:
        if key in obj and isinstance(obj[key], Mapping):
            state = obj[key]
            extra = [str(k) for k in obj if k != key]
            break
    else:
        if not any(isinstance(v, torch.Tensor) for v in obj.values()):
            raise ValueError(
                f"{path} has no state dict: top-level entries are {sorted(map(str, obj))[:12]}; expected "
                f"one of {list(_STATE_DICT_KEYS)} or a bare state dict of tensors"
            )
    tensors = {str(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    non_tensors = sorted(str(k) for k, v in state.items() if not isinstance(v, torch.Tensor))
    if not tensors:
        raise ValueError(f"the state dict in {path} holds no tensors")
    return tensors, non_tensors, extra


# --- grouping ------------------------------------------------------------------------------------------------------


@dataclass
class _Layer:
    kind: str  # "conv" | "dense"
    module: str  # source module path, e.g. "module.model.convs.3"
    tensors: dict[str, torch.Tensor]


def _split_module(module: str) -> tuple[str, int | None]:
    match = _INDEX.match(module)
    if match is None:
        return module, None
    return match.group("family") or "", int(match.group("index"))


def _shapes(tensors: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {name: tuple(value.shape) for name, value in tensors.items()}


def _classify(module: str, tensors: dict[str, torch.Tensor]) -> str | None:
    """``"conv"`` / ``"dense"`` for SLL layers, ``None`` for modules that hold no layer; raise for other layers."""
    names = set(tensors)
    kernel, weight = tensors.get("kernel"), tensors.get("weight")
    if kernel is not None:
        hidden = kernel.shape[0]
        if (names == {"kernel", "bias", "q"} and kernel.ndim == 4 and kernel.shape[-1] == kernel.shape[-2]
                and tuple(tensors["bias"].shape) == (1, hidden, 1, 1) and tuple(tensors["q"].shape) == (hidden,)):
            return "conv"
        raise ValueError(
            f"module {module!r} has a kernel but is not an SLL residual convolution (expected exactly kernel "
            f"(hidden, channels, k, k), bias (1, hidden, 1, 1), q (hidden,); got {_shapes(tensors)}). "
            "This converter supports the published LipSim network (L2LipschitzNetwork); other architectures "
            "(e.g. the authors' V2 with an SDPConvLin stem) are not supported. Pass ignore=['<pattern>'] "
            "(--ignore) only if the module is not part of the embedding."
        )
    if weight is not None:
        hidden = weight.shape[0]
        if (names == {"weight", "bias", "q"} and weight.ndim == 2
                and tuple(tensors["bias"].shape) == (1, hidden) and tuple(tensors["q"].shape) == (hidden,)):
            return "dense"
        raise ValueError(
            f"module {module!r} has a weight but is not an SLL residual dense layer (expected exactly weight "
            f"(hidden, features), bias (1, hidden), q (hidden,); got {_shapes(tensors)}). A classification head or "
            "projector is not part of the LipSim embedding; pass ignore=['<pattern>'] (--ignore) if you are sure "
            "this module is not."
        )
    return None


def _check_normalization(key: str, value: torch.Tensor) -> None:
    name = key.rsplit(".", 1)[-1]
    expected = _NORMALIZATION_NAMES[name]
    if not torch.all(value.float() == expected):
        raise ValueError(
            f"input normalisation buffer {key!r} = {value.flatten().tolist()[:6]} but LipSim checkpoints use "
            f"mean 0 and std 1. A std other than 1 multiplies the Lipschitz constant (the certificates would be wrong) "
            "and a mean other than 0 changes the function; lipsim-paper-small has no input normalisation, so this "
            "checkpoint cannot be converted faithfully."
        )


def _families(
    tensors: dict[str, torch.Tensor], ignore: Sequence[str]
) -> tuple[dict[str, list[_Layer]], list[str], list[str]]:
    """Group tensors into layer families; return ``(families, ignored keys, checked normalisation keys)``."""
    modules: dict[str, dict[str, torch.Tensor]] = {}
    ignored: list[str] = []
    checked: list[str] = []
    for key, value in tensors.items():
        if any(fnmatch.fnmatchcase(key, pattern) for pattern in ignore):
            ignored.append(key)
            continue
        module, _, name = key.rpartition(".")
        if name in _NORMALIZATION_NAMES:
            _check_normalization(key, value)
            checked.append(key)
            continue
        modules.setdefault(module, {})[name] = value
    families: dict[str, list[tuple[int, _Layer]]] = {}
    for module, group in modules.items():
        kind = _classify(module, group)
        if kind is None:
            ignored += [f"{module}.{name}" if module else name for name in group]
            continue
        family, index = _split_module(module)
        layer = _Layer(kind, module, group)
        families.setdefault(f"{kind}:{family}", []).append((index if index is not None else -1, layer))
    ordered: dict[str, list[_Layer]] = {}
    for name, items in families.items():
        items.sort(key=lambda t: t[0])  # numeric order: "convs.10" after "convs.9", whatever the key order
        indices = [index for index, _ in items]
        for (a, layer_a), (b, _) in zip(items, items[1:], strict=False):
            if b != a + 1:
                family = layer_a.module.rsplit(".", 1)[0]
                kind = "convolution" if name.startswith("conv:") else "dense"
                missing = ", ".join(f"{family}.{i}" for i in range(a + 1, b))
                raise ValueError(
                    f"SLL {kind} layer(s) {missing} missing from the checkpoint: {family}.* has layers "
                    f"{indices[0]}..{indices[-1]} with a gap after {a}. The file is incomplete or was edited."
                )
        ordered[name] = [layer for _, layer in items]
    return ordered, ignored, checked


def _same_layers(a: list[_Layer], b: list[_Layer]) -> str | None:
    """``None`` if the two layer lists hold equal tensors, else a description of the first difference."""
    if len(a) != len(b):
        return f"{len(a)} layers vs {len(b)} layers"
    for la, lb in zip(a, b, strict=True):
        for name, ta in la.tensors.items():
            tb = lb.tensors[name]
            if ta.shape != tb.shape:
                return f"{la.module}.{name} {tuple(ta.shape)} vs {lb.module}.{name} {tuple(tb.shape)}"
            if not torch.equal(ta, tb):
                return f"{la.module}.{name} != {lb.module}.{name}"
    return None


def _merge_aliases(families: dict[str, list[_Layer]], kind: str) -> tuple[list[_Layer], list[str]]:
    candidates = [(name.split(":", 1)[1], layers) for name, layers in families.items() if name.startswith(kind + ":")]
    label = {"conv": "convolution", "dense": "dense"}[kind]
    if not candidates:
        raise ValueError(
            f"no SLL {label} layers found in the checkpoint (looked for modules holding "
            f"{'kernel, bias, q' if kind == 'conv' else 'weight, bias, q'}); is this a LipSim checkpoint?"
        )
    (first_name, kept), dropped = candidates[0], []
    for name, layers in candidates[1:]:
        diff = _same_layers(kept, layers)
        if diff is not None:
            raise ValueError(
                f"the checkpoint registers {label} layers under two names, {first_name or '<root>'!r} and "
                f"{name or '<root>'!r}, with different contents ({diff}). The authors' checkpoints store each layer "
                "twice with identical tensors; conflicting copies mean the file is inconsistent or from another "
                "architecture, so neither copy can be trusted."
            )
        dropped += [layer.module for layer in layers]
    return kept, dropped


# --- architecture -------------------------------------------------------------------------------------------------


def _infer_kwargs(convs: list[_Layer], denses: list[_Layer], embed_dim: int) -> dict[str, int]:
    kernels = {tuple(layer.tensors["kernel"].shape) for layer in convs}
    if len(kernels) != 1:
        raise ValueError(f"convolution layers have different kernel shapes {sorted(kernels)}; lipsim-paper-small "
                         "uses one shape (hidden, channels, 3, 3) for all of them")
    conv_hidden, channels, k, _ = kernels.pop()
    if k != 3:
        raise ValueError(f"convolution kernels are {k}x{k}; lipsim-paper-small uses 3x3")
    if channels < 3:
        raise ValueError(f"convolutions have {channels} channels; the network zero-pads RGB to >= 3 channels")
    weights = {tuple(layer.tensors["weight"].shape) for layer in denses}
    if len(weights) != 1:
        raise ValueError(f"dense layers have different weight shapes {sorted(weights)}; lipsim-paper-small uses one "
                         "shape (hidden, features) for all of them")
    linear_hidden, features = weights.pop()
    side = math.isqrt(features // channels) if features % channels == 0 else 0
    if side == 0 or side * side * channels != features:
        raise ValueError(
            f"dense layers take {features} features, which is not channels x side^2 for the {channels} convolution "
            f"channels (the published network: 45 x 14 x 14 = 8820)"
        )
    if embed_dim < 1 or embed_dim > features:
        raise ValueError(f"embed_dim must be in [1, {features}], got {embed_dim}")
    return {
        "channels": channels,
        "conv_depth": len(convs),
        "conv_hidden": conv_hidden,
        "linear_depth": len(denses),
        "linear_hidden": linear_hidden,
        "embed_dim": embed_dim,
        "input_size": 16 * side,
    }


def load_paper_checkpoint(
    src: str | os.PathLike[str],
    variant: str = "lipsim-paper-small",
    embed_dim: int = PAPER_EMBED_DIM,
    ignore: Sequence[str] = (),
) -> ConvertedCheckpoint:
    """Read an authors' LipSim checkpoint and map it onto a LipSim backbone, without writing anything.

    Args:
        src: the ``.pth`` file (a training checkpoint with ``model_state_dict``, or a bare state dict).
        variant: target backbone; only ``"lipsim-paper-small"`` is supported.
        embed_dim: number of leading features kept as the embedding (1792 for the published models).
        ignore: ``fnmatch`` patterns of source keys to leave out (e.g. ``["*.head.*"]``); reported as ignored.

    Returns:
        A :class:`ConvertedCheckpoint`; its ``state_dict`` loads strictly into
        ``create_backbone(variant, **backbone_kwargs)``.

    Raises:
        FileNotFoundError: ``src`` does not exist.
        ValueError: unreadable or unsafe pickle, missing or mis-shaped layers, conflicting duplicates, unsupported
            layers, non-trivial input normalisation, unsupported variant.
    """
    if variant not in SUPPORTED_VARIANTS:
        raise ValueError(f"variant must be one of {list(SUPPORTED_VARIANTS)}, got {variant!r}")
    path = Path(src)
    obj = _read_checkpoint(path)
    tensors, non_tensors, extra = _extract_state_dict(obj, path)
    families, ignored, checked = _families(tensors, ignore)
    convs, conv_dups = _merge_aliases(families, "conv")
    denses, dense_dups = _merge_aliases(families, "dense")
    kwargs = _infer_kwargs(convs, denses, embed_dim)

    state: dict[str, torch.Tensor] = {}
    mapping: dict[str, str] = {}
    for prefix, layers in (("convs", convs), ("linear", denses)):
        for i, layer in enumerate(layers):
            mapping[f"{prefix}.{i}"] = layer.module
            for name, value in layer.tensors.items():
                state[f"{prefix}.{i}.{name}"] = value.detach().to(torch.float32).contiguous()

    # Cross-check against the real module: every parameter it needs is present with the right shape. (Parameter
    # names are taken without duplicates: a backbone may register a module under two names, like the authors' model.)
    with torch.device("meta"):  # shapes only: no memory, no random initialisation
        own = dict(create_backbone(variant, **kwargs).named_parameters())
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                    for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or shapes:  # pragma: no cover - guarded by the checks above
        raise ValueError(f"internal mapping error: missing {missing[:8]}, unexpected {unexpected[:8]}, "
                         f"shapes {shapes[:8]}")
    for key, value in state.items():
        if not torch.isfinite(value).all():
            raise ValueError(f"tensor {key} (from {mapping[key.rsplit('.', 1)[0]]}) contains NaN or Inf")

    differs = {k: v for k, v in kwargs.items() if PAPER_ARCHITECTURE[k] != v}
    notes = []
    if differs:
        notes.append(f"architecture differs from the published network {PAPER_ARCHITECTURE}: {differs}; "
                     "expected for your own models, suspicious for the released checkpoints (a truncated file?)")
    return ConvertedCheckpoint(
        notes=notes,
        state_dict=state,
        backbone_kwargs=kwargs,
        variant=variant,
        source_name=path.name,
        source_sha256=sha256_file(path),
        mapping=mapping,
        duplicates=conv_dups + dense_dups,
        ignored_keys=sorted(ignored + non_tensors),
        checked_keys=checked,
        extra_entries=extra,
    )


def _output_path(src: Path, dst: str | os.PathLike[str] | None, overwrite: bool) -> Path:
    dst_path = Path(dst) if dst is not None else src.with_suffix(".safetensors")
    if dst_path.suffix != ".safetensors":
        raise ValueError(f"output must be a .safetensors file, got {dst_path}")
    if dst_path.exists() and not overwrite:
        raise FileExistsError(f"{dst_path} exists; pass overwrite=True (lipsim-convert --force) to replace it")
    return dst_path


def _write(converted: ConvertedCheckpoint, dst: Path) -> Path:
    # Write exactly the keys of the backbone's state_dict (what load_state_dict_strict expects). A backbone may
    # register a parameter under two names; each extra name gets its own copy, because safetensors refuses tensors
    # that share memory. The backbone is built on the meta device: only its names and parameter identities are needed.
    with torch.device("meta"):
        backbone = create_backbone(converted.variant, **converted.backbone_kwargs)
    canonical = {id(p): name for name, p in backbone.named_parameters()}
    snapshot: dict[str, torch.Tensor] = {}
    written: set[str] = set()
    for key, value in backbone.state_dict(keep_vars=True).items():
        name = canonical.get(id(value))
        if name is None:  # pragma: no cover - a persistent buffer the converter cannot fill
            raise ValueError(f"backbone {converted.variant!r} has state {key!r} that no checkpoint tensor provides")
        tensor = converted.state_dict[name]
        snapshot[key] = tensor.clone() if name in written else tensor
        written.add(name)
    holder = cast(nn.Module, SimpleNamespace(state_dict=lambda: snapshot))
    return save_weights(
        holder,
        dst,
        converted.variant,
        backbone_kwargs=converted.backbone_kwargs,
        projection="append",
        source=converted.source_name,
        source_sha256=converted.source_sha256,
        converted_by=f"lipsim-convert {__version__}",
        ignored_keys=converted.ignored_keys,
    )


def convert_checkpoint(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str] | None = None,
    variant: str = "lipsim-paper-small",
    embed_dim: int = PAPER_EMBED_DIM,
    ignore: Sequence[str] = (),
    overwrite: bool = False,
) -> Path:
    """Convert an authors' LipSim checkpoint to a safetensors file that ``LipSim(weights=...)`` loads.

    The file records ``variant``, the inferred ``backbone_kwargs``, the source file name and sha256, the ignored keys
    and ``projection="append"`` (pass ``projection="normalize"`` to :class:`~lipsim_metric.LipSim` for the paper's
    protocol). Keys that are not part of the network are reported with a :class:`UserWarning`; the full report is
    available from :func:`load_paper_checkpoint`.

    Args:
        src: the ``.pth`` checkpoint.
        dst: output ``.safetensors`` path; default: ``src`` with the suffix replaced.
        variant: target backbone (``"lipsim-paper-small"``).
        embed_dim: embedding size kept by the final truncation (1792 for the published models).
        ignore: ``fnmatch`` patterns of source keys to leave out.
        overwrite: replace an existing ``dst``.

    Returns:
        The path written.

    Raises:
        FileNotFoundError: ``src`` does not exist.
        FileExistsError: ``dst`` exists and ``overwrite`` is false.
        ValueError: see :func:`load_paper_checkpoint`; also a ``dst`` not ending in ``.safetensors``.

    Example::

        out = convert_checkpoint("model.ckpt-1.pth", "lipsim-paper-small.margin0.5.safetensors")
        metric = LipSim(weights=out)
    """
    src_path = Path(src)
    dst_path = _output_path(src_path, dst, overwrite)
    converted = load_paper_checkpoint(src_path, variant=variant, embed_dim=embed_dim, ignore=ignore)
    if converted.ignored_keys:
        warnings.warn(f"{src_path.name}: ignored keys that are not part of the network: "
                      f"{_short(converted.ignored_keys)}", UserWarning, stacklevel=2)
    for note in converted.notes:
        warnings.warn(f"{src_path.name}: {note}", UserWarning, stacklevel=2)
    return _write(converted, dst_path)


# --- command line --------------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lipsim-convert",
        description="Convert an authors' LipSim checkpoint (.pth, github.com/SaraGhazanfari/lipsim) to a "
                    "safetensors file for lipsim-metric. The checkpoint is loaded with weights_only=True.",
        epilog="Exit codes: 0 converted, 2 bad input. See docs/paper.md.",
    )
    parser.add_argument("checkpoint", help="the .pth file")
    parser.add_argument("-o", "--output", help="output .safetensors (default: CHECKPOINT with .safetensors suffix)")
    parser.add_argument("--variant", default="lipsim-paper-small", choices=SUPPORTED_VARIANTS)
    parser.add_argument("--embed-dim", type=int, default=PAPER_EMBED_DIM,
                        help=f"features kept as the embedding (default {PAPER_EMBED_DIM}, as published)")
    parser.add_argument("--ignore", action="append", default=[], metavar="PATTERN",
                        help="fnmatch pattern of source keys to leave out (repeatable)")
    parser.add_argument("-f", "--force", action="store_true", help="overwrite the output file")
    parser.add_argument("-q", "--quiet", action="store_true", help="do not print the conversion report")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``lipsim-convert CKPT -o OUT.safetensors``; returns the exit code (0 ok, 2 bad input)."""
    args = _parser().parse_args(argv)
    try:
        dst = _output_path(Path(args.checkpoint), args.output, args.force)
        converted = load_paper_checkpoint(args.checkpoint, args.variant, args.embed_dim, args.ignore)
        out = _write(converted, dst)
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"lipsim-convert: error: {exc}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(converted.summary(), file=sys.stderr)
        print(f"wrote {out}", file=sys.stderr)
    elif converted.ignored_keys or converted.notes:  # unknown keys are always reported
        print(f"ignored keys: {_short(converted.ignored_keys)}", file=sys.stderr)
        for note in converted.notes:
            print(f"note: {note}", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
