import os
import shutil
import subprocess

import numpy as np
import pytest

from mirex_vi.config import FeatureConfig
from mirex_vi.features.frontend import compute_cqt, preprocess
from mirex_vi.features.layout import load_feature, save_feature
from mirex_vi.io.audio import AudioError, load_audio
from mirex_vi.synth import SR, tone, write_audio
from mirex_vi.train.data import random_crop

CFG = FeatureConfig()


def peak_bin(samples: np.ndarray) -> int:
    return int(compute_cqt(samples, CFG).astype(np.float32).mean(axis=0).argmax())


def test_c4_sine_peaks_in_bin_36_and_transposition_moves_it():
    # C1 (MIDI 24) is bin 0 at 12 bins per octave, so C4 (MIDI 60) is bin 36.
    assert peak_bin(tone(60, 2.0)) == 36
    assert peak_bin(tone(65, 2.0)) == 41
    assert peak_bin(tone(53, 2.0)) == 29


def test_cqt_shape_dtype_and_frame_count():
    samples = tone(60, 3.0)
    cqt = compute_cqt(samples, CFG)
    assert cqt.shape == (1 + len(samples) // CFG.hop_length, 84)
    assert cqt.dtype == np.float16
    assert cqt.min() >= 0


def test_preprocess_pads_pools_and_normalises():
    cqt = np.random.default_rng(0).random((130, 84)).astype(np.float16)
    x = preprocess(cqt, CFG)
    assert x.shape == (84, 4000 // 20) and x.dtype == np.float32
    assert np.isclose(x.max(), 1.0, atol=1e-5) and x.min() >= 0
    assert np.all(x[:, 7:] == 0)  # 130 real frames fill 6.5 pooled frames; the rest is padding
    long = np.ones((4031, 84), dtype=np.float16)
    assert preprocess(long, CFG).shape == (84, 201)  # remainder of 11 frames dropped


def test_preprocess_mean_pools_by_20():
    cqt = np.repeat(np.arange(200, dtype=np.float32), 20)[:, None] * np.ones((1, 84))
    x = preprocess(cqt, CFG, min_frames=0)
    np.testing.assert_allclose(x[0], np.arange(200) / (199 + CFG.eps), rtol=1e-6)


def test_random_crop_and_short_tracks():
    rng = np.random.default_rng(0)
    cqt = np.arange(100)[:, None] * np.ones((1, 84))
    crop = random_crop(cqt, 30, rng)
    assert crop.shape == (30, 84) and np.all(np.diff(crop[:, 0]) == 1)
    assert random_crop(cqt, 300, rng).shape == (100, 84)


def test_random_crop_with_a_minimum_length_draws_excerpts_of_varied_length():
    rng = np.random.default_rng(0)
    cqt = np.arange(100)[:, None] * np.ones((1, 84))
    crops = [random_crop(cqt, 150, rng, min_length=20) for _ in range(200)]
    lengths = np.array([len(c) for c in crops])
    assert lengths.min() >= 20 and lengths.max() == 100  # whole track when the draw exceeds it
    assert 0.2 < np.mean(lengths < 100) < 0.8 and len(set(lengths)) > 30
    assert all(np.all(np.diff(c[:, 0]) == 1) for c in crops)  # contiguous windows
    starts = {int(c[0, 0]) for c in crops if len(c) < 100}
    assert len(starts) > 20


def test_feature_store_roundtrip(tmp_path):
    cqt = np.random.default_rng(1).random((50, 84)).astype(np.float16)
    save_feature(tmp_path, "abcdefghijk", cqt)
    assert (tmp_path / "ab" / "abcdefghijk.mm").stat().st_size == 50 * 84 * 2
    np.testing.assert_array_equal(load_feature(tmp_path, "abcdefghijk"), cqt)
    assert not list(tmp_path.rglob("*.tmp"))


def test_load_audio_resamples_and_mixes_down(tmp_path):
    stereo = np.stack([tone(69, 1.0, sr=44100)] * 2, axis=1)
    path = write_audio(tmp_path / "s.flac", stereo, sr=44100)
    mono = load_audio(path, SR)
    assert mono.ndim == 1 and abs(len(mono) - SR) <= 1 and mono.dtype == np.float32


@pytest.mark.parametrize("content, reason", [
    (None, "file not found"),
    (b"", "empty file"),
    (b"this is not audio at all", "unreadable|not an audio file"),  # without/with ffmpeg
])
def test_load_audio_errors(tmp_path, content, reason):
    path = tmp_path / "x.wav"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(AudioError, match=reason):
        load_audio(path, SR)


def test_load_audio_rejects_digital_silence(tmp_path):
    path = write_audio(tmp_path / "z.wav", np.zeros(SR, dtype=np.float32))
    with pytest.raises(AudioError, match="digital silence"):
        load_audio(path, SR)


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")
def test_load_audio_decodes_m4a_through_ffmpeg(tmp_path):
    wav = write_audio(tmp_path / "x.wav", tone(69, 2.0, sr=44100), sr=44100)
    m4a = tmp_path / "x.m4a"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(wav), "-c:a", "aac", str(m4a)], check=True)
    audio = load_audio(m4a, SR)
    assert abs(len(audio) - 2 * SR) < 0.05 * SR
    assert peak_bin(audio) == 45  # A4 = MIDI 69 = bin 45


def test_atomic_files_get_the_usual_permissions(tmp_path):
    from mirex_vi.core.atomic import atomic_open

    umask = os.umask(0o022)
    os.umask(umask)
    with atomic_open(tmp_path / "f.txt", "w") as f:
        f.write("x")
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o666 & ~umask
