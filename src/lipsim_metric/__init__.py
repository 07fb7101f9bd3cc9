"""lipsim-metric: a provably robust perceptual image similarity metric (LipSim, Ghazanfari et al., ICLR 2024).

Quick start::

    from lipsim_metric import LipSim
    metric = LipSim()                      # shipped pretrained 1-Lipschitz weights
    metric = LipSim.from_pretrained("lipsim-fast.perceptual-cpu-v4")   # the same, named (or a .safetensors path)
    d = metric(img0, img1)                 # (N,) cosine distances, images (N, 3, H, W) in [0, 1]
    d, radius = metric(img0, img1, return_radius=True)
    cert = metric.certify_2afc(ref, img0, img1)
"""

from .backbones import DEFAULT_BACKBONE, LipschitzBackbone, create_backbone, list_backbones
from .certificates import TwoAFCCertificate
from .metric import DistanceResult, EmbeddingResult, LipSim, create_metric
from .pretrained import DEFAULT_WEIGHTS, PretrainedCfg, get_pretrained_cfg, list_pretrained
from .version import __version__

__all__ = [
    "LipSim",
    "create_metric",
    "DistanceResult",
    "EmbeddingResult",
    "TwoAFCCertificate",
    "create_backbone",
    "list_backbones",
    "LipschitzBackbone",
    "list_pretrained",
    "get_pretrained_cfg",
    "PretrainedCfg",
    "DEFAULT_BACKBONE",
    "DEFAULT_WEIGHTS",
    "__version__",
]
