"""Rendering one version: MIDI through the fluidsynth program, then the audio chain (trim,
fades, filter, mix-down, level, noise, codec), to FLAC."""
from __future__ import annotations

import dataclasses
import logging
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

from ..core.atomic import atomic_open
from .arrangement import arrange
from .catalogue import stable_int
from .codec import codec_pass
from .midi import fold_keys, midi_bytes
from .scores import Work
from .versions import GENERATOR_VERSION, Mix, VersionSpec, draw_extras, draw_spec

log = logging.getLogger(__name__)

FADE_OUT_S = 1.0


def fluidsynth_render(midi: bytes, soundfont: Path, sample_rate: int, reverb: bool,
                      chorus: bool) -> np.ndarray:
    """Render MIDI with the fluidsynth CLI. Returns (samples, 2) float32."""
    with tempfile.TemporaryDirectory(prefix="mkcorpus-") as tmp:
        mid, wav = Path(tmp, "in.mid"), Path(tmp, "out.wav")
        mid.write_bytes(midi)
        cmd = ["fluidsynth", "-ni", "-q", "-g", "0.5", "-r", str(sample_rate),
               "-R", str(int(reverb)), "-C", str(int(chorus)), "-O", "float", "-T", "wav",
               "-o", "synth.dynamic-sample-loading=1", "-F", str(wav), str(soundfont), str(mid)]
        subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE)
        audio, _ = sf.read(wav, dtype="float32", always_2d=True)
    return audio


def colored_noise(rng: np.random.Generator, n: int, channels: int, color: str) -> np.ndarray:
    """Unit-RMS noise of shape (n, channels) with a 1/f^alpha power spectrum."""
    from scipy import fft

    alpha = {"white": 0.0, "pink": 1.0, "brown": 2.0}[color]
    size = fft.next_fast_len(n, real=True)  # an awkward n makes the FFT 100x slower
    noise = rng.standard_normal((channels, size))
    if alpha:
        freqs = np.fft.rfftfreq(size)
        freqs[0] = freqs[1]
        noise = fft.irfft(fft.rfft(noise, axis=-1) * freqs ** (-alpha / 2), n=size, axis=-1)
    noise = noise[:, :n].T
    return noise / (np.sqrt(np.mean(noise**2)) + 1e-12)


def post_process(audio: np.ndarray, spec: VersionSpec, rng: np.random.Generator,
                 faded_in: bool) -> np.ndarray:
    """Trim, fade, filter, mix down, set level, add noise and pass through the codec.

    (S, 2) in, (S', C) float32 out, with its peak at most 0.98."""
    from scipy import signal

    sr = spec.sample_rate
    n = int(round(spec.duration_s * sr))
    audio = np.pad(audio[:n], ((0, max(0, n - len(audio))), (0, 0)))
    fade = np.ones(n, dtype=np.float32)
    fade[-int(FADE_OUT_S * sr):] = np.linspace(1.0, 0.0, int(FADE_OUT_S * sr))
    if faded_in:
        fade[: int(0.02 * sr)] = np.linspace(0.0, 1.0, int(0.02 * sr))
    audio = audio * fade[:, None]
    if spec.filter != "none":
        cutoff = min(spec.cutoff_hz, 0.45 * sr)
        sos = signal.butter(2, cutoff, btype=spec.filter, fs=sr, output="sos")
        audio = signal.sosfilt(sos, audio, axis=0)
    if spec.channels == 1:
        audio = audio.mean(axis=1, keepdims=True)
    rms = float(np.sqrt(np.mean(audio**2)))
    if rms < 1e-5:
        raise ValueError("silent rendering")
    audio = audio * (10 ** (spec.level_dbfs / 20) / rms)
    if spec.snr_db is not None:
        noise = colored_noise(rng, n, audio.shape[1], spec.noise)
        audio = audio + noise * 10 ** ((spec.level_dbfs - spec.snr_db) / 20)
    audio = limit_peak(audio)
    if spec.codec != "none":
        audio = limit_peak(codec_pass(audio, sr, spec.codec, spec.codec_kbps, spec.codec_rate))
    return audio


def limit_peak(audio: np.ndarray, peak_max: float = 0.98) -> np.ndarray:
    """``audio`` as float32, scaled down if its peak exceeds ``peak_max``."""
    peak = float(np.abs(audio).max())
    return (audio * (peak_max / peak if peak > peak_max else 1.0)).astype(np.float32)


def write_flac(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    """Write (samples, channels) audio as 16-bit FLAC atomically (``atomic_open``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as f:
        sf.write(f, audio, sample_rate, format="FLAC", subtype="PCM_16")


@dataclasses.dataclass(frozen=True)
class Task:
    """One version to render."""

    work: Work
    version: int
    clique_id: str
    version_id: str
    youtube_id: str
    seed: int
    seconds: float
    out_dir: Path
    soundfont_dir: Path
    overwrite: bool
    mix: Mix
    overrides: tuple[tuple[str, object], ...] = ()  # VersionSpec fields forced after drawing


@dataclasses.dataclass
class Plan:
    """A version's choices before rendering: its spec, timed notes, MIDI parameters, the
    generator for the audio chain, and the metadata record it will get."""

    spec: VersionSpec
    events: np.ndarray
    start_s: float
    programs: list[int]
    velocities: list[int]
    pans: list[int]
    rng: np.random.Generator
    record: dict


def plan_version(task: Task) -> Plan:
    """Draw every choice of one version (cheap: no rendering) and its metadata record."""
    work = task.work
    stream = [task.seed, stable_int(work.ref.key) % 2**63, task.version]
    rng = np.random.default_rng(stream)
    spec = draw_spec(work, rng, task.version, task.seconds, task.mix)
    spec = draw_extras(spec, work, np.random.default_rng([*stream, 2]), task.mix)
    spec = dataclasses.replace(spec, **dict(task.overrides))
    events, n_parts, start_s = arrange(work, spec, rng)
    velocities = [int(v) for v in rng.integers(60, 106, n_parts)]
    pans = [int(p) for p in rng.integers(24, 105, n_parts)]
    programs = list(spec.programs) + [spec.chord_program, spec.bass_program][: n_parts - len(spec.programs)]
    record = {
        "version_id": task.version_id,
        "youtube_id": task.youtube_id,
        "track_title": f"{work.title} (version {task.version + 1})",
        "composer": work.composer,
        "source": work.ref.source,
        "audio_path": audio_path(task.youtube_id).as_posix(),
        "start_seconds": round(start_s, 3),
        "tempo_bpm": round(work.bpm * spec.tempo_factor, 2),
        "n_events": int(len(events)),
        **{k: (round(v, 3) if isinstance(v, float) else v)
           for k, v in dataclasses.asdict(spec).items()},
        "programs": programs,
        "generator_version": GENERATOR_VERSION,
    }
    return Plan(spec, events, start_s, programs, velocities, pans, rng, record)


def audio_path(yid: str) -> Path:
    """A version's audio file, relative to the corpus folder."""
    return Path("audio", yid[:2], yid + ".flac")


def render_version(task: Task) -> dict | None:
    """Render one version to FLAC; returns its metadata record, or None if it failed."""
    plan = plan_version(task)
    spec = plan.spec
    path = task.out_dir / audio_path(task.youtube_id)
    if task.overwrite or not path.exists():
        try:
            midi = midi_bytes(fold_keys(plan.events), plan.programs, plan.velocities, plan.pans,
                              spec.duration_s, (spec.vibrato_cents, spec.vibrato_hz))
            audio = fluidsynth_render(midi, task.soundfont_dir / spec.soundfont, spec.sample_rate,
                                      spec.reverb, spec.chorus)
            write_flac(path, post_process(audio, spec, plan.rng, plan.start_s > 0), spec.sample_rate)
        except (subprocess.CalledProcessError, ValueError, RuntimeError) as exc:
            log.warning("version %s of %s failed: %s", task.version, task.work.ref.key, exc)
            return None
    return plan.record
