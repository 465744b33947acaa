"""Tests of the corpus generator's version-2 features on small inputs: a sung melody with
vibrato, band patterns and swing, changes of form, the codec pass, the soundfont pools, and
the held-out soundfont and collection (kept out of training, drawn by ``--ood`` only).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import shutil

import numpy as np
import pytest

from mirex_vi.corpus import soundfonts
from mirex_vi.corpus.arrangement import (KICK, SNARE, band_drums, band_notes, change_form,
                                         layered_notes, swing)
from mirex_vi.corpus.catalogue import HELD_OUT_COLLECTION, WorkRef, corpus_root, list_candidates
from mirex_vi.corpus.codec import codec_pass
from mirex_vi.corpus.driver import CorpusSpec, build_corpus, check_tools
from mirex_vi.corpus.midi import midi_bytes
from mirex_vi.corpus.render import fluidsynth_render
from mirex_vi.corpus.scores import Work
from mirex_vi.corpus.versions import CLASSIC_MIX, Mix, draw_extras, draw_spec

HAVE_MUSIC21 = importlib.util.find_spec("music21") is not None
needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg (apt-get install ffmpeg)")
needs_fluidsynth = pytest.mark.skipif(
    shutil.which("fluidsynth") is None or bool(soundfonts.missing(soundfonts.CLASSIC)),
    reason="needs fluidsynth and the classic soundfonts (bash tools/setup.sh)")
needs_ood = pytest.mark.skipif(
    not HAVE_MUSIC21 or shutil.which("fluidsynth") is None or bool(soundfonts.missing(soundfonts.HELD_OUT)),
    reason="needs music21, fluidsynth and the held-out soundfont (apt-get install "
           "musescore-general-soundfont musescore-general-soundfont-lossless musescore-general-soundfont-small)")
needs_music21 = pytest.mark.skipif(not HAVE_MUSIC21, reason="music21 not installed (pip install mirex-vi[corpus])")

ALL_ON = Mix(soundfonts.TRAINING, 1.0, 1.0, 1.0, 1.0)


def _work(bars: int = 16, bar_q: float = 4.0) -> Work:
    """A one-part work of quarter notes climbing a C major scale, ``bars`` bars long."""
    n = int(bars * bar_q)
    scale = [60, 62, 64, 65, 67, 69, 71, 72]
    notes = np.array([[q, 1.0, scale[q % 8], 0] for q in range(n)], dtype=np.float64)
    return Work(WorkRef("test/scale.abc", 0), "scale", "nobody", notes, 1, float(n), bar_q, 0.0, 100.0)


def _spec(work: Work, **changes):
    spec = draw_spec(work, np.random.default_rng(0), 0, 10.0, CLASSIC_MIX)
    return dataclasses.replace(spec, voices="all", programs=(0,), accompaniment="none", drums=False,
                               structure="plain", **changes)


def test_probability_zero_leaves_the_spec_and_one_turns_each_feature_on():
    work = _work()
    spec = _spec(work)
    assert draw_extras(spec, work, np.random.default_rng(1), CLASSIC_MIX) == spec
    on = draw_extras(spec, work, np.random.default_rng(1), ALL_ON)
    assert on.programs[0] in (52, 53, 54) and on.vibrato_cents > 0 and on.band != "none"
    assert on.codec in ("mp3", "aac") and on.codec_kbps in (32, 48, 64, 96, 128)
    assert on.form != "plain" and on.voices == "melody" and not on.drums


def test_one_probability_changes_no_other_choice():
    work = _work()
    spec = _spec(work)
    codec_only = draw_extras(spec, work, np.random.default_rng(7), Mix(soundfonts.TRAINING, 0, 0, 1, 0))
    with_band = draw_extras(spec, work, np.random.default_rng(7), Mix(soundfonts.TRAINING, 0, 1, 1, 0))
    assert (codec_only.codec, codec_only.codec_kbps, codec_only.codec_rate) == (
        with_band.codec, with_band.codec_kbps, with_band.codec_rate)


def test_classic_pool_draws_as_generator_version_1():
    for u in np.linspace(0, 1, 101, endpoint=False):
        v1 = ("FluidR3_GM.sf2", "TimGM6mb.sf2")[int(u < 0.4)]
        assert soundfonts.pick(soundfonts.CLASSIC, u) == f"sf2/{v1}"


@pytest.mark.parametrize("form, n_delta, q_delta", [("drop", -16, -16.0), ("repeat", 16, 16.0),
                                                    ("intro", 16, 16.0), ("outro", 16, 16.0)])
def test_form_changes_a_section_of_the_note_list(form, n_delta, q_delta):
    work = _work(bars=16)  # 4 sections of 4 bars, 16 notes each
    notes, length = change_form(work.notes, work.length_q, work, _spec(work, form=form, form_at=0.5))
    assert len(notes) == len(work.notes) + n_delta and length == work.length_q + q_delta
    assert np.all(np.diff(np.sort(notes[:, 0])) > 0)  # no two notes at once: the grid holds
    if form == "drop":  # the third section (quarters 32..47) is gone, the last moves up
        np.testing.assert_array_equal(notes[32:, 2], work.notes[48:, 2])
    if form == "intro":  # the last section opens the piece
        np.testing.assert_array_equal(notes[:16, 2], work.notes[48:, 2])


def test_plain_form_and_short_pieces_keep_their_notes():
    work = _work(bars=4)
    spec = _spec(work)
    assert change_form(work.notes, work.length_q, work, spec)[0] is work.notes
    extras = draw_extras(spec, work, np.random.default_rng(3), ALL_ON)
    assert extras.form == "plain"  # 4 bars are fewer than three sections of any size


@pytest.mark.parametrize("style", ["rock", "pop", "swing"])
def test_band_plays_drums_bass_and_chords_on_every_bar(style):
    work = _work(bars=8)
    accomp = band_notes(work, style, first_part=1)
    drums = band_drums(work, style)
    assert set(accomp[:, 3]) == {1, 2} and set(drums[:, 3]) == {-1}
    assert KICK in drums[:, 2]
    bars_with_bass = np.unique(np.floor(accomp[accomp[:, 3] == 2, 0] / work.bar_q))
    assert len(bars_with_bass) == 8
    if style != "swing":
        assert SNARE in drums[:, 2]
    notes, n_parts = layered_notes(work, _spec(work, band=style))
    assert n_parts == 3 and len(notes) == len(work.notes) + len(accomp) + len(drums)


def test_swing_moves_off_beat_eighths_to_two_thirds():
    notes = np.array([[0.0, 0.5, 60, 0], [0.5, 0.5, 62, 0], [1.0, 1.0, 64, 0], [2.5, 0.25, 65, 0]])
    swung = swing(notes, downbeat_q=0.0)
    np.testing.assert_allclose(swung[:, 0], [0.0, 2 / 3, 1.0, 2 + 2 / 3])
    np.testing.assert_allclose(swung[:, 1], [2 / 3, 1 / 3, 1.0, 1 / 6])


def test_vibrato_writes_pitch_bends_on_the_melody_channel():
    events = np.array([[0.0, 1.0, 69, 0]])
    plain = midi_bytes(events, [53], [90], [64], 1.0)
    sung = midi_bytes(events, [53], [90], [64], 1.0, vibrato=(40.0, 5.0))
    track = slice(22, None)  # after the header and the track's length
    assert b"\xe0" not in plain[track]
    assert sung[track].count(b"\xe0") == 50  # 50 bends a second, channel 1 (status 0xE0)


@needs_fluidsynth
def test_vibrato_modulates_the_rendered_pitch():
    def pitch_spread(vibrato) -> float:
        midi = midi_bytes(np.array([[0.0, 2.0, 69, 0]]), [19], [100], [64], 2.0, vibrato)  # organ
        audio = fluidsynth_render(midi, soundfonts.SOUNDFONT_ROOT / "sf2/FluidR3_GM.sf2", 22050,
                                  False, False).mean(axis=1)
        freqs = np.fft.rfftfreq(16 * 2048, 1 / 22050)
        band = (freqs > 400) & (freqs < 480)
        peaks = [freqs[band][np.argmax(np.abs(np.fft.rfft(audio[s:s + 2048] * np.hanning(2048),
                                                          16 * 2048))[band])]
                 for s in range(6615, 33075 - 2048, 256)]
        return float(np.std(1200 * np.log2(np.array(peaks) / 440)))

    assert pitch_spread((40.0, 5.0)) > 2 * pitch_spread((0.0, 0.0)) + 10  # cents


@needs_ffmpeg
@pytest.mark.parametrize("codec", ["mp3", "aac"])
def test_codec_pass_removes_the_spectrum_above_its_cutoff(codec):
    rate = 44100
    noise = (0.1 * np.random.default_rng(0).standard_normal((2 * rate, 2))).astype(np.float32)
    out = codec_pass(noise, rate, codec, 32, codec_rate=16000)
    assert out.shape == noise.shape and out.dtype == np.float32

    def band_db(audio, lo, hi):
        spectrum = np.abs(np.fft.rfft(audio[:, 0])) ** 2
        freqs = np.fft.rfftfreq(len(audio), 1 / rate)
        return 10 * np.log10(spectrum[(freqs >= lo) & (freqs < hi)].mean())

    assert band_db(noise, 9000, 20000) - band_db(out, 9000, 20000) > 40  # above 16 kHz's Nyquist
    assert abs(band_db(noise, 200, 2000) - band_db(out, 200, 2000)) < 3  # the low band stays
    np.testing.assert_array_equal(out, codec_pass(noise, rate, codec, 32, codec_rate=16000))


def test_training_pools_never_hold_the_held_out_soundfont(tmp_path):
    held_out = {name for name, _ in soundfonts.HELD_OUT}
    for pool in (soundfonts.TRAINING, soundfonts.CLASSIC, Mix().soundfonts):
        assert not {name for name, _ in pool} & held_out
        assert not any("MuseScore" in name for name, _ in pool)
    for name in soundfonts.PACKAGES:  # a fake soundfont tree, with a default-GM alias
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"RIFF")
    (tmp_path / "sf2/default-GM.sf2").symlink_to(tmp_path / "sf2/MuseScore_General_Full.sf2")
    check_tools(Mix(), "train", tmp_path)
    with pytest.raises(ValueError, match="held-out"):
        check_tools(Mix(soundfonts.HELD_OUT), "train", tmp_path)
    with pytest.raises(ValueError, match="held-out"):
        check_tools(Mix((("sf2/default-GM.sf2", 1.0),)), "demo", tmp_path)
    check_tools(Mix(soundfonts.HELD_OUT), "ood", tmp_path)
    os.remove(tmp_path / "sf3/FluidR3Mono_GM.sf3")
    with pytest.raises(RuntimeError, match="apt-get install fluidr3mono-gm-soundfont"):
        check_tools(Mix(), "train", tmp_path)


@needs_music21
def test_held_out_collection_is_never_drawn_for_training():
    root = corpus_root()
    train = list_candidates(root, "train")
    assert train and all(ref.collection != HELD_OUT_COLLECTION for ref in train)
    with pytest.raises(ValueError, match=f"{HELD_OUT_COLLECTION} is held out of training"):
        list_candidates(root, "train", [HELD_OUT_COLLECTION])
    with pytest.raises(ValueError, match="collections ryansMammoth: not among the generator's"):
        list_candidates(root, "train", ["bach", "ryansMammoth"])  # reserved: never listed
    ood = list_candidates(root, "ood")
    assert len(ood) >= 100 and {ref.collection for ref in ood} == {HELD_OUT_COLLECTION}
    demo = {ref.key for ref in list_candidates(root, "demo")}
    assert {ref.key for ref in ood} <= demo  # works that no training corpus of any version drew


@needs_ood
def test_ood_set_renders_held_out_works_with_the_held_out_soundfont(tmp_path):
    cliques = build_corpus(tmp_path, CorpusSpec(n_works=2, versions_per_work=2, seconds=4.0, seed=3,
                                                quiet=True, ood=True,
                                                mix=Mix(soundfonts.HELD_OUT, 0.5, 0.5, 0.5, 0.5)))
    versions = [v for vs in cliques.values() for v in vs]
    assert len(versions) == 4
    assert all(v["source"].startswith(f"music21:{HELD_OUT_COLLECTION}/") for v in versions)
    assert {v["soundfont"] for v in versions} <= {name for name, _ in soundfonts.HELD_OUT}
    assert all((tmp_path / v["audio_path"]).exists() for v in versions)
