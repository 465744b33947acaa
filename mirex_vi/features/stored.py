"""Whole stored tracks as model inputs: validation, evaluation on stored features, precise BN."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from ..config import FeatureConfig
from ..io.metadata import Cliques
from .frontend import model_input
from .pooled import FeatureSource, open_features


class FullTrackDataset(Dataset):
    """Whole tracks for validation, zero-padded to ``min_frames // downsample_factor``.

    ``max_frames > 0`` keeps only a window of ``max_frames // downsample_factor`` pooled
    frames: centred (validation, for speed) or, with ``from_start``, the first ones (an
    excerpt). Returns ``(x (n_bins, T') float32 numpy, clique index)``.

    Where this differs from ``preprocess`` (inference): a track shorter than ``min_frames``
    whose length is not a multiple of the factor. ``preprocess`` pads before pooling, so
    its last pooled frame averages the track's last frames with padding zeros; here the
    partial pool is dropped and that frame is 0. Any other track gives the same input.
    """

    def __init__(self, cliques: Cliques, features: str | Path | FeatureSource,
                 cfg: FeatureConfig, max_frames: int = 0, from_start: bool = False):
        self.source = open_features(features, cfg.downsample_factor)
        self.cfg = cfg
        self.max_frames = max_frames
        self.from_start = from_start
        self.versions = [v for versions in cliques.values() for v in versions]
        self.labels = np.repeat(np.arange(len(cliques)), [len(v) for v in cliques.values()])

    def __len__(self) -> int:
        return len(self.versions)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        k = self.cfg.downsample_factor
        pooled = self.source.pooled(self.versions[index].youtube_id)  # (T', F)
        window = self.max_frames // k
        if 0 < window < pooled.shape[0]:
            start = 0 if self.from_start else (pooled.shape[0] - window) // 2
            pooled = pooled[start : start + window]
        return model_input(pooled, self.cfg.min_frames // k, self.cfg.eps), int(self.labels[index])
