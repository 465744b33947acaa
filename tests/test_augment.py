"""CQT-domain augmentation: each op does what it says, is seeded, and is off at probability 0."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from mirex_vi.config import AugmentConfig, from_dict
from mirex_vi.features.tempo import stretch_time
from mirex_vi.train.augment import add_noise_floor, augment, mask_band, shift_bins, smooth_curve

EVERY_OP = AugmentConfig(pitch_prob=1.0, stretch_prob=1.0, envelope_prob=1.0, gain_prob=1.0,
                         noise_prob=1.0, time_mask_prob=1.0, freq_mask_prob=1.0)


def _tone(bin_: int = 40, frames: int = 50) -> np.ndarray:
    """``(frames, 84)``: a tone with its harmonics' peak at ``bin_`` over a low floor."""
    x = np.full((frames, 84), 1e-3, np.float32)
    x[:, bin_] = 1.0
    x[:, bin_ + 12] = 0.5
    return x


def _crop(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((120, 84)).astype(np.float32) + 0.1


@pytest.mark.parametrize("k", [-7, -1, 0, 3, 12])
def test_a_shift_moves_the_tones_peak_by_k_bins(k):
    shifted = shift_bins(_tone(), k)
    assert np.all(shifted.argmax(axis=1) == 40 + k)
    assert shifted.shape == (50, 84)
    if k > 0:
        assert np.all(shifted[:, :k] == 0)  # vacated bins, no wrap-around
    elif k < 0:
        assert np.all(shifted[:, k:] == 0)


def test_pitch_op_draws_k_within_its_range():
    cfg = AugmentConfig(pitch_prob=1.0, pitch_max_bins=5)
    moved = {int(augment(_tone(), np.random.default_rng(s), cfg).argmax(axis=1)[0]) - 40
             for s in range(60)}
    assert moved <= set(range(-5, 6)) and len(moved) > 5


@pytest.mark.parametrize("factor", [0.7, 0.93, 1.0, 1.4])
def test_a_stretch_changes_the_length_by_its_factor(factor):
    x = _crop()
    out = stretch_time(x, factor)
    assert out.shape == (round(120 * factor), 84) and out.dtype == np.float32
    ramp = np.repeat(np.arange(100, dtype=np.float32)[:, None], 84, axis=1)
    stretched = stretch_time(ramp, factor)[:, 0]
    assert np.all(np.diff(stretched) >= 0)  # order kept
    assert np.isclose(stretched.mean(), ramp[:, 0].mean(), atol=0.5)


def test_stretch_op_stays_in_its_range():
    cfg = AugmentConfig(stretch_prob=1.0, stretch_min=0.8, stretch_max=1.25)
    lengths = [augment(_crop(), np.random.default_rng(s), cfg).shape[0] for s in range(40)]
    assert min(lengths) >= 96 and max(lengths) <= 150 and len(set(lengths)) > 10


def test_probability_zero_is_the_identity():
    x = _crop()
    out = augment(x, np.random.default_rng(0), AugmentConfig())
    assert out is x
    ranges_only = dataclasses.replace(EVERY_OP, **{f.name: 0.0 for f in dataclasses.fields(EVERY_OP)
                                                   if f.name.endswith("_prob")})
    assert augment(x, np.random.default_rng(0), ranges_only) is x


def test_masks_zero_what_they_say():
    x = _crop()
    out = mask_band(x, 0, 10, 5)
    assert np.all(out[10:15] == 0) and np.array_equal(out[:10], x[:10]) and np.array_equal(out[15:], x[15:])
    out = mask_band(x, 1, 80, 10)  # clipped at the top bin
    assert np.all(out[:, 80:] == 0) and np.array_equal(out[:, :80], x[:, :80])
    for axis, cfg in [(0, AugmentConfig(time_mask_prob=1.0, time_mask_max=7)),
                      (1, AugmentConfig(freq_mask_prob=1.0, freq_mask_max=9))]:
        for seed in range(20):
            out = augment(x, np.random.default_rng(seed), cfg)
            zeroed = np.flatnonzero(np.all(out == 0, axis=1 - axis))
            assert 1 <= len(zeroed) <= (7, 9)[axis]
            assert np.array_equal(zeroed, np.arange(zeroed[0], zeroed[-1] + 1))  # one band
            kept = np.delete(out, zeroed, axis=axis)
            assert np.array_equal(kept, np.delete(x, zeroed, axis=axis))


def test_envelope_and_gain_stay_within_their_db():
    x = _crop()
    for name, axis in [("envelope", 0), ("gain", 1)]:
        cfg = AugmentConfig(**{f"{name}_prob": 1.0, f"{name}_db": 6.0})
        out = augment(x, np.random.default_rng(3), cfg)
        ratio_db = 20 * np.log10(out / x)
        assert np.abs(ratio_db).max() <= 6.0 + 1e-4
        assert np.allclose(ratio_db, ratio_db.mean(axis=axis, keepdims=True), atol=1e-4)  # one curve
    curve = smooth_curve(84, 4, 10.0, np.random.default_rng(1))
    assert np.abs(np.diff(curve)).max() < 10.0 * 4 * np.pi / 84 * 2  # smooth: no jumps


def test_noise_floor_sits_at_its_level():
    x = np.zeros((100, 84), np.float32)
    x[0, 0] = 2.0
    out = add_noise_floor(x, -40.0, np.random.default_rng(0))
    floor = out[1:]
    assert np.all(floor >= 0.5 * 2.0 * 0.01) and np.all(floor <= 1.5 * 2.0 * 0.01)
    assert np.isclose(floor.mean(), 0.02, rtol=0.02)


def test_same_seed_same_output_and_seeds_differ():
    x = _crop()
    a = augment(x, np.random.default_rng(5), EVERY_OP)
    assert np.array_equal(a, augment(x, np.random.default_rng(5), EVERY_OP))
    assert not np.array_equal(a, augment(x, np.random.default_rng(6), EVERY_OP))
    assert a.dtype == np.float32 and np.array_equal(x, _crop())  # the input is not modified


@pytest.mark.parametrize("change, message", [
    ({"pitch_prob": 1.5}, "pitch_prob=1.5 is not a probability"),
    ({"stretch_min": 1.5}, "stretch_min=1.5"),
    ({"time_mask_max": -1}, "time_mask_max=-1"),
    ({"envelope_terms": 0}, "envelope_terms=0"),
])
def test_bad_settings_are_named(change, message):
    with pytest.raises(ValueError, match=message):
        from_dict(AugmentConfig, change)  # refused as the config is built
