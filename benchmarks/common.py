"""Helpers that more than one benchmark uses: the repository root, relative error, random
unit vectors, a package's plain one-pass copy, waiting for a device."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mirex_vi.config import ScoringConfig
from mirex_vi.config.base import to_dict
from mirex_vi.model.packaging import copy_package
from mirex_vi.model.weights import resolve_weights

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


def plain_one_pass(weights: str | Path | None, folder: Path) -> Path:
    """A copy of the package ``weights`` (None: the shipped one) in ``folder`` that embeds
    in one pass and scores by the plain inner product: the authors' recipe with its weights."""
    copy_package(resolve_weights(weights), folder, (1.0,), to_dict(ScoringConfig()))
    return folder


def sync(device: torch.device) -> None:
    """Wait for ``device``'s queued work (CUDA runs asynchronously), before reading a clock."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
