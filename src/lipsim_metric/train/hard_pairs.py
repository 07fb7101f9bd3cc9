"""Hard pairs mined against the student itself and labelled by the teachers (stage "pairs", ``hard_weight > 0``).

The blind spot of a pooled 1-Lipschitz embedding: perturbations that keep each block's feature statistics move the
distance very little, however visible they are. Feature inversion from noise (``examples/feature_inversion.py``) and
a denoiser trained with the metric as its loss (``examples/loss_denoise.py``) both find them. A fixed label set rarely
contains them, because its distortions are not chosen against the student.

This module finds them during training and asks the teachers what they are:

1. **Mine.** For references ``x`` of the current batch, search a perturbation ``delta`` of fixed l2 energy
   ``||delta|| = R`` that *minimises* the student's distance ``d_S(x, clip(x + delta))``: projected normalised
   gradient descent on the sphere of radius ``R``, from white Gaussian noise (``R`` drawn log-uniformly from an RMS
   range per pixel) or, with probability ``uniform_fraction``, from a uniform-noise image (the start of the inversion
   test; ``R`` is then its own distance to ``x``). This is the adversary of the metric's *sensitivity* (the usual
   attack maximises the distance; this one hides a distortion of given energy).
2. **Label.** The teachers (the label set's, in its order and precision) measure ``d_T(x, y)``. If the mined image is
   visibly distorted they say so; if it is a real invariance (a shift, a flat-region change) they do not, and the
   student is not pushed against it.
3. **Replay.** Mined pairs join a bounded buffer (float16 pixels); every step a few of them are drawn, embedded by the
   current student and appended to the batch's pairs in the correlation and pooled-ranking terms, with their
   consensus score on the label set's scale (:class:`~lipsim_metric.train.pair_objective.ConsensusTarget`).

Labels come from teachers, not from the student, so a pair mined by an older student stays a correct training
example; the buffer is a growing data set of the student's former blind spots. With ``hard_continue_fraction > 0``
some searches take a buffered pair out, continue it against the current student and put it back relabelled
(*persistent chains*, as in persistent contrastive divergence): a chain accumulates many more steps than one search
costs, which is what the 500-step inversion test spends.

A second kind of search (``hard_kind: shortcut``, :func:`mine_loss_shortcuts`) targets the loss example instead: a
noisy copy of a reference and a global photometric + smooth + blur transform of it fitted to the loss example's own
loss (``d_S + 0.1 L1``). Both are labelled, so the ranking terms see "noisy" beside "noisy, hidden behind a colour
change" for the same reference, with the teachers' verdict on which is closer.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any, cast

import torch

from ..certificates import cosine_distance, project_embedding
from .cpu_bf16 import native_bf16_cpu

__all__ = ["mine_blind_perturbations", "mine_loss_shortcuts", "HardPairBuffer", "TeacherLabeller", "projected_embedder",
           "hard_batch"]

Embed = Callable[[torch.Tensor], torch.Tensor]


def _flat_norm(t: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(t.flatten(1), dim=1).clamp_min(1e-12).view(-1, *([1] * (t.dim() - 1)))


def _keep_best(best: torch.Tensor, best_value: torch.Tensor, candidate: torch.Tensor,
               value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample, keep whichever of ``best`` and ``candidate`` (``(B, ...)``) has the smaller value (``(B,)``)."""
    better = value < best_value
    return (torch.where(better.view(-1, *([1] * (best.dim() - 1))), candidate, best),
            torch.where(better, value, best_value))


def mine_blind_perturbations(embed: Embed, ref: torch.Tensor, *, steps: int, rms_range: tuple[float, float],
                             uniform_fraction: float = 0.0, step_fraction: float = 0.25,
                             generator: torch.Generator | None = None,
                             start: torch.Tensor | None = None) -> torch.Tensor:
    """Images ``y = clip(x + delta)`` with ``||delta||`` fixed, chosen to minimise the student's distance to ``x``.

    Args:
        embed: maps images ``(N, 3, H, W)`` in ``[0, 1]`` to projected embeddings ``(N, D)`` (differentiable).
        ref: references ``(B, 3, H, W)`` in ``[0, 1]``.
        steps: gradient steps on the sphere (``0`` returns the starting points).
        rms_range: ``(lo, hi)``: per-pixel RMS of the Gaussian start, drawn log-uniformly; ``R = rms * sqrt(numel)``.
        uniform_fraction: probability that a reference starts from a uniform-noise image instead (then ``R`` is that
            image's distance to the reference).
        step_fraction: the first step moves ``step_fraction * R`` along the normalised negative gradient (later ones
            less, down to a tenth, on a cosine schedule), before the projection back onto the sphere. The iterate with
            the smallest distance is returned.
        generator: seeds the starting noise.
        start: continue earlier searches instead: images ``(B, 3, H, W)`` (e.g. mined before, by an older student);
            ``R = ||start - x||`` and no noise is drawn (persistent chains reach deeper than a few steps can).

    Returns:
        ``(B, 3, H, W)`` in ``[0, 1]``, detached. Clipping to the image range can leave ``||y - x||`` below ``R``.
    """
    lo, hi = rms_range
    if not 0 < lo <= hi:
        raise ValueError(f"rms_range must satisfy 0 < lo <= hi, got {rms_range}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    ref = ref.detach().float()
    b = ref.shape[0]
    n = ref[0].numel()
    dev = ref.device
    if start is not None:
        if start.shape != ref.shape:
            raise ValueError(f"start must have the shape of ref {tuple(ref.shape)}, got {tuple(start.shape)}")
        delta = start.detach().float().to(dev) - ref
    else:
        u = torch.rand(b, generator=generator).to(dev)
        rms = torch.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))
        gauss = torch.randn(ref.shape, generator=generator).to(dev)
        delta = gauss / _flat_norm(gauss) * (rms * math.sqrt(n)).view(-1, 1, 1, 1)
    if uniform_fraction > 0 and start is None:
        pick = (torch.rand(b, generator=generator) < uniform_fraction).to(dev)
        uni = torch.rand(ref.shape, generator=generator).to(dev) - ref
        delta = torch.where(pick.view(-1, 1, 1, 1), uni, delta)
    radius = _flat_norm(delta)
    with torch.no_grad():
        e_ref = embed(ref).float()
    best, best_d = delta.clone(), torch.full((b,), float("inf"), device=dev)
    for k in range(steps + 1):
        delta.requires_grad_(k < steps)
        d = cosine_distance(e_ref, embed((ref + delta).clamp(0, 1)).float())
        best, best_d = _keep_best(best, best_d, delta.detach(), d.detach())
        if k == steps:
            break
        (grad,) = torch.autograd.grad(d.sum(), delta)
        with torch.no_grad():  # step shrinks from step_fraction * R to a tenth of it (cosine), then back on the sphere
            size = step_fraction * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * k / steps)))
            moved = delta.detach() - size * radius * grad / _flat_norm(grad)
            delta = moved / _flat_norm(moved) * radius
    delta = best
    return (ref + delta.detach()).clamp(0, 1)


class TeacherLabeller:
    """The label set's teachers, in its order and precision: ``(ref, y) -> (N, T)`` distances.

    Args:
        names: teacher names (``PairLabelSet.teachers``).
        teachers_dir: folder of the teacher weights.
        bf16: the teachers run under bfloat16 autocast (the label set manifest's ``bf16_teachers``).
    """

    def __init__(self, names: Sequence[str], teachers_dir: str | None, bf16: Sequence[str] = ()) -> None:
        from .teachers import build_distance_teacher

        self.names = list(names)
        self.bf16 = set(bf16) & set(self.names)
        if self.bf16 and not torch.cuda.is_available() and not native_bf16_cpu():
            warnings.warn(f"the label set's teachers {sorted(self.bf16)} ran under bf16, but this CPU has no bf16 "
                          "hardware (emulated bf16 is several times slower): hard pairs are labelled in float32 "
                          "(distances differ by about 1e-3 relative)", RuntimeWarning, stacklevel=2)
            self.bf16 = set()
        self.nets = [build_distance_teacher(n, teachers_dir=teachers_dir).eval().to(memory_format=torch.channels_last)
                     for n in self.names]

    def __call__(self, ref: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Distances ``(N, T)`` between ``ref`` and ``y`` (``(N, 3, H, W)``)."""
        return self.copies(ref, [y])[:, 0]

    @torch.no_grad()
    def copies(self, ref: torch.Tensor, copies: Sequence[torch.Tensor]) -> torch.Tensor:
        """Distances ``(B, K, T)`` from ``ref`` (``(B, 3, H, W)``) to each of ``K`` image batches of its shape.

        Equal to each teacher's ``net(ref, copies[k])`` for each ``k``, but each reference's features are computed
        once (``B + B K`` trunk passes instead of ``2 B K``).
        """
        ref = ref.float().contiguous(memory_format=torch.channels_last)
        flat = torch.cat([c.float() for c in copies]).contiguous(memory_format=torch.channels_last)
        k = len(copies)
        out = []
        for name, net in zip(self.names, self.nets, strict=True):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=name in self.bf16 and ref.device.type == "cpu"):
                model = cast(Any, net)
                f_ref = [f.repeat(k, *([1] * (f.dim() - 1))) for f in model.features(ref)]
                out.append(model.distance_from_features(f_ref, model.features(flat)).float().flatten())
        return torch.stack(out, dim=1).view(k, ref.shape[0], -1).transpose(0, 1)


class HardPairBuffer:
    """Bounded replay buffer of mined pairs ``(ref, y, teacher distances)``; the oldest leave first.

    Args:
        capacity: most pairs kept.
        seed: seeds :meth:`sample`.
        group: pairs are added, kept, dropped and drawn in runs of this many consecutive pairs (``2`` for
            ``hard_kind: denoiser``: the noisy crop and the denoiser's output, which the within-crop term compares).
    """

    def __init__(self, capacity: int, seed: int = 0, group: int = 1) -> None:
        if capacity < 1 or group < 1 or capacity % group:
            raise ValueError(f"need capacity >= 1, group >= 1 and capacity a multiple of group, got capacity "
                             f"{capacity}, group {group}")
        self.group = group
        self.capacity = capacity
        self.refs: list[torch.Tensor] = []
        self.images: list[torch.Tensor] = []
        self.distances: list[torch.Tensor] = []
        self.generator = torch.Generator().manual_seed(seed)
        self.added = 0

    def __len__(self) -> int:
        return len(self.refs)

    def add(self, ref: torch.Tensor, y: torch.Tensor, distances: torch.Tensor) -> None:
        """Store ``B`` pairs (a multiple of ``group``): ``ref``, ``y`` ``(B, 3, H, W)``, ``distances`` ``(B, T)``."""
        if ref.shape[0] % self.group:
            raise ValueError(f"add pairs in whole groups of {self.group}, got {ref.shape[0]}")
        for r, im, d in zip(ref.detach().cpu().half(), y.detach().cpu().half(), distances.detach().cpu().float(),
                            strict=True):
            self.refs.append(r)
            self.images.append(im)
            self.distances.append(d)
            self.added += 1
        overflow = len(self.refs) - self.capacity
        if overflow > 0:
            del self.refs[:overflow], self.images[:overflow], self.distances[:overflow]

    def pop(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Remove ``k`` random pairs (fewer if the buffer holds fewer) and return their float32 ``(refs, images)``."""
        if self.group != 1:
            raise ValueError("pop (persistent chains) needs a buffer of single pairs (group 1)")
        idx = sorted(torch.randperm(len(self.refs), generator=self.generator)[: min(k, len(self.refs))].tolist())
        refs = torch.stack([self.refs[i] for i in idx]).float() if idx else torch.empty(0)
        images = torch.stack([self.images[i] for i in idx]).float() if idx else torch.empty(0)
        for i in reversed(idx):
            del self.refs[i], self.images[i], self.distances[i]
        return refs, images

    def sample(self, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``k`` pairs drawn without replacement (fewer if the buffer holds fewer): float32 images, distances.

        With ``group > 1``, ``k // group`` whole groups (at least one), each group's pairs consecutive and in order.
        """
        if not self.refs:
            raise ValueError("the hard-pair buffer is empty")
        g = self.group
        groups = len(self.refs) // g
        picks = torch.randperm(groups, generator=self.generator)[: min(max(1, k // g), groups)].tolist()
        idx = [p * g + j for p in picks for j in range(g)]
        return (torch.stack([self.refs[i] for i in idx]).float(), torch.stack([self.images[i] for i in idx]).float(),
                torch.stack([self.distances[i] for i in idx]))

    def state_dict(self) -> dict[str, Any]:
        """Tensors to save with a checkpoint (the buffer is rebuilt on resume)."""
        if not self.refs:
            return {}
        return {"refs": torch.stack(self.refs), "images": torch.stack(self.images),
                "distances": torch.stack(self.distances)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.refs = list(state.get("refs", torch.empty(0)))
        self.images = list(state.get("images", torch.empty(0)))
        self.distances = list(state.get("distances", torch.empty(0)))


def projected_embedder(student: torch.nn.Module, projection: str, constant: float,
                       autocast: Callable[[], Any]) -> Embed:
    """``images -> projected embeddings`` of ``student`` under the training autocast.

    For :func:`mine_blind_perturbations`.
    """

    def embed(images: torch.Tensor) -> torch.Tensor:
        with autocast():
            feats = student(images)
        return project_embedding(feats.float(), projection, constant)[0]  # type: ignore[arg-type]

    return embed


def hard_batch(cfg: Any, acc: Any, student: torch.nn.Module, ref: torch.Tensor, buffer: Any, labeller: Any,
               step: int, adversary: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mine hard pairs every ``hard_mine_every`` steps, then draw ``hard_pairs_per_step`` from the buffer.

    ``hard_kind`` "sphere": :func:`mine_blind_perturbations`; "shortcut": :func:`mine_loss_shortcuts` (each search
    adds two pairs, the noisy copy and its shortcut, at a side drawn from ``hard_sizes``); "denoiser": ``adversary``
    (a :class:`~lipsim_metric.train.denoiser_adversary.DenoiserAdversary`) makes one update every step, and every
    ``hard_mine_every`` steps ``hard_mine_refs`` of its crops add a group of two pairs each (clean vs noisy, clean vs
    its output), in that order.

    Of the ``hard_mine_refs`` searches, a ``hard_continue_fraction`` continue chains taken out of the buffer; the rest
    start from noise around references of the batch.

    Returns the images to embed (references then mined images, ``(2H, 3, H, W)``) and their teacher distances.
    """
    if cfg.hard_kind == "denoiser":
        if adversary is None:
            raise ValueError("hard_kind 'denoiser' needs the adversary")
        embed = projected_embedder(student, cfg.projection, cfg.constant, acc.autocast)
        res = adversary.step(embed, ref.to(acc.device))
        if step % cfg.hard_mine_every == 0 or not len(buffer):
            m = min(cfg.hard_mine_refs, res["clean_seen"].shape[0])
            clean, noisy, out = res["clean_seen"][:m], res["noisy_seen"][:m], res["out_seen"][:m]
            dist = labeller.copies(clean, [noisy, out])  # (m, 2, T)
            buffer.add(clean.repeat_interleave(2, dim=0), torch.stack([noisy, out], dim=1).flatten(0, 1),
                       dist.flatten(0, 1))
    elif (step % cfg.hard_mine_every == 0 or not len(buffer)) and cfg.hard_kind == "shortcut":
        embed = projected_embedder(student, cfg.projection, cfg.constant, acc.autocast)
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        sizes = [s for s in cfg.hard_sizes if s <= min(ref.shape[-2:])]
        size = sizes[int(torch.randint(len(sizes), (1,), generator=gen))]
        r = ref[: cfg.hard_mine_refs].to(acc.device).float()
        seen, noisy, y = mine_loss_shortcuts(embed, r, steps=cfg.hard_mine_steps, size=size,
                                             sigma_range=(cfg.hard_sigma[0], cfg.hard_sigma[1]),
                                             l1_weight=cfg.hard_l1_weight, lr=cfg.hard_lr, generator=gen)
        both = torch.cat([noisy, y])  # the noisy copy and its shortcut, both labelled: the ranking sees the pair
        refs2 = torch.cat([seen, seen])
        buffer.add(refs2, both, labeller(refs2, both))
    elif step % cfg.hard_mine_every == 0 or not len(buffer):
        embed = projected_embedder(student, cfg.projection, cfg.constant, acc.autocast)
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        n_cont = min(len(buffer), round(cfg.hard_mine_refs * cfg.hard_continue_fraction))
        if n_cont:  # persistent chains: searches of older students, continued against this one and labelled anew
            r, start = buffer.pop(n_cont)
            r = r.to(acc.device)
            y = mine_blind_perturbations(embed, r, steps=cfg.hard_mine_steps, rms_range=(1.0, 1.0), start=start,
                                         generator=gen)
            buffer.add(r, y, labeller(r, y))
        r = ref[: cfg.hard_mine_refs - n_cont].to(acc.device).float()
        if len(r):
            y = mine_blind_perturbations(embed, r, steps=cfg.hard_mine_steps,
                                         rms_range=(cfg.hard_rms[0], cfg.hard_rms[1]),
                                         uniform_fraction=cfg.hard_uniform_fraction, generator=gen)
            buffer.add(r, y, labeller(r, y))
    hr, hy, dist = buffer.sample(cfg.hard_pairs_per_step)
    return torch.cat([hr, hy]), dist


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear", antialias=True,
                                           align_corners=False)


def mine_loss_shortcuts(embed: Embed, ref: torch.Tensor, *, steps: int, sigma_range: tuple[float, float],
                        size: int, l1_weight: float = 0.1, lr: float = 0.01, field: int = 4,
                        generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What a denoiser trained with the metric as its loss can get away with: ``(refs, noisy, shortcut)``.

    ``examples/loss_denoise.py`` trains a small CNN on noisy 64 px crops with ``d_S(out, clean) + 0.1 L1``; with some
    weights the CNN learns to *hide* the noise behind a global photometric change (brightening, saturation, a colour
    cast) that the student charges less for than the noise it covers. This search does the same within a few steps:
    the reference is seen at ``size`` px (``x' = up(down(x))``, as the metric sees a small crop), the noisy copy is
    ``n = clip(down(x) + sigma g)`` (``sigma`` log-uniform in ``sigma_range``), and the shortcut is

    ``y = up(clip(M ((1 - w) n + w blur(n)) + b + up(F)))``

    with a per-image colour matrix ``M`` (from the identity), offset ``b``, a ``field x field`` smooth offset ``F`` and
    a denoising blend ``w`` (3x3 box blur), all fitted by Adam (``lr``) to minimise
    ``d_S(x', y) + l1_weight mean|y - x'|`` (the loss example's loss). The teachers then say how far ``n`` and ``y`` are
    really (:class:`TeacherLabeller`); where the student prefers ``y`` to ``n`` and they do not, the ranking terms
    correct it. A real improvement (the blend removing noise) is labelled as one, so it is not penalised.

    Args:
        embed: maps images ``(N, 3, H, W)`` in ``[0, 1]`` to projected embeddings (differentiable).
        ref: references ``(B, 3, H, W)`` in ``[0, 1]``.
        steps: Adam steps (``0``: the shortcut is the noisy copy itself).
        sigma_range: ``(lo, hi)`` of the Gaussian noise std, in [0, 1] pixel units.
        size: side at which the pair is made (``H`` or less), then resized back to ``H x W``.
        l1_weight: weight of the L1 anchor, as in the loss example.
        lr: Adam learning rate on the transform's parameters.
        field: side of the smooth offset grid.
        generator: seeds the noise and the sigmas.

    Returns:
        ``(x', n, y)``, each ``(B, 3, H, W)`` in ``[0, 1]``, detached.
    """
    lo, hi = sigma_range
    if not 0 < lo <= hi:
        raise ValueError(f"sigma_range must satisfy 0 < lo <= hi, got {sigma_range}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    b, c, h, w_ = ref.shape
    if c != 3 or size < 8 or size > min(h, w_):
        raise ValueError(f"need RGB references and 8 <= size <= their side, got {tuple(ref.shape)} and size {size}")
    dev = ref.device
    small = _resize(ref.detach().float(), size).clamp(0, 1)
    u = torch.rand(b, generator=generator).to(dev)
    sigma = torch.exp(math.log(lo) + u * (math.log(hi) - math.log(lo))).view(-1, 1, 1, 1)
    noisy = (small + sigma * torch.randn(small.shape, generator=generator).to(dev)).clamp(0, 1)
    blurred = torch.nn.functional.avg_pool2d(noisy, 3, 1, 1, count_include_pad=False)

    def up(t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.interpolate(t, size=(h, w_), mode="bilinear", align_corners=False)

    ref_seen, noisy_seen = up(small), up(noisy)
    matrix = torch.eye(3, device=dev).repeat(b, 1, 1).requires_grad_(True)
    offset = torch.zeros(b, 3, 1, 1, device=dev, requires_grad=True)
    smooth = torch.zeros(b, 3, field, field, device=dev, requires_grad=True)
    blend = torch.zeros(b, 1, 1, 1, device=dev, requires_grad=True)
    params = [matrix, offset, smooth, blend]

    def shortcut() -> torch.Tensor:
        wgt = blend.clamp(0, 1)  # from 0: no step gives the noisy copy back
        base = (1 - wgt) * noisy + wgt * blurred
        mixed = torch.einsum("bij,bjhw->bihw", matrix, base) + offset
        mixed = mixed + torch.nn.functional.interpolate(smooth, size=(size, size), mode="bilinear",
                                                        align_corners=False)
        return mixed.clamp(0, 1)

    with torch.no_grad():
        e_ref = embed(ref_seen).float()
    opt = torch.optim.Adam(params, lr=lr)
    best = noisy.clone()
    best_loss = torch.full((b,), float("inf"), device=dev)
    for k in range(steps + 1):
        y_small = shortcut()
        l1 = (y_small - small).abs().flatten(1).mean(1)
        loss = cosine_distance(e_ref, embed(up(y_small)).float()) + l1_weight * l1
        best, best_loss = _keep_best(best, best_loss, y_small.detach(), loss.detach())
        if k == steps:
            break
        grads = torch.autograd.grad(loss.sum(), params)  # only the transform's: the student's own grads stay untouched
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        opt.step()
    return ref_seen.detach(), noisy_seen.detach(), up(best).detach()
