"""Augmentation of training crops in the pooled-CQT domain (training only).

Every op works on a ``(T', n_bins)`` float32 *linear* magnitude crop (time first, as the
pooled store and the crop hold it), before zero-padding, clipping and max-normalisation.
A constant gain would be undone by max-normalisation, so the gain op is a smooth gain
curve over time (dynamics, fades), the counterpart over time of the spectral envelope.

``augment`` draws everything from the generator it is given; the training dataset passes
the one seeded by the item's crop seed, so a resumed run augments exactly as before.
"""

from __future__ import annotations

import numpy as np

from ..config import AugmentConfig
from ..features.tempo import stretch_time


def augment(x: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Apply each op of ``cfg`` with its probability, in a fixed order.

    Order: stretch, pitch shift, spectral envelope, gain curve, noise floor, time mask,
    frequency mask (masks last, so what they cover is exactly 0). One uniform draw decides
    each op, so with every probability 0 the input comes back unchanged.

    Args:
        x: ``(T', n_bins)`` float32 linear magnitude (not yet max-normalised).

    Returns:
        ``(T'', n_bins)`` float32; ``T''`` differs from ``T'`` only when stretched.
    """
    n_bins = x.shape[1]
    if rng.random() < cfg.stretch_prob:
        x = stretch_time(x, float(np.exp(rng.uniform(np.log(cfg.stretch_min), np.log(cfg.stretch_max)))))
    if rng.random() < cfg.pitch_prob:
        x = shift_bins(x, int(rng.integers(-cfg.pitch_max_bins, cfg.pitch_max_bins + 1)))
    if rng.random() < cfg.envelope_prob:
        x = x * db_to_gain(smooth_curve(n_bins, cfg.envelope_terms, cfg.envelope_db, rng))[None, :]
    if rng.random() < cfg.gain_prob:
        x = x * db_to_gain(smooth_curve(x.shape[0], cfg.gain_terms, cfg.gain_db, rng))[:, None]
    if rng.random() < cfg.noise_prob:
        x = add_noise_floor(x, cfg.noise_db, rng)
    if rng.random() < cfg.time_mask_prob:
        x = _random_mask(x, 0, cfg.time_mask_max, rng)
    if rng.random() < cfg.freq_mask_prob:
        x = _random_mask(x, 1, cfg.freq_mask_max, rng)
    return x


def shift_bins(x: np.ndarray, k: int) -> np.ndarray:
    """Transpose ``(T', F)`` by ``k`` bins (semitones): bin b moves to b + k.

    Bins shifted past either edge are dropped and the vacated ones are 0 (no wrap-around).
    """
    out = np.zeros_like(x)
    if k >= 0:
        out[:, k:] = x[:, : x.shape[1] - k]
    else:
        out[:, :k] = x[:, -k:]
    return out


def smooth_curve(n: int, terms: int, max_db: float, rng: np.random.Generator) -> np.ndarray:
    """A random smooth ``(n,)`` curve in dB within ``±max_db``.

    A sum of the cosines ``cos(pi j t)``, j = 1..terms, t in (0, 1), with uniform random
    weights, scaled so that its largest magnitude is uniform in ``[0, max_db]``.
    """
    t = (np.arange(n) + 0.5) / n
    basis = np.cos(np.pi * np.arange(1, terms + 1)[:, None] * t[None, :])  # (terms, n)
    curve = rng.uniform(-1.0, 1.0, terms) @ basis
    return curve * (rng.uniform(0.0, max_db) / max(np.abs(curve).max(), 1e-12))


def db_to_gain(db: np.ndarray) -> np.ndarray:
    return (10.0 ** (np.asarray(db) / 20.0)).astype(np.float32)


def add_noise_floor(x: np.ndarray, level_db: float, rng: np.random.Generator) -> np.ndarray:
    """Add a floor at ``level_db`` relative to the crop's peak, each value jittered by ±50 %."""
    level = float(x.max(initial=0.0)) * 10.0 ** (level_db / 20.0)
    return (x + level * rng.uniform(0.5, 1.5, x.shape)).astype(np.float32)


def mask_band(x: np.ndarray, axis: int, start: int, width: int) -> np.ndarray:
    """A copy of ``(T', F)`` with ``width`` frames (axis 0) or bins (axis 1) from ``start`` zeroed."""
    out = x.copy()
    index = [slice(None), slice(None)]
    index[axis] = slice(start, start + width)
    out[tuple(index)] = 0.0
    return out


def _random_mask(x: np.ndarray, axis: int, max_width: int, rng: np.random.Generator) -> np.ndarray:
    limit = min(max_width, x.shape[axis])
    if limit < 1:
        return x
    width = int(rng.integers(1, limit + 1))
    start = int(rng.integers(0, x.shape[axis] - width + 1))
    return mask_band(x, axis, start, width)
