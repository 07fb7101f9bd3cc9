"""The LipSim perceptual metric: a 1-Lipschitz embedding compared by cosine distance, with certified radii.

Reference: S. Ghazanfari, A. Araujo, P. Krishnamurthy, F. Khorrami, S. Garg. "LipSim: A Provably Robust Perceptual
Similarity Metric". ICLR 2024. https://arxiv.org/abs/2310.18274 (official code: github.com/SaraGhazanfari/lipsim).
Proofs of every certificate: ``docs/certificates.md``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, NamedTuple, get_args, overload

import torch
from torch import nn

from .backbones import DEFAULT_BACKBONE, LipschitzBackbone, list_backbones
from .certificates import (
    Projection,
    TwoAFCCertificate,
    certify_2afc_embeddings,
    cosine_distance,
    distance_radius,
    project_embedding,
)
from .hub import ResolvedWeights, resolve_pretrained
from .layers import check_lipschitz_declarations
from .preprocess import check_input_range, check_threshold, input_operator_norm, to_backbone_input, validate_images
from .pretrained import DEFAULT_WEIGHTS, PretrainedCfg, default_pretrained, load_state_dict_strict, untrained_cfg
from .reduction import Reduction, check_reduction, reduce_distances

__all__ = ["LipSim", "DistanceResult", "EmbeddingResult", "create_metric"]

WeightsSpec = str | os.PathLike[str] | PretrainedCfg


class _DistancePair(NamedTuple):
    distance: torch.Tensor
    radius: torch.Tensor


class DistanceResult(_DistancePair):
    """Distances with their certified radii; every field has shape ``(N,)``.

    It unpacks as the pair ``(distance, radius)`` (``d, radius = metric(x0, x1, return_radius=True)``); the per-side
    radii are attributes.

    Attributes:
        distance: ``d(x0, x1) = 1 - cos(e(x0), e(x1))`` in ``[0, 2]``.
        radius: certified l2 radius in the caller's input units for the decision ``d > threshold`` (or ``<``):
            ``min(radius_x0, radius_x1)``, valid for a perturbation of either image. With ``threshold = 0``: an
            image must change by at least this much before LipSim could consider it identical to the other.
        radius_x0: the radius for perturbing ``x0`` alone, in ``x0``'s input units (its own size, channels, range).
        radius_x1: the radius for perturbing ``x1`` alone, in ``x1``'s input units. When the two images have
            different sizes (or one is grayscale) the two differ, and each is the exact bound for its side.
    """

    radius_x0: torch.Tensor
    radius_x1: torch.Tensor

    def __new__(cls, distance: torch.Tensor, radius: torch.Tensor, radius_x0: torch.Tensor | None = None,
                radius_x1: torch.Tensor | None = None) -> DistanceResult:
        self = super().__new__(cls, distance, radius)
        # A tuple subclass keeps extra attributes in its __dict__ (tuples cannot have non-empty __slots__).
        self.radius_x0 = radius if radius_x0 is None else radius_x0
        self.radius_x1 = radius if radius_x1 is None else radius_x1
        return self

    @classmethod
    def from_sides(cls, distance: torch.Tensor, radius_x0: torch.Tensor, radius_x1: torch.Tensor) -> DistanceResult:
        """Build the result from the two per-side radii (``radius`` is their minimum)."""
        return cls(distance, torch.minimum(radius_x0, radius_x1), radius_x0, radius_x1)

    def __getnewargs__(self) -> tuple[torch.Tensor, ...]:  # pickle and copy keep the per-side radii
        return (self.distance, self.radius, self.radius_x0, self.radius_x1)

    def _replace(self, **kwargs: torch.Tensor) -> DistanceResult:  # type: ignore[override]
        fields = {"distance": self.distance, "radius": self.radius, "radius_x0": self.radius_x0,
                  "radius_x1": self.radius_x1}
        unknown = set(kwargs) - set(fields)
        if unknown:
            raise ValueError(f"DistanceResult has no field(s) {sorted(unknown)}; fields: {sorted(fields)}")
        fields.update(kwargs)
        return DistanceResult(**fields)

    def __repr__(self) -> str:
        return (f"DistanceResult(distance={self.distance!r}, radius={self.radius!r}, radius_x0={self.radius_x0!r}, "
                f"radius_x1={self.radius_x1!r})")


class _EmbeddingPair(NamedTuple):
    embedding: torch.Tensor
    augmented_norm: torch.Tensor


class EmbeddingResult(_EmbeddingPair):
    """Unit-norm embeddings with the norm of the augmented features they were projected from.

    It unpacks as ``(embedding, augmented_norm)`` (``emb, norm = metric.embed(x, return_norm=True)``).

    Attributes:
        embedding: unit vectors ``(N, D')``.
        augmented_norm: ``||[f(x); c]||`` ``(N,)``, the norm of the backbone features with the constant coordinate
            appended (``||f(x)||`` with ``projection="normalize"``), *not* the norm of ``embedding`` (which is 1);
            the tight certificates use it (Claim 2 of docs/certificates.md).
        norm: deprecated alias of ``augmented_norm`` (``DeprecationWarning``).
    """

    def __new__(cls, embedding: torch.Tensor, augmented_norm: torch.Tensor | None = None, *,
                norm: torch.Tensor | None = None) -> EmbeddingResult:
        if norm is not None:
            if augmented_norm is not None:
                raise TypeError("EmbeddingResult got both augmented_norm and its deprecated alias norm; pass "
                                "augmented_norm only")
            warnings.warn("EmbeddingResult(norm=...) is deprecated; use augmented_norm=...", DeprecationWarning,
                          stacklevel=2)
            augmented_norm = norm
        if augmented_norm is None:
            raise TypeError("EmbeddingResult needs augmented_norm")
        return super().__new__(cls, embedding, augmented_norm)

    @property
    def norm(self) -> torch.Tensor:
        """Deprecated: the field is :attr:`augmented_norm` (it is ``||[f(x); c]||``, not the embedding's norm)."""
        warnings.warn("EmbeddingResult.norm is deprecated (it is ||[f(x); c]||, not the norm of the embedding); "
                      "use .augmented_norm", DeprecationWarning, stacklevel=2)
        return self.augmented_norm


class LipSim(nn.Module):
    """Provably robust perceptual distance (LPIPS-style drop-in).

    ``LipSim()(img0, img1)`` returns distances of shape ``(N,)`` for float images ``(N, 3, H, W)`` in ``[0, 1]``. The
    embedding network is 1-Lipschitz, so perturbing an input by ``delta`` moves the distance by at most
    ``||delta||`` (times the preprocessing gain, see :attr:`certificates`), and 2AFC judgements come with certified
    radii (:meth:`certify_2afc`). The metric's parameters are frozen; gradients flow to the inputs, so it can be used
    as a loss.

    Construction. ``LipSim()`` loads :data:`~lipsim_metric.pretrained.DEFAULT_WEIGHTS`; the timm-style front door
    is :meth:`from_pretrained` (or :func:`create_metric`). Either way the weights are first resolved to a
    :class:`~lipsim_metric.pretrained.PretrainedCfg` and a local file (:func:`lipsim_metric.hub.resolve_pretrained`:
    registered name -> shipped ``weights/`` / ``$LIPSIM_WEIGHTS_DIR`` -> Hugging Face Hub; a path -> its metadata),
    then the backbone is built from the config and loaded strictly from the file; the config is kept as
    :attr:`pretrained_cfg`.

    Args:
        variant: backbone name (see :func:`lipsim_metric.list_backbones`); default: the variant of ``weights``.
        weights: a registered name (:func:`lipsim_metric.list_pretrained`), a path to a ``.safetensors`` file, or a
            :class:`~lipsim_metric.pretrained.PretrainedCfg`. Default: :data:`lipsim_metric.pretrained.DEFAULT_WEIGHTS`.
        pretrained: ``False`` builds an untrained (random) network of ``variant``; only when asked for explicitly.
        input_range: ``"[0,1]"`` (default) or ``"[-1,1]"`` (LPIPS convention).
        projection: ``"append"`` (default; append a constant coordinate, then normalise: always certifiable) or
            ``"normalize"`` (the paper's evaluation protocol; certifiable only where ``||f(x)|| >= 1``). Default: the
            one the weights record.
        check_inputs: validate value range and finiteness on every call (one device sync per input).
        cache_dir: Hugging Face cache folder used if the weights must be downloaded.
        constant: the appended coordinate ``c`` (``projection="append"``), > 0. Default: the one the weights record
            (metadata ``constant``; 1 for every registered weight file).

    Raises:
        FileNotFoundError: the weights cannot be found (never falls back to random weights).
        ValueError: unknown names, or a weights file that does not fit the backbone.

    Example:
        >>> import torch
        >>> from lipsim_metric import LipSim
        >>> metric = LipSim(pretrained=False)  # LipSim() loads the shipped weights
        >>> x0, x1 = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
        >>> metric(x0, x1).shape
        torch.Size([2])
    """

    def __init__(
        self,
        variant: str | None = None,
        weights: WeightsSpec | None = None,
        pretrained: bool = True,
        input_range: str = "[0,1]",
        projection: Projection | None = None,
        check_inputs: bool = True,
        cache_dir: str | os.PathLike[str] | None = None,
        constant: float | None = None,
    ) -> None:
        super().__init__()
        check_input_range(input_range)
        if constant is not None and not constant > 0:
            raise ValueError(f"constant must be > 0 (it bounds the embedding norm from below), got {constant}")
        self.input_range = input_range
        self.check_inputs = check_inputs
        if pretrained:
            source: ResolvedWeights | None = resolve_pretrained(DEFAULT_WEIGHTS if weights is None else weights,
                                                                variant=variant, cache_dir=cache_dir)
        elif weights is not None:
            raise ValueError("weights were given with pretrained=False; drop one of them")
        else:
            source = None
        self.weights_name: str | None = None if source is None else source.name
        self.weights_path: Path | None = None if source is None else source.path
        cfg = untrained_cfg(variant or DEFAULT_BACKBONE) if source is None else source.cfg
        self._build(cfg, self.weights_path, projection)
        self.constant = float(cfg.constant if constant is None else constant)

    @classmethod
    def from_pretrained(cls, name_or_path: WeightsSpec = DEFAULT_WEIGHTS, **kwargs: Any) -> LipSim:
        """Build the metric from registered weights, a weights file, or a :class:`~lipsim_metric.PretrainedCfg`.

        Args:
            name_or_path: a name from :func:`lipsim_metric.list_pretrained` (default: the shipped default), a path
                to a ``.safetensors`` file (a file without metadata needs ``variant=``), or a config (registered or
                not; its file is looked up like a registered one's, sha256 checked).
            **kwargs: the other arguments of :class:`LipSim` (``variant``, ``input_range``, ``projection``,
                ``check_inputs``, ``cache_dir``, ``constant``).

        Returns:
            The metric, frozen and in eval mode; ``metric.pretrained_cfg`` describes its weights.

        Raises:
            TypeError: ``weights=`` or ``pretrained=`` given (the first argument is the weights).
            FileNotFoundError, ValueError: as for :class:`LipSim`.

        Example:
            >>> from lipsim_metric import LipSim
            >>> metric = LipSim.from_pretrained("lipsim-fast.perceptual-cpu-v4")  # same as LipSim()
            >>> metric.pretrained_cfg.projection
            'append'
        """
        for bad in ("weights", "pretrained"):
            if bad in kwargs:
                raise TypeError(f"from_pretrained() takes the weights as its first argument; drop {bad}= (for a "
                                "random network use LipSim(pretrained=False, variant=...))")
        return cls(weights=name_or_path, pretrained=True, **kwargs)

    def _build(self, cfg: PretrainedCfg, state: str | os.PathLike[str] | Mapping[str, torch.Tensor] | None,
               projection: Projection | None) -> None:
        """Build the backbone described by ``cfg`` and load ``state`` (a file or a state dict) into it, strictly."""
        self.projection: Projection = projection or cfg.projection
        if self.projection not in get_args(Projection):
            raise ValueError(f"projection must be 'append' or 'normalize', got {self.projection!r}")
        self.pretrained_cfg = cfg
        self.variant = cfg.variant
        self.backbone: LipschitzBackbone = cfg.build_backbone()
        if state is not None:
            load_state_dict_strict(self.backbone, state)
        self.backbone.requires_grad_(False)
        self.backbone.eval()

    def __setattr__(self, name: str, value: Any) -> None:
        # Whatever backbone LipSim certifies must be built from blocks with a declared Lipschitz bound <= 1.
        if name == "backbone" and isinstance(value, nn.Module):
            check_lipschitz_declarations(value)
        super().__setattr__(name, value)

    def train(self, mode: bool = True) -> LipSim:
        """Set the training flag of the metric; the backbone stays in eval mode.

        The backbone has no train-mode behaviour, so an eval-mode backbone is left untouched: its folded-weight cache
        survives a surrounding model's ``.train()`` / ``.eval()`` calls. (To fine-tune the backbone, call
        ``metric.backbone.train()`` and ``requires_grad_(True)`` on it.)
        """
        self.training = mode
        for child in self.children():
            if child is not self.backbone:
                child.train(mode)
        if self.backbone.training:  # only a real mode change touches the cache
            self.backbone.eval()
        return self

    def refresh(self) -> None:
        """Recompute the backbone's cached folded weights on the next call.

        Needed only after editing parameters through ``.data`` (e.g. ``p.data.mul_(...)``, an old-style EMA,
        pruning), which PyTorch does not record; every other change (``load_state_dict``, optimiser steps, in-place
        edits under ``torch.no_grad()``, ``.to()``) is detected automatically. See docs/certificates.md.
        """
        for module in self.backbone.modules():
            refresh = getattr(module, "refresh", None)
            if callable(refresh):
                refresh()

    @property
    def input_size(self) -> int:
        """Side of the square backbone input; other sizes are resized to it."""
        return self.backbone.input_size

    def _check(self, x: Any, name: str) -> torch.Tensor:
        return validate_images(x, name, self.input_range, check_values=self.check_inputs)

    def input_norm(self, x: torch.Tensor) -> float:
        """Operator-norm bound of the preprocessing for inputs shaped like ``x`` (caller -> backbone units)."""
        _, c, h, w = x.shape
        return input_operator_norm(h, w, c, self.input_size, self.input_range)

    def embed(self, x: torch.Tensor, return_norm: bool = False) -> torch.Tensor | EmbeddingResult:
        """Unit-norm embeddings of a batch of images.

        Args:
            x: float images ``(N, C, H, W)``, ``C`` in {1, 3}, values in ``input_range``.
            return_norm: also return ``||[f(x); c]||``: an :class:`EmbeddingResult` ``(embedding, augmented_norm)``.

        Returns:
            ``(N, D + 1)`` unit vectors (``D`` backbone features plus the constant coordinate; ``(N, D)`` with
            ``projection="normalize"``), in float32 even under autocast.
        """
        out = self._embed(self._check(x, "x"))
        return out if return_norm else out.embedding

    def _embed(self, x: torch.Tensor) -> EmbeddingResult:
        features = self.backbone(to_backbone_input(x, self.input_size, self.input_range))
        return EmbeddingResult(*project_embedding(features, self.projection, self.constant))

    def _embed_fp32(self, x: torch.Tensor) -> EmbeddingResult:
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self._embed(x.float())

    @overload
    def forward(self, x0: torch.Tensor, x1: torch.Tensor, return_radius: Literal[False] = ...,
                threshold: float = ..., reduction: Reduction = ...) -> torch.Tensor: ...

    @overload
    def forward(self, x0: torch.Tensor, x1: torch.Tensor, return_radius: Literal[True],
                threshold: float = ..., reduction: Literal["none"] = ...) -> DistanceResult: ...

    def forward(self, x0: torch.Tensor, x1: torch.Tensor, return_radius: bool = False,
                threshold: float = 0.0, reduction: Reduction = "none") -> torch.Tensor | DistanceResult:
        """Cosine distance between the embeddings of ``x0`` and ``x1``.

        Args:
            x0: images ``(N, C, H, W)``.
            x1: images of the same shape as ``x0`` (``N`` must match; ``H, W`` may differ).
            return_radius: also return certified radii (computed in float32, autocast disabled).
            threshold: the decision threshold the radius certifies (see :class:`DistanceResult`).
            reduction: ``"none"`` (default, ``(N,)``), ``"mean"`` or ``"sum"`` of the distances (0-dim); only
                ``"none"`` with ``return_radius`` (a radius belongs to one pair and is never reduced).

        Returns:
            Distances ``(N,)`` (reduced as asked), or a :class:`DistanceResult` when ``return_radius``.
        """
        x0, x1 = self._check(x0, "x0"), self._check(x1, "x1")
        threshold = check_threshold(threshold)
        if check_reduction(reduction) != "none" and return_radius:
            raise ValueError(f"reduction={reduction!r} applies to distances only; radii are per pair. Pass "
                             "reduction='none' with return_radius=True and reduce result.distance yourself.")
        if x0.shape[0] != x1.shape[0]:
            raise ValueError(f"x0 and x1 must have the same batch size, got {x0.shape[0]} and {x1.shape[0]}")
        if not return_radius:
            return reduce_distances(cosine_distance(self._embed(x0).embedding, self._embed(x1).embedding), reduction)
        r0, r1 = self._embed_fp32(x0), self._embed_fp32(x1)
        dist = cosine_distance(r0.embedding, r1.embedding)
        kw = dict(threshold=threshold, projection=self.projection, constant=self.constant)
        rad0 = distance_radius(dist, r0.augmented_norm, input_norm=self.input_norm(x0), **kw)  # type: ignore[arg-type]
        rad1 = distance_radius(dist, r1.augmented_norm, input_norm=self.input_norm(x1), **kw)  # type: ignore[arg-type]
        return DistanceResult.from_sides(dist, rad0, rad1)

    def certify_2afc(self, ref: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor) -> TwoAFCCertificate:
        """Two-alternative forced choice with a certified radius for perturbations of the reference.

        Args:
            ref: reference images ``(N, C, H, W)``.
            x0, x1: the two candidates, same batch size.

        Returns:
            A :class:`~lipsim_metric.certificates.TwoAFCCertificate`: ``prediction`` (1 if ``x1`` is closer),
            ``margin``, ``radius`` (l2, caller units, for perturbations of ``ref``), ``d0``, ``d1``.
        """
        ref, x0, x1 = self._check(ref, "ref"), self._check(x0, "x0"), self._check(x1, "x1")
        if not ref.shape[0] == x0.shape[0] == x1.shape[0]:
            raise ValueError(f"ref, x0, x1 must have the same batch size, got {ref.shape[0]}, {x0.shape[0]}, "
                             f"{x1.shape[0]}")
        with torch.no_grad():
            er, e0, e1 = self._embed_fp32(ref), self._embed_fp32(x0), self._embed_fp32(x1)
        return certify_2afc_embeddings(er.embedding, e0.embedding, e1.embedding, er.augmented_norm,
                                       input_norm=self.input_norm(ref), projection=self.projection,
                                       constant=self.constant)

    def extra_repr(self) -> str:
        return (f"variant={self.variant!r}, weights={self.weights_name or self.weights_path}, "
                f"input_range={self.input_range!r}, projection={self.projection!r}")


def create_metric(name: WeightsSpec | None = None, pretrained: bool = True, **kwargs: Any) -> LipSim:
    """timm-style factory: ``create_metric()`` is ``LipSim()``.

    Args:
        name: registered weights (``"lipsim-fast.perceptual-cpu-v4"``), a backbone variant (``"lipsim-fast"``: its
            default weights, or with ``pretrained=False`` a random network), a ``.safetensors`` path or a
            :class:`~lipsim_metric.PretrainedCfg`. Default: the shipped default weights.
        pretrained: ``False`` for a random network; ``name`` must then be a variant (or ``None``).
        **kwargs: the other arguments of :class:`LipSim`.

    Raises:
        ValueError: ``pretrained=False`` with weights; and as for :class:`LipSim`.

    Example:
        >>> from lipsim_metric import create_metric
        >>> create_metric("lipsim-fast", pretrained=False).variant
        'lipsim-fast'
    """
    if isinstance(name, str) and name in list_backbones():
        if pretrained:
            return LipSim.from_pretrained(default_pretrained(name), **kwargs)
        return LipSim(variant=name, pretrained=False, **kwargs)
    if not pretrained:
        if name is not None:
            raise ValueError(f"pretrained=False builds a random network of a variant ({list_backbones()}); "
                             f"{str(name)!r} names weights. Drop pretrained=False, or pass a variant name.")
        return LipSim(pretrained=False, **kwargs)
    return LipSim.from_pretrained(DEFAULT_WEIGHTS if name is None else name, **kwargs)
