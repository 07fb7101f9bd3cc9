"""A denoiser trained *against* the student during training: hard pairs of the kind the loss example finds.

``examples/loss_denoise.py`` trains a small CNN on noisy 64 px crops with ``d_S(out, clean) + 0.1 L1`` and measures
whether it removes the noise. With every student so far it learnt a loophole instead (brightening, a colour cast,
keeping grain) that the student charges less for than the noise, and the fixed transform family of
:func:`lipsim_metric.train.hard_pairs.mine_loss_shortcuts` only narrowed it. The loophole is whatever a denoiser
*finds*, so this module trains one (``hard_kind: denoiser``):

1. **Adversary step** (every training step): :class:`DenoiserAdversary` takes random ``crop x crop`` crops of the
   batch's references at native resolution (as the loss example does), adds Gaussian noise (std log-uniform in
   ``sigma_range``, clipped), and makes one Adam step of its denoiser on the example's loss under the *current*
   student, ``d_S(up(out), up(clean)) + l1_weight |out - clean|``, ``up`` the metric's own resize to 224. Only the
   denoiser's gradients are computed; the student's stay untouched. Every ``reset_every`` steps the denoiser starts
   again from the identity (as the example's does), so the student also meets the early part of the trajectory, where
   the loophole appears.
2. **Label** (every ``hard_mine_every`` steps): for a few of those crops, the teachers measure ``(clean, noisy)`` and
   ``(clean, out)``, each clean crop's features computed once (:meth:`TeacherLabeller.copies
   <lipsim_metric.train.hard_pairs.TeacherLabeller.copies>`).
3. **Replay**: the two pairs of a crop go into the replay buffer *as a group*; drawn together, they join the batch's
   correlation and pooled-ranking terms and a **within-crop ranking term** (``hard_within_weight``): RankNet on
   ``log d_S(clean, out) - log d_S(clean, noisy)`` wherever all teachers order the two alike, with no gap threshold.
   That small within-crop difference is the whole loophole (the output is, by the student's measure, closer than the
   noisy input while the teachers say it is not), and the pooled terms, built for differences across references,
   hardly resolve it (model card, "What the hard pairs did to the loss example").

The adversary's state is not checkpointed: a resumed run starts it from the identity, which is what a reset does.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, cast

import torch
from torch import nn

from ..certificates import cosine_distance
from .hard_pairs import _resize  # the metric's resize (antialiased bilinear)

__all__ = ["TinyDenoiser", "DenoiserAdversary", "within_group_ranking"]

Embed = Callable[[torch.Tensor], torch.Tensor]


class TinyDenoiser(nn.Module):
    """The loss example's DnCNN-style residual denoiser: ``depth`` 3x3 convs of ``width``, output ``noisy - noise``.

    The last convolution starts at zero, so the untrained model is the identity (``clamp(noisy, 0, 1)``).
    """

    def __init__(self, width: int = 32, depth: int = 5) -> None:
        super().__init__()
        if depth < 2 or width < 1:
            raise ValueError(f"need depth >= 2 and width >= 1, got depth {depth}, width {width}")
        layers: list[nn.Module] = [nn.Conv2d(3, width, 3, padding=1), nn.ReLU()]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU()]
        last = nn.Conv2d(width, 3, 3, padding=1)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(cast(torch.Tensor, last.bias))
        self.body = nn.Sequential(*layers, last)

    def forward(self, noisy: torch.Tensor) -> torch.Tensor:
        return (noisy - self.body(noisy)).clamp(0.0, 1.0)


class DenoiserAdversary:
    """A denoiser trained with ``d_S + l1_weight L1`` against the current student; see the module docstring.

    Args:
        width, depth: of :class:`TinyDenoiser` (the loss example's defaults: 32, 5).
        lr: Adam learning rate of the denoiser (the example's: 1e-3).
        crop: side of the noisy crops (the example's: 64); the student sees them resized to ``image_size``.
        sigma_range: ``(lo, hi)``: noise std, log-uniform per crop (the example uses 0.1).
        l1_weight: the example's L1 weight (0.1).
        batch: crops per adversary step.
        reset_every: adversary steps between restarts from the identity (``0``: never).
        image_size: the side the student sees.
        seed: seeds the denoiser's initialisations, the crops and the noise.
    """

    def __init__(self, *, width: int = 32, depth: int = 5, lr: float = 1e-3, crop: int = 64,
                 sigma_range: tuple[float, float] = (0.05, 0.2), l1_weight: float = 0.1, batch: int = 8,
                 reset_every: int = 200, image_size: int = 224, seed: int = 0) -> None:
        lo, hi = sigma_range
        if not 0 < lo <= hi:
            raise ValueError(f"sigma_range must satisfy 0 < lo <= hi, got {sigma_range}")
        if crop < 8 or batch < 1 or reset_every < 0 or not lr > 0:
            raise ValueError(f"need crop >= 8, batch >= 1, reset_every >= 0 and lr > 0, got crop {crop}, "
                             f"batch {batch}, reset_every {reset_every}, lr {lr}")
        self.width, self.depth, self.lr, self.crop = width, depth, lr, crop
        self.sigma_range, self.l1_weight, self.batch = (lo, hi), l1_weight, batch
        self.reset_every, self.image_size = reset_every, image_size
        self.generator = torch.Generator().manual_seed(seed)
        self.steps = 0
        self.resets = 0
        self.last: dict[str, Any] = {}  # the latest step's results (the training log reads them)
        self._restart(torch.device("cpu"))

    def _restart(self, device: torch.device) -> None:
        torch_state = torch.random.get_rng_state()
        torch.manual_seed(int(torch.randint(2**31 - 1, (1,), generator=self.generator)))
        self.net = TinyDenoiser(self.width, self.depth).to(device)
        torch.random.set_rng_state(torch_state)  # the run's own random stream is not disturbed
        self.opt = torch.optim.Adam(self.net.parameters(), lr=self.lr)
        self.since_reset = 0

    def _crops(self, refs: torch.Tensor) -> torch.Tensor:
        n, _, h, w = refs.shape
        if min(h, w) < self.crop:
            raise ValueError(f"references of {h}x{w} px are smaller than the adversary's crop {self.crop}")
        g = self.generator
        out = []
        for _ in range(self.batch):
            i = int(torch.randint(n, (1,), generator=g))
            top = int(torch.randint(h - self.crop + 1, (1,), generator=g))
            left = int(torch.randint(w - self.crop + 1, (1,), generator=g))
            out.append(refs[i, :, top:top + self.crop, left:left + self.crop])
        return torch.stack(out)

    def step(self, embed: Embed, refs: torch.Tensor) -> dict[str, torch.Tensor]:
        """One denoiser update against ``embed`` on crops of ``refs`` (``(N, 3, H, W)`` in [0, 1]).

        Returns detached tensors: ``clean``, ``noisy``, ``out`` (crops, ``(batch, 3, crop, crop)``), their versions
        seen by the student ``clean_seen``, ``noisy_seen``, ``out_seen`` (``image_size``), and scalars ``loss``
        (the denoiser's loss before the update), ``psnr_out``, ``psnr_noisy`` (dB, means over the crops); also
        kept as :attr:`last`.
        """
        device = refs.device
        if self.reset_every and self.since_reset >= self.reset_every:
            self._restart(device)
            self.resets += 1
        self.net.to(device)
        clean = self._crops(refs.detach().float()).clamp(0, 1)
        lo, hi = self.sigma_range
        u = torch.rand(clean.shape[0], generator=self.generator)
        sigma = torch.exp(math.log(lo) + u * (math.log(hi) - math.log(lo))).view(-1, 1, 1, 1).to(device)
        noisy = (clean + sigma * torch.randn(clean.shape, generator=self.generator).to(device)).clamp(0, 1)
        clean_seen = _resize(clean, self.image_size)
        with torch.no_grad():
            e_clean = embed(clean_seen).float()
        out = self.net(noisy)
        out_seen = _resize(out, self.image_size)
        loss = (cosine_distance(e_clean, embed(out_seen).float())
                + self.l1_weight * (out - clean).abs().flatten(1).mean(1)).mean()
        params = list(self.net.parameters())
        grads = torch.autograd.grad(loss, params)  # the denoiser's only: the student's gradients stay untouched
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.steps += 1
        self.since_reset += 1

        def psnr(a: torch.Tensor) -> torch.Tensor:
            mse = (a - clean).square().flatten(1).mean(1).clamp_min(1e-10)
            return (-10 * mse.log10()).mean()

        out = out.detach()
        self.last = {"clean": clean, "noisy": noisy, "out": out, "clean_seen": clean_seen.detach(),
                     "noisy_seen": _resize(noisy, self.image_size).detach(), "out_seen": out_seen.detach(),
                     "loss": loss.detach(), "psnr_out": psnr(out), "psnr_noisy": psnr(noisy)}
        return self.last


def within_group_ranking(score: torch.Tensor, teacher: torch.Tensor,
                         temperature: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """RankNet inside groups of two pairs that share a reference (the noisy crop and the denoiser's output).

    Args:
        score: student ``log d_S`` of ``2G`` pairs, group ``g`` at positions ``2g`` (noisy) and ``2g + 1`` (output).
        teacher: per-teacher standardised distances ``(2G, T)`` of the same pairs.
        temperature: ``tau`` in log-distance units.

    Returns:
        ``(loss, agreement)`` over the groups whose teachers all order the two pairs alike (loss 0 and agreement NaN
        if none): ``softplus(-y (s_noisy - s_out) / tau)``, ``y = +1`` where the teachers find the output closer.
    """
    if score.shape[0] % 2 or teacher.shape[0] != score.shape[0]:
        raise ValueError(f"need 2G scores and (2G, T) teacher distances, got {tuple(score.shape)} and "
                         f"{tuple(teacher.shape)}")
    s = score.float().view(-1, 2)
    t = teacher.float().view(-1, 2, teacher.shape[-1])
    signs = torch.sign(t[:, 0] - t[:, 1])  # (G, T): +1 where that teacher finds the output (second) closer
    use = (signs == signs[:, :1]).all(1) & (signs[:, 0] != 0)
    if not use.any():
        return score.sum() * 0.0, torch.tensor(float("nan"))
    y = signs[use, 0]
    ds = (s[:, 0] - s[:, 1])[use]
    loss = nn.functional.softplus(-y * ds / temperature).mean()
    return loss, ((y * ds) > 0).float().mean()
