"""The training state and its files: checkpoints, the run folder and ``metrics.jsonl``;
and the weights a run starts from (``init_weights``, pinned by ``init_sha256``).

A run folder holds ``config.yaml`` (the resolved config), ``last.pt`` (after every epoch),
``best.pt`` (by validation MAP; the last epoch when there is no validation set) and
``metrics.jsonl`` (one JSON line per epoch). Every file is written atomically, so a killed
run leaves the previous version whole.

A checkpoint holds the authors' keys (``model_state_dict``, ``optimizer_state_dict``,
``scheduler_state_dict``, ``scaler_state_dict``, ``epoch``, ``train_loss``, ``mAP``,
``date_time``), so that their tools and ``mirex-vi weights import`` read it, plus
``config``, ``git_commit``, ``val_metrics``, ``best_mAP``, ``init_sha256`` and, when the
run trains a classification head, ``head_state_dict`` (which no weight package receives),
and, when it keeps a cross-batch memory of negatives, ``memory_state_dict``.

No sampler state is saved: the batches of an epoch, from one store or several, are a
function of ``seed``, the epoch and the config (``data.CliqueBatchSampler``), so a resumed
run draws the same ones. Nor is the distillation teacher: it is ``init_weights`` again,
and a resumed run refuses a teacher whose sha256 is not the one the run started from.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from ..config import TrainConfig, to_dict
from ..core.atomic import atomic_open
from ..model.cqtnet import CQTNet, build_model
from ..model.weights import WeightsError, load_weights, resolve_weights, sha256_file, verify_package
from .losses import NegativeMemory

log = logging.getLogger(__name__)


LAST, BEST, METRICS = "last.pt", "best.pt", "metrics.jsonl"
GIT_COMMIT_ENV = "MIREX_VI_GIT_COMMIT"  # overrides git_commit() (see there)


@dataclass
class TrainingState:
    """What an epoch changes and a checkpoint saves and restores.

    Attributes:
        model: CQT-Net on ``device``, wrapped in DistributedDataParallel when distributed.
        head: the classification head over the training cliques (``heads``), wrapped the
            same way; None when ``cls_weight`` is 0. Never exported.
        memory: the cross-batch memory of negatives; None when ``memory_size`` is 0.
        init_sha256: sha256 of the weights the run started from (package model or ``.pth``
            file); None for a random initialisation, or when resumed from a checkpoint
            written before this key existed.
        teacher: the frozen ``init_weights`` model that ``distill_weight`` distils from, on
            ``device``; None when that weight is 0. Never saved.
        teacher_sha256: its weights' sha256.
        distilled: ``(C,)`` bool, the training cliques whose crops the teacher distils;
            None: all of them.
        epoch: finished epochs, i.e. the index of the next epoch to run.
        best_map: the best validation MAP so far (``-inf`` before the first).
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    device: torch.device
    head: nn.Module | None = None
    memory: NegativeMemory | None = None
    init_sha256: str | None = None
    teacher: nn.Module | None = None
    teacher_sha256: str | None = None
    distilled: torch.Tensor | None = None
    epoch: int = 0
    best_map: float = -math.inf

    @property
    def bare_model(self) -> nn.Module:
        """The model without its DistributedDataParallel wrapper."""
        return _unwrap(self.model)

    @property
    def bare_head(self) -> nn.Module | None:
        return None if self.head is None else _unwrap(self.head)


def _unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def git_commit() -> str | None:
    """The commit this package's code came from: ``$MIREX_VI_GIT_COMMIT`` where it is set (a
    copied tree whose ``.git`` lags behind, e.g. on a device machine: tools/device-train.sh),
    else HEAD of the repository holding the package, with ``+modified`` when the package's
    files differ from it; None outside a git checkout."""
    if os.environ.get(GIT_COMMIT_ENV):
        return os.environ[GIT_COMMIT_ENV]
    here = Path(__file__).resolve().parents[1]  # the mirex_vi package
    try:
        head = _git(here, "rev-parse", "HEAD")
        modified = bool(_git(here, "status", "--porcelain", "--", "."))
    except (OSError, subprocess.SubprocessError):
        return None
    return head + "+modified" if head and modified else head or None


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10,
                          check=True).stdout.strip()


def checkpoint_payload(state: TrainingState, cfg: TrainConfig, train: dict[str, float],
                       val: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint of ``state`` after its ``state.epoch``-th epoch (module docstring keys).

    Args:
        train: the epoch's training figures (``loss``).
        val: its validation figures (``map``, ...; empty without a validation set).
    """
    payload = dict(
        model_state_dict=state.bare_model.state_dict(),
        optimizer_state_dict=state.optimizer.state_dict(),
        scheduler_state_dict=state.scheduler.state_dict(),
        scaler_state_dict=state.scaler.state_dict(),
        epoch=state.epoch,
        train_loss=train["loss"],
        mAP=val.get("map", float("nan")),
        date_time=dt.datetime.now().isoformat(timespec="seconds"),
        config=to_dict(cfg),
        git_commit=git_commit(),
        val_metrics=val,
        best_mAP=state.best_map,
        init_sha256=state.init_sha256,
    )
    if state.head is not None:
        payload["head_state_dict"] = state.bare_head.state_dict()
    if state.memory is not None:
        payload["memory_state_dict"] = state.memory.state_dict()
    return payload


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """``torch.save`` atomically: a killed run never leaves a truncated checkpoint."""
    with atomic_open(path) as f:
        torch.save(payload, f)


def restore_checkpoint(path: Path, state: TrainingState, cfg: TrainConfig) -> None:
    """Load a checkpoint into ``state`` in place, warning about config keys that changed.

    Raises:
        WeightsError: ``state`` has a teacher whose sha256 is not the run's ``init_sha256``.

    A disabled GradScaler (CPU, or ``amp: false``) saves ``{}``; that state is not loaded,
    so an enabled scaler (a run moved to CUDA with AMP) starts from its defaults.
    """
    ckpt = torch.load(path, map_location=state.device, weights_only=True)
    changed = sorted(k for k, v in to_dict(cfg).items() if ckpt["config"].get(k) != v)
    if changed:
        log.warning("resuming with a config that differs from the checkpoint's in: %s",
                    ", ".join(changed))
    state.bare_model.load_state_dict(ckpt["model_state_dict"])
    if state.head is not None:
        state.bare_head.load_state_dict(ckpt["head_state_dict"])
    if state.memory is not None and "memory_state_dict" in ckpt:
        state.memory.load_state_dict(ckpt["memory_state_dict"])
    state.optimizer.load_state_dict(ckpt["optimizer_state_dict"])
    state.scheduler.load_state_dict(ckpt["scheduler_state_dict"])
    if ckpt["scaler_state_dict"]:
        state.scaler.load_state_dict(ckpt["scaler_state_dict"])
    state.epoch = int(ckpt["epoch"])
    state.best_map = float(ckpt["best_mAP"])
    state.init_sha256 = ckpt.get("init_sha256")
    if state.teacher is not None and state.init_sha256 not in (None, state.teacher_sha256):
        raise WeightsError(f"distill_weight: the teacher, init_weights {cfg.init_weights!r} "
                           f"(sha256 {state.teacher_sha256}), is not the model this run started "
                           f"from (sha256 {state.init_sha256})")
    log.info("resumed from %s after epoch %d", path, state.epoch)


def prepare_run_dir(cfg: TrainConfig, resume: bool) -> Path:
    """Create ``cfg.output_dir`` and write its ``config.yaml``; return the folder.

    Raises:
        FileExistsError: the folder already holds a run and ``resume`` is False.
        FileNotFoundError: ``resume`` without a ``last.pt``.
        OSError: the folder or its config cannot be written (the message names output_dir).
    """
    run_dir = Path(cfg.output_dir)
    if resume and not (run_dir / LAST).is_file():
        raise FileNotFoundError(f"--resume: {run_dir / LAST} does not exist")
    if not resume and (run_dir / LAST).exists():
        raise FileExistsError(f"{run_dir} already holds a run; use --resume or another output_dir")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with atomic_open(run_dir / "config.yaml", "w", encoding="utf-8") as f:
            yaml.safe_dump(to_dict(cfg), f, sort_keys=False)
    except OSError as err:
        raise OSError(f"output_dir {run_dir}: cannot write the run folder "
                      f"({err.strerror}: {err.filename})") from err
    return run_dir


def append_metrics(path: Path, record: dict) -> None:
    """Add ``record`` as a JSON line; the file is rewritten atomically (never a torn line)."""
    before = path.read_text(encoding="utf-8") if path.is_file() else ""
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(before + json.dumps(record) + "\n")


def truncate_metrics(path: Path, epochs_done: int) -> None:
    """Drop the lines of epochs after ``epochs_done`` (written by a run killed later)."""
    if not path.is_file():
        return
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines()
             if ln.strip() and json.loads(ln)["epoch"] <= epochs_done]
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write("".join(ln + "\n" for ln in lines))


# --- initial weights -----------------------------------------------------------------------


def initial_model(cfg: TrainConfig) -> tuple[CQTNet, str | None]:
    """A fresh ``cfg.model``, random or loaded from ``cfg.init_weights`` (fine-tuning), and
    the sha256 of those weights (None for a random initialisation).

    Raises:
        WeightsError: the weights cannot be loaded, are not of size ``cfg.model``, or do
            not have the sha256 that ``cfg.init_sha256`` pins; a pin without weights.
    """
    check_init_pin(cfg)
    if not cfg.init_weights:
        return build_model(cfg.model), None
    loaded = load_weights(cfg.init_weights)
    _check_pin(cfg, loaded.sha256)
    if loaded.model.cfg != cfg.model_config:
        raise WeightsError(f"init_weights {cfg.init_weights!r} hold a {loaded.model.cfg}, "
                           f"not the {cfg.model!r} model {cfg.model_config}")
    log.info("initialised from %s (sha256 %s)", cfg.init_weights, loaded.sha256)
    return loaded.model, loaded.sha256  # a fresh CQTNet; train_epoch switches it to training


def load_teacher(cfg: TrainConfig) -> tuple[CQTNet, str]:
    """The distillation teacher: the ``cfg.init_weights`` model, in eval mode with no
    gradients, and its weights' sha256.

    Raises:
        WeightsError: ``init_weights`` is empty, or as :func:`initial_model`.
    """
    if not cfg.init_weights:
        raise WeightsError("distill_weight > 0 needs init_weights: the teacher")
    loaded = load_weights(cfg.init_weights)
    _check_pin(cfg, loaded.sha256)
    return loaded.model.eval().requires_grad_(False), loaded.sha256


def distilled_cliques(cfg: TrainConfig, clique_source: Sequence[int],
                      device: torch.device) -> torch.Tensor | None:
    """``(C,)`` bool on ``device``: which training cliques' crops are distilled, those whose
    source (``clique_source``, ``(C,)`` indices into ``cfg.source_names``) is one of
    ``cfg.distill_sources``; None when that is empty (all are).

    Raises:
        ValueError: ``cfg.distill_sources`` names sources but ``clique_source`` is empty.
    """
    if not cfg.distill_sources:
        return None
    if not len(clique_source):
        raise ValueError("distill_sources needs the source of every training clique")
    chosen = [cfg.source_names.index(name) for name in cfg.distill_sources]
    return torch.isin(torch.as_tensor(clique_source, dtype=torch.long),
                      torch.tensor(chosen)).to(device)


def check_init_pin(cfg: TrainConfig) -> None:
    """Check ``cfg.init_sha256`` against the file ``cfg.init_weights`` names, without
    loading it, so that a wrong start is refused before any data is read.

    Raises:
        WeightsError: as :func:`initial_model`.
    """
    if not cfg.init_weights:
        if cfg.init_sha256:
            raise WeightsError("init_sha256 is set but init_weights is empty")
        return
    if cfg.init_sha256:
        path = resolve_weights(cfg.init_weights)
        _check_pin(cfg, sha256_file(path) if path.is_file() else verify_package(path))


def _check_pin(cfg: TrainConfig, sha256: str) -> None:
    if cfg.init_sha256 and sha256 != cfg.init_sha256:
        raise WeightsError(f"init_weights {cfg.init_weights!r} have sha256 {sha256}, "
                           f"but the config pins init_sha256 {cfg.init_sha256}: not the weights "
                           "this run starts from (the config's comments say where they are)")
