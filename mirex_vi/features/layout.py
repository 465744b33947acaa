"""The authors' on-disk feature layout: one float16 memmap per version.

A track's CQT is stored as ``<dir>/<id[:2]>/<id>.mm`` (raw float16, ``(T, n_bins)``
row-major) beside ``<id>.npy`` (its shape as int64); see ``docs/REFERENCE.md §1``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.atomic import atomic_open


def feature_paths(features_dir: str | Path, track_id: str) -> tuple[Path, Path]:
    """``(memmap, shape)`` paths of a track's stored CQT."""
    folder = Path(features_dir) / track_id[:2]
    return folder / f"{track_id}.mm", folder / f"{track_id}.npy"


def has_feature(features_dir: str | Path, track_id: str) -> bool:
    return all(p.is_file() for p in feature_paths(features_dir, track_id))


def load_feature(features_dir: str | Path, track_id: str) -> np.ndarray:
    """A stored CQT as a read-only ``(T, n_bins)`` float16 memmap.

    Raises:
        ValueError: a damaged shape or CQT file, naming it.
    """
    mm_path, shape_path = feature_paths(features_dir, track_id)
    try:
        shape = tuple(int(s) for s in np.load(shape_path))
    except (ValueError, TypeError, EOFError) as err:  # never numpy's advice to unpickle
        raise ValueError(f"{shape_path}: not a feature shape file (a damaged .npy)") from err
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
