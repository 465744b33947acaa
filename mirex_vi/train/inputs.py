"""What a training run reads, checked before anything is read or written.

Sources: ``features_dir`` with ``train_metadata`` (the main store) and each of ``mix``, every
batch holding each one's share of its cliques (``data.CliqueBatchSampler``); validation on
``val_metadata`` in ``val_features_dir`` (default: the main store). Every refusal is a
``TrainInputError`` that names the config key.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ..config import TrainConfig
from ..features.pooled import filter_available
from ..features.stored import FullTrackDataset
from ..io.metadata import Cliques, read_metadata
from ..model.cqtnet import CQTNet
from .data import CliqueBatchSampler, Source, TrainDataset, cliques_needed, make_train_loader
from .distributed import Ranks

log = logging.getLogger(__name__)


class TrainInputError(ValueError):
    """A config whose data cannot train: an unset or missing path, a split without enough
    usable cliques, crops CQT-Net cannot take. The message names the config key."""


def check_inputs(cfg: TrainConfig) -> None:
    """Refuse, before anything is read or written, a config whose data paths are unset or
    missing, whose crops are shorter than the model's minimum input (172 pooled frames), or
    that distils without a teacher.

    Raises:
        TrainInputError: naming the key.
    """
    for prefix, metadata, features in _training_sources(cfg):
        for key, path in (("train_metadata", metadata), ("features_dir", features)):
            if not path:
                raise TrainInputError(f"{prefix}{key} is not set: --set {prefix}{key}=PATH")
        if not Path(metadata).is_file():
            raise TrainInputError(f"{prefix}train_metadata {metadata}: no such file")
        if not Path(features).is_dir():
            raise TrainInputError(f"{prefix}features_dir {features}: no such folder")
    if cfg.val_metadata and not Path(cfg.val_metadata).is_file():
        raise TrainInputError(f"val_metadata {cfg.val_metadata}: no such file")
    if cfg.val_features_dir and not Path(cfg.val_features_dir).is_dir():
        raise TrainInputError(f"val_features_dir {cfg.val_features_dir}: no such folder")
    if cfg.distill_weight > 0 and not cfg.init_weights:
        raise TrainInputError(f"distill_weight={cfg.distill_weight:g} needs init_weights: the "
                              "teacher is the package the run starts from")
    feats = cfg.features
    if feats.crop_frames // feats.downsample_factor < CQTNet.min_pooled_frames:
        raise TrainInputError(f"features.crop_frames={feats.crop_frames} is too short: CQT-Net "
                              f"needs {CQTNet.min_pooled_frames * feats.downsample_factor} frames")
    if not 0 <= feats.min_crop_frames <= feats.crop_frames:
        raise TrainInputError(f"features.min_crop_frames={feats.min_crop_frames} must lie in "
                              f"[0, crop_frames={feats.crop_frames}]")


def _training_sources(cfg: TrainConfig) -> list[tuple[str, str, str]]:
    """``(key prefix, train_metadata, features_dir)`` of each training source, the main one
    (prefix ``""``) first, then ``mix`` (``"mix.0."``, ...)."""
    return [("", cfg.train_metadata, cfg.features_dir),
            *((f"mix.{i}.", m.train_metadata, m.features_dir) for i, m in enumerate(cfg.mix))]


def _usable_cliques(key: str, path: str, features_dir: str, at_least: int) -> Cliques:
    """The cliques of the split file ``path`` (config key ``key``) that keep two or more
    versions with features in ``features_dir``; TrainInputError if that file is not a split
    or leaves fewer than ``at_least``."""
    try:
        cliques = filter_available(read_metadata(path), features_dir)
    except ValueError as err:  # not JSON, not a light JSON or JSONL split (err names path)
        raise TrainInputError(f"{key}: {err}") from err
    if len(cliques) < at_least:
        raise TrainInputError(f"{key} {path}: {len(cliques)} cliques have two or more versions "
                              f"with features in {features_dir}; {at_least} needed")
    return cliques


def build_train_loader(cfg: TrainConfig, ranks: Ranks,
                       device: torch.device) -> tuple[DataLoader, CliqueBatchSampler]:
    """Dataset, sampler and DataLoader of the training split (missing features dropped) of
    the main source and of each ``mix`` source, each with its share of every batch
    (``CliqueBatchSampler``), with ``cfg.augment`` applied to every crop.

    Raises:
        TrainInputError: as :func:`check_inputs`, or a source with fewer usable cliques
            than a batch takes of it.
    """
    check_inputs(cfg)
    needed = cliques_needed(cfg.shares, cfg.cliques_per_batch).tolist()
    main, *extra = [_usable_cliques(f"{prefix}train_metadata", metadata, features, n)
                    for (prefix, metadata, features), n in zip(_training_sources(cfg), needed)]
    sources = [Source(name, cliques, m.features_dir)
               for name, cliques, m in zip(cfg.source_names[1:], extra, cfg.mix)]
    dataset = TrainDataset(main, cfg.features_dir, cfg.features, cfg.augment, sources)
    sampler = CliqueBatchSampler(dataset.members, cfg.cliques_per_batch, cfg.versions_per_clique,
                                 cfg.seed, ranks.rank, ranks.world_size, dataset.clique_source,
                                 cfg.shares)
    if sources:
        log.info("training sources: %s", ", ".join(
            f"{name} {share:.3f} of each batch ({len(c)} cliques, {t} groups per epoch)"
            for name, share, c, t in zip(cfg.source_names, cfg.shares,
                                         [main, *extra], sampler.per_epoch)))
    loader = make_train_loader(dataset, sampler, cfg.num_workers, pin_memory=device.type == "cuda")
    return loader, sampler


def build_val_set(cfg: TrainConfig) -> FullTrackDataset | None:
    """The validation split's whole tracks, from ``val_features_dir`` (empty: the main
    source's ``features_dir``); None without ``val_metadata``."""
    if not cfg.val_metadata:
        return None
    features = cfg.val_features_dir or cfg.features_dir
    cliques = _usable_cliques("val_metadata", cfg.val_metadata, features, 1)
    return FullTrackDataset(cliques, features, cfg.features, cfg.max_val_frames)
