"""TorchCQT against librosa.cqt, the transform the dataset's features were made with."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import torch

from mirex_vi.config import FeatureConfig
from mirex_vi.core.runtime import tolerance
from mirex_vi.features.cqt_torch import TorchCQT
from mirex_vi.synth import piano_like

SR = 22050
# Relative Frobenius error allowed against librosa. Measured: ~1e-6 on 30 s signals and at
# most ~4e-5 on very short ones (benchmarks.quality.cqt_accuracy); float16 storage alone
# costs ~1e-4.
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def cqt() -> TorchCQT:
    return TorchCQT.from_config(FeatureConfig())


def librosa_cqt(y: np.ndarray, **kwargs) -> np.ndarray:
    return np.abs(librosa.cqt(y, sr=SR, hop_length=512, n_bins=84, bins_per_octave=12, **kwargs))


def torch_cqt(module: TorchCQT, y: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(y)[None])[0].numpy()


def relative_error(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(ours - ref) / np.linalg.norm(ref))


def tones(freqs: list[float], seconds: float = 2.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (sum(np.sin(2 * np.pi * f * t) for f in freqs) / len(freqs)).astype(np.float32)


def noise_burst() -> np.ndarray:
    """0.5 s of white noise between 0.7 s and 0.8 s of silence."""
    y = np.zeros(2 * SR, dtype=np.float32)
    start = int(0.7 * SR)
    y[start : start + SR // 2] = np.random.default_rng(0).standard_normal(SR // 2)
    return y


@pytest.mark.parametrize(
    "signal",
    [tones([440.0]), tones([65.41, 130.81, 164.81, 196.0, 1046.5]), noise_burst()],
    ids=["sine", "chord", "noise-burst"],
)
def test_matches_librosa(cqt: TorchCQT, signal: np.ndarray) -> None:
    ref, ours = librosa_cqt(signal), torch_cqt(cqt, signal)
    assert ours.shape == ref.shape
    assert relative_error(ours, ref) < TOLERANCE


def test_three_minutes_of_music_match_librosa_as_stated(cqt: TorchCQT) -> None:
    """The README's figure (~1e-6; at most ``tolerance(...).cqt`` = 2e-5) on a full-length
    track: 180 s of piano-like music (a 20-s excerpt nine times, to keep synthesis short),
    overall and in every octave."""
    y = np.tile(piano_like(20.0, SR), 9)
    ref, ours = librosa_cqt(y), torch_cqt(cqt, y)
    limit = tolerance("cpu", amp=False).cqt
    assert relative_error(ours, ref) <= limit
    for lo in range(0, 84, 12):
        assert relative_error(ours[lo : lo + 12], ref[lo : lo + 12]) <= limit


def test_low_octave_of_real_content_matches(cqt: TorchCQT) -> None:
    """The two lowest octaves come after five and six decimations: the hardest to match."""
    signal = tones([36.71, 55.0, 82.41])  # D1, A1, E2
    ref, ours = librosa_cqt(signal), torch_cqt(cqt, signal)
    assert relative_error(ours[:24], ref[:24]) < TOLERANCE


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("n_samples", [1, 100, 511, 512, 513, 1000, 4097, SR + 17])
def test_shape_matches_librosa(cqt: TorchCQT, n_samples: int) -> None:
    y = np.random.default_rng(n_samples).standard_normal(n_samples).astype(np.float32)
    ref = librosa_cqt(y)
    ours = torch_cqt(cqt, y)
    assert ours.shape == ref.shape == (84, cqt.n_frames(n_samples))
    assert relative_error(ours, ref) < TOLERANCE


def test_batch_equals_single_calls(cqt: TorchCQT) -> None:
    a, b = tones([220.0], 1.0), noise_burst()[: SR]
    batch = cqt(torch.from_numpy(np.stack([a, b])))
    assert batch.shape == (2, 84, cqt.n_frames(SR))
    for row, y in zip(batch, (a, b)):
        single = cqt(torch.from_numpy(y)[None])[0]
        # batched and single FFTs may round differently: float32 noise only
        torch.testing.assert_close(row, single, rtol=1e-4, atol=1e-5 * float(single.max()))


def test_forward_creates_no_tensor_off_the_module_device() -> None:
    """On the "meta" device any CPU tensor made in forward would raise (stand-in for CUDA)."""
    module = TorchCQT().to("meta")
    out = module(torch.zeros(2, 3000, device="meta"))
    assert out.device.type == "meta" and out.shape == (2, 84, module.n_frames(3000))


def test_transposition_moves_the_peak(cqt: TorchCQT) -> None:
    """MIDI 60 peaks in bin 36 (C1 is bin 0); k semitones up moves the peak k bins."""
    for k in (0, 5, 19):
        spectrum = torch_cqt(cqt, tones([440.0 * 2 ** ((60 + k - 69) / 12)], 1.0))
        assert spectrum[:, 10:-10].mean(axis=1).argmax() == 36 + k


def test_other_settings_match_librosa() -> None:
    """An odd hop stops the per-octave halving; fewer bins trigger early downsampling."""
    y = noise_burst()
    for kwargs, bound in (({"hop_length": 500}, TOLERANCE), ({"n_bins": 60}, 1e-3)):
        module = TorchCQT(**kwargs)
        ref = np.abs(librosa.cqt(y, sr=SR, **kwargs))
        assert relative_error(torch_cqt(module, y), ref) < bound


def test_rejects_filters_above_nyquist() -> None:
    with pytest.raises(ValueError, match="Nyquist"):
        TorchCQT(n_bins=120)


def test_a_padded_batch_gives_each_track_its_own_frames(cqt: TorchCQT) -> None:
    """Tracks of several lengths zero-padded into one batch: with ``lengths`` each track's
    frames are its CQT alone, to float32 rounding; without, its last frames are not (the
    low octaves' decimated signals run on past the track's end)."""
    tracks = [piano_like(seconds, seed=i) for i, seconds in enumerate((3.1, 7.7, 5.0))]
    n = max(map(len, tracks)) + 4096
    batch = torch.stack([torch.from_numpy(np.pad(y, (0, n - len(y)))) for y in tracks])
    with torch.no_grad():
        masked = cqt(batch, torch.tensor([len(y) for y in tracks])).numpy()
        unmasked = cqt(batch).numpy()
    allowed = tolerance("cpu", amp=False).cqt
    for b, y in enumerate(tracks):
        alone = torch_cqt(cqt, y)  # (84, T)
        t = alone.shape[1]
        assert relative_error(masked[b, :, :t], alone) <= allowed / 10
        assert relative_error(masked[b, :, t - 8 : t], alone[:, -8:]) <= allowed
        if len(y) < n - 4096:  # padded by more than the guard: its end no longer matches
            assert relative_error(unmasked[b, :, t - 8 : t], alone[:, -8:]) > 10 * allowed
