"""Transcription with basic-pitch's bundled ONNX model (mirex_vi.corpus.transcribe) and the
renders of a transcription: the notes of a synthetic tone sequence come back within a
semitone, and a transcription renders to plausible audio in the shifted key."""
from __future__ import annotations

import importlib.util
import re

import numpy as np
import pytest

from mirex_vi.config import FeatureConfig
from mirex_vi.corpus import transcribe
from mirex_vi.features.frontend import compute_cqt
from mirex_vi.synth import SR, melody
from render_support import HAVE_SYNTH

HAVE_BASIC_PITCH = all(importlib.util.find_spec(m) for m in ("onnxruntime", "basic_pitch"))
needs_basic_pitch = pytest.mark.skipif(not HAVE_BASIC_PITCH, reason=transcribe.INSTALL_HINT)
needs_synth = pytest.mark.skipif(
    not HAVE_SYNTH, reason="needs fluidsynth, ffmpeg and the training soundfonts (bash tools/setup.sh)")

PLAYED = [60, 62, 64, 65, 67, 72]  # MIDI keys, one every NOTE_S
NOTE_S = 0.4


@pytest.fixture(scope="module")
def transcriber():
    return transcribe.load_transcriber()


def played_notes() -> np.ndarray:
    """(6, 4) onset, offset, key, velocity of the PLAYED sequence."""
    onsets = np.arange(len(PLAYED)) * NOTE_S
    return np.stack([onsets, onsets + NOTE_S, PLAYED, np.full(len(PLAYED), 90)], axis=1)


def matched(found: np.ndarray, wanted: np.ndarray, shift: int = 0) -> list[bool]:
    """For each ``wanted`` note, whether a ``found`` note overlaps it in time with a key
    within a semitone of its key + ``shift``."""
    return [bool(np.any((found[:, 0] < off) & (found[:, 1] > on)
                        & (np.abs(found[:, 2] - key - shift) <= 1)))
            for on, off, key, _ in wanted]


@needs_basic_pitch
def test_notes_of_a_tone_sequence_come_back_within_a_semitone(transcriber):
    notes = transcriber.notes(melody(PLAYED, NOTE_S), SR)
    assert notes.dtype == np.float64 and notes.shape[1] == 4
    assert np.all(np.diff(notes[:, 0]) >= 0)  # sorted by onset
    assert np.array_equal(notes[:, 2], np.round(notes[:, 2]))
    assert np.all((notes[:, 3] >= 1) & (notes[:, 3] <= 127))
    assert np.all(notes[:, 1] > notes[:, 0])
    assert all(matched(notes, played_notes()))  # every played note was heard
    assert all(matched(played_notes(), notes))  # and nothing else


@needs_basic_pitch
def test_other_rates_and_stereo_give_the_same_keys(transcriber):
    import librosa

    mono = melody(PLAYED, NOTE_S)
    stereo = np.stack([mono, mono], axis=1)
    at_44k = librosa.resample(stereo.T, orig_sr=SR, target_sr=44100).T
    notes = transcriber.notes(at_44k, 44100)
    assert all(matched(notes, played_notes()))
    assert all(matched(played_notes(), notes))


@needs_basic_pitch
def test_silence_has_no_notes(transcriber):
    assert transcriber.notes(np.zeros(3 * SR, np.float32), SR).shape == (0, 4)


@needs_basic_pitch
def test_another_model_file_is_refused(tmp_path):
    fake = tmp_path / "nmp.onnx"
    fake.write_bytes(transcribe.model_path().read_bytes()[:-1] + b"\0")
    with pytest.raises(ValueError, match="sha256"):
        transcribe.Transcriber(fake)


def test_missing_packages_say_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("onnxruntime", "basic_pitch") else real(name, *a))
    with pytest.raises(ImportError, match=re.escape("mirex-vi[corpus]")):
        transcribe.load_transcriber()
    with pytest.raises(ImportError, match="--no-deps basic-pitch==0.4.0"):
        transcribe.model_path()


def test_decoding_grows_a_note_from_its_onset():
    """One key active over frames 10..39 with an onset peak at 10: one note, frames [10, 40)."""
    frames, onsets = np.zeros((120, 88)), np.zeros((120, 88))
    frames[10:40, 39] = 0.8
    onsets[10, 39] = 0.9
    frames[60:64, 50] = 0.8  # too short: no note
    assert transcribe.decode_notes(frames, onsets) == [(10, 40, 60, pytest.approx(0.8))]


def test_decoding_grows_a_note_without_an_onset_both_ways():
    """A key that fades in (no onset peak) still makes a note, around its strongest frame."""
    frames, onsets = np.zeros((200, 88)), np.zeros((200, 88))
    frames[50:150, 20] = np.minimum(0.35 + 0.01 * np.arange(100), 0.9)
    events = transcribe.decode_notes(frames, onsets)
    assert len(events) == 1 and events[0][2] == 20 + transcribe.MIDI_OFFSET
    assert events[0][0] == 50 and 145 <= events[0][1] <= 150


def test_transcription_events_shift_stretch_and_split():
    notes = np.array([[1.0, 2.0, 40, 70], [1.5, 1.75, 67, 100]])
    events = transcribe.transcription_events(notes, shift=3, tempo=1.25, split=True)
    assert events.shape == (2, 5)
    np.testing.assert_allclose(events[:, 0], [0.8, 1.2])
    np.testing.assert_allclose(events[:, 1], [0.8, 0.2])
    np.testing.assert_array_equal(events[:, 2:], [[43, 1, 70], [70, 0, 100]])
    assert set(transcribe.transcription_events(notes, 0, 1.0, split=False)[:, 3]) == {0}


def test_each_note_keeps_its_velocity_in_the_midi_file():
    from mirex_vi.corpus.midi import midi_bytes

    events = np.array([[0.0, 0.5, 60, 0, 20], [0.5, 0.5, 64, 0, 127], [1.0, 0.5, 67, 0, 300]])
    data = midi_bytes(events, [0], [80], [64], duration_s=2.0)
    for key, velocity in ((60, 20), (64, 127), (67, 127)):  # clipped to 1..127
        assert bytes([0x90, key, velocity]) in data
    assert bytes([0x90, 60, 80]) not in data  # the part's velocity is overridden


def chroma_shift(audio: np.ndarray, reference: np.ndarray) -> int:
    """The rotation (semitones up) of ``reference``'s mean chroma that best matches
    ``audio``'s."""
    def chroma(x: np.ndarray) -> np.ndarray:  # the project's CQT (C1 up), folded to 12 bins
        return compute_cqt(x, FeatureConfig()).astype(np.float64).mean(axis=0).reshape(-1, 12).sum(axis=0)

    a, r = chroma(audio), chroma(reference)
    return int(np.argmax([np.dot(a, np.roll(r, k)) for k in range(12)]))


@needs_synth
@pytest.mark.parametrize("seed", [0, 1])
def test_renders_are_valid_audio_in_the_drawn_key(seed):
    notes = played_notes()
    renders = transcribe.render_transcription(notes, np.random.default_rng(seed))
    assert len(renders) == transcribe.N_RENDERS
    for description, audio in renders:
        assert audio.dtype == np.float32 and audio.ndim == 1 and np.all(np.isfinite(audio))
        assert np.sqrt(np.mean(audio.astype(np.float64) ** 2)) > 1e-3
        assert np.abs(audio).max() <= 0.98
        tempo = float(re.search(r"tempo ([\d.]+)", description).group(1))
        seconds = notes[-1, 1] / tempo + transcribe.RELEASE_S
        assert len(audio) == pytest.approx(seconds * SR, abs=0.01 * SR)
        key = int(re.search(r"key ([+-]\d+)", description).group(1))
        assert chroma_shift(audio, melody(PLAYED, NOTE_S)) == key % 12, description
    again = transcribe.render_transcription(notes, np.random.default_rng(seed))
    assert [d for d, _ in again] == [d for d, _ in renders]
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(again, renders))


def test_nothing_to_render_is_refused():
    with pytest.raises(ValueError, match="no notes"):
        transcribe.render_transcription(np.zeros((0, 4)), np.random.default_rng(0))


@needs_basic_pitch
@needs_synth
def test_transcribe_and_render_round_trip(transcriber):
    """Render the transcription of a tone sequence, transcribe the render: the played keys,
    moved by the render's key shift, come back within a semitone."""
    notes = transcriber.notes(melody(PLAYED, NOTE_S), SR)
    description, audio = transcribe.render_transcription(notes, np.random.default_rng(4))[0]
    key = int(re.search(r"key ([+-]\d+)", description).group(1))
    heard = transcriber.notes(audio, SR)
    near = lambda k: np.isin((heard[:, 2] - k - key) % 12, (0, 1, 11))  # noqa: E731
    assert np.mean([np.any(near(k)) for k in PLAYED]) >= 5 / 6
