"""The front end: audio -> CQT -> model input, in numpy (librosa) and in torch.

Every constant comes from ``FeatureConfig`` (``docs/REFERENCE.md §1``). A stored CQT is
``(T, n_bins)`` float16; what the model sees is ``(n_bins, T')`` float32.

- numpy: ``compute_cqt`` (what the dataset stores) and ``preprocess`` (pad, pool, normalise);
- torch: ``preprocess_tensor`` (the same steps on a tensor) and ``TorchFrontEnd`` (decoded
  audio -> model input on a device, through ``cqt_torch.TorchCQT``).

torch is imported only inside the torch half, so the decode/CQT worker processes, which load
this module for ``compute_cqt``, never load torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .config import FeatureConfig

if TYPE_CHECKING:
    import torch


def compute_cqt(audio: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """Magnitude CQT of mono audio at ``cfg.sample_rate``, as the dataset stores it.

    Args:
        audio: ``(N,)`` float32 samples.

    Returns:
        ``(T, n_bins)`` float16 magnitude, ``T = 1 + N // hop_length``; no log.
    """
    import librosa  # heavy import (numba); only the processes that compute CQTs pay it

    cqt = librosa.cqt(
        audio,
        sr=cfg.sample_rate,
        hop_length=cfg.hop_length,
        n_bins=cfg.n_bins,
        bins_per_octave=cfg.bins_per_octave,
        fmin=cfg.fmin,
    )  # (n_bins, T) complex
    return np.abs(cqt).T.astype(np.float16)


def preprocess(cqt: np.ndarray, cfg: FeatureConfig, min_frames: int | None = None) -> np.ndarray:
    """Stored CQT -> model input: pad, mean-pool, clip, max-normalise, transpose.

    Args:
        cqt: ``(T, n_bins)`` magnitude (any float dtype).
        min_frames: zero-pad at the end to at least this many frames; defaults to
            ``cfg.min_frames`` (inference). Training passes ``cfg.crop_frames``.

    Returns:
        ``(n_bins, T')`` float32 with ``T' = max(T, min_frames) // downsample_factor``.
    """
    min_frames = cfg.min_frames if min_frames is None else min_frames
    x = np.asarray(cqt, dtype=np.float32)
    if x.shape[0] < min_frames:
        x = np.pad(x, ((0, min_frames - x.shape[0]), (0, 0)))
    x = pool_cqt(x, cfg.downsample_factor)  # (T', n_bins)
    x = np.clip(x, 0.0, None)
    x /= x.max() + cfg.eps
    return np.ascontiguousarray(x.T)


def pool_cqt(cqt: np.ndarray, factor: int) -> np.ndarray:
    """Mean-pool the time axis by ``factor``: the pooling step of ``preprocess``.

    Args:
        cqt: ``(T, n_bins)`` magnitude (any float dtype).

    Returns:
        ``(T // factor, n_bins)`` float32; a trailing partial pool is dropped.
    """
    x = np.asarray(cqt, dtype=np.float32)
    t_out = x.shape[0] // factor
    return x[: t_out * factor].reshape(t_out, factor, x.shape[1]).mean(axis=1)


def preprocess_tensor(cqt: torch.Tensor, cfg: FeatureConfig, min_frames: int | None = None) -> torch.Tensor:
    """Torch twin of :func:`preprocess`: ``(T, F)`` -> ``(F, T')`` float32, on ``cqt``'s device."""
    min_frames = cfg.min_frames if min_frames is None else min_frames
    x = cqt.float()
    if x.shape[0] < min_frames:
        padded = x.new_zeros((min_frames, x.shape[1]))
        padded[: x.shape[0]] = x
        x = padded
    k = cfg.downsample_factor
    t_out = x.shape[0] // k
    x = x[: t_out * k].reshape(t_out, k, x.shape[1]).mean(dim=1).clamp_(min=0.0)  # (T', F)
    return (x / (x.max() + cfg.eps)).T.contiguous()


class TorchFrontEnd:
    """Decoded audio -> model input on ``device``, mirroring ``compute_cqt`` + ``preprocess``.

    The CQT is :class:`~mirex_vi.cqt_torch.TorchCQT` (agrees with librosa to ~1e-6
    relative); it goes through float16 as stored features do, then :func:`preprocess_tensor`.
    """

    def __init__(self, cfg: FeatureConfig, device: torch.device):
        from .cqt_torch import TorchCQT

        self.cfg = cfg
        self.device = device
        self.cqt = TorchCQT.from_config(cfg).to(device)

    def __call__(self, audio: np.ndarray) -> torch.Tensor:
        """``(N,)`` float32 audio -> ``(n_bins, T')`` float32 on ``device``."""
        import torch

        with torch.inference_mode():
            wave = torch.from_numpy(audio).to(self.device, non_blocking=True)[None]  # (1, N)
            spec = self.cqt(wave)[0].T.half().float()  # (T, n_bins), float16 round trip
            return preprocess_tensor(spec, self.cfg)
