"""The training loop (REFERENCE.md section 3): online triplet mining over clique batches.

One process on CPU or one GPU, or several processes launched by ``torchrun`` (one per GPU):
the process group is then initialised from the environment (NCCL on CUDA, gloo on CPU), the
model is wrapped in DistributedDataParallel and each epoch's batches are split across the
ranks; only rank 0 validates, logs and writes files. BatchNorm stays plain (per-process
statistics), as in the report; DDP keeps the running statistics of rank 0.

Schedule: the learning rate is set once per epoch by ``lr_at`` (the report's "5 warm-up
steps" are epochs). Randomness is re-seeded from ``(seed, epoch, rank)`` at every epoch,
so a run resumed from ``last.pt`` draws the same batches, crops and positives as an
uninterrupted one (up to cuDNN nondeterminism).

Run folder: ``config.yaml``, ``last.pt``, ``best.pt`` (by validation MAP; the last epoch
when there is no validation set), ``metrics.jsonl`` (one JSON line per epoch).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as torch_dist
import yaml
from torch import nn
from torch.utils.data import DataLoader

from .atomic import atomic_open
from .config import TrainConfig, to_dict
from .data import (CliqueBatchSampler, FullTrackDataset, TrainDataset, filter_available,
                   make_train_loader, read_metadata)
from .losses import triplet_loss
from .model import CQTNet, build_model
from .runtime import amp_enabled, autocast, resolve_device
from .weights import WeightsError, load_weights

log = logging.getLogger(__name__)

LAST, BEST, METRICS = "last.pt", "best.pt", "metrics.jsonl"


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


# --- processes and devices -----------------------------------------------------------------


@dataclass(frozen=True)
class Dist:
    """Where this process stands: ``rank`` of ``world_size`` (1 when not distributed)."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_spec: str = "auto") -> tuple[Dist, torch.device]:
    """Join the torchrun process group when ``WORLD_SIZE`` > 1; else a single process.

    Under torchrun each process takes GPU ``LOCAL_RANK`` (NCCL), or runs on the CPU with
    gloo when CUDA is unavailable or ``device_spec`` is ``cpu``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), resolve_device(device_spec)
    use_cuda = device_spec != "cpu" and torch.cuda.is_available()
    if use_cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not torch_dist.is_initialized():
        # Long timeout: the other ranks wait while rank 0 validates on full tracks.
        torch_dist.init_process_group("nccl" if use_cuda else "gloo",
                                      timeout=dt.timedelta(hours=3))
    return Dist(torch_dist.get_rank(), torch_dist.get_world_size()), device


def _barrier(dist: Dist) -> None:
    if dist.world_size > 1:
        torch_dist.barrier()


def _seed(cfg: TrainConfig, epoch: int, dist: Dist) -> torch.Generator:
    """Re-seed torch and numpy for an epoch; return the generator used to draw positives."""
    seed = int(np.random.SeedSequence([cfg.seed, epoch, dist.rank]).generate_state(1)[0])
    torch.manual_seed(seed)
    np.random.seed(seed)
    return torch.Generator().manual_seed(seed)


# --- building blocks -----------------------------------------------------------------------


def build_train_loader(cfg: TrainConfig, dist: Dist,
                       device: torch.device) -> tuple[DataLoader, CliqueBatchSampler]:
    """Dataset, sampler and DataLoader of the training split (missing features dropped).

    Raises:
        ValueError: crops shorter than the model's minimum input (172 pooled frames), or a
            ``min_crop_frames`` outside ``[0, crop_frames]``.
    """
    feats = cfg.features
    if feats.crop_frames // feats.downsample_factor < CQTNet.min_pooled_frames:
        raise ValueError(f"features.crop_frames={feats.crop_frames} is too short: CQT-Net "
                         f"needs {CQTNet.min_pooled_frames * feats.downsample_factor} frames")
    if not 0 <= feats.min_crop_frames <= feats.crop_frames:
        raise ValueError(f"features.min_crop_frames={feats.min_crop_frames} must lie in "
                         f"[0, crop_frames={feats.crop_frames}]")
    cliques = filter_available(read_metadata(cfg.train_metadata), cfg.features_dir)
    dataset = TrainDataset(cliques, cfg.features_dir, cfg.features)
    sampler = CliqueBatchSampler(dataset.members, cfg.cliques_per_batch, cfg.versions_per_clique,
                                 cfg.seed, dist.rank, dist.world_size)
    loader = make_train_loader(dataset, sampler, cfg.num_workers, pin_memory=device.type == "cuda")
    return loader, sampler


def build_val_set(cfg: TrainConfig) -> FullTrackDataset | None:
    if not cfg.val_metadata:
        return None
    cliques = filter_available(read_metadata(cfg.val_metadata), cfg.features_dir)
    return FullTrackDataset(cliques, cfg.features_dir, cfg.features, cfg.max_val_frames)


def build_model_and_optimizer(cfg: TrainConfig, device: torch.device, dist: Dist) -> tuple[
        nn.Module, torch.optim.Adam, torch.optim.lr_scheduler.LambdaLR, torch.amp.GradScaler]:
    """Seeded model (DDP-wrapped when distributed), Adam and the per-epoch LR schedule."""
    torch.manual_seed(cfg.seed)
    model = initial_model(cfg).to(device)
    if dist.world_size > 1:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    # Base LR = lr_peak; the lambda scales it to lr_at(epoch).
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr_peak, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: lr_at(e, cfg) / cfg.lr_peak)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_enabled(device, cfg.amp))
    return model, optimizer, scheduler, scaler


def initial_model(cfg: TrainConfig) -> CQTNet:
    """A fresh ``cfg.model``, random or loaded from ``cfg.init_weights`` (fine-tuning).

    Raises:
        WeightsError: the weights cannot be loaded or are not of size ``cfg.model``.
    """
    if not cfg.init_weights:
        return build_model(cfg.model)
    loaded = load_weights(cfg.init_weights)
    if loaded.model.cfg != cfg.model_config:
        raise WeightsError(f"init_weights {cfg.init_weights!r} hold a {loaded.model.cfg}, "
                           f"not the {cfg.model!r} model {cfg.model_config}")
    log.info("initialised from %s (sha256 %s)", cfg.init_weights, loaded.sha256[:12])
    return loaded.model  # a fresh CQTNet; train_epoch switches it to training mode


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def train_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer,
                scaler: torch.amp.GradScaler, cfg: TrainConfig, device: torch.device,
                generator: torch.Generator, dist: Dist = Dist()) -> dict[str, float]:
    """One pass over this rank's batches; returns the mean ``loss`` and ``active`` over all
    ranks' steps, and ``steps`` (per rank)."""
    model.train()
    amp = amp_enabled(device, cfg.amp)
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss, active, steps
    from tqdm import tqdm

    bar = tqdm(loader, desc="train", unit="step", leave=False, disable=not dist.is_main)
    for x, labels, versions in bar:
        x = x.unsqueeze(1).to(device, memory_format=torch.channels_last, non_blocking=True)  # (B, 1, F, T')
        with autocast(device, amp):
            emb = model(x)  # (B, D)
        loss, stats = triplet_loss(emb, labels.to(device), cfg.margin, versions.to(device),
                                   generator)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        totals += torch.stack([loss.detach().double(), stats["active"].double(),
                               torch.ones((), dtype=torch.float64, device=device)])
        if device.type == "cpu":  # a per-step readout costs a device sync on CUDA
            bar.set_postfix(loss=f"{loss.item():.4f}")
    if dist.world_size > 1:
        torch_dist.all_reduce(totals)
    loss_sum, active_sum, steps = totals.tolist()
    return dict(loss=loss_sum / max(steps, 1), active=active_sum / max(steps, 1),
                steps=int(steps) // dist.world_size)


@torch.inference_mode()
def validate(model: nn.Module, dataset: FullTrackDataset, cfg: TrainConfig,
             device: torch.device) -> dict[str, Any]:
    """MAP, MR1, ... of full-track embeddings of the validation split (``summary()`` dict)."""
    from .embed import embed_stream
    from .metrics import metrics_from_embeddings

    model.eval()
    loader = DataLoader(dataset, batch_size=None, num_workers=cfg.num_workers)
    embeddings = embed_stream(model, (x for x, _ in loader), device, cfg.amp)  # (N, D)
    result = metrics_from_embeddings(embeddings, dataset.labels.tolist(), cfg.val_chunk_size, device)
    return result.summary()


# --- checkpoints -----------------------------------------------------------------------------


def git_commit() -> str | None:
    """HEAD of the repository holding this package, or None outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """``torch.save`` atomically: a killed run never leaves a truncated checkpoint."""
    with atomic_open(path) as f:
        torch.save(payload, f)


def _checkpoint(model, optimizer, scheduler, scaler, cfg, epoch, train, val, best_map) -> dict:
    """The authors' keys, plus ``config``, ``git_commit``, ``val_metrics``, ``best_mAP``.

    ``epoch`` is the number of finished epochs; a resumed run starts at that epoch index.
    """
    return dict(
        model_state_dict=unwrap(model).state_dict(),
        optimizer_state_dict=optimizer.state_dict(),
        scheduler_state_dict=scheduler.state_dict(),
        scaler_state_dict=scaler.state_dict(),
        epoch=epoch,
        train_loss=train["loss"],
        mAP=val.get("map", float("nan")),
        date_time=dt.datetime.now().isoformat(timespec="seconds"),
        config=to_dict(cfg),
        git_commit=git_commit(),
        val_metrics=val,
        best_mAP=best_map,
    )


def _resume(run_dir: Path, model, optimizer, scheduler, scaler, cfg, device,
            dist: Dist) -> tuple[int, float]:
    """Load ``last.pt``; return (first epoch to run, best MAP so far)."""
    ckpt = torch.load(run_dir / LAST, map_location=device, weights_only=True)
    changed = sorted(k for k, v in to_dict(cfg).items() if ckpt["config"].get(k) != v)
    if changed:
        log.warning("resuming with a config that differs from the checkpoint's in: %s",
                    ", ".join(changed))
    unwrap(model).load_state_dict(ckpt["model_state_dict"])
    optimizer.load_state_dict(ckpt["optimizer_state_dict"])
    scheduler.load_state_dict(ckpt["scheduler_state_dict"])
    scaler.load_state_dict(ckpt["scaler_state_dict"])
    if dist.is_main:
        _truncate_metrics(run_dir / METRICS, ckpt["epoch"])
    log.info("resumed from %s after epoch %d", run_dir / LAST, ckpt["epoch"])
    return int(ckpt["epoch"]), float(ckpt["best_mAP"])


def append_metrics(path: Path, record: dict) -> None:
    """Add ``record`` as a JSON line; the file is rewritten atomically (never a torn line)."""
    before = path.read_text(encoding="utf-8") if path.is_file() else ""
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(before + json.dumps(record) + "\n")


def _truncate_metrics(path: Path, epochs_done: int) -> None:
    """Drop lines of epochs after the checkpoint (written by the killed run)."""
    if not path.is_file():
        return
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines()
             if ln.strip() and json.loads(ln)["epoch"] <= epochs_done]
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write("".join(ln + "\n" for ln in lines))


def _prepare_run_dir(cfg: TrainConfig, resume: bool) -> Path:
    run_dir = Path(cfg.output_dir)
    if resume and not (run_dir / LAST).is_file():
        raise FileNotFoundError(f"--resume: {run_dir / LAST} does not exist")
    if not resume and (run_dir / LAST).exists():
        raise FileExistsError(f"{run_dir} already holds a run; use --resume or another output_dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    with atomic_open(run_dir / "config.yaml", "w", encoding="utf-8") as f:
        yaml.safe_dump(to_dict(cfg), f, sort_keys=False)
    return run_dir


# --- the loop --------------------------------------------------------------------------------


def run_training(cfg: TrainConfig, resume: bool = False, device: str = "auto") -> Path:
    """Train ``cfg.epochs`` epochs (continuing ``last.pt`` when ``resume``); return the run folder.

    Raises:
        FileExistsError: ``output_dir`` already holds a run and ``resume`` is False.
        FileNotFoundError: ``resume`` without a ``last.pt``.
    """
    dist, dev = init_distributed(device)
    if not dist.is_main:  # only rank 0 reports
        logging.getLogger(__package__).setLevel(logging.WARNING)
    run_dir = Path(cfg.output_dir)
    try:
        if dist.is_main:
            _prepare_run_dir(cfg, resume)
        _barrier(dist)
        torch.backends.cudnn.benchmark = True
        model, optimizer, scheduler, scaler = build_model_and_optimizer(cfg, dev, dist)
        start, best_map = 0, -math.inf
        if resume:
            start, best_map = _resume(run_dir, model, optimizer, scheduler, scaler, cfg, dev, dist)
        loader, sampler = build_train_loader(cfg, dist, dev)
        val_set = build_val_set(cfg) if dist.is_main else None
        log.info("training %s on %s x %d: %d batches of %d x %d per epoch and rank",
                 cfg.model, dev, dist.world_size, len(sampler), cfg.cliques_per_batch,
                 cfg.versions_per_clique)
        for epoch in range(start, cfg.epochs):
            best_map = _run_epoch(epoch, cfg, dist, dev, model, optimizer, scheduler, scaler,
                                  loader, sampler, val_set, run_dir, best_map)
    finally:
        if dist.world_size > 1 and torch_dist.is_initialized():
            torch_dist.destroy_process_group()
    return run_dir


def _run_epoch(epoch, cfg, dist, dev, model, optimizer, scheduler, scaler, loader, sampler,
               val_set, run_dir, best_map) -> float:
    """Train, validate (rank 0), checkpoint and log one epoch; return the best MAP so far."""
    t0 = time.perf_counter()
    generator = _seed(cfg, epoch, dist)
    sampler.set_epoch(epoch)
    lr = optimizer.param_groups[0]["lr"]
    train = train_epoch(model, loader, optimizer, scaler, cfg, dev, generator, dist)
    scheduler.step()
    if dist.is_main:
        val = validate(unwrap(model), val_set, cfg, dev) if val_set is not None else {}
        current = val.get("map", -math.inf)
        improved = current > best_map or val_set is None
        best_map = max(best_map, current)
        ckpt = _checkpoint(model, optimizer, scheduler, scaler, cfg, epoch + 1, train, val, best_map)
        save_checkpoint(run_dir / LAST, ckpt)
        if improved:
            save_checkpoint(run_dir / BEST, ckpt)
        seconds = time.perf_counter() - t0
        record = dict(epoch=epoch + 1, lr=lr, train_loss=train["loss"], active=train["active"],
                      steps=train["steps"], seconds=round(seconds, 2), val=val, best=improved)
        append_metrics(run_dir / METRICS, record)
        log.info("epoch %d/%d loss %.4f active %.3f lr %.2e val MAP %.4f MR1 %.1f %s(%.1f s)",
                 epoch + 1, cfg.epochs, train["loss"], train["active"], lr,
                 val.get("map", math.nan), val.get("mr1", math.nan),
                 "best " if improved else "", seconds)
    _barrier(dist)
    return best_map
