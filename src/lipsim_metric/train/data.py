"""Training and evaluation data: photo crops, packed image shards, human 2AFC sets and generated 2AFC triplets.

Kept for compatibility: the code lives in one module per concern and every name is re-exported here unchanged, so
``from lipsim_metric.train.data import X`` keeps working. New code may import from the concern's module:

* :mod:`lipsim_metric.train.photos` -- photo folders and random crops (:class:`PhotoCropDataset`, :func:`list_images`);
* :mod:`lipsim_metric.train.shards` -- packed uint8 shards (:func:`pack_images`, :class:`ShardDataset`);
* :mod:`lipsim_metric.train.human_2afc` -- human 2AFC loaders (:class:`NightDataset`, :class:`BAPPS2AFCDataset`,
  :class:`TripletCSVDataset`);
* :mod:`lipsim_metric.train.triplets` -- generated triplets and teacher labelling (:func:`make_distortion_triplets`,
  :func:`label_triplets`);
* :mod:`lipsim_metric.train.valsets` -- stored validation triplet sets (:func:`build_val_triplets`,
  :func:`load_triplet_set`).

Sources of the formats read here:

* NIGHT (NIGHTS), the DreamSim 2AFC set: Fu et al., "DreamSim: Learning New Dimensions of Human Visual Similarity
  using Synthetic Data", NeurIPS 2023, https://arxiv.org/abs/2306.09344; layout and split logic of
  ``dataset/dataset.py`` in https://github.com/ssundaram21/dreamsim (``test_imagenet`` / ``test_no_imagenet`` are
  the rows with ``split == "test"`` and ``is_imagenet`` true / false; rows with fewer than 6 ``votes`` are dropped).
* BAPPS 2AFC: Zhang et al., "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric", CVPR 2018,
  https://arxiv.org/abs/1801.03924, layout of https://github.com/richzhang/PerceptualSimilarity
  (``<subset>/{ref,p0,p1,judge}/<id>``; ``judge`` holds the fraction of humans who preferred ``p1``).
* LipSim (Ghazanfari et al., ICLR 2024, https://arxiv.org/abs/2310.18274) distils a teacher on natural photos
  and evaluates 2AFC accuracy on NIGHT; the generated triplets here stand in for human sets where none is at hand.

Conventions shared by every loader: files are decoded by :func:`lipsim_metric.images.load_image` (the decoder of the
metric's CLI: EXIF orientation applied, transparency composited onto white); images are float RGB tensors in [0, 1],
``(3, S, S)``; 2AFC items are dicts ``{"ref", "x0", "x1", "target"}`` where ``target`` is the probability (vote share)
that ``x1`` is judged closer to ``ref`` than ``x0`` -- the NIGHT/BAPPS convention, 1.0 = everyone picked ``x1``.
Resizing to ``size x size`` uses the metric's own antialiased bilinear resize
(:func:`lipsim_metric.preprocess.to_backbone_input`); aspect ratio is not preserved, as in LPIPS and DreamSim. Files
are paired by name (CSV rows, file stems), never by sort order.
"""

from __future__ import annotations

from .human_2afc import BAPPS2AFCDataset, NightDataset, Triplet, TripletCSVDataset, TripletFileDataset
from .photos import PathLike, PhotoCropDataset, list_images
from .shards import PackResult, ShardDataset, pack_images
from .triplets import (
    DistanceFn,  # noqa: F401  (a module-level name of the old module, not in its __all__)
    DistortionTripletDataset,
    TeacherVotes,
    TripletSpec,
    label_triplets,
    make_distortion_triplets,
    render_triplet,
)
from .valsets import TripletSetDataset, build_val_triplets, load_triplet_set

__all__ = [
    "PathLike",
    "list_images",
    "PhotoCropDataset",
    "PackResult",
    "pack_images",
    "ShardDataset",
    "Triplet",
    "TripletFileDataset",
    "NightDataset",
    "BAPPS2AFCDataset",
    "TripletCSVDataset",
    "TripletSpec",
    "make_distortion_triplets",
    "render_triplet",
    "DistortionTripletDataset",
    "TeacherVotes",
    "label_triplets",
    "build_val_triplets",
    "TripletSetDataset",
    "load_triplet_set",
]
