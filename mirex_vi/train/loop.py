"""The training loop (docs/REFERENCE.md §3): online triplet mining over clique batches.

One process on CPU or one GPU, or several processes launched by ``torchrun`` (one per GPU,
``distributed.py``): each epoch's batches are then split across the ranks; only rank 0
validates, logs and writes files. BatchNorm stays plain (per-process statistics), as in the
report; DDP keeps the running statistics of rank 0.

Schedule: the learning rate is set once per epoch by ``lr_at`` (the report's "5 warm-up
steps" are epochs). Randomness is re-seeded from ``(seed, epoch, rank)`` at every epoch,
so a run resumed from ``last.pt`` draws the same batches, crops and positives as an
uninterrupted one (up to cuDNN nondeterminism).

Initial weights: ``init_weights`` (a package or a ``.pth``) and its pin ``init_sha256``; a
pinned run refuses to start from other weights, and every checkpoint records the initial
weights' sha256. Those weights, the run folder and checkpoints are in ``checkpoint.py``.

The training and validation data come from ``inputs.py``. With ``distill_weight`` > 0 the
``init_weights`` model, frozen, embeds the crops of ``distill_sources`` (default: all) at
``teacher_tempo_scales`` as a target for the one-pass embedding (``losses.distillation_loss``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as torch_dist
from torch import nn
from torch.utils.data import DataLoader

from ..config import TrainConfig
from ..core.runtime import amp_enabled, autocast, disable_tf32_without_amp
from ..features.stored import FullTrackDataset
from ..model.cqtnet import build_model
from .checkpoint import (BEST, LAST, METRICS, TrainingState, append_metrics, check_init_pin,
                         checkpoint_payload, distilled_cliques, initial_model, load_teacher,
                         prepare_run_dir, restore_checkpoint, save_checkpoint, truncate_metrics)
from .data import CliqueBatchSampler
from .distributed import Ranks, barrier, distribute, init_distributed
from .heads import ClassificationHead, classification_loss
from .inputs import build_train_loader, build_val_set
from .losses import NegativeMemory, distillation_loss, teacher_embeddings, triplet_loss

log = logging.getLogger(__name__)


def lr_at(epoch: float, cfg: TrainConfig) -> float:
    """Learning rate of an epoch: linear warm-up, then cosine annealing.

    ``lr_start`` at epoch 0, linear to ``lr_peak`` at ``warmup_epochs``, cosine down to
    ``lr_end`` at ``epochs`` (epoch e trains at ``lr_at(e)``, so the last one is just above
    ``lr_end``).
    """
    e = min(max(epoch, 0.0), cfg.epochs)
    if e < cfg.warmup_epochs:
        return cfg.lr_start + (cfg.lr_peak - cfg.lr_start) * e / cfg.warmup_epochs
    span = max(cfg.epochs - cfg.warmup_epochs, 1)
    progress = (e - cfg.warmup_epochs) / span
    return cfg.lr_end + 0.5 * (cfg.lr_peak - cfg.lr_end) * (1.0 + math.cos(math.pi * progress))


def _seed(cfg: TrainConfig, epoch: int, ranks: Ranks) -> torch.Generator:
    """Re-seed torch and numpy for an epoch; return the generator used to draw positives."""
    seed = int(np.random.SeedSequence([cfg.seed, epoch, ranks.rank]).generate_state(1)[0])
    torch.manual_seed(seed)
    np.random.seed(seed)
    return torch.Generator().manual_seed(seed)


# --- building blocks -----------------------------------------------------------------------


def build_training_state(cfg: TrainConfig, device: torch.device, ranks: Ranks,
                         initial_weights: bool = True, n_classes: int = 0,
                         clique_source: Sequence[int] = ()) -> TrainingState:
    """Seeded model and head (DDP-wrapped when distributed), Adam over both, the per-epoch
    LR schedule and the scaler; with ``distill_weight`` > 0 the frozen teacher too.

    Args:
        initial_weights: load ``cfg.init_weights`` (checking its pin); False when a
            checkpoint is about to replace the weights (resume).
        n_classes: training cliques, the outputs of the classification head (built only
            when ``cfg.cls_weight > 0``).
        clique_source: ``(n_classes,)`` the source index of each training clique (0: the
            main one), read when ``cfg.distill_sources`` names some.
    """
    torch.manual_seed(cfg.seed)
    if initial_weights:
        model, init_sha256 = initial_model(cfg)
    else:
        model, init_sha256 = build_model(cfg.model), None
    model = distribute(model.to(device), device, ranks)
    params = list(model.parameters())
    head = None
    if cfg.cls_weight > 0:
        if n_classes < 2:
            raise ValueError(f"cls_weight={cfg.cls_weight} needs >= 2 training cliques")
        head = ClassificationHead(cfg.model_config.embedding_dim, n_classes)
        head = distribute(head.to(device), device, ranks)
        params += [p for p in head.parameters() if p.requires_grad]
    memory = (NegativeMemory(cfg.memory_size, cfg.model_config.embedding_dim, device)
              if cfg.memory_size else None)
    # Base LR = lr_peak; the lambda scales it to lr_at(epoch).
    optimizer = torch.optim.Adam(params, lr=cfg.lr_peak, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: lr_at(e, cfg) / cfg.lr_peak)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_enabled(device, cfg.amp))
    state = TrainingState(model, optimizer, scheduler, scaler, device, head, memory, init_sha256)
    if cfg.distill_weight > 0:
        teacher, state.teacher_sha256 = load_teacher(cfg)
        state.teacher = teacher.to(device)
        state.distilled = distilled_cliques(cfg, clique_source, device)
    return state


# --- one step, one epoch -------------------------------------------------------------------


def training_step(state: TrainingState, batch: tuple[torch.Tensor, ...], cfg: TrainConfig,
                  generator: torch.Generator | None) -> dict[str, torch.Tensor]:
    """Forward, loss, backward and Adam update on one batch (a further loss term goes here).

    Args:
        batch: ``(x, labels, versions)``: ``(B, F, T')`` pooled CQT crops, and ``(B,)``
            clique and version indices.
        generator: draws the positives (None: torch's global generator).

    Returns:
        Detached 0-dim tensors on the device (no sync): ``loss`` (triplet plus
        ``cls_weight`` x classification plus ``distill_weight`` x distillation),
        ``active`` (the share of anchors with a positive triplet loss) and, with a head,
        ``cls_loss``, with a teacher, ``distill_loss``.
    """
    x, labels, versions = batch
    device = state.device
    labels = labels.to(device)
    x = x.unsqueeze(1).to(device, memory_format=torch.channels_last, non_blocking=True)  # (B, 1, F, T')
    # The rows the teacher embeds: all, or those of cliques from cfg.distill_sources
    rows = slice(None) if state.distilled is None else state.distilled[labels]
    with autocast(device, amp_enabled(device, cfg.amp)):
        emb = state.model(x)  # (B, D)
        logits = state.head(emb) if state.head is not None else None  # (B, n_classes)
        target = (teacher_embeddings(state.teacher, x[rows], cfg.teacher_tempo_scales)  # (B', D)
                  if state.teacher is not None else None)
    loss, stats = triplet_loss(emb, labels, cfg.margin, versions.to(device), generator,
                               state.memory)
    extra = {}
    if logits is not None:
        cls_loss = classification_loss(logits, labels, cfg.label_smoothing)
        loss = loss + cfg.cls_weight * cls_loss
        extra["cls_loss"] = cls_loss.detach()
    if target is not None and len(target):
        distill_loss = distillation_loss(emb[rows], target)
        loss = loss + cfg.distill_weight * distill_loss
        extra["distill_loss"] = distill_loss.detach()
    state.optimizer.zero_grad(set_to_none=True)
    state.scaler.scale(loss).backward()
    state.scaler.step(state.optimizer)
    state.scaler.update()
    if state.memory is not None:
        state.memory.push(emb.detach(), labels)
    return dict(loss=loss.detach(), active=stats["active"], **extra)


def train_epoch(state: TrainingState, loader, cfg: TrainConfig, generator: torch.Generator,
                ranks: Ranks = Ranks(), progress: bool = True) -> dict[str, float]:
    """One pass over this rank's batches (with a progress bar on rank 0 if ``progress``);
    returns the mean ``loss``, ``active``, ``cls_loss`` (0 without a head) and
    ``distill_loss`` (0 without a teacher) over all ranks' steps, and ``steps`` (per rank)."""
    state.model.train()
    if state.head is not None:
        state.head.train()
    names = ("loss", "active", "cls_loss", "distill_loss")
    totals = torch.zeros(len(names) + 1, dtype=torch.float64, device=state.device)  # + steps
    zero = torch.zeros((), device=state.device)
    from tqdm import tqdm

    bar = tqdm(loader, desc="train", unit="step", leave=False,
               disable=not (progress and ranks.is_main))
    for batch in bar:
        stats = training_step(state, batch, cfg, generator)
        totals += torch.stack([*(stats.get(n, zero) for n in names),
                               torch.ones((), device=state.device)]).double()
        if state.device.type == "cpu":  # a per-step readout costs a device sync on CUDA
            bar.set_postfix(loss=f"{stats['loss'].item():.4f}")
    if ranks.world_size > 1:
        torch_dist.all_reduce(totals)
    *sums, steps = totals.tolist()
    means = {n: total / max(steps, 1) for n, total in zip(names, sums)}
    return dict(means, steps=int(steps) // ranks.world_size)


@torch.inference_mode()
def validate(model: nn.Module, dataset: FullTrackDataset, cfg: TrainConfig,
             device: torch.device) -> dict[str, Any]:
    """MAP, MR1, ... of full-track embeddings of the validation split (``summary()`` dict)."""
    from ..eval.metrics import metrics_from_embeddings
    from ..inference.embed import embed_stream

    model.eval()
    loader = DataLoader(dataset, batch_size=None, num_workers=cfg.num_workers)
    embeddings = embed_stream(model, (x for x, _ in loader), device, cfg.amp,  # (N, D)
                              tempo_scales=cfg.features.tempo_scales)
    result = metrics_from_embeddings(embeddings, dataset.labels.tolist(), cfg.val_chunk_size, device)
    return result.summary()


# --- the loop --------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunContext:
    """What every epoch of a run reads and none changes."""

    cfg: TrainConfig
    ranks: Ranks
    run_dir: Path
    loader: DataLoader
    sampler: CliqueBatchSampler
    val_set: FullTrackDataset | None  # None: no validation split, or not rank 0
    progress: bool


def run_training(cfg: TrainConfig, resume: bool = False, device: str = "auto",
                 progress: bool = True) -> Path:
    """Train ``cfg.epochs`` epochs (continuing ``last.pt`` when ``resume``; a progress bar
    per epoch if ``progress``); return the run folder.

    Raises:
        TrainInputError: data paths unset or missing, or splits without enough cliques.
        FileExistsError: ``output_dir`` already holds a run and ``resume`` is False.
        FileNotFoundError: ``resume`` without a ``last.pt``.
        OSError: ``output_dir`` cannot be made or written.
        WeightsError: ``init_weights`` that cannot be used or do not match ``init_sha256``.
    """
    ranks, dev = init_distributed(device)
    disable_tf32_without_amp(dev, cfg.amp)  # amp: false means true fp32 on CUDA
    if not ranks.is_main:  # only rank 0 reports
        logging.getLogger(__package__).setLevel(logging.WARNING)
    run_dir = Path(cfg.output_dir)
    try:
        if not resume:  # the weights first: the one refusal a config's comments explain
            check_init_pin(cfg)
        # Both splits are read and checked before the run folder is made: a refusal leaves
        # nothing behind.
        loader, sampler = build_train_loader(cfg, ranks, dev)
        val_set = build_val_set(cfg) if ranks.is_main else None
        if ranks.is_main:
            prepare_run_dir(cfg, resume)
        barrier(ranks)
        torch.backends.cudnn.benchmark = True
        # A resumed run takes its weights, and their lineage, from last.pt.
        state = build_training_state(cfg, dev, ranks, initial_weights=not resume,
                                     n_classes=len(sampler.members),
                                     clique_source=loader.dataset.clique_source)
        if resume:
            restore_checkpoint(run_dir / LAST, state, cfg)
            if ranks.is_main:
                truncate_metrics(run_dir / METRICS, state.epoch)
        run = RunContext(cfg, ranks, run_dir, loader, sampler, val_set, progress)
        log.info("training %s on %s x %d: %d batches of %d x %d per epoch and rank",
                 cfg.model, dev, ranks.world_size, len(sampler), cfg.cliques_per_batch,
                 cfg.versions_per_clique)
        while state.epoch < cfg.epochs:
            _run_epoch(state, run)
    finally:
        if ranks.world_size > 1 and torch_dist.is_initialized():
            torch_dist.destroy_process_group()
    return run_dir


def _run_epoch(state: TrainingState, run: RunContext) -> None:
    """Train epoch ``state.epoch``, then validate, checkpoint and log it (rank 0)."""
    cfg, ranks = run.cfg, run.ranks
    t0 = time.perf_counter()
    generator = _seed(cfg, state.epoch, ranks)
    run.sampler.set_epoch(state.epoch)
    lr = state.optimizer.param_groups[0]["lr"]
    train = train_epoch(state, run.loader, cfg, generator, ranks, run.progress)
    state.scheduler.step()
    state.epoch += 1
    if ranks.is_main:
        has_val = run.val_set is not None
        val = validate(state.bare_model, run.val_set, cfg, state.device) if has_val else {}
        current = val.get("map", -math.inf)
        improved = current > state.best_map or not has_val
        state.best_map = max(state.best_map, current)
        ckpt = checkpoint_payload(state, cfg, train, val)
        save_checkpoint(run.run_dir / LAST, ckpt)
        if improved:
            save_checkpoint(run.run_dir / BEST, ckpt)
        seconds = time.perf_counter() - t0
        record = dict(epoch=state.epoch, lr=lr, train_loss=train["loss"], active=train["active"],
                      cls_loss=train["cls_loss"], distill_loss=train["distill_loss"],
                      steps=train["steps"],
                      seconds=round(seconds, 2), val=val, best=improved)
        append_metrics(run.run_dir / METRICS, record)
        log.info("epoch %d/%d loss %.4f active %.3f lr %.2e val MAP %.4f MR1 %.1f %s(%.1f s)",
                 state.epoch, cfg.epochs, train["loss"], train["active"], lr,
                 val.get("map", math.nan), val.get("mr1", math.nan),
                 "best " if improved else "", seconds)
    barrier(ranks)
