"""DreamSim embedding teacher, wrapped from the optional ``dreamsim`` package.

Fu, Tamir, Sundaram, Chai, Zhang, Dekel, Isola. "DreamSim: Learning New Dimensions of Human Visual Similarity using
Synthetic Data". NeurIPS 2023. https://arxiv.org/abs/2306.09344 -- the teacher of LipSim (Ghazanfari, Araujo,
Krishnamurthy, Garg, Khorrami. ICLR 2024, https://arxiv.org/abs/2310.18274).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ._common import _check_images, _FrozenTeacher
from .weights import PathLike


class DreamSimTeacher(_FrozenTeacher):
    """DreamSim embedding (Fu et al., NeurIPS 2023), the teacher of the original LipSim, from the ``dreamsim`` package.

    Images are resized to 224x224 (bicubic, antialiased, clamped to [0, 1], mirroring DreamSim's PIL preprocessing)
    and embedded with ``model.embed``. Weights are downloaded by ``dreamsim`` into ``cache_dir`` on first use.

    Args:
        cache_dir: where ``dreamsim`` keeps its checkpoints; default ``<torch hub dir>/dreamsim`` (never the
            current directory).
        dreamsim_type: the ``dreamsim`` variant, e.g. ``"ensemble"`` (DINO + CLIP + OpenCLIP ViT-B).
        device: device the package builds the model on (``dreamsim`` defaults to CUDA; this wrapper to CPU).

    Raises:
        ImportError: if ``dreamsim`` is not installed (with the install command).
    """

    INPUT_SIZE = 224

    def __init__(self, cache_dir: PathLike | None = None, dreamsim_type: str = "ensemble",
                 device: str | torch.device = "cpu") -> None:
        super().__init__()
        try:
            from dreamsim import dreamsim
        except ImportError as error:
            raise ImportError(
                "DreamSimTeacher needs the optional `dreamsim` package: `pip install dreamsim` (its weights are "
                "then downloaded on first use). Offline, use the 'alex-stats' or 'vgg-stats' embedding teachers."
            ) from error
        if cache_dir is None:
            cache_dir = Path(torch.hub.get_dir()) / "dreamsim"
        model, _ = dreamsim(pretrained=True, device=str(device), cache_dir=str(cache_dir),
                            dreamsim_type=dreamsim_type)
        self.model = model
        self._freeze()
        with torch.no_grad():
            probe = torch.zeros(1, 3, self.INPUT_SIZE, self.INPUT_SIZE, device=torch.device(device))
            self.embed_dim = int(self.model.embed(probe).shape[-1])

    def forward(self, x: Tensor) -> Tensor:
        """Embed images.

        Args:
            x: images ``(N, 3, H, W)`` in [0, 1], ``H, W >= 32``.

        Returns:
            DreamSim embeddings ``(N, embed_dim)``.

        Raises:
            TypeError: for non-tensor or non-float input.
            ValueError: for a wrong shape, size < 32, values outside [0, 1] or NaN.
        """
        x = _check_images(x, "x")
        if x.shape[-2:] != (self.INPUT_SIZE, self.INPUT_SIZE):
            x = F.interpolate(x, size=(self.INPUT_SIZE, self.INPUT_SIZE), mode="bicubic", align_corners=False,
                              antialias=True).clamp(0, 1)
        embedding: Tensor = self.model.embed(x)
        return embedding
