"""Training of LipSim students: stage 1 (distillation) and stage 2 (2AFC hinge fine-tuning).

Recipe of LipSim (Ghazanfari et al., ICLR 2024, Sec. 4.2), adapted to the teachers we can run offline:

* **Stage 1, distillation.** The 1-Lipschitz student ``f`` regresses a frozen teacher's global embedding on natural
  photo crops: ``L = ||f(x) - s * t(x)||^2 / D`` with ``t`` a unit-norm teacher embedding (``alex-stats``,
  ``vgg-stats`` or ``dreamsim`` -- the paper's teacher) and ``s`` = ``target_scale``. Optionally
  (``rank_weight > 0``) a ranking term on distorted copies, as in stage 2.
* **Stage "pairs", distance distillation.** From a pair label set (:mod:`lipsim_metric.train.labels`: seeded
  distortion pairs with precomputed LPIPS-VGG / DISTS / LPIPS-Alex distances), the student's distances are trained to
  rank and correlate with the teachers' consensus, across references and within each (2AFC), optionally with the
  certified-radius hinge (:mod:`lipsim_metric.train.pair_objective`).
* **Stage 2, fine-tuning.** The hinge loss ``max(0, m - y (d0 - d1))`` on 2AFC judgements, ``y = +1`` when ``x1`` is
  closer (``m`` = ``margin``; the margin buys certified radius, Thm. 3 of the paper). Judgements come from a
  human set when given (``triplets``: NIGHT, BAPPS or CSV, see :mod:`lipsim_metric.train.data`) or from the distance
  teachers on generated distortions: each reference gets ``distortions_per_ref`` distorted copies and every pair of
  copies is a triplet whose label is the teachers' vote (pairs the teachers do not agree on are skipped: the NIGHT
  idea of unanimous votes). ``regress_weight`` keeps the stage-1 term.

The loop is driven by Hugging Face ``accelerate`` (single device, or many with ``accelerate launch`` / ``torchrun``:
DistributedDataParallel), with mixed precision, seeded data order, JSONL logs, resumable checkpoints
(``accelerator.save_state``) and a small safetensors export of the student after every checkpoint.

Command::

    python -m lipsim_metric.train.engine --config configs/distill_cpu.yaml [--set key=value ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from ..backbones import create_backbone
from ..certificates import cosine_distance, project_embedding
from ..pretrained import load_state_dict_strict, read_weights_metadata, save_weights
from .data import PhotoCropDataset, ShardDataset
from .distortions import sample_distortion
from .objectives import pair_terms, ranking_hinge, signed_radius
from .teachers import build_distance_teacher, build_embedding_teacher

_ranking_hinge = ranking_hinge  # the old private name (tests, notebooks)

__all__ = ["TrainConfig", "load_config", "train", "main", "DistortedCopies", "signed_radius"]


@dataclass
class TrainConfig:
    """All settings of one training run (YAML/JSON file keys have the same names)."""

    stage: str = "distill"  # "distill" | "finetune" | "pairs"
    output_dir: str = "runs/train"
    variant: str = "lipsim-fast"
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    init_weights: str | None = None  # start from these weights (stage 2 starts from stage 1)
    init_partial: bool = False  # load only the init_weights tensors whose name and shape fit (new layers stay random)
    # data
    train_dir: str | None = "../shared/images/train"
    shard: str | None = None  # packed uint8 shard (pack_images) instead of a folder
    image_size: int = 224
    max_images: int | None = None  # use only the first N images (smoke tests)
    triplets: str | None = None  # human 2AFC set for stage 2: "night:<root>", "bapps:<root>", "csv:<file>"
    labels: str | None = None  # stage "pairs": a pair label set folder (lipsim_metric.train.labels)
    labels_images: str | None = None  # the photo folder that label set was built from (default: train_dir)
    extra_labels: list[str] = field(default_factory=list)  # more label sets of the same photo folder, all refs used
    num_workers: int = 1
    # teachers
    teachers_dir: str | None = None
    embedding_teacher: str = "alex-stats"
    distance_teachers: list[str] = field(default_factory=lambda: ["lpips-alex"])
    # objective
    target_scale: float = 8.0
    regress_weight: float = 1.0
    rank_weight: float = 0.0
    margin: float = 0.05
    radius_margin: float = 0.0  # > 0: hinge on the certified radius (backbone l2 units) instead of the distance gap
    corr_weight: float = 1.0  # stage "pairs": 1 - pearson(log d_student, teacher consensus)
    pool_rank_weight: float = 1.0  # stage "pairs": RankNet over all pairs of the batch the teachers agree on
    rank_temperature: float = 0.1  # stage "pairs": RankNet temperature, log-distance units
    radius_weight: float = 0.0  # stage "pairs": weight of the certified 2AFC hinge (needs radius_margin > 0)
    distortions_per_ref: int = 4
    min_teacher_gap: float = 0.0  # skip pairs whose teacher distances differ by less than this (ambiguous)
    projection: str = "append"
    constant: float = 1.0  # the appended coordinate c of the "append" projection; recorded in the exported weights
    # stage "pairs": hard pairs mined against the student, labelled by the teachers (lipsim_metric.train.hard_pairs)
    hard_pairs_per_step: int = 0  # mined pairs drawn from the replay buffer into each batch (0: off)
    hard_mine_every: int = 4  # mine new pairs every N steps
    hard_mine_refs: int = 3  # references of the batch mined each time
    hard_mine_steps: int = 8  # projected gradient steps of each search
    hard_rms: list[float] = field(default_factory=lambda: [0.02, 0.3])  # per-pixel RMS range of the perturbation
    hard_uniform_fraction: float = 0.25  # searches started from a uniform-noise image (the inversion test's start)
    hard_continue_fraction: float = 0.0  # searches that continue a buffered chain against the current student
    hard_buffer: int = 128  # replay buffer capacity (pairs)
    hard_kind: str = "sphere"  # "sphere": fixed-energy noise searches; "shortcut": the loss example's shortcuts
    hard_sigma: list[float] = field(default_factory=lambda: [0.05, 0.2])  # "shortcut": noise std range
    hard_sizes: list[int] = field(default_factory=lambda: [64, 96, 128, 224])  # "shortcut": sides the pair is made at
    hard_l1_weight: float = 0.1  # "shortcut": L1 anchor of the searched loss (the loss example's)
    hard_lr: float = 0.01  # "shortcut": Adam learning rate on the photometric transform; "denoiser": the denoiser's
    hard_denoiser_width: int = 32  # "denoiser": the adversary (train.denoiser_adversary), as in the example
    hard_denoiser_depth: int = 5
    hard_denoiser_batch: int = 8  # crops per adversary update (one update per training step)
    hard_denoiser_reset: int = 200  # adversary updates between restarts from the identity (0: never)
    hard_within_weight: float = 0.0  # "denoiser": RankNet between the noisy crop and the output of the same crop
    hard_within_teachers: list[str] = field(default_factory=list)  # teachers of that term (empty: all pair_teachers)
    pair_teachers: list[str] = field(default_factory=list)  # stage "pairs": teachers of the objective (empty: all)
    # optimisation
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 50
    max_steps: int = 1000
    max_minutes: float | None = None  # stop cleanly after this wall time (CPU budgets)
    mixed_precision: str = "no"  # "no" | "bf16" | "fp16" | "auto" (bf16 on CUDA or a CPU with bf16 hardware)
    seed: int = 0
    # bookkeeping
    log_every: int = 10
    checkpoint_every: int = 200
    resume: bool = True
    export_dtype: str = "float16"


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML or JSON config and apply ``key=value`` overrides (values parsed as YAML)."""
    import yaml

    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file {p} does not exist")
        data = yaml.safe_load(p.read_text()) or {}
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key=value")
        key, value = item.split("=", 1)
        data[key] = yaml.safe_load(value)
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown config keys {unknown}; valid keys: {sorted(names)}")
    cfg = TrainConfig(**data)
    if cfg.stage not in ("distill", "finetune", "pairs"):
        raise ValueError(f"stage must be 'distill', 'finetune' or 'pairs', got {cfg.stage!r}")
    if cfg.stage == "pairs" and not cfg.labels:
        raise ValueError("stage 'pairs' needs labels: a pair label set folder (python -m lipsim_metric.train.labels)")
    if cfg.extra_labels and cfg.stage != "pairs":
        raise ValueError("extra_labels (more pair label sets) need stage 'pairs'")
    if not cfg.constant > 0:
        raise ValueError(f"constant (the appended coordinate c) must be > 0, got {cfg.constant}")
    if cfg.radius_weight > 0 and cfg.radius_margin <= 0:
        raise ValueError("radius_weight > 0 needs radius_margin > 0 (the certified radius the hinge asks for)")
    if cfg.hard_pairs_per_step < 0 or cfg.hard_mine_every < 1 or cfg.hard_mine_refs < 1 or cfg.hard_mine_steps < 0:
        raise ValueError("hard_pairs_per_step must be >= 0, hard_mine_every and hard_mine_refs >= 1, "
                         "hard_mine_steps >= 0")
    if cfg.hard_pairs_per_step and cfg.stage != "pairs":
        raise ValueError("hard pairs (hard_pairs_per_step > 0) need stage 'pairs' (their labels join its objective)")
    if not 0 <= cfg.hard_continue_fraction <= 1 or not 0 <= cfg.hard_uniform_fraction <= 1:
        raise ValueError("hard_continue_fraction and hard_uniform_fraction must lie in [0, 1]")
    if len(cfg.hard_rms) != 2 or not 0 < cfg.hard_rms[0] <= cfg.hard_rms[1]:
        raise ValueError(f"hard_rms must be [lo, hi] with 0 < lo <= hi, got {cfg.hard_rms}")
    if cfg.hard_kind not in ("sphere", "shortcut", "denoiser"):
        raise ValueError(f"hard_kind must be 'sphere', 'shortcut' or 'denoiser', got {cfg.hard_kind!r}")
    if cfg.hard_within_weight and cfg.hard_kind != "denoiser":
        raise ValueError("hard_within_weight (noisy crop vs denoiser output) needs hard_kind 'denoiser'")
    if cfg.hard_kind == "denoiser" and (cfg.hard_pairs_per_step % 2 or cfg.hard_buffer % 2):
        raise ValueError("hard_kind 'denoiser' stores pairs in groups of two: hard_pairs_per_step and hard_buffer "
                         f"must be even, got {cfg.hard_pairs_per_step} and {cfg.hard_buffer}")
    if cfg.hard_kind == "denoiser" and len(cfg.hard_sizes) != 1:
        raise ValueError(f"hard_kind 'denoiser' crops one size: set hard_sizes to [side], got {cfg.hard_sizes}")
    if cfg.hard_kind in ("shortcut", "denoiser"):
        if cfg.hard_continue_fraction:
            raise ValueError("hard_continue_fraction (persistent chains) applies to hard_kind 'sphere' only; "
                             "set it to 0")
        if len(cfg.hard_sigma) != 2 or not 0 < cfg.hard_sigma[0] <= cfg.hard_sigma[1]:
            raise ValueError(f"hard_sigma must be [lo, hi] with 0 < lo <= hi, got {cfg.hard_sigma}")
        if not cfg.hard_sizes or min(cfg.hard_sizes) < 8 or min(cfg.hard_sizes) > cfg.image_size:
            raise ValueError(f"hard_sizes must list sides in [8, image_size={cfg.image_size}], got {cfg.hard_sizes}")
    if cfg.mixed_precision not in ("no", "bf16", "fp16", "auto"):
        raise ValueError(f"mixed_precision must be 'no', 'bf16', 'fp16' or 'auto', got {cfg.mixed_precision!r}")
    if cfg.stage == "finetune" and cfg.distortions_per_ref < 2 and cfg.triplets is None:
        raise ValueError("stage 'finetune' on generated triplets needs distortions_per_ref >= 2")
    return cfg


class DistortedCopies(Dataset):
    """Wrap a photo dataset: item = ``(ref, copies)`` with ``k`` seeded random distortions of ``ref``.

    Randomness depends only on ``(seed, epoch, index)`` so runs are reproducible with any number of workers.
    """

    def __init__(self, base: Dataset, k: int, seed: int = 0) -> None:
        self.base, self.k, self.seed, self.epoch = base, k, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        ref = self.base[index]
        rng = np.random.default_rng([self.seed, self.epoch, index, 7])
        copies = torch.stack([sample_distortion(rng).apply(ref) for _ in range(self.k)])
        return ref, copies


def _human_triplets(spec: str, size: int) -> Dataset:
    """Parse ``night:<root>[:split]``, ``bapps:<root>`` or ``csv:<file>`` into a 2AFC dataset."""
    from .data import BAPPS2AFCDataset, NightDataset, TripletCSVDataset

    kind, _, rest = spec.partition(":")
    if kind == "night":
        root, _, split = rest.partition(":")
        return NightDataset(root, split=split or "train", size=size)
    if kind == "bapps":
        return BAPPS2AFCDataset(rest, size=size)
    if kind == "csv":
        return TripletCSVDataset(rest, size=size)
    raise ValueError(f"triplets must look like night:<root>[:split], bapps:<root> or csv:<file>, got {spec!r}")


def _photo_dataset(cfg: TrainConfig) -> Dataset:
    if cfg.shard:
        ds: Dataset = ShardDataset(cfg.shard, augment=True, seed=cfg.seed)
    elif cfg.train_dir:
        ds = PhotoCropDataset(cfg.train_dir, size=cfg.image_size, train=True, seed=cfg.seed, skip_unreadable=True)
    else:
        raise ValueError("set train_dir or shard")
    if cfg.max_images is not None:
        ds = torch.utils.data.Subset(ds, range(min(cfg.max_images, len(ds))))  # type: ignore[arg-type]
    return ds


class _Teachers(torch.nn.Module):
    """Frozen distance teachers evaluated together; ``forward(a, b) -> (T, N)``."""

    def __init__(self, names: list[str], teachers_dir: str | None) -> None:
        super().__init__()
        self.names = list(names)
        self.nets = torch.nn.ModuleList([build_distance_teacher(n, teachers_dir=teachers_dir) for n in names])

    @torch.no_grad()
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.stack([net(a, b) for net in self.nets])

    @torch.no_grad()
    def to_copies(self, ref: torch.Tensor, copies: torch.Tensor) -> torch.Tensor:
        """Distances ``(T, B, K)`` from each reference ``ref[b]`` (``(B, 3, H, W)``) to its copies ``copies[b, k]``.

        Equal to ``forward`` on the references repeated ``K`` times, but each reference's trunk features are
        computed once (``B + B K`` trunk passes instead of ``2 B K``); every distance teacher (LPIPS, DISTS) splits
        ``features`` / ``distance_from_features``.
        """
        b, k = copies.shape[:2]
        flat = copies.flatten(0, 1)
        out = []
        net: Any
        for net in self.nets:  # LPIPS / DISTS modules: features() and distance_from_features()
            f_ref = [f.repeat_interleave(k, dim=0) for f in net.features(ref)]
            out.append(net.distance_from_features(f_ref, net.features(flat)))
        return torch.stack(out).view(len(self.nets), b, k)


def _one_thread(worker_id: int) -> None:
    # Data workers render distortions (small tensor ops); one thread each leaves the cores to the training step.
    torch.set_num_threads(1)


def _load_partial(student: torch.nn.Module, path: str, log: Any) -> None:
    """Load the tensors of ``path`` whose names and shapes exist in ``student``; report the rest."""
    from safetensors.torch import load_file

    state = load_file(path)
    own = student.state_dict()
    fit = {k: v.to(own[k].dtype) for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not fit:
        raise ValueError(f"init_partial: no tensor of {path} fits the student; check variant and backbone_kwargs")
    student.load_state_dict(fit, strict=False)
    log(f"init_partial: loaded {len(fit)}/{len(own)} tensors from {path}; "
        f"new: {sorted(set(own) - set(fit))[:8]}{' ...' if len(set(own) - set(fit)) > 8 else ''}")


_HARD_FILE = "hard_pairs.safetensors"


def resolve_mixed_precision(value: str) -> str:
    """``"auto"`` -> ``"bf16"`` on CUDA or on a CPU with bf16 hardware, else ``"no"``; other values unchanged."""
    if value != "auto":
        return value
    from .cpu_bf16 import native_bf16_cpu

    return "bf16" if torch.cuda.is_available() or native_bf16_cpu() else "no"


def train(cfg: TrainConfig) -> Path:
    """Run one training stage; returns the path of the exported student weights (safetensors)."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm import tqdm

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    # under torchrun without CUDA, accelerate sets up gloo DDP only when told cpu=True (else every rank trains alone)
    precision = resolve_mixed_precision(cfg.mixed_precision)
    if precision == "bf16" and not torch.cuda.is_available():
        from .cpu_bf16 import native_bf16_cpu

        if not native_bf16_cpu():
            warnings.warn("mixed_precision 'bf16' on a CPU without bf16 hardware (AMX / AVX512-BF16) is emulated and "
                          "several times slower than float32; set mixed_precision: \"no\" "
                          "(--set mixed_precision=no)", RuntimeWarning, stacklevel=2)
    acc = Accelerator(mixed_precision=precision,
                      cpu=not torch.cuda.is_available() and torch.distributed.is_available()
                      and torch.distributed.is_torchelastic_launched())
    set_seed(cfg.seed)

    backbone_kwargs = dict(cfg.backbone_kwargs)
    if cfg.init_weights and not backbone_kwargs:
        backbone_kwargs = read_weights_metadata(cfg.init_weights).get("backbone_kwargs", {})
    student = create_backbone(cfg.variant, **backbone_kwargs)
    if cfg.init_weights and cfg.init_partial:
        _load_partial(student, cfg.init_weights, print)
    elif cfg.init_weights:
        load_state_dict_strict(student, cfg.init_weights)
    student.train()

    emb_teacher = None
    if cfg.regress_weight > 0:
        emb_teacher = build_embedding_teacher(cfg.embedding_teacher, teachers_dir=cfg.teachers_dir)
        if int(emb_teacher.embed_dim) > student.embed_dim:  # type: ignore[arg-type]
            raise ValueError(f"teacher {cfg.embedding_teacher} has {emb_teacher.embed_dim} dims but the student "
                             f"only {student.embed_dim}; set backbone_kwargs.embed_dim")
    pairs = cfg.stage == "pairs"
    human = cfg.stage == "finetune" and cfg.triplets is not None
    need_rank = not human and not pairs and (cfg.stage == "finetune" or cfg.rank_weight > 0)
    dist_teachers = _Teachers(cfg.distance_teachers, cfg.teachers_dir) if need_rank else None

    consensus = None
    within_columns: list[int] | None = None
    pair_columns: list[int] = []
    objective_teachers: list[str] = []
    if pairs:
        from .labels import ConcatPairLabelSets, PairLabelSet
        from .pair_objective import ConsensusTarget

        photo_dir = cfg.labels_images or cfg.train_dir
        dataset: Dataset = PairLabelSet(cfg.labels, photo_dir,  # type: ignore[arg-type]
                                        max_refs=cfg.max_images, cache=cfg.num_workers == 0, flip=True)
        if cfg.extra_labels:
            dataset = ConcatPairLabelSets([dataset] + [  # type: ignore[list-item]
                PairLabelSet(root, photo_dir, cache=cfg.num_workers == 0, flip=True)  # type: ignore[arg-type]
                for root in cfg.extra_labels])
        set_teachers: list[str] = list(dataset.teachers)  # type: ignore[attr-defined]
        unknown = sorted(set(cfg.pair_teachers) - set(set_teachers))
        if unknown:
            raise ValueError(f"pair_teachers {unknown} are not teachers of the label set {set_teachers}")
        objective_teachers = list(cfg.pair_teachers) or set_teachers
        pair_columns = [set_teachers.index(t) for t in objective_teachers]
        consensus = ConsensusTarget(dataset.distances[:, pair_columns])  # type: ignore[attr-defined]
        unknown = sorted(set(cfg.hard_within_teachers) - set(objective_teachers))
        if unknown:
            raise ValueError(f"hard_within_teachers {unknown} are not among the objective's teachers "
                             f"{objective_teachers} (pair_teachers, or the label set's)")
        within_columns = [objective_teachers.index(t) for t in cfg.hard_within_teachers] or None
        sets = ", ".join([cfg.labels, *cfg.extra_labels])  # type: ignore[list-item]
        acc.print(f"pair label set {sets}: {len(dataset)} references x {dataset.cfg.copies} copies, "  # type: ignore[arg-type,attr-defined]
                  f"teachers {set_teachers}, objective on {objective_teachers}")
    elif human:
        dataset = _human_triplets(cfg.triplets, cfg.image_size)  # type: ignore[arg-type]
    else:
        photos = _photo_dataset(cfg)
        dataset = DistortedCopies(photos, cfg.distortions_per_ref, cfg.seed) if need_rank else photos
    labeller = buffer = adversary = None
    if pairs and cfg.hard_pairs_per_step:
        from .hard_pairs import HardPairBuffer, TeacherLabeller, hard_batch

        labeller = TeacherLabeller(dataset.teachers, cfg.teachers_dir,  # type: ignore[attr-defined]
                                   dataset.manifest.get("bf16_teachers", []))  # type: ignore[attr-defined]
        buffer = HardPairBuffer(cfg.hard_buffer, seed=cfg.seed, group=2 if cfg.hard_kind == "denoiser" else 1)
        if cfg.hard_kind == "denoiser":
            from .denoiser_adversary import DenoiserAdversary

            adversary = DenoiserAdversary(width=cfg.hard_denoiser_width, depth=cfg.hard_denoiser_depth,
                                          lr=cfg.hard_lr, crop=cfg.hard_sizes[0],
                                          sigma_range=(cfg.hard_sigma[0], cfg.hard_sigma[1]),
                                          l1_weight=cfg.hard_l1_weight, batch=cfg.hard_denoiser_batch,
                                          reset_every=cfg.hard_denoiser_reset, image_size=cfg.image_size,
                                          seed=cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True, drop_last=True, generator=generator,
                        num_workers=cfg.num_workers, persistent_workers=False, worker_init_fn=_one_thread)
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    clock = {"start": time.time(), "offset": 0.0}

    def lr_lambda(step: int) -> float:
        # Linear warm-up, then cosine decay over whichever budget (steps or wall time) runs out first.
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
        if cfg.max_minutes:
            elapsed = clock["offset"] + time.time() - clock["start"]
            progress = max(progress, elapsed / (60 * cfg.max_minutes))
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
    student, opt, loader, sched = acc.prepare(student, opt, loader, sched)
    for t in (emb_teacher, dist_teachers):
        if t is not None:
            t.to(acc.device).eval()

    state = {"step": 0, "epoch": 0, "seconds": 0.0}
    ckpt_dir = out / "checkpoint"
    if cfg.resume and (ckpt_dir / "progress.json").is_file():
        acc.load_state(str(ckpt_dir))
        state = json.loads((ckpt_dir / "progress.json").read_text())
        acc.print(f"resumed from {ckpt_dir} at step {state['step']}")
        if buffer is not None and (ckpt_dir / _HARD_FILE).is_file():
            from safetensors.torch import load_file

            buffer.load_state_dict(load_file(str(ckpt_dir / _HARD_FILE)))
            acc.print(f"resumed {len(buffer)} mined hard pairs")
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
    log_file = open(out / "log.jsonl", "a")

    def export() -> Path:
        path = out / "student.safetensors"
        if acc.is_main_process:
            net = acc.unwrap_model(student)
            save_weights(net, path, cfg.variant, dtype=getattr(torch, cfg.export_dtype),
                         backbone_kwargs=backbone_kwargs, projection=cfg.projection, constant=cfg.constant,
                         training=json.dumps({"stage": cfg.stage, "step": state["step"],
                                              "embedding_teacher": cfg.embedding_teacher,
                                              "distance_teachers": (objective_teachers if pairs
                                                                    else cfg.distance_teachers),
                                              "labels": cfg.labels}))
        return path

    def checkpoint() -> None:
        acc.wait_for_everyone()
        acc.save_state(str(ckpt_dir))
        if acc.is_main_process:
            if buffer is not None and len(buffer):
                from safetensors.torch import save_file

                save_file(buffer.state_dict(), str(ckpt_dir / _HARD_FILE))
            (ckpt_dir / "progress.json").write_text(json.dumps(state))
        export()

    start = time.time() - state["seconds"]
    clock.update(start=time.time(), offset=state["seconds"])
    bar = tqdm(total=cfg.max_steps, initial=state["step"], disable=not acc.is_local_main_process, file=sys.stderr)
    images_seen, window_start = 0, time.time()
    done = state["step"] >= cfg.max_steps
    while not done:
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(state["epoch"])  # type: ignore[union-attr]
        for batch in loader:
            if pairs:
                ref, copies = batch["ref"], batch["copies"]
                b, k = copies.shape[:2]
                images = torch.cat([ref[:, None], copies], dim=1).flatten(0, 1)
                hard_dist = torch.empty(0)
                if buffer is not None and labeller is not None:
                    hard_images, hard_dist = hard_batch(cfg, acc, student, ref, buffer, labeller, int(state["step"]),
                                                        adversary)
                    images = torch.cat([images, hard_images.to(images)])
            elif human:
                ref, b, k = batch["ref"], batch["ref"].shape[0], 2
                copies = torch.stack([batch["x0"], batch["x1"]], dim=1)
                images = torch.cat([ref[:, None], copies], dim=1).flatten(0, 1)
            elif need_rank:
                ref, copies = batch
                b, k = copies.shape[:2]
                images = torch.cat([ref[:, None], copies], dim=1).flatten(0, 1)
            else:
                ref, images, b, k = batch, batch, batch.shape[0], 0
            with acc.autocast():
                feats = student(images)
            emb, norms = project_embedding(feats.float(), cfg.projection, cfg.constant)  # type: ignore[arg-type]
            logs: dict[str, torch.Tensor] = {}  # converted to floats only when logged (no per-step sync)
            loss = feats.new_zeros((), dtype=torch.float32)
            if emb_teacher is not None:
                with torch.no_grad():
                    target = emb_teacher(images).float()
                dim = target.shape[1]
                reg = (feats.float()[:, :dim] - cfg.target_scale * target).square().sum(1).mean() / cfg.target_scale**2
                loss = loss + cfg.regress_weight * reg
                logs["regress"] = reg.detach()
            if human:
                e = emb.view(b, 3, -1)
                d0, d1 = cosine_distance(e[:, 0], e[:, 1]), cosine_distance(e[:, 0], e[:, 2])
                target = batch["target"].to(d0.device).float()
                y = torch.sign(target - 0.5)  # +1: humans found x1 closer, so we want d0 - d1 >= margin
                keep = y != 0
                if cfg.radius_margin > 0:
                    n3 = norms.view(b, 3)
                    gap = signed_radius(e[:, 0], n3[:, 0], e[:, 1], e[:, 2], cfg.projection, cfg.constant)
                    hinge_all = F.relu(cfg.radius_margin - y * gap) / cfg.radius_margin
                else:
                    hinge_all = F.relu(cfg.margin - y * (d0 - d1))
                hinge = hinge_all[keep].mean() if keep.any() else d0.sum() * 0
                loss = loss + hinge
                logs["hinge"] = hinge.detach()
                logs["pair_agreement"] = ((y * (d0 - d1)) > 0)[keep].float().mean()
            if pairs and consensus is not None:
                n_main = b * (k + 1)
                hard_dist = hard_dist[:, pair_columns] if hard_dist.dim() == 2 else hard_dist
                hard = (emb[n_main:], hard_dist.to(emb.device)) if buffer is not None else None
                loss = loss + pair_terms(cfg, emb[:n_main], norms[:n_main],
                                         batch["distances"][:, pair_columns].to(emb.device),
                                         consensus, b, k, logs, hard, within_columns)
                if adversary is not None:  # the adversary's own loss-example numbers, under the current student
                    res = adversary.last
                    logs.update(adv_loss=res["loss"], adv_psnr_out=res["psnr_out"], adv_psnr_noisy=res["psnr_noisy"])
            if need_rank and dist_teachers is not None:
                e = emb.view(b, k + 1, -1)
                d_student = cosine_distance(e[:, :1].expand(-1, k, -1).flatten(0, 1), e[:, 1:].flatten(0, 1))
                d_student = d_student.view(b, k)
                d_teacher = dist_teachers.to_copies(ref, copies)
                gaps = None
                if cfg.radius_margin > 0:
                    ek = e[:, 1:]  # (b, k, D): copy k plays x0, copy l plays x1 -> positive when l is closer
                    gaps = signed_radius(e[:, :1, None], norms.view(b, k + 1)[:, :1, None], ek[:, :, None],
                                         ek[:, None, :], cfg.projection, cfg.constant)
                margin = cfg.radius_margin if gaps is not None else cfg.margin
                rank, agree = ranking_hinge(d_student, d_teacher, margin, cfg.min_teacher_gap, gaps)
                weight = 1.0 if cfg.stage == "finetune" else cfg.rank_weight
                loss = loss + weight * rank
                logs["hinge"], logs["pair_agreement"] = rank.detach(), agree
            opt.zero_grad(set_to_none=True)
            acc.backward(loss)
            opt.step()
            sched.step()
            state["step"] += 1
            images_seen += images.shape[0] * acc.num_processes
            bar.update(1)
            if state["step"] % cfg.log_every == 0 and acc.is_main_process:
                now = time.time()
                rec = {"step": state["step"], "epoch": state["epoch"], "loss": float(loss.detach()),
                       "lr": sched.get_last_lr()[0], "images_per_s": images_seen / max(1e-9, now - window_start),
                       "elapsed_s": now - start, **{k: float(v) for k, v in logs.items()}}
                log_file.write(json.dumps(rec) + "\n")
                log_file.flush()
                bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
                images_seen, window_start = 0, now
            state["seconds"] = time.time() - start
            over_time = cfg.max_minutes is not None and state["seconds"] > 60 * cfg.max_minutes
            if state["step"] % cfg.checkpoint_every == 0 or state["step"] >= cfg.max_steps or over_time:
                checkpoint()
            if state["step"] >= cfg.max_steps or over_time:
                done = True
                break
        else:
            state["epoch"] += 1
    bar.close()
    log_file.close()
    return export()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lipsim_metric.train.engine", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help="YAML/JSON config (see TrainConfig for keys)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (repeatable)")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    path = train(cfg)
    print(f"student weights: {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
