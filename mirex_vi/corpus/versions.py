"""The random choices of one version (a rendering of a work), drawn from a seeded generator."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from .scores import Work

# Bumped whenever a change alters what a given seed and options render; a folder is
# only ever grown by the version that made it (records without the field are version 1).
GENERATOR_VERSION = 1

SOUNDFONT_DIR = Path("/usr/share/sounds/sf2")
SOUNDFONTS = ("FluidR3_GM.sf2", "TimGM6mb.sf2")
DEMO_OVERRIDES = (("sample_rate", 22050), ("channels", 1), ("snr_db", None))  # small FLACs

MELODIC_PROGRAMS = (0, 1, 4, 6, 11, 16, 19, 21, 22, 24, 25, 26, 40, 41, 42, 46, 52, 56, 57,
                    60, 61, 64, 65, 66, 68, 69, 71, 73, 74, 75, 80, 81, 104, 105)
ENSEMBLE_PROGRAMS = (0, 1, 4, 6, 16, 19, 24, 25, 46, 48, 49, 52, 61, 89)  # one for all parts
CHORD_PROGRAMS = (0, 4, 16, 24, 25, 48, 49, 88, 89, 90)
BASS_PROGRAMS = (32, 33, 34, 35, 38, 42, 43, 58)


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


def draw_spec(work: Work, rng: np.random.Generator, version: int, seconds: float) -> VersionSpec:
    """Random rendering choices for one version; version 0 keeps the score's key and tempo."""
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
        soundfont=SOUNDFONTS[int(rng.random() < 0.4)],
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

