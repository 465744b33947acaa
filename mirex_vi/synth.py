"""Synthetic audio for tests, benchmarks and the Docker test: tones, melodies, polyphony.

Signals are mono ``(N,)`` float32 at ``sr`` Hz, well inside [-1, 1]; pitches are MIDI note
numbers unless a name says Hz. ``python -m mirex_vi.synth OUT_DIR`` writes the six clips of
:func:`clips` as 22.05 kHz 16-bit mono WAVs (the format MIREX provides).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf

SR = 22050
CLIP_PEAK = 24000 / 32768  # the clips' peak level, -2.7 dBFS


def midi_to_hz(note: float) -> float:
    return 440.0 * 2 ** ((note - 69) / 12)


def tone(note: float, seconds: float, sr: int = SR, harmonics: int = 1,
         amplitude: float = 0.3) -> np.ndarray:
    """A steady tone at a MIDI pitch: partials ``k = 1..harmonics`` at level ``1 / k``."""
    t = np.arange(int(seconds * sr)) / sr
    wave = sum(np.sin(2 * np.pi * k * midi_to_hz(note) * t) / k for k in range(1, harmonics + 1))
    return (amplitude * wave).astype(np.float32)


def melody(notes: Sequence[float], note_seconds: float = 0.25, sr: int = SR,
           amplitude: float = 0.3) -> np.ndarray:
    """Notes one after another, each a three-partial :func:`tone` with a short decay."""
    env = np.exp(-3 * np.arange(int(note_seconds * sr)) / sr).astype(np.float32)
    return np.concatenate([tone(n, note_seconds, sr, harmonics=3, amplitude=amplitude) * env
                           for n in notes])


def random_melody(seed: int, seconds: float, sr: int = SR) -> np.ndarray:
    """A :func:`melody` of random notes (MIDI 48-71, one random note length) with a little
    white noise, exactly ``seconds`` long; the same ``seed`` gives the same samples."""
    rng = np.random.default_rng(seed)
    note_seconds = 0.25 + 0.25 * rng.random()
    notes = rng.integers(48, 72, size=int(seconds / note_seconds) + 1)
    wave = melody(notes, note_seconds, sr, amplitude=0.2)[: int(seconds * sr)]
    return (wave + 0.01 * rng.standard_normal(len(wave))).astype(np.float32)


def sines(freqs_hz: Sequence[float], seconds: float, sr: int = SR) -> np.ndarray:
    """The mean of equal sines at ``freqs_hz`` (a pure tone, or a chord of pure tones)."""
    t = np.arange(int(seconds * sr)) / sr
    return (sum(np.sin(2 * np.pi * f * t) for f in freqs_hz) / len(freqs_hz)).astype(np.float32)


def piano_like(seconds: float, sr: int = SR, seed: int = 0) -> np.ndarray:
    """Bass, chords and melody of decaying harmonic notes spanning MIDI 24-100, peak 1."""
    rng = np.random.default_rng(seed)
    out = np.zeros(int(seconds * sr))
    for low, high, step, poly in ((24, 48, 1.0, 1), (48, 72, 0.5, 3), (60, 100, 0.25, 1)):
        for onset in np.arange(0, seconds, step):
            for pitch in rng.integers(low, high, size=poly):
                f0 = midi_to_hz(pitch)
                n = min(int(2.0 * sr), len(out) - int(onset * sr))
                t = np.arange(n) / sr
                partials = sum(
                    np.sin(2 * np.pi * k * f0 * t) / k * np.exp(-t * (1.5 + k))
                    for k in range(1, 9) if k * f0 < sr / 2
                )
                start = int(onset * sr)
                out[start : start + n] += rng.uniform(0.2, 1.0) * partials * (1 - np.exp(-t * 200))
    return (out / np.abs(out).max()).astype(np.float32)


def clips(seconds: float = 10.0, sr: int = SR) -> dict[str, np.ndarray]:
    """Six named clips, each peak-normalised to ``CLIP_PEAK``: two pure tones, a C major
    chord, a melody, its cover (two semitones up and slower), and a rising chirp."""
    tune = [60, 62, 64, 65, 67, 65, 64, 62, 60, 67, 64, 60]
    n = int(seconds * sr)
    t = np.arange(n) / sr

    def looped(notes: list[int], note_seconds: float) -> np.ndarray:
        return melody(notes * (int(seconds / (note_seconds * len(notes))) + 1), note_seconds, sr)[:n]

    signals = {
        "tone_a4": sines([midi_to_hz(69)], seconds, sr),
        "tone_c5": sines([midi_to_hz(72)], seconds, sr),
        "chord_c": sines([midi_to_hz(m) for m in (48, 52, 55, 60)], seconds, sr),
        "melody": looped(tune, 0.25),
        "melody_cover": looped([m + 2 for m in tune], 0.3),
        "chirp": np.sin(2 * np.pi * (110 * t + 40 * t * t)),
    }
    return {name: (CLIP_PEAK * x / np.abs(x).max()).astype(np.float32) for name, x in signals.items()}


def write_audio(path: Path, samples: np.ndarray, sr: int = SR, **kwargs) -> Path:
    """Write ``(N,)`` or ``(N, channels)`` samples (``kwargs`` go to ``soundfile.write``),
    creating the folder; returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, samples, sr, **kwargs)
    return path


def write_tracks(folder: Path, n: int, seconds: float, sr: int = SR) -> list[Path]:
    """``folder/track00000.wav``...: :func:`random_melody` ``i`` as 16-bit mono WAV; files
    already there are reused."""
    paths = [folder / f"track{i:05d}.wav" for i in range(n)]
    for i, path in enumerate(paths):
        if not path.exists():
            write_audio(path, random_melody(i, seconds, sr), sr, subtype="PCM_16")
    return paths


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the clips of mirex_vi.synth.clips as "
                                                 "16-bit mono WAVs.")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--sample-rate", type=int, default=SR)
    args = parser.parse_args(argv)
    for name, samples in clips(args.seconds, args.sample_rate).items():
        write_audio(args.out_dir / f"{name}.wav", samples, args.sample_rate, subtype="PCM_16")


if __name__ == "__main__":
    main()
