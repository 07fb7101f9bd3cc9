"""Certified retrieval at scale: a FAISS index of LipSim embeddings whose certificate needs only the top-k results.

The exact backend (:class:`lipsim_metric.retrieval.EmbeddingIndex`) certifies the top-1 answer ``b`` with the minimum
over **every** other gallery item ``c`` of ``rho_c = (m_c - tau) / ||e_b - e_c||`` (``m_c = d(q, c) - d(q, b)``,
``tau`` = ``FLOAT_TOLERANCE``). Here FAISS (``IndexFlatIP``: exact inner-product search, BLAS-speed, optional extra
``faiss``) returns only the ``k`` nearest items, and the certificate is

    R = min( exact radii of the k - 1 returned runners-up ,  radius of the bound L for all unreturned items )

where, with ``theta_b`` and ``theta_k`` the angles from the query embedding to ``b`` and to the k-th item (its
similarity raised by ``tau`` to cover disagreements between FAISS' and torch's float32 inner products),
``m = cos theta_b - cos theta_k`` and, when ``m > tau``,

    L = max( (m - tau) / 2 ,  min( sin((theta_k - theta_b) / 2) - tau / (2 sin((theta_b + theta_k) / 2)),
                                   cos theta_b - tau / 2 ) )

(``L = 0`` otherwise). Every unreturned ``c`` has ``rho_c >= L`` (proof in ``docs/robustness.md``, "Certified
retrieval at scale"), so ``R`` is never larger than the exhaustive radius and is exactly as sound. The angular term is
what the geometry allows: for unit vectors, ``m_c / ||e_b - e_c|| >= sin((theta_c - theta_b) / 2)``, with equality
when ``c`` lies opposite ``b`` in the plane of the query; the naive ``(m - tau) / 2`` (``||e_b - e_c|| <= 2``) is up to
``1 / sin((theta_b + theta_k) / 2)`` times smaller. A relative allowance of 1e-6 covers the float rounding of ``L``.

The bound is valid only if the returned items really are the ``k`` nearest (up to ``tau``), which is why only exact
flat indexes are accepted; approximate indexes (IVF, HNSW, PQ) may miss the true nearest item and cannot be certified.

Example:
    >>> import torch
    >>> from lipsim_metric import LipSim
    >>> metric = LipSim(pretrained=False)
    >>> gallery = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    >>> index = FaissIndex.from_tensor(metric, gallery)  # doctest: +SKIP
    >>> index.certified_top1(gallery[2:3], k=3).item.item()  # doctest: +SKIP
    2
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor

from .certificates import FLOAT_TOLERANCE, Projection, invert_norm_bound
from .metric import EmbeddingResult, LipSim
from .retrieval import CertifiedTop1, EmbeddingIndex, SearchResult, certified_top1_embeddings, gallery_distances

__all__ = ["unreturned_margin_bound", "certified_top1_from_candidates", "FaissIndex"]

#: Relative allowance for the float rounding of the bound (it is computed in float64, the exact radii in float32).
_BOUND_SLACK = 1e-6


def unreturned_margin_bound(d_best: Tensor, d_kth: Tensor, tau: float = FLOAT_TOLERANCE) -> Tensor:
    """Lower bound ``L`` on ``rho_c = (m_c - tau) / ||e_b - e_c||`` for every item ``c`` not among the top ``k``.

    Args:
        d_best: LipSim distance ``d(q, b)`` of the top-1 item, shape ``(Q,)``.
        d_kth: distance of the k-th (farthest returned) item, ``(Q,)``; every unreturned item is at least as far, up
            to ``tau``.
        tau: the float allowance (``FLOAT_TOLERANCE``), used once for the ordering and once for the margin.

    Returns:
        ``L`` ``(Q,)``, ``>= 0`` (0 when the k-th margin does not exceed ``tau``), in embedding units.
    """
    s_b = (1.0 - d_best.double()).clamp(-1.0, 1.0)
    s_k = (1.0 - d_kth.double() + tau).clamp(-1.0, 1.0)  # upper bound on every unreturned similarity
    margin = s_b - s_k
    theta_b, theta_k = torch.arccos(s_b), torch.arccos(s_k)
    naive = (margin - tau) / 2.0
    half_sum = torch.sin((theta_b + theta_k) / 2.0).clamp_min(1e-300)
    angular = torch.sin((theta_k - theta_b) / 2.0) - tau / (2.0 * half_sum)
    far = torch.cos(theta_b) - tau / 2.0
    bound = torch.maximum(naive, torch.minimum(angular, far)).clamp_min(0.0) * (1.0 - _BOUND_SLACK)
    return torch.where(margin > tau, bound, torch.zeros_like(bound))


def certified_top1_from_candidates(
    e_query: Tensor,
    query_norm: Tensor,
    candidate_ids: Tensor,
    candidate_embeddings: Tensor,
    gallery_size: int,
    input_norm: float | Tensor = 1.0,
    projection: Projection = "append",
    constant: float = 1.0,
) -> CertifiedTop1:
    """Certified top-1 from the exact top-``k`` candidates of each query (functional core of :class:`FaissIndex`).

    Args:
        e_query: unit-norm query embeddings ``(Q, D)``.
        query_norm: ``||g(query)||`` ``(Q,)``.
        candidate_ids: ``(Q, k)`` gallery indices of the ``k`` nearest items of each query (any order).
        candidate_embeddings: ``(Q, k, D)`` their exact embeddings.
        gallery_size: ``N``; when ``k == N`` nothing is unreturned and the result equals the exhaustive one.
        input_norm, projection, constant: as in :func:`lipsim_metric.retrieval.certified_top1_embeddings`.

    Returns:
        A :class:`~lipsim_metric.retrieval.CertifiedTop1`; the radius is never larger than the exhaustive one.
    """
    items, radii = [], []
    for q, r, ids, vectors in zip(e_query, query_norm, candidate_ids, candidate_embeddings, strict=True):
        order = torch.argsort(ids)  # ascending gallery index: the exhaustive tie-break (lowest index first)
        ids, vectors = ids[order], vectors[order].float()
        top = certified_top1_embeddings(q[None].float(), vectors, r[None], input_norm, projection, constant)
        radius = top.radius[0]
        if len(ids) < gallery_size:
            distances = gallery_distances(q[None].float(), vectors)[0]
            bound = unreturned_margin_bound(distances[top.item[0]][None], distances.max()[None])
            unreturned = invert_norm_bound(bound.float(), r[None].float(), projection, constant) / input_norm
            radius = torch.minimum(radius, unreturned[0].to(radius.device))
        items.append(ids[top.item[0]])
        radii.append(radius)
    return CertifiedTop1(torch.stack(items), torch.stack(radii))


def _faiss() -> Any:
    try:
        import faiss
    except ImportError:
        raise ImportError("FaissIndex needs FAISS: pip install \"lipsim-metric[faiss]\" (or pip install faiss-cpu)"
                          ) from None
    return faiss


class FaissIndex:
    """A FAISS ``IndexFlatIP`` of LipSim embeddings: the answers of :class:`~lipsim_metric.retrieval.EmbeddingIndex`,
    BLAS-speed search, and a certified top-1 from the top-``k`` results alone.

    Args:
        metric: the LipSim metric whose embeddings are stored (queries use it too).
        embeddings: optional unit-norm embeddings ``(N, D)`` (tensor or array) to add now; :meth:`add` adds more.
        names: optional name per added item.

    Raises:
        TypeError: ``metric`` is not a LipSim. ImportError: FAISS is not installed.
    """

    def __init__(self, metric: LipSim, embeddings: Tensor | np.ndarray | None = None,
                 names: Sequence[str] | None = None) -> None:
        if not isinstance(metric, LipSim):
            raise TypeError(f"metric must be a lipsim_metric.LipSim, got {type(metric).__name__}")
        self.metric = metric
        self.names: list[str] = []
        self.index: Any = None
        if embeddings is not None:
            self.add(embeddings, names)

    def __len__(self) -> int:
        return 0 if self.index is None else int(self.index.ntotal)

    def __repr__(self) -> str:
        dim = None if self.index is None else self.index.d
        return f"FaissIndex(items={len(self)}, dim={dim}, metric={self.metric.variant!r})"

    def add(self, embeddings: Tensor | np.ndarray, names: Sequence[str] | None = None) -> None:
        """Append unit-norm embeddings ``(n, D)``; call it chunk by chunk for galleries that do not fit twice."""
        array = embeddings.detach().cpu().float().numpy() if isinstance(embeddings, Tensor) else embeddings
        array = np.ascontiguousarray(array, dtype=np.float32)
        if array.ndim != 2 or array.shape[0] == 0:
            raise ValueError(f"embeddings must be a non-empty (n, D) array, got shape {array.shape}")
        norms = np.linalg.norm(array, axis=1)
        if not np.all(np.abs(norms - 1.0) < 1e-3):
            raise ValueError("embeddings must be unit-norm rows (LipSim.embed output); got norms in "
                             f"[{norms.min():.4g}, {norms.max():.4g}]")
        if self.index is None:
            self.index = _faiss().IndexFlatIP(array.shape[1])
        elif array.shape[1] != self.index.d:
            raise ValueError(f"embeddings have dimension {array.shape[1]}, the index {self.index.d}")
        start = len(self)
        new = [str(start + i) for i in range(len(array))] if names is None else [str(n) for n in names]
        if len(new) != len(array):
            raise ValueError(f"got {len(new)} names for {len(array)} embeddings")
        self.index.add(array)
        self.names += new

    @classmethod
    def from_embedding_index(cls, index: EmbeddingIndex) -> FaissIndex:
        """The same gallery as an exact :class:`~lipsim_metric.retrieval.EmbeddingIndex`."""
        return cls(index.metric, index.embeddings, index.names)

    @classmethod
    def from_tensor(cls, metric: LipSim, images: Tensor, batch_size: int = 64,
                    names: Sequence[str] | None = None) -> FaissIndex:
        """Embed a batch of gallery images (see :meth:`lipsim_metric.retrieval.EmbeddingIndex.from_tensor`)."""
        return cls.from_embedding_index(EmbeddingIndex.from_tensor(metric, images, batch_size, names))

    @classmethod
    def from_folder(cls, metric: LipSim, folder: str | os.PathLike[str], batch_size: int = 32,
                    recursive: bool = True) -> FaissIndex:
        """Embed every image of a folder (see :meth:`lipsim_metric.retrieval.EmbeddingIndex.from_folder`)."""
        return cls.from_embedding_index(EmbeddingIndex.from_folder(metric, folder, batch_size, recursive))

    def _check_k(self, k: int) -> int:
        if isinstance(k, bool) or not isinstance(k, int):
            raise TypeError(f"k must be an int, got {type(k).__name__}")
        if not 1 <= k <= len(self):
            raise ValueError(f"k must be between 1 and the gallery size {len(self)}, got {k}")
        return k

    def _candidates(self, e_query: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """FAISS' top-``k`` ids ``(Q, k)`` and their stored (exact) embeddings ``(Q, k, D)``."""
        _, ids = self.index.search(np.ascontiguousarray(e_query.detach().cpu().float().numpy()), k)
        if (ids < 0).any():
            raise RuntimeError("FAISS returned fewer items than asked for")
        vectors = self.index.reconstruct_batch(ids.reshape(-1)).reshape(*ids.shape, -1)
        return torch.from_numpy(ids), torch.from_numpy(vectors).to(e_query.device)

    def _embed(self, x: Tensor) -> EmbeddingResult:
        device = next(self.metric.parameters()).device
        with torch.no_grad(), torch.autocast(device_type=device.type, enabled=False):
            return cast(EmbeddingResult, self.metric.embed(x.to(device).float(), return_norm=True))

    def search_embeddings(self, e_query: Tensor, k: int = 1) -> SearchResult:
        """:meth:`search` for query embeddings ``(Q, D)``: FAISS' candidates re-ranked by exact LipSim distances."""
        k = self._check_k(k)
        ids, vectors = self._candidates(e_query, k)
        distances = torch.stack([gallery_distances(q[None].float(), v)[0] for q, v in zip(e_query, vectors,
                                                                                            strict=True)])
        # ties broken by the lower gallery index, as EmbeddingIndex.search does
        order = torch.from_numpy(np.lexsort((ids.numpy(), distances.cpu().numpy())))
        return SearchResult(torch.gather(ids, 1, order), torch.gather(distances.cpu(), 1, order))

    def search(self, query: Tensor, k: int = 1) -> SearchResult:
        """The ``k`` gallery items nearest to each query image ``(Q, C, H, W)``, nearest first."""
        return self.search_embeddings(self._embed(query).embedding, k)

    def certified_top1_embeddings(self, e_query: Tensor, query_norm: Tensor, input_norm: float | Tensor = 1.0,
                                  k: int = 16) -> CertifiedTop1:
        """:meth:`certified_top1` for query embeddings and norms (radius in backbone units / ``input_norm``)."""
        k = self._check_k(min(k, len(self)))
        ids, vectors = self._candidates(e_query, k)
        return certified_top1_from_candidates(e_query, query_norm, ids, vectors, len(self), input_norm,
                                              self.metric.projection, self.metric.constant)

    def certified_top1(self, query: Tensor, k: int = 16) -> CertifiedTop1:
        """Nearest item of each query image and a certified l2 radius, from FAISS' top-``k`` (``k >= 2`` to certify
        anything; a larger ``k`` gives a radius closer to the exhaustive one).

        Args:
            query: images ``(Q, C, H, W)`` in ``metric.input_range``; the radius is in these units.
            k: candidates per query (capped at the gallery size).
        """
        result = self._embed(query)
        return self.certified_top1_embeddings(result.embedding, result.augmented_norm, self.metric.input_norm(query), k)

