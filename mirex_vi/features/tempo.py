"""Tempo on the pooled time axis: the training stretch (numpy) and its inference twin (torch).

Both resample by linear interpolation between frame centres, so a track embedded at a
tempo (``FeatureConfig.tempo_scales``) sees the same input the stretch augmentation trains on.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def at_tempo(batch: torch.Tensor, scale: float, min_frames: int) -> torch.Tensor:
    """``(B, 1, F, T')`` model inputs with their time axis resampled to ``round(T' * scale)``
    frames (``scale`` > 1 is slower), zero-padded at the end to ``min_frames`` (the model's
    shortest input, ``CQTNet.min_pooled_frames``) and max-normalised again; the batch itself
    when the length stays the same. The resampling is :func:`stretch_time`'s.
    """
    b, c, f, t = batch.shape
    t_out = max(1, round(t * scale))
    if t_out == t:
        return batch
    x = F.interpolate(batch.reshape(b, c * f, t), size=t_out, mode="linear",
                      align_corners=False).reshape(b, c, f, t_out)
    if t_out < min_frames:
        x = F.pad(x, (0, min_frames - t_out))
    x = x / x.amax(dim=(1, 2, 3), keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
    return x.contiguous(memory_format=torch.channels_last)


def stretch_time(x: np.ndarray, factor: float) -> np.ndarray:
    """Resample the time axis of ``(T', F)`` to ``max(1, round(T' * factor))`` frames.

    Linear interpolation between frame centres; ``factor > 1`` slows the music down.
    """
    t_in = x.shape[0]
    t_out = max(1, round(t_in * factor))
    src = np.clip((np.arange(t_out) + 0.5) * (t_in / t_out) - 0.5, 0.0, t_in - 1)
    lo = np.floor(src).astype(np.int64)
    hi = np.minimum(lo + 1, t_in - 1)
    w = (src - lo).astype(np.float32)[:, None]
    return (x[lo] * (1.0 - w) + x[hi] * w).astype(np.float32)
