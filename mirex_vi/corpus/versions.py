"""The random choices of one version (a rendering of a work), drawn from seeded generators.

``draw_spec`` makes the choices of generator version 1 from the version's main generator;
``draw_extras`` adds those of version 2 (a sung melody, a band, a change of form, a codec)
from a generator of their own, so that a corpus with every version-2 probability at 0 and
the classic soundfonts renders exactly what version 1 did.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from . import soundfonts
from .scores import Work

# Bumped whenever a change alters what a given seed and options render; a folder is
# only ever grown by the version that made it (records without the field are version 1).
GENERATOR_VERSION = 2
PREVIOUS_GENERATORS = {1: "commit 0eedd9a (tag corpus-move-done)"}  # what still renders each
DEMO_OVERRIDES = (("sample_rate", 22050), ("channels", 1), ("snr_db", None))  # small FLACs

MELODIC_PROGRAMS = (0, 1, 4, 6, 11, 16, 19, 21, 22, 24, 25, 26, 40, 41, 42, 46, 52, 56, 57,
                    60, 61, 64, 65, 66, 68, 69, 71, 73, 74, 75, 80, 81, 104, 105)
ENSEMBLE_PROGRAMS = (0, 1, 4, 6, 16, 19, 24, 25, 46, 48, 49, 52, 61, 89)  # one for all parts
CHORD_PROGRAMS = (0, 4, 16, 24, 25, 48, 49, 88, 89, 90)
BASS_PROGRAMS = (32, 33, 34, 35, 38, 42, 43, 58)
VOICE_PROGRAMS = (52, 53, 54)  # choir aahs, voice oohs, synth voice
BAND_STYLES = ("rock", "pop", "swing")
FORMS = ("drop", "repeat", "intro", "outro")
CODECS = ("mp3", "aac")
CODEC_KBPS = (32, 48, 64, 96, 128)
CODEC_LOW_RATE = 16000  # the rate of a low-quality upload (else the codec keeps the version's)
MIN_SECTIONS = 3  # a piece with fewer sections keeps its form


@dataclasses.dataclass(frozen=True)
class Mix:
    """What a corpus draws beyond generator version 1: the soundfont pool, and each version-2
    feature's probability (0 turns it off)."""

    soundfonts: tuple[tuple[str, float], ...] = soundfonts.TRAINING
    p_voice: float = 0.25  # the melody sung by a voice program, with vibrato
    p_band: float = 0.3  # drums, bass and chords in a rock, pop or swing pattern under the melody
    p_codec: float = 0.4  # an MP3 or AAC pass at 32-128 kbps, decoded back
    p_form: float = 0.3  # a dropped or repeated section, an added intro or outro


CLASSIC_MIX = Mix(soundfonts.CLASSIC, 0.0, 0.0, 0.0, 0.0)  # renders as generator version 1


@dataclasses.dataclass(frozen=True)
class VersionSpec:
    """Every random choice of one rendering (stored in the metadata)."""

    transpose: int
    tempo_factor: float
    tempo_drift: float  # relative tempo change from the clip's start to its end
    jitter_s: float  # std of onset timing noise
    voices: str  # "all", "outer" (top and bottom part) or "melody"
    programs: tuple[int, ...]  # one GM program per kept part
    accompaniment: str  # "none", "pad", "arpeggio" or "bass"
    chord_program: int
    bass_program: int
    drums: bool
    structure: str  # "plain" or "aab" (first half played twice)
    start_fraction: float  # start offset, as a fraction of the clip length
    duration_s: float
    soundfont: str
    reverb: bool
    chorus: bool
    sample_rate: int
    channels: int
    level_dbfs: float  # target RMS
    filter: str  # "none", "lowpass" or "highpass"
    cutoff_hz: float
    snr_db: float | None
    noise: str  # "white", "pink" or "brown"
    vibrato_cents: float = 0.0  # pitch-bend vibrato depth of the melody (part 0)
    vibrato_hz: float = 0.0
    band: str = "none"  # "rock", "pop" or "swing" accompaniment (with drums) under the melody
    form: str = "plain"  # or one of FORMS, applied to sections of ``section_bars`` bars
    form_at: float = 0.0  # which section, as a fraction of the piece
    section_bars: int = 4
    codec: str = "none"  # "mp3" or "aac"
    codec_kbps: int = 0
    codec_rate: int = 0  # the codec's sample rate; 0: the version's own


def draw_spec(work: Work, rng: np.random.Generator, version: int, seconds: float,
              mix: Mix) -> VersionSpec:
    """Random rendering choices for one version; version 0 keeps the score's key and tempo.

    Only the soundfont depends on ``mix``: one uniform draw walks its pool."""
    voices = "all"
    if work.n_parts > 1:
        voices = str(rng.choice(["all", "outer", "melody"], p=[0.6, 0.25, 0.15]))
    n_kept = {"all": work.n_parts, "outer": 2, "melody": 1}[voices]
    if rng.random() < 0.35:
        programs = (int(rng.choice(ENSEMBLE_PROGRAMS)),) * n_kept
    else:
        programs = tuple(int(p) for p in rng.choice(MELODIC_PROGRAMS, size=n_kept))
    p_accomp = 0.7 if n_kept == 1 else 0.2
    accompaniment = "none"
    if rng.random() < p_accomp:
        accompaniment = str(rng.choice(["pad", "arpeggio", "bass"]))
    filter_kind = str(rng.choice(["lowpass", "highpass"])) if rng.random() < 0.3 else "none"
    return VersionSpec(
        transpose=0 if version == 0 else int(rng.integers(-6, 7)),
        tempo_factor=1.0 if version == 0 else float(np.exp(rng.uniform(np.log(0.75), np.log(1.33)))),
        tempo_drift=float(rng.uniform(-0.08, 0.08)),
        jitter_s=float(rng.choice([0.0, 0.005, 0.015])),
        voices=voices,
        programs=programs,
        accompaniment=accompaniment,
        chord_program=int(rng.choice(CHORD_PROGRAMS)),
        bass_program=int(rng.choice(BASS_PROGRAMS)),
        drums=bool(rng.random() < 0.3),
        structure="aab" if rng.random() < 0.25 else "plain",
        start_fraction=float(rng.uniform(0.0, 0.3)),
        duration_s=float(seconds * rng.uniform(0.85, 1.15)),
        soundfont=soundfonts.pick(mix.soundfonts, float(rng.random())),
        reverb=bool(rng.random() < 0.6),
        chorus=bool(rng.random() < 0.4),
        sample_rate=44100 if rng.random() < 0.25 else 22050,
        channels=int(rng.choice([1, 2])),
        level_dbfs=float(rng.uniform(-26.0, -14.0)),
        filter=filter_kind,
        cutoff_hz=float(rng.uniform(80.0, 300.0) if filter_kind == "highpass"
                        else rng.uniform(2500.0, 7000.0)),
        snr_db=float(rng.uniform(12.0, 40.0)) if rng.random() < 0.5 else None,
        noise=str(rng.choice(["white", "pink", "brown"])),
    )



def form_sections(work: Work, section_bars: int) -> int:
    """How many sections of ``section_bars`` bars (the first with any pick-up) a piece has."""
    return int(np.ceil((work.length_q - work.downbeat_q) / (section_bars * work.bar_q) - 1e-9))


def draw_extras(spec: VersionSpec, work: Work, rng: np.random.Generator, mix: Mix) -> VersionSpec:
    """``spec`` with the version-2 features that ``mix``'s probabilities turn on.

    Every value is drawn whatever the probabilities, so a probability decides only whether
    its feature is used, and at 0 it leaves ``spec`` (and the audio) as it was.
    """
    on = rng.random(4) < np.array([mix.p_voice, mix.p_band, mix.p_codec, mix.p_form])
    voice, cents, hz = int(rng.choice(VOICE_PROGRAMS)), rng.uniform(15.0, 45.0), rng.uniform(4.5, 6.5)
    band = str(rng.choice(BAND_STYLES))
    codec, kbps, low_rate = str(rng.choice(CODECS)), int(rng.choice(CODEC_KBPS)), rng.random() < 0.4
    form, form_at, section_bars = str(rng.choice(FORMS)), float(rng.random()), int(rng.choice([2, 4, 8]))
    changes: dict = {}
    if on[1]:  # the band accompanies the melody alone
        changes.update(voices="melody", programs=spec.programs[:1], accompaniment="none",
                       drums=False, band=band)
    if on[0]:
        programs = changes.get("programs", spec.programs)
        changes.update(programs=(voice, *programs[1:]), vibrato_cents=float(cents), vibrato_hz=float(hz))
    if on[2]:
        changes.update(codec=codec, codec_kbps=kbps, codec_rate=CODEC_LOW_RATE if low_rate else 0)
    while section_bars > 2 and form_sections(work, section_bars) < MIN_SECTIONS:
        section_bars //= 2
    if on[3] and form_sections(work, section_bars) >= MIN_SECTIONS:
        changes.update(form=form, form_at=form_at, section_bars=section_bars)
    return dataclasses.replace(spec, **changes)
