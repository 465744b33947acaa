"""Agreement and speed of ``TorchCQT`` against ``librosa.cqt`` (the dataset's features).

For each test signal it prints the relative Frobenius error ||C_torch - C_librosa|| / ||C_librosa||
overall, per octave (each octave's error over that octave's norm), and after the model's
preprocessing (mean-pool 20 frames, clip, max-normalise); as a yardstick it also prints the
error that storing librosa's CQT as float16 (as the dataset does) already introduces.
Then it times both on one CPU-bound 3-minute signal.

Signals: a 440 Hz sine, a five-note chord, white noise, a synthetic piano-like polyphonic
melody (harmonic partials with exponential decays), two music21 corpus scores played on a
piano through the corpus generator's MIDI writer and fluidsynth call (``corpus.midi``,
``corpus.render``; FluidR3_GM, no reverb) when music21, fluidsynth and the soundfont are
installed, and any files given with ``--audio``.

Usage:
    python -m benchmarks.quality.cqt_accuracy [--seconds 30] [--audio FILE ...] [--device cpu]
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import librosa
import numpy as np
import torch

from benchmarks.common import relative_error as rel
from mirex_vi.config import FeatureConfig
from mirex_vi.corpus.catalogue import WorkRef, corpus_root
from mirex_vi.corpus.midi import fold_keys, midi_bytes
from mirex_vi.corpus.render import fluidsynth_render
from mirex_vi.corpus.scores import load_work
from mirex_vi.corpus.soundfonts import SOUNDFONT_ROOT
from mirex_vi.features.cqt_torch import TorchCQT
from mirex_vi.features.frontend import preprocess
from mirex_vi.synth import piano_like, sines

SOUNDFONT = SOUNDFONT_ROOT / "sf2" / "FluidR3_GM.sf2"
CORPUS_PIECES = ("bach/bwv66.6.mxl", "beethoven/opus18no1/movement1.mxl")


def rendered(piece: str, seconds: float, sr: int) -> np.ndarray | None:
    """``(samples,)`` mono float32: the first ``seconds`` (at most) of a music21 corpus
    score at its tempo, every part on a piano, rendered by fluidsynth at ``sr``; None if
    music21, fluidsynth or the soundfont is missing, or the score cannot be read."""
    if shutil.which("fluidsynth") is None or not SOUNDFONT.exists():
        return None
    try:
        work = load_work(WorkRef(piece), corpus_root())
    except ImportError:  # no music21
        return None
    if work is None:
        return None
    events = work.notes * [60 / work.bpm, 60 / work.bpm, 1, 1]  # (N, 4) onsets, durations in s
    events = events[events[:, 0] < seconds]
    duration = min(seconds, work.length_q * 60 / work.bpm)
    parts = work.n_parts
    midi = midi_bytes(fold_keys(events), [0] * parts, [90] * parts, [64] * parts, duration)
    audio = fluidsynth_render(midi, SOUNDFONT, sr, reverb=False, chorus=False)  # (samples, 2)
    return audio.mean(axis=1)[: int(seconds * sr)]


def signals(seconds: float, sr: int, files: list[str]) -> dict[str, np.ndarray]:
    out = {
        "sine 440 Hz": sines([440.0], seconds, sr),
        "chord C3-E3-G3-C4-C6": sines([130.81, 164.81, 196.0, 261.63, 1046.5], seconds, sr),
        "white noise": np.random.default_rng(0).standard_normal(int(seconds * sr)) * 0.1,
        "piano-like melody": piano_like(seconds, sr),
    }
    for piece in CORPUS_PIECES:
        audio = rendered(piece, seconds, sr)
        if audio is not None:
            out[f"fluidsynth {piece.split('/')[0]}"] = audio
    for name in files:
        audio, _ = librosa.load(name, sr=sr, mono=True, duration=seconds)
        out[Path(name).name] = audio
    return {k: v.astype(np.float32) for k, v in out.items()}


def report(name: str, ref: np.ndarray, ours: np.ndarray, cfg: FeatureConfig) -> None:
    """Print overall, per-octave and post-preprocessing errors; arrays are (n_bins, T)."""
    bpo = cfg.bins_per_octave
    octaves = [rel(ours[o : o + bpo], ref[o : o + bpo]) for o in range(0, cfg.n_bins, bpo)]
    model_ref = preprocess(ref.T, cfg, min_frames=0)
    model_ours = preprocess(ours.T, cfg, min_frames=0)
    model_fp16 = preprocess(ref.T.astype(np.float16), cfg, min_frames=0)
    print(
        f"{name:32s} overall {rel(ours, ref):.1e}  model input {rel(model_ours, model_ref):.1e}"
        f" (max abs {np.abs(model_ours - model_ref).max():.1e};"
        f" fp16 storage {rel(model_fp16, model_ref):.1e})"
    )
    print(f"{'':32s} per octave C1..C7: " + " ".join(f"{e:.1e}" for e in octaves))


def best_time(fn, repeats: int = 3) -> float:
    fn()  # warm-up (numba compilation, filter caches, allocator)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="length of accuracy signals")
    parser.add_argument("--timing-seconds", type=float, default=180.0)
    parser.add_argument("--audio", nargs="*", default=[], help="extra audio files to compare")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    cfg = FeatureConfig()
    cqt = TorchCQT.from_config(cfg).to(args.device)

    def ours(y: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = cqt(torch.from_numpy(y)[None].to(args.device))
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return out[0].cpu().numpy()

    def theirs(y: np.ndarray) -> np.ndarray:
        return np.abs(librosa.cqt(y, sr=cfg.sample_rate, hop_length=cfg.hop_length,
                                  n_bins=cfg.n_bins, bins_per_octave=cfg.bins_per_octave,
                                  fmin=cfg.fmin))

    print(f"relative Frobenius error vs librosa {librosa.__version__}, {args.seconds:g} s signals")
    for name, y in signals(args.seconds, cfg.sample_rate, args.audio).items():
        report(name, theirs(y), ours(y), cfg)

    y = piano_like(args.timing_seconds, cfg.sample_rate, seed=1)
    t_ref, t_ours = best_time(lambda: theirs(y)), best_time(lambda: ours(y))
    print(f"time for {args.timing_seconds:g} s of audio: librosa {t_ref:.3f} s,"
          f" TorchCQT ({args.device}, {torch.get_num_threads()} threads) {t_ours:.3f} s")


if __name__ == "__main__":
    main()
