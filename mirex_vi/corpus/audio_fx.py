"""Real versions of a recording, made in the audio domain: what a remaster, a live room, a
radio chain, an upload or another performer's tempo and key do to the waveform.

Every function takes and returns mono (S,) audio at ``sr`` Hz; the random ones draw their
parameters from a ``numpy`` generator and, given a ``log`` list, append a short description
of what they drew. Key and tempo changes run the ``rubberband`` program (Debian
``rubberband-cli``) with its R3 engine: it keeps attacks far sharper than librosa's phase
vocoder (a piano's onset-strength peak keeps 82-88 % of its height against 49-58 %) for 2-3 s
of one core per 60 s of audio (librosa: 0.3-0.7 s; the R2 engine, ``--fast``: 0.7-1.3 s and
70-80 %). Codecs go through ffmpeg (``codec.codec_pass``).
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

from .codec import codec_pass
from .render import limit_peak
from .versions import CODEC_LOW_RATE, CODECS

INSTALL_HINT = "apt-get install rubberband-cli (tools/setup.sh)"
KEY_SHIFTS = tuple(k for k in range(-5, 6) if k)  # semitones of a version's key change
TEMPO_RANGE = (0.8, 1.25)  # a version's tempo factor (log-uniform)
P_KEY, P_TEMPO = 0.7, 0.7  # how often a version changes key, tempo
EQ_GAIN_DB = 9.0  # the largest boost or cut of one EQ band
RT60_RANGE = (0.3, 2.5)  # s, the reverb's decay to -60 dB
RATIO_RANGE = (2.0, 8.0)  # the compressor's ratio
CODEC_KBPS = (32, 48, 64, 96)
MIX_DB = (-18.0, -8.0)  # level of the track mixed under, relative to the version's RMS
EFFECTS = ("mix", "eq", "compress", "reverb", "codec")  # in the order a chain applies them


def check_programs() -> None:
    """Raise RuntimeError, saying how to install them, if rubberband or ffmpeg is missing
    (call it before a long run: the effects meet them only when a chain draws them)."""
    missing = [p for p in ("rubberband", "ffmpeg") if shutil.which(p) is None]
    if missing:
        raise RuntimeError(f"missing programs {', '.join(missing)}: apt-get install "
                           f"{' '.join({'rubberband': 'rubberband-cli'}.get(p, p) for p in missing)}"
                           " (tools/setup.sh)")


def _rms(y: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(y, dtype=np.float64))))


def _mono(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y, dtype=np.float32)
    if y.ndim != 1:
        raise ValueError(f"audio must be mono (S,), got shape {y.shape}")
    return y


def stretch_shift(y: np.ndarray, sr: int, rate: float = 1.0, semitones: float = 0.0) -> np.ndarray:
    """``y`` played ``rate`` times faster (pitch kept) and ``semitones`` higher (duration
    kept), in one rubberband pass. Returns float32 of ``round(len(y) / rate)`` samples."""
    y = _mono(y)
    n_out = int(round(len(y) / rate))
    with tempfile.TemporaryDirectory(prefix="mkcorpus-rb-") as tmp:
        src, dst = Path(tmp, "in.wav"), Path(tmp, "out.wav")
        sf.write(src, y, sr, subtype="FLOAT")
        cmd = ["rubberband", "-q", "--fine", "--ignore-clipping", "--tempo", repr(float(rate)),
               "--pitch", repr(float(semitones)), str(src), str(dst)]
        try:
            subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE)
        except FileNotFoundError:
            raise RuntimeError(f"the rubberband program is missing: {INSTALL_HINT}") from None
        out, _ = sf.read(dst, dtype="float32")
    out = out if out.ndim == 1 else out[:, 0]
    return np.pad(out[:n_out], (0, max(0, n_out - len(out)))).astype(np.float32)


def pitch_shift(y: np.ndarray, sr: int, semitones: float) -> np.ndarray:
    """``y`` ``semitones`` higher (negative: lower), same duration; float32 (S,)."""
    return stretch_shift(y, sr, semitones=semitones)


def time_stretch(y: np.ndarray, sr: int, rate: float) -> np.ndarray:
    """``y`` ``rate`` times faster (> 1 shorter), same pitch; float32 (round(S / rate),)."""
    return stretch_shift(y, sr, rate=rate)


def _biquad(kind: str, f0: float, gain_db: float, q: float, sr: int) -> np.ndarray:
    """One second-order section (1, 6) of an RBJ-cookbook peaking or shelving filter."""
    a = 10 ** (gain_db / 40)
    w0 = 2 * np.pi * f0 / sr
    cos, alpha = np.cos(w0), np.sin(w0) / (2 * q)
    if kind == "peak":
        b = [1 + alpha * a, -2 * cos, 1 - alpha * a]
        den = [1 + alpha / a, -2 * cos, 1 - alpha / a]
    else:  # "low" or "high" shelf; sign +1 for low
        s, root = (1 if kind == "low" else -1), 2 * np.sqrt(a) * alpha
        b = [a * ((a + 1) - s * (a - 1) * cos + root), s * 2 * a * ((a - 1) - s * (a + 1) * cos),
             a * ((a + 1) - s * (a - 1) * cos - root)]
        den = [(a + 1) + s * (a - 1) * cos + root, -s * 2 * ((a - 1) + s * (a + 1) * cos),
               (a + 1) + s * (a - 1) * cos - root]
    return np.array([*b, *den]) / den[0]


def equalise(y: np.ndarray, sr: int, rng: np.random.Generator, log: list[str] | None = None
             ) -> np.ndarray:
    """A random smooth EQ: a low shelf (60-300 Hz), a high shelf (2-8 kHz) and 1-2 peaking
    bands (150 Hz-6 kHz, Q 0.5-2), each of ±``EQ_GAIN_DB``; float32 (S,)."""
    from scipy import signal

    bands = [("low", rng.uniform(60, 300), 0.707), ("high", rng.uniform(2000, 8000), 0.707)]
    bands += [("peak", np.exp(rng.uniform(np.log(150), np.log(6000))), rng.uniform(0.5, 2.0))
              for _ in range(int(rng.integers(1, 3)))]
    gains = rng.uniform(-EQ_GAIN_DB, EQ_GAIN_DB, len(bands))
    sos = np.stack([_biquad(kind, min(f0, 0.45 * sr), g, q, sr)
                    for (kind, f0, q), g in zip(bands, gains)])
    if log is not None:
        log.append("eq " + " ".join(f"{kind}{f0:.0f}Hz{g:+.1f}dB" for (kind, f0, _), g in zip(bands, gains)))
    return signal.sosfilt(sos, _mono(y)).astype(np.float32)


def reverb(y: np.ndarray, sr: int, rng: np.random.Generator, log: list[str] | None = None
           ) -> np.ndarray:
    """A synthetic room: ``y`` convolved with exponentially decaying white noise (RT60 in
    ``RT60_RANGE``, 0-30 ms pre-delay; the tail past S dropped), mixed with the dry signal
    at equal RMS (wet share 0.15-0.5); float32 (S,)."""
    from scipy import signal

    y = _mono(y)
    rt60, delay, wet = rng.uniform(*RT60_RANGE), rng.uniform(0.0, 0.03), rng.uniform(0.15, 0.5)
    t = np.arange(int(rt60 * sr)) / sr
    ir = np.concatenate([np.zeros(int(delay * sr)), rng.standard_normal(len(t)) * 10 ** (-3 * t / rt60)])
    tail = signal.fftconvolve(y, ir)[: len(y)]
    tail *= _rms(y) / max(_rms(tail), 1e-12)
    if log is not None:
        log.append(f"reverb RT60 {rt60:.2f}s wet {wet:.2f}")
    return ((1 - wet) * y + wet * tail).astype(np.float32)


def _smooth_gain(target_db: np.ndarray, attack: float, release: float) -> np.ndarray:
    """One-pole smoothing of a gain curve (dB, one value a block): coefficient ``attack``
    while the gain falls, ``release`` while it recovers."""
    out = np.empty_like(target_db)
    g = 0.0
    for i, want in enumerate(target_db):
        coef = attack if want < g else release
        g = coef * g + (1 - coef) * want
        out[i] = g
    return out


def compress(y: np.ndarray, sr: int, rng: np.random.Generator, log: list[str] | None = None,
             block: int = 32) -> np.ndarray:
    """A feed-forward RMS compressor: where the 10-ms RMS level exceeds a threshold 4-16 dB
    below its loudest, the excess is divided by the ratio (2-8), with a gain computed every
    ``block`` samples and smoothed with attack 1-20 ms and release 50-300 ms; the result is
    made up to the input's RMS. float32 (S,)."""
    y = _mono(y)
    ratio = rng.uniform(*RATIO_RANGE)
    attack_s, release_s, below = rng.uniform(0.001, 0.02), rng.uniform(0.05, 0.3), rng.uniform(4, 16)
    n_blocks = -(-len(y) // block)
    power = np.pad(y.astype(np.float64) ** 2, (0, n_blocks * block - len(y))).reshape(n_blocks, block).mean(1)
    width = max(1, int(round(0.01 * sr / block)))
    level_db = 10 * np.log10(np.convolve(power, np.ones(width) / width, mode="same") + 1e-12)
    threshold = level_db.max() - below
    target = -np.maximum(level_db - threshold, 0.0) * (1 - 1 / ratio)
    per_block = block / sr
    gain_db = _smooth_gain(target, np.exp(-per_block / attack_s), np.exp(-per_block / release_s))
    gain = 10 ** (np.interp(np.arange(len(y)), (np.arange(n_blocks) + 0.5) * block, gain_db) / 20)
    out = y * gain
    if log is not None:
        log.append(f"compressor {ratio:.2f}:1 at -{below:.1f}dB attack {attack_s * 1e3:.0f}ms "
                   f"release {release_s * 1e3:.0f}ms")
    return (out * (_rms(y) / max(_rms(out), 1e-12))).astype(np.float32)


def codec(y: np.ndarray, sr: int, rng: np.random.Generator, log: list[str] | None = None
          ) -> np.ndarray:
    """An MP3 or AAC round trip at 32-96 kbps (the encoder at 16 kHz 40 % of the time, as a
    low-quality upload); float32 (S,)."""
    name, kbps = str(rng.choice(CODECS)), int(rng.choice(CODEC_KBPS))
    rate = CODEC_LOW_RATE if rng.random() < 0.4 else 0
    if log is not None:
        log.append(f"{name} {kbps}kbps" + (f" at {rate}Hz" if rate else ""))
    return codec_pass(limit_peak(_mono(y)[:, None]), sr, name, kbps, rate)[:, 0]


def mix_under(y: np.ndarray, other: np.ndarray, rng: np.random.Generator,
              log: list[str] | None = None) -> np.ndarray:
    """``y`` with ``other`` (another recording at the same rate, looped to fit, from a random
    offset) mixed underneath at ``MIX_DB`` relative RMS; float32 (S,)."""
    y, other = _mono(y), _mono(other)
    db = rng.uniform(*MIX_DB)
    start = int(rng.integers(0, len(other)))
    under = np.resize(np.roll(other, -start), len(y))
    under *= 10 ** (db / 20) * _rms(y) / max(_rms(under), 1e-12)
    if log is not None:
        log.append(f"mixed under at {db:.1f}dB")
    return (y + under).astype(np.float32)


def real_versions(y: np.ndarray, sr: int, rng: np.random.Generator,
                  other: np.ndarray | None = None, n: int = 3) -> list[tuple[str, np.ndarray]]:
    """``n`` versions of the recording ``y``, each a random chain: a key change (±1-5
    semitones, ``P_KEY`` of the time) and a tempo change (0.8-1.25x, ``P_TEMPO``; so nine
    versions in ten change one or both), then 1-3 of EQ, reverb, compression, a codec and, given
    ``other``, another recording mixed under, applied in ``EFFECTS`` order.

    Returns (description, float32 (S',) audio at ``sr``) pairs, each scaled down to a peak
    of at most 0.98; S' = round(S / tempo)."""
    y = _mono(y)
    pool = [e for e in EFFECTS if e != "mix" or other is not None]
    out = []
    for _ in range(n):
        key = int(rng.choice(KEY_SHIFTS)) if rng.random() < P_KEY else 0
        tempo = float(np.exp(rng.uniform(*np.log(TEMPO_RANGE)))) if rng.random() < P_TEMPO else 1.0
        chosen = set(rng.choice(pool, size=int(rng.integers(1, 4)), replace=False))
        log = [f"key {key:+d}"] * bool(key) + [f"tempo {tempo:.2f}"] * (tempo != 1.0)
        audio = stretch_shift(y, sr, tempo, key) if key or tempo != 1.0 else y
        for effect in (e for e in pool if e in chosen):
            if effect == "mix":
                audio = mix_under(audio, other, rng, log)
            else:
                audio = {"eq": equalise, "reverb": reverb, "compress": compress,
                         "codec": codec}[effect](audio, sr, rng, log)
        out.append((", ".join(log), limit_peak(audio)))
    return out
