"""The CQT front end, its preprocessing, and the authors' on-disk feature layout.

Every constant comes from ``FeatureConfig`` (REFERENCE.md section 1). Arrays are numpy:
a stored CQT is ``(T, n_bins)`` float16; what the model sees is ``(n_bins, T')`` float32.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .atomic import atomic_open
from .config import FeatureConfig


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


def random_crop(cqt: np.ndarray, length: int, rng: np.random.Generator,
                min_length: int = 0) -> np.ndarray:
    """A random ``(length, n_bins)`` window of a ``(T, n_bins)`` CQT; shorter ones are kept whole.

    ``min_length > 0`` first draws the window length uniformly from ``[min_length, length]``,
    so that whole short tracks also yield partial excerpts.
    """
    if min_length:
        length = int(rng.integers(min_length, length + 1))
    start = int(rng.integers(0, cqt.shape[0] - length + 1)) if cqt.shape[0] > length else 0
    return cqt[start : start + length]


# --- The authors' dataset layout: <dir>/<id[:2]>/<id>.mm (float16 (T, F)) + <id>.npy (shape)


def feature_paths(features_dir: str | Path, track_id: str) -> tuple[Path, Path]:
    """``(memmap, shape)`` paths of a track's stored CQT."""
    folder = Path(features_dir) / track_id[:2]
    return folder / f"{track_id}.mm", folder / f"{track_id}.npy"


def has_feature(features_dir: str | Path, track_id: str) -> bool:
    return all(p.is_file() for p in feature_paths(features_dir, track_id))


def load_feature(features_dir: str | Path, track_id: str) -> np.ndarray:
    """A stored CQT as a read-only ``(T, n_bins)`` float16 memmap."""
    mm_path, shape_path = feature_paths(features_dir, track_id)
    shape = tuple(int(s) for s in np.load(shape_path))
    if len(shape) != 2 or shape[0] == 0:
        raise ValueError(f"{shape_path}: bad feature shape {shape}")
    expected = shape[0] * shape[1] * 2
    if mm_path.stat().st_size != expected:
        raise ValueError(f"{mm_path}: {mm_path.stat().st_size} bytes, expected {expected}")
    return np.memmap(mm_path, dtype=np.float16, mode="r", shape=shape)


def save_feature(features_dir: str | Path, track_id: str, cqt: np.ndarray) -> None:
    """Store a ``(T, n_bins)`` CQT; each file is written atomically, the shape file last."""
    mm_path, shape_path = feature_paths(features_dir, track_id)
    mm_path.parent.mkdir(parents=True, exist_ok=True)
    data = np.ascontiguousarray(cqt, dtype=np.float16)
    with atomic_open(mm_path) as f:
        f.write(data.tobytes())
    with atomic_open(shape_path) as f:
        np.save(f, np.asarray(data.shape, dtype=np.int64))

