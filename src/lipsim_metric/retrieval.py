"""Image retrieval with LipSim embeddings, and a certificate that the top-1 answer cannot be changed.

The paper's application (Ghazanfari et al., ICLR 2024, Sec. 5.3, "image retrieval"): a gallery is embedded once; a
query is answered by the gallery items with the smallest LipSim distance ``d(q, g) = 1 - <e(q), e(g)>``.

Certificate (proof in ``docs/robustness.md``, section "Retrieval certificate"). Let ``b`` be the top-1 item. For any
other item ``c``, ``d(q', c) - d(q', b) = <e(q'), e_b - e_c>``. If ``||e(q') - e(q)|| <= h`` this is at least
``<e(q), e_b - e_c> - h ||e_b - e_c||``, positive while ``h < rho_c = <e(q), e_b - e_c> / ||e_b - e_c||``. This is
exactly the 2AFC certificate of the triplet ``(q, b, c)``, so :func:`lipsim_metric.certificates.certify_2afc_embeddings`
computes each ``c``'s radius, and the top-1 radius is the **minimum over all other items** -- not only over the
runner-up: ``rho_c`` is the distance from ``e(q)`` to the hyperplane between ``b`` and ``c``, and the nearest such
hyperplane need not belong to the second-nearest item (the docs give a counterexample).

Precision: gallery and query embeddings are computed in float32 with autocast disabled (also when the index is built
or queried inside a ``torch.autocast`` region), like every LipSim certificate; the certificate holds for the stored
gallery embeddings, which are also what :meth:`EmbeddingIndex.search` compares against.

Example:
    >>> import torch
    >>> from lipsim_metric import LipSim
    >>> metric = LipSim(pretrained=False)
    >>> gallery = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    >>> index = EmbeddingIndex.from_tensor(metric, gallery)
    >>> found = index.search(gallery[2:3], k=2)
    >>> found.indices[0, 0].item()
    2
    >>> top1 = index.certified_top1(gallery[2:3])
    >>> top1.item.item(), bool(top1.radius.item() > 0)
    (2, True)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple, cast

import torch
from torch import Tensor

from .certificates import Projection, certify_2afc_embeddings, cosine_distance
from .images import find_images, load_image
from .metric import EmbeddingResult, LipSim
from .preprocess import to_backbone_input

__all__ = ["SearchResult", "CertifiedTop1", "EmbeddingIndex", "gallery_distances", "certified_top1_embeddings"]

#: Gallery rows compared at once (bounds the ``rows x D`` temporaries of the distance computation).
_CHUNK = 8192


class SearchResult(NamedTuple):
    """Output of :meth:`EmbeddingIndex.search`.

    Attributes:
        indices: ``(Q, k)`` gallery indices, nearest first (ties: lower index first).
        distances: ``(Q, k)`` LipSim distances of those items to each query.
    """

    indices: Tensor
    distances: Tensor


class CertifiedTop1(NamedTuple):
    """Output of :meth:`EmbeddingIndex.certified_top1`.

    Attributes:
        item: ``(Q,)`` index of the nearest gallery item of each query (``item``, not ``index``: a tuple already
            has an ``index`` method).
        radius: ``(Q,)`` certified l2 radius in the query's input units: no perturbation of the query with a smaller
            norm changes the nearest item (``inf`` for a one-item gallery, 0 for a tie).
    """

    item: Tensor
    radius: Tensor


def gallery_distances(e_query: Tensor, e_gallery: Tensor) -> Tensor:
    """LipSim distances ``(Q, N)`` between unit-norm query embeddings ``(Q, D)`` and gallery embeddings ``(N, D)``.

    Computed with :func:`lipsim_metric.certificates.cosine_distance` (the metric's own definition), in chunks.
    """
    rows = []
    for q in e_query:
        parts = [cosine_distance(q.expand(len(chunk), -1), chunk) for chunk in e_gallery.split(_CHUNK)]
        rows.append(torch.cat(parts))
    return torch.stack(rows)


def certified_top1_embeddings(
    e_query: Tensor,
    e_gallery: Tensor,
    query_norm: Tensor,
    input_norm: float | Tensor = 1.0,
    projection: Projection = "append",
    constant: float = 1.0,
) -> CertifiedTop1:
    """Nearest gallery item of each query and the certified radius of that answer (functional core).

    For the nearest item ``b`` and every other item ``c`` the triplet ``(query, b, c)`` is certified with
    :func:`~lipsim_metric.certificates.certify_2afc_embeddings`; the answer's radius is the minimum over all ``c``.

    Args:
        e_query: unit-norm query embeddings ``(Q, D)``.
        e_gallery: unit-norm gallery embeddings ``(N, D)``, ``N >= 1``.
        query_norm: ``||g(query)||`` ``(Q,)`` (see :meth:`lipsim_metric.LipSim.embed` with ``return_norm=True``).
        input_norm: operator norm of the preprocessing for the query's shape (:meth:`LipSim.input_norm`).
        projection: the metric's projection.
        constant: the metric's appended constant.

    Returns:
        A :class:`CertifiedTop1`.
    """
    distances = gallery_distances(e_query, e_gallery)
    # stable sort: among equal distances the lowest index wins, as in EmbeddingIndex.search
    best = torch.sort(distances, dim=1, stable=True).indices[:, 0]
    radii = []
    for q, b, r in zip(e_query, best, query_norm, strict=True):
        others = torch.cat([e_gallery[:b], e_gallery[b + 1 :]])
        if len(others) == 0:
            radii.append(torch.tensor(float("inf"), device=e_query.device))
            continue
        radius = torch.tensor(float("inf"), device=e_query.device)
        for chunk in others.split(_CHUNK):
            n = len(chunk)
            cert = certify_2afc_embeddings(q.expand(n, -1), e_gallery[b].expand(n, -1), chunk, r.expand(n),
                                           input_norm=input_norm, projection=projection, constant=constant)
            radius = torch.minimum(radius, cert.radius.min())
        radii.append(radius)
    return CertifiedTop1(best, torch.stack(radii))


class EmbeddingIndex:
    """A gallery of LipSim embeddings answering nearest-neighbour queries, with certified top-1 radii.

    Args:
        metric: the :class:`~lipsim_metric.LipSim` metric whose embeddings are stored (queries use it too).
        embeddings: unit-norm gallery embeddings ``(N, D)`` from ``metric.embed`` (``N >= 1``).
        names: optional name per item (e.g. file paths); default ``"0", "1", ...``.

    Raises:
        TypeError: ``metric`` is not a LipSim, or ``embeddings`` not a float tensor.
        ValueError: empty gallery, wrong shape, or ``names`` of the wrong length.
    """

    def __init__(self, metric: LipSim, embeddings: Tensor, names: Sequence[str] | None = None) -> None:
        if not isinstance(metric, LipSim):
            raise TypeError(f"metric must be a lipsim_metric.LipSim, got {type(metric).__name__}")
        if not isinstance(embeddings, Tensor) or not embeddings.is_floating_point():
            raise TypeError("embeddings must be a float tensor (N, D) from metric.embed(images)")
        if embeddings.ndim != 2:
            raise ValueError(f"embeddings must have shape (N, D), got {tuple(embeddings.shape)}")
        if embeddings.shape[0] == 0:
            raise ValueError("the gallery is empty; add at least one image")
        names = [str(i) for i in range(embeddings.shape[0])] if names is None else [str(n) for n in names]
        if len(names) != embeddings.shape[0]:
            raise ValueError(f"got {len(names)} names for {embeddings.shape[0]} gallery items")
        self.metric = metric
        self.embeddings = embeddings.detach().float()
        self.names = names

    @property
    def device(self) -> torch.device:
        """Device of the stored embeddings."""
        return self.embeddings.device

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])

    def __repr__(self) -> str:
        return f"EmbeddingIndex(items={len(self)}, dim={self.embeddings.shape[1]}, metric={self.metric.variant!r})"

    def _embed(self, x: Tensor) -> EmbeddingResult:
        # float32 with autocast off, like LipSim.certify_2afc: radii are computed from exact-enough embeddings
        x = x.to(self.device)
        with torch.no_grad(), torch.autocast(device_type=x.device.type, enabled=False):
            return cast(EmbeddingResult, self.metric.embed(x.float(), return_norm=True))

    @classmethod
    def from_tensor(cls, metric: LipSim, images: Tensor, batch_size: int = 64,
                    names: Sequence[str] | None = None) -> EmbeddingIndex:
        """Embed a batch of gallery images ``(N, C, H, W)`` (in ``metric.input_range``), in float32, autocast off.

        Args:
            metric: the LipSim metric.
            images: the gallery images.
            batch_size: images embedded at once.
            names: optional name per image.

        Raises:
            ValueError: empty gallery, bad ``batch_size``, or images LipSim rejects.
        """
        if not isinstance(images, Tensor):
            raise TypeError(f"images must be a torch.Tensor (N, C, H, W), got {type(images).__name__}")
        if images.ndim == 4 and images.shape[0] == 0:
            raise ValueError("the gallery is empty; add at least one image")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        device = next(metric.parameters()).device
        embeddings = []
        with torch.no_grad(), torch.autocast(device_type=device.type, enabled=False):
            for batch in images.split(int(batch_size)):
                embeddings.append(cast(Tensor, metric.embed(batch.to(device).float())))
        return cls(metric, torch.cat(embeddings), names)

    @classmethod
    def from_folder(cls, metric: LipSim, folder: str | os.PathLike[str], batch_size: int = 32,
                    recursive: bool = True) -> EmbeddingIndex:
        """Embed every image file of a folder (:func:`lipsim_metric.images.find_images`); names are relative paths.

        Each image is resized to ``metric.input_size`` with LipSim's own resize, so its embedding is the one LipSim
        computes from the original file.

        Args:
            metric: the LipSim metric.
            folder: the gallery folder.
            batch_size: images embedded at once.
            recursive: also search sub-folders.

        Raises:
            FileNotFoundError: missing folder. NotADirectoryError: not a folder.
            ValueError: no image in the folder, or an unreadable image (named in the message).
        """
        root = Path(folder)
        files = find_images(root, recursive=recursive)
        if not files:
            raise ValueError(f"no image files in {root}; the gallery would be empty")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        device = next(metric.parameters()).device
        embeddings = []
        for start in range(0, len(files), int(batch_size)):
            images = [to_backbone_input(load_image(root / f)[None], metric.input_size, "[0,1]")
                      for f in files[start : start + int(batch_size)]]
            batch = torch.cat(images).clamp(0.0, 1.0).to(device)
            if metric.input_range == "[-1,1]":
                batch = batch * 2.0 - 1.0
            with torch.no_grad(), torch.autocast(device_type=device.type, enabled=False):
                embeddings.append(cast(Tensor, metric.embed(batch)))
        return cls(metric, torch.cat(embeddings), [f.as_posix() for f in files])

    def search(self, query: Tensor, k: int = 1) -> SearchResult:
        """The ``k`` gallery items nearest to each query.

        Args:
            query: images ``(Q, C, H, W)`` in ``metric.input_range``.
            k: number of items per query, ``1 <= k <= len(self)``.

        Returns:
            A :class:`SearchResult` of ``(Q, k)`` indices and distances, nearest first.

        Raises:
            ValueError: bad ``k`` or images LipSim rejects.
        """
        if isinstance(k, bool) or not isinstance(k, int):
            raise TypeError(f"k must be an int, got {type(k).__name__}")
        if not 1 <= k <= len(self):
            raise ValueError(f"k must be between 1 and the gallery size {len(self)}, got {k}")
        distances = gallery_distances(self._embed(query).embedding, self.embeddings)
        order = torch.sort(distances, dim=1, stable=True).indices[:, :k]
        return SearchResult(order, torch.gather(distances, 1, order))

    def certified_top1(self, query: Tensor) -> CertifiedTop1:
        """Nearest gallery item of each query, with a certified l2 radius for perturbations of the query.

        Args:
            query: images ``(Q, C, H, W)`` in ``metric.input_range``; the radius is in these units.

        Returns:
            A :class:`CertifiedTop1` ``(item, radius)``.

        Raises:
            ValueError: images LipSim rejects.
        """
        result = self._embed(query)
        return certified_top1_embeddings(result.embedding, self.embeddings, result.augmented_norm,
                                         input_norm=self.metric.input_norm(query), projection=self.metric.projection,
                                         constant=self.metric.constant)
