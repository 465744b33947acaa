"""Helpers that more than one benchmark uses: the repository root, relative error, random
unit vectors."""

from __future__ import annotations

from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def relative_error(ours: np.ndarray, ref: np.ndarray) -> float:
    """Relative Frobenius error ``||ours - ref|| / ||ref||`` of two arrays of one shape."""
    return float(np.linalg.norm(ours - ref) / max(np.linalg.norm(ref), 1e-30))


def unit_rows(x: np.ndarray) -> np.ndarray:
    """``x`` (``(N, D)``) with each row scaled to unit length, in place."""
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def random_units(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    """``(n, dim)`` float32 unit vectors uniform on the sphere."""
    return unit_rows(rng.standard_normal((n, dim), dtype=np.float32))
