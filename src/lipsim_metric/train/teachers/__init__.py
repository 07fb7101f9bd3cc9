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

Layout (one file per concern; every public name is re-exported here, so
``from lipsim_metric.train.teachers import X`` works as it did when this package was a single module):

* :mod:`.weights` -- weight-file resolution and strict loading (:data:`WEIGHT_FILES`, ImageNet trunks);
* :mod:`._common` -- input validation, the frozen base class, tapped trunks;
* :mod:`.lpips`, :mod:`.dists` -- the distance teachers; :mod:`.stats`, :mod:`.dreamsim_adapter` -- embeddings;
* :mod:`.registry` -- names -> builders: :func:`register_teacher`, :func:`list_teachers`, ``build_*_teacher``.

Example:
    >>> teacher = build_distance_teacher("lpips-alex", teachers_dir="../shared/teachers")  # doctest: +SKIP
    >>> teacher(x0, x1).shape  # x0, x1: (N, 3, H, W) in [0, 1]                              # doctest: +SKIP
    torch.Size([N])
"""

from __future__ import annotations

from .dists import DISTS, L2Pooling
from .dreamsim_adapter import DreamSimTeacher
from .lpips import LPIPS
from .registry import (
    TeacherBuilder,
    build_distance_teacher,
    build_embedding_teacher,
    list_teachers,
    register_teacher,
    unregister_teacher,
)
from .stats import AlexNetStats, VGGStats
from .weights import TEACHERS_DIR_ENV, WEIGHT_FILES, default_teachers_dir, load_alexnet_features, load_vgg16_features

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
    "register_teacher",
    "unregister_teacher",
    "TeacherBuilder",
]

