"""Note transcription of real recordings with basic-pitch, and renders of a transcription.

basic-pitch (Spotify, Apache-2.0) ships its ICASSP-2022 model as ``nmp.onnx`` inside its
wheel, but on Python >= 3.11 the wheel requires TensorFlow < 2.15.1 (which would pull numpy
back below 2). So it is installed with ``--no-deps`` for its model file only, and
onnxruntime runs that model on the CPU here. None of basic_pitch's Python is imported: its
``__init__`` configures the root logger, and ``inference`` and ``note_creation`` need
pretty_midi, mir_eval and resampy. This module reimplements the part of
``basic_pitch.inference.predict`` (default settings) that yields note events:

- ``window_audio_file`` / ``run_inference`` / ``unwrap_output``: :func:`model_windows`,
  :func:`unwrap`;
- ``note_creation.get_infered_onsets``: :func:`inferred_onsets`;
- ``note_creation.output_to_notes_polyphonic``: :func:`decode_notes` (onset tracking, then
  the "melodia trick" for notes without an onset);
- ``note_creation.model_frames_to_time``: :func:`frame_times`.

Pitch bends are not estimated (notes are whole semitones) and no frequency limits apply.

:func:`render_transcription` plays a transcription through fluidsynth with the synthetic
generator's knobs (training soundfonts, General MIDI programs, key, tempo, codec).
"""
from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import numpy as np

from . import soundfonts
from .codec import codec_pass
from .midi import fold_keys, midi_bytes
from .render import fluidsynth_render, limit_peak
from .versions import BASS_PROGRAMS, CODEC_KBPS, CODECS, ENSEMBLE_PROGRAMS, MELODIC_PROGRAMS

INSTALL_HINT = ("pip install 'mirex-vi[corpus]' (onnxruntime), then "
                "pip install --no-deps basic-pitch==0.4.0 (its model file only: with its "
                "dependencies it would install TensorFlow)")
MODEL_FILE = "saved_models/icassp_2022/nmp.onnx"  # inside the basic_pitch package
MODEL_SHA256 = "2c3c1d144bfa61ad236e92e169c13535c880469a12a047d4e73451f2c059a0ec"  # 0.4.0's

# basic_pitch.constants and the defaults of basic_pitch.inference.predict
MODEL_SR = 22050  # Hz
FFT_HOP = 256  # samples per model frame
WINDOW = 2 * MODEL_SR - FFT_HOP  # 43844 samples per model input window
WINDOW_FRAMES = 172  # model frames per window (2 s at the 86 fps of ANNOTATIONS_FPS)
OVERLAP_FRAMES = 30  # frames shared by consecutive windows; half dropped at each side
HOP = WINDOW - OVERLAP_FRAMES * FFT_HOP  # 36164 samples between window starts
FPS = MODEL_SR // FFT_HOP  # 86: frames per second used to trim the output
MIDI_OFFSET = 21  # key of the first of the 88 note bins (A0)
ONSET_THRESHOLD = 0.5
FRAME_THRESHOLD = 0.3
MIN_NOTE_FRAMES = 11  # round(127.7 ms * 86.13 fps)
ENERGY_TOL = 11  # frames below FRAME_THRESHOLD that end a note
BATCH = 8  # windows per onnxruntime call
OUTPUTS = ("StatefulPartitionedCall:1", "StatefulPartitionedCall:2")  # note, onset activations

# render_transcription's draws
N_RENDERS = 2
KEY_SHIFTS = (-6, 6)  # semitones, inclusive
TEMPO_RANGE = (0.8, 1.25)  # playback speed factor
BASS_SPLIT = 48  # notes below this key go to a bass program when the parts are split
P_SPLIT, P_CODEC, P_REVERB, P_CHORUS = 0.5, 0.4, 0.6, 0.4
RELEASE_S = 1.0  # rendered after the last note-off


def model_path() -> Path:
    """The installed basic-pitch's ``nmp.onnx``, found without importing basic_pitch."""
    spec = importlib.util.find_spec("basic_pitch")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"basic-pitch is not installed: {INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0], MODEL_FILE)
    if not path.is_file():
        raise ImportError(f"{path} is missing: {INSTALL_HINT}")
    return path


class Transcriber:
    """basic-pitch's model in an onnxruntime session on the CPU."""

    def __init__(self, path: Path, threads: int = 1):
        import onnxruntime as ort

        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != MODEL_SHA256:
            raise ValueError(f"{path} has sha256 {digest}, not basic-pitch 0.4.0's {MODEL_SHA256}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def activations(self, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Note and onset activations of mono ``audio`` (S,) at ``MODEL_SR``: each (T, 88)
        float32 in [0, 1], T = floor(S * FPS / MODEL_SR) frames (times: :func:`frame_times`),
        keys A0..C8."""
        windows = model_windows(audio)
        parts = [self.session.run(OUTPUTS, {self.input: windows[i:i + BATCH]})
                 for i in range(0, len(windows), BATCH)]
        notes, onsets = (np.concatenate([p[k] for p in parts]) for k in range(2))
        return unwrap(notes, len(audio)), unwrap(onsets, len(audio))

    def notes(self, audio: np.ndarray, sr: int) -> np.ndarray:
        """The notes of ``audio`` ((S,) or (S, C), any rate ``sr``).

        Returns (N, 4) float64 rows of onset s, offset s, MIDI key and velocity 1..127,
        sorted by onset; (0, 4) for silence."""
        import librosa

        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim == 2:
            audio = audio.mean(axis=1)
        if sr != MODEL_SR:
            audio = librosa.resample(audio, orig_sr=sr, target_sr=MODEL_SR)
        frames, onsets = self.activations(audio)
        events = decode_notes(frames, onsets)
        if not events:
            return np.zeros((0, 4))
        times = frame_times(len(frames))
        out = np.array([(times[a], times[b], key, np.clip(round(127 * amp), 1, 127))
                        for a, b, key, amp in events], dtype=np.float64)
        return out[np.lexsort((out[:, 2], out[:, 0]))]


def load_transcriber(threads: int = 1) -> Transcriber:
    """basic-pitch's bundled model on ``threads`` CPU threads.

    Raises ImportError, saying how to install them, without onnxruntime or basic-pitch."""
    if importlib.util.find_spec("onnxruntime") is None:
        raise ImportError(f"onnxruntime is not installed: {INSTALL_HINT}")
    return Transcriber(model_path(), threads)


def model_windows(audio: np.ndarray) -> np.ndarray:
    """(S,) audio at ``MODEL_SR`` -> (W, WINDOW, 1) float32 windows every ``HOP`` samples,
    after half an overlap of leading zeros (the last window zero-padded)."""
    padded = np.concatenate([np.zeros(OVERLAP_FRAMES * FFT_HOP // 2, np.float32), audio])
    starts = range(0, len(padded), HOP)
    out = np.zeros((len(starts), WINDOW, 1), np.float32)
    for i, start in enumerate(starts):
        chunk = padded[start:start + WINDOW]
        out[i, : len(chunk), 0] = chunk
    return out


def unwrap(output: np.ndarray, n_samples: int) -> np.ndarray:
    """(W, WINDOW_FRAMES, F) per-window output -> (T, F), half the overlap dropped at each
    side of every window and cut to the ``n_samples`` of the input."""
    half = OVERLAP_FRAMES // 2
    kept = output[:, half:-half, :]
    return kept.reshape(-1, output.shape[2])[: int(np.floor(n_samples * FPS / MODEL_SR))]


def frame_times(n_frames: int) -> np.ndarray:
    """Seconds of ``n_frames`` unwrapped frames: the nominal hop, less basic-pitch's
    per-window correction (kept frames step slightly less than ``FFT_HOP``; its 0.0018 s
    is an empirical alignment)."""
    nominal = np.arange(n_frames) * FFT_HOP / MODEL_SR
    per_window = FFT_HOP / MODEL_SR * (WINDOW_FRAMES - WINDOW / FFT_HOP) + 0.0018
    return nominal - per_window * np.floor(np.arange(n_frames) / WINDOW_FRAMES)


def inferred_onsets(onsets: np.ndarray, frames: np.ndarray, n_diff: int = 2) -> np.ndarray:
    """(T, 88) onsets, raised where a frame activation jumps up over ``n_diff`` frames (the
    jump rescaled to the onsets' maximum)."""
    padded = np.concatenate([np.zeros((n_diff, frames.shape[1])), frames])
    rise = np.min([padded[n_diff:] - padded[n_diff - n: len(padded) - n]
                   for n in range(1, n_diff + 1)], axis=0)
    rise = np.maximum(rise, 0.0)
    rise[:n_diff] = 0.0
    if rise.max() > 0:
        rise *= onsets.max() / rise.max()
    return np.maximum(onsets, rise)


def _walk(column: np.ndarray, start: int, step: int, clear: bool) -> int:
    """Walk ``column`` (T, 3: a key between its two neighbours) from ``start + step`` in
    direction ``step`` (+1, -1) until ``ENERGY_TOL`` frames in a row fall below
    ``FRAME_THRESHOLD`` or the first or last frame is reached; returns the last frame before
    that run of low frames. ``clear``: zero the three keys of every frame walked."""
    n, i, below = len(column), start + step, 0
    while 0 < i < n - 1 and below < ENERGY_TOL:
        below = below + 1 if column[i, 1] < FRAME_THRESHOLD else 0
        if clear:
            column[i] = 0.0
        i += step
    return i - step * (below + 1)


def decode_notes(frames: np.ndarray, onsets: np.ndarray) -> list[tuple[int, int, int, float]]:
    """Note events (start frame, end frame (exclusive), MIDI key, mean note activation) of
    the (T, 88) note and onset activations.

    First every onset peak above ``ONSET_THRESHOLD`` grows a note forward while its key stays
    active, latest onset first; then, while any activation left exceeds ``FRAME_THRESHOLD``,
    the strongest grows a note both ways (the "melodia trick"). Each note uses up the
    activation of its key and the two neighbouring keys; notes of ``MIN_NOTE_FRAMES`` or
    fewer are dropped."""
    from scipy.signal import argrelmax

    onsets = inferred_onsets(onsets, frames)
    peaks = np.zeros_like(onsets)
    at = argrelmax(onsets, axis=0)
    peaks[at] = onsets[at]
    # a zero key on each side, so that every key has two neighbours: key k is column k + 1
    energy = np.pad(frames.astype(np.float64), ((0, 0), (1, 1)))
    events = []

    def add(start: int, end: int, key: int) -> bool:
        long_enough = end - start > MIN_NOTE_FRAMES
        if long_enough:
            events.append((int(start), int(end), int(key) + MIDI_OFFSET,
                           float(frames[start:end, key].mean())))
        return long_enough

    times, keys = np.nonzero(peaks >= ONSET_THRESHOLD)
    for start, key in zip(times[::-1], keys[::-1]):
        if start >= len(frames) - 1:
            continue
        column = energy[:, key: key + 3]
        end = _walk(column, start, +1, clear=False) + 1
        if add(start, end, key):
            column[start:end] = 0.0
    while energy.max() > FRAME_THRESHOLD:
        mid, key = np.unravel_index(np.argmax(energy), energy.shape)
        energy[mid, key] = 0.0
        column = energy[:, key - 1: key + 2]
        # basic-pitch takes the last frames found as the exclusive end and inclusive start
        add(_walk(column, mid, -1, clear=True), _walk(column, mid, +1, clear=True), key - 1)
    return events


def transcription_events(notes: np.ndarray, shift: int, tempo: float, split: bool) -> np.ndarray:
    """(N, 4) notes (onset s, offset s, key, velocity) -> (N, 5) MIDI events (onset s,
    duration s, key, part, velocity) ``shift`` semitones up, played ``tempo`` times faster;
    with ``split``, keys below ``BASS_SPLIT`` form part 1. Keys fold into 24..108."""
    keys = notes[:, 2] + shift
    parts = (split & (notes[:, 2] < BASS_SPLIT)).astype(np.float64)
    events = np.stack([notes[:, 0] / tempo, (notes[:, 1] - notes[:, 0]) / tempo, keys, parts,
                       notes[:, 3]], axis=1)
    return fold_keys(events)


def render_one(notes: np.ndarray, rng: np.random.Generator, sample_rate: int,
               root: Path) -> tuple[str, np.ndarray]:
    """One render of ``notes`` ((N, 4), see :class:`Transcriber`) with choices drawn from
    ``rng``; returns its description and mono float32 audio at ``sample_rate``."""
    shift = int(rng.integers(KEY_SHIFTS[0], KEY_SHIFTS[1] + 1))
    tempo = float(np.exp(rng.uniform(np.log(TEMPO_RANGE[0]), np.log(TEMPO_RANGE[1]))))
    soundfont = soundfonts.pick(soundfonts.TRAINING, float(rng.random()))
    programs = [int(rng.choice(ENSEMBLE_PROGRAMS if rng.random() < 0.35 else MELODIC_PROGRAMS)),
                int(rng.choice(BASS_PROGRAMS))]
    split, reverb, chorus, coded = rng.random(4) < (P_SPLIT, P_REVERB, P_CHORUS, P_CODEC)
    codec, kbps = str(rng.choice(CODECS)), int(rng.choice(CODEC_KBPS))
    level_dbfs = float(rng.uniform(-26.0, -14.0))
    soundfonts.check_not_held_out(((soundfont, 1.0),), root)

    events = transcription_events(notes, shift, tempo, bool(split))
    programs = programs[: 1 + int(split)]
    duration_s = float((events[:, 0] + events[:, 1]).max()) + RELEASE_S
    midi = midi_bytes(events, programs, [100] * len(programs), [64] * len(programs), duration_s)
    audio = fluidsynth_render(midi, root / soundfont, sample_rate, bool(reverb), bool(chorus))
    n = int(round(duration_s * sample_rate))
    audio = np.pad(audio[:n], ((0, max(0, n - len(audio))), (0, 0))).mean(axis=1, keepdims=True)
    rms = float(np.sqrt(np.mean(audio**2)))
    if rms < 1e-5:
        raise ValueError(f"silent rendering with {soundfont}, programs {programs}")
    audio = limit_peak(audio * (10 ** (level_dbfs / 20) / rms))
    description = (f"transcription: {Path(soundfont).stem}, programs "
                   f"{'/'.join(map(str, programs))}, key {shift:+d}, tempo {tempo:.2f}"
                   + ", reverb" * bool(reverb) + ", chorus" * bool(chorus))
    if coded:
        audio = limit_peak(codec_pass(audio, sample_rate, codec, kbps))
        description += f", {codec} {kbps} kbps"
    return description, audio[:, 0]


def render_transcription(notes: np.ndarray, rng: np.random.Generator, sample_rate: int = 22050,
                         soundfont_root: Path = soundfonts.SOUNDFONT_ROOT
                         ) -> list[tuple[str, np.ndarray]]:
    """``N_RENDERS`` renders of a transcription through fluidsynth, each with its own
    training soundfont, General MIDI programs (one, or a melodic one over a bass one), key
    shift (-6..+6), tempo (0.8..1.25x), fluidsynth reverb and chorus, level and, at times,
    an MP3/AAC pass.

    Args:
        notes: (N, 4) onset s, offset s, MIDI key, velocity 1..127 (``Transcriber.notes``).
        rng: the source of every choice (the same state gives the same audio).
    Returns:
        (description, (S,) float32 mono audio at ``sample_rate``) pairs.
    Raises:
        ValueError: no notes, or a silent render.
    """
    if len(notes) == 0:
        raise ValueError("no notes to render")
    return [render_one(notes, rng, sample_rate, soundfont_root) for _ in range(N_RENDERS)]
