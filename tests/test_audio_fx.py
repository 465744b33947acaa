"""Audio-domain versions of a recording (mirex_vi.corpus.audio_fx): key and tempo changes
seen through the project's own CQT, each effect's output and what it does, and the chains
of ``real_versions``."""
from __future__ import annotations

import re
import shutil

import numpy as np
import pytest

from mirex_vi.config import FeatureConfig
from mirex_vi.corpus import audio_fx
from mirex_vi.features.frontend import compute_cqt
from mirex_vi.synth import SR, melody, piano_like, tone

HAVE_RUBBERBAND = shutil.which("rubberband") is not None
HAVE_FFMPEG = shutil.which("ffmpeg") is not None
needs_rubberband = pytest.mark.skipif(not HAVE_RUBBERBAND, reason=audio_fx.INSTALL_HINT)
needs_ffmpeg = pytest.mark.skipif(not HAVE_FFMPEG, reason="needs ffmpeg (bash tools/setup.sh)")
C1_MIDI = 24  # FeatureConfig's fmin: bin 0 of the CQT
LABELS = {"mixed": "mix", "eq": "eq", "compressor": "compress", "reverb": "reverb",
          "mp3": "codec", "aac": "codec"}  # description word -> audio_fx.EFFECTS name


def peak_bin(audio: np.ndarray) -> int:
    """The CQT bin (84 bins, 12 per octave from C1) with the most energy over the middle of
    ``audio``."""
    cqt = compute_cqt(audio, FeatureConfig()).astype(np.float64)
    mid = cqt[len(cqt) // 4: 3 * len(cqt) // 4]
    return int(np.argmax(mid.mean(axis=0)))


def envelope_end_s(audio: np.ndarray, floor_db: float = -30.0) -> float:
    """The time (s) of the last 10-ms block within ``floor_db`` of the loudest block."""
    block = SR // 100
    n = len(audio) // block
    power = (audio[: n * block].astype(np.float64) ** 2).reshape(n, block).mean(axis=1)
    loud = np.nonzero(power > power.max() * 10 ** (floor_db / 10))[0]
    return (loud[-1] + 1) * block / SR


@needs_rubberband
@pytest.mark.parametrize("k", [3, -2])
def test_pitch_shift_moves_the_cqt_peak_by_k_bins(k):
    note = 57
    y = tone(note, 2.0, harmonics=3)
    assert peak_bin(y) == note - C1_MIDI
    shifted = audio_fx.pitch_shift(y, SR, k)
    assert shifted.dtype == np.float32 and len(shifted) == len(y)
    assert peak_bin(shifted) == note - C1_MIDI + k


@needs_rubberband
@pytest.mark.parametrize("rate", [1.25, 0.8])
def test_time_stretch_scales_time_and_keeps_the_pitch(rate):
    note = 64
    y = np.concatenate([tone(note, 1.0, harmonics=3), np.zeros(SR, np.float32)])
    stretched = audio_fx.time_stretch(y, SR, rate)
    assert stretched.dtype == np.float32 and len(stretched) == round(len(y) / rate)
    # the tone itself ends at 1 s / rate, not just the padded array
    assert envelope_end_s(stretched) == pytest.approx(1.0 / rate, abs=0.06)
    assert peak_bin(stretched[: int(SR / rate)]) == note - C1_MIDI


@needs_rubberband
def test_stretch_and_shift_in_one_pass():
    y = tone(60, 2.0, harmonics=3)
    out = audio_fx.stretch_shift(y, SR, rate=0.8, semitones=4)
    assert len(out) == round(len(y) / 0.8)
    assert peak_bin(out) == 60 - C1_MIDI + 4


def _ops():
    other = melody([50, 53, 57], 0.3)
    return {"equalise": lambda y, rng, log: audio_fx.equalise(y, SR, rng, log),
            "reverb": lambda y, rng, log: audio_fx.reverb(y, SR, rng, log),
            "compress": lambda y, rng, log: audio_fx.compress(y, SR, rng, log),
            "codec": pytest.param(lambda y, rng, log: audio_fx.codec(y, SR, rng, log),
                                  marks=needs_ffmpeg),
            "mix_under": lambda y, rng, log: audio_fx.mix_under(y, other, rng, log)}


@pytest.mark.parametrize("op", list(_ops().values()), ids=list(_ops()))
def test_each_effect_returns_finite_float32_of_the_input_length(op):
    y = piano_like(3.0, seed=4) * 0.5
    log: list[str] = []
    out = op(y, np.random.default_rng(0), log)
    assert out.dtype == np.float32 and out.shape == y.shape
    assert np.all(np.isfinite(out)) and len(log) == 1
    assert not np.allclose(out, y, atol=1e-4)  # it did something
    assert np.array_equal(out, op(y, np.random.default_rng(0), None))  # a function of the seed


def test_missing_programs_are_named(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None if name == "rubberband" else "/bin/" + name)
    with pytest.raises(RuntimeError, match="apt-get install rubberband-cli "):
        audio_fx.check_programs()
    monkeypatch.setattr(shutil, "which", lambda name: "/bin/" + name)
    audio_fx.check_programs()


def test_effects_refuse_stereo():
    with pytest.raises(ValueError, match="mono"):
        audio_fx.equalise(np.zeros((100, 2), np.float32), SR, np.random.default_rng(0))


def test_reverb_rings_on_after_the_sound_stops():
    y = np.concatenate([tone(60, 0.5, harmonics=3), np.zeros(SR, np.float32)])
    wet = audio_fx.reverb(y, SR, np.random.default_rng(1))
    assert envelope_end_s(y, -40) == pytest.approx(0.5, abs=0.02)
    assert envelope_end_s(wet, -40) > 0.65


@pytest.mark.parametrize("seed", [2, 3])
def test_compressor_cuts_the_loud_part_by_its_ratio(seed):
    """A tone 24 dB louder for 1 s, then 2 s quieter (below every threshold): the loud part
    loses ``below * (1 - 1 / ratio)`` dB against the quiet one once the gain settles."""
    loud_quiet = np.concatenate([tone(60, 1.0, amplitude=0.8), tone(60, 2.0, amplitude=0.05)])
    log: list[str] = []
    out = audio_fx.compress(loud_quiet, SR, np.random.default_rng(seed), log)
    ratio, below = map(float, re.search(r"([\d.]+):1 at -([\d.]+)dB", log[0]).groups())

    def loud_over_quiet_db(a: np.ndarray) -> float:
        power = lambda x: np.mean(x.astype(np.float64) ** 2)  # noqa: E731
        return 10 * np.log10(power(a[SR // 2: SR]) / power(a[5 * SR // 2:]))

    cut = loud_over_quiet_db(loud_quiet) - loud_over_quiet_db(out)
    assert cut == pytest.approx(below * (1 - 1 / ratio), abs=0.5)
    assert cut > 1.5


def test_equaliser_bands_stay_within_their_gain():
    noise = np.random.default_rng(3).standard_normal(4 * SR).astype(np.float32) * 0.1
    out = audio_fx.equalise(noise, SR, np.random.default_rng(5))
    ratio_db = 10 * np.log10(np.abs(np.fft.rfft(out)) ** 2 + 1e-9) - 10 * np.log10(
        np.abs(np.fft.rfft(noise)) ** 2 + 1e-9)
    smooth = np.convolve(ratio_db, np.ones(2001) / 2001, mode="valid")
    assert 1.0 < np.ptp(smooth) < 4 * audio_fx.EQ_GAIN_DB  # shaped, within 4 bands' range


def test_mix_under_sits_at_the_drawn_level():
    y = tone(60, 2.0, harmonics=3)
    other = tone(67, 0.7, harmonics=3)
    log: list[str] = []
    out = audio_fx.mix_under(y, other, np.random.default_rng(6), log)
    rms = lambda a: float(np.sqrt(np.mean(a.astype(np.float64) ** 2)))  # noqa: E731
    rel_db = 20 * np.log10(rms(out - y) / rms(y))
    assert audio_fx.MIX_DB[0] - 0.1 <= rel_db <= audio_fx.MIX_DB[1] + 0.1
    assert float(re.search(r"(-?[\d.]+)dB", log[0]).group(1)) == pytest.approx(rel_db, abs=0.06)


@needs_rubberband
@needs_ffmpeg
def test_real_versions_are_a_function_of_the_seed():
    y = piano_like(3.0, seed=7)
    other = melody([45, 52, 57, 60], 0.5)
    first = audio_fx.real_versions(y, SR, np.random.default_rng(11), other, n=4)
    again = audio_fx.real_versions(y, SR, np.random.default_rng(11), other, n=4)
    other_seed = audio_fx.real_versions(y, SR, np.random.default_rng(12), other, n=4)
    assert len(first) == 4
    assert [d for d, _ in first] == [d for d, _ in again]
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(first, again))
    assert [d for d, _ in first] != [d for d, _ in other_seed]
    for description, audio in first:
        assert audio.dtype == np.float32 and audio.ndim == 1 and np.all(np.isfinite(audio))
        assert 0 < np.abs(audio).max() <= 0.98
        tempo = re.search(r"tempo ([\d.]+)", description)
        expected = len(y) / float(tempo.group(1)) if tempo else len(y)
        assert len(audio) == pytest.approx(expected, rel=0.01), description
        items = description.split(", ")
        assert 1 <= len(items) <= 5
        order = [audio_fx.EFFECTS.index(LABELS[m.group(0)]) for item in items
                 if (m := re.match(r"mixed|eq|compressor|reverb|mp3|aac", item))]
        assert order == sorted(order), description  # mixed, then produced, then coded


@needs_rubberband
@needs_ffmpeg
def test_real_versions_mostly_change_key_or_tempo():
    y = tone(60, 0.5, harmonics=2)
    versions = audio_fx.real_versions(y, SR, np.random.default_rng(3), n=16)
    changed = sum(bool(re.search(r"key|tempo", d)) for d, _ in versions)
    assert changed >= 12  # 91 % expected
    assert not any("mixed under" in d for d, _ in versions)  # no other track given
    keys = [int(m.group(1)) for d, _ in versions if (m := re.search(r"key ([+-]\d+)", d))]
    assert keys and all(1 <= abs(k) <= 5 for k in keys)
