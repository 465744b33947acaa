"""Re-estimated BatchNorm statistics ("precise BN") for a trained package.

Training keeps each BatchNorm layer's running mean and variance as an exponential average
over augmented crops, while identification sees clean whole tracks. Re-estimating those
statistics as a plain average over clean whole tracks matches them to what inference sees
(Wu & Johnson, 2021, "Rethinking 'Batch' in BatchNorm", precise BN). Only the BN buffers
change; every weight stays as trained.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..features.pooled import filter_available
from ..features.stored import FullTrackDataset
from ..io.metadata import read_metadata
from ..model.cqtnet import CQTNet
from ..model.packaging import derive_package
from ..model.weights import load_package, resolve_weights


def recalibrate_batchnorm(model: CQTNet, tracks: Sequence[np.ndarray], batch_size: int = 64,
                          device: torch.device | str = "cpu") -> None:
    """Replace every BatchNorm layer's running statistics by their average over ``tracks``.

    Args:
        model: the network, changed in place (its training/eval mode is kept).
        tracks: model inputs, each ``(n_bins, T')`` float32 (``FullTrackDataset`` items).
            They are sorted by length and each batch is cut to its shortest track, so no
            padding enters the statistics beyond what inference itself pads.
        batch_size: tracks per forward pass; every batch weighs the same in the average.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the batches
    was_training = model.training
    model.train()
    ordered = sorted(tracks, key=lambda x: x.shape[1])
    try:
        with torch.no_grad():
            for start in range(0, len(ordered), batch_size):
                batch = ordered[start : start + batch_size]
                frames = min(x.shape[1] for x in batch)
                x = torch.from_numpy(np.stack([t[:, :frames] for t in batch]))[:, None]
                model(x.to(device))  # (B, 1, n_bins, frames) -> only the BN buffers matter
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
        model.train(was_training)


def recalibrate_package(source: str | Path, folder: Path, metadata: Path, features_dir: Path,
                        n_tracks: int, seed: int = 0, batch_size: int = 64,
                        device: torch.device | str = "cpu") -> tuple[str, int]:
    """Write ``folder``: the package ``source`` with BatchNorm statistics re-estimated on
    ``n_tracks`` whole tracks drawn (seeded) from ``metadata``'s versions in ``features_dir``.

    Returns:
        The new model's sha256 and the number of tracks used (all there are, if fewer).

    Raises:
        ValueError: no version of ``metadata`` has features in ``features_dir``, or the
            source package cannot be used (``WeightsError``).
    """
    source = resolve_weights(source)
    loaded = load_package(source)
    cliques = filter_available(read_metadata(metadata), features_dir)
    dataset = FullTrackDataset(cliques, features_dir, loaded.features)
    if len(dataset) == 0:
        raise ValueError(f"{metadata}: no version has features in {features_dir}")
    picked = random.Random(seed).sample(range(len(dataset)), min(n_tracks, len(dataset)))
    model = loaded.model.to(device)
    recalibrate_batchnorm(model, [dataset[i][0] for i in picked], batch_size, device)
    note = {"batchnorm_recalibrated": {"from_sha256": loaded.sha256, "metadata": str(metadata),
                                       "tracks": len(picked), "seed": seed}}
    card = (f"\n## BatchNorm statistics\n\nRe-estimated with `mirex-vi weights recalibrate` "
            f"from `{source.name}` (sha256 `{loaded.sha256}`) on {len(picked)} clean whole "
            f"tracks of `{metadata.name}` (seed {seed}); every weight is as trained.\n")
    return derive_package(source, folder, model.cpu().state_dict(), note, card), len(picked)
