#!/usr/bin/env python
"""Render a synthetic version-identification corpus from music21's public-domain scores.

Every selected score is one clique; its versions are renderings that differ the way covers
do: instrumentation (General MIDI programs, with or without accompaniment and drums), tempo
(0.75x to 1.33x, with a drift), key (-6..+6 semitones), soundfont, reverb, sample rate and
channels, loudness, filtering, added noise, structure (a repeated first half, loops) and
the excerpt's start and length. Scores are parsed with music21, arranged here, written as
Standard MIDI Files and rendered with the ``fluidsynth`` command-line program.

The output follows the Discogs-VI-YT layout (REFERENCE.md section 6)::

    OUT/audio/<yid[:2]>/<yid>.flac
    OUT/<name>-light.json (+ .train .val .test, split by clique)
    OUT/<name>.jsonl

With ``--demo`` the works come from a reserved pool that training corpora never use, and the
MIREX-style lists ``collection.txt``, ``queries.txt`` and ``labels.tsv`` are written too.
Everything is a function of ``--seed`` (and the other options): the same command gives the
same ids, the same metadata and the same audio. Rerunning it with more ``--works`` into the
same folder grows the corpus: the first works, their ids and audio stay as they were, every
existing clique keeps its split, and only the new cliques are cut into train/val/test.

Requires: ``apt-get install fluidsynth fluid-soundfont-gm timgm6mb-soundfont`` and
``pip install music21``.

Example::

    python tools/make_corpus.py /work/corpus --works 360 --versions-per-work 4 --jobs 2
"""
from __future__ import annotations

import argparse
import base64
import dataclasses
import hashlib
import itertools
import json
import logging
import math
import multiprocessing
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import soundfile as sf

log = logging.getLogger("make_corpus")

SOUNDFONT_DIR = Path("/usr/share/sounds/sf2")
SOUNDFONTS = ("FluidR3_GM.sf2", "TimGM6mb.sf2")

# Collection -> share of the selected works (renormalised over the collections present).
# ryansMammoth is reserved for independent evaluation and is never listed here.
COLLECTION_WEIGHTS = {
    "essenFolksong": 24.0, "oneills1850": 12.0, "airdsAirs": 5.0, "miscFolk": 3.0,
    "bach": 18.0, "palestrina": 13.0, "trecento": 5.0, "monteverdi": 4.0, "josquin": 2.0,
    "beethoven": 3.0, "mozart": 3.0, "haydn": 3.0, "schumann_robert": 1.0,
    "schumann_clara": 1.0, "schubert": 0.5, "chopin": 0.5, "corelli": 0.5, "handel": 0.5,
    "joplin": 0.5, "verdi": 0.5, "weber": 0.5, "cpebach": 0.5, "beach": 0.5, "luca": 0.5,
    "lusitano": 0.5, "ciconia": 0.5, "liliuokalani": 0.5, "johnson_j_r": 0.5,
}
EXCLUDED_FILES = re.compile(r"(^|/)(test[^/]*|variant[^/]*)\.abc$")  # Essen test sets, variants
SCORE_EXTENSIONS = (".mxl", ".xml", ".musicxml", ".krn", ".abc")  # preference order per stem
DEFAULT_BPM = {"bach": 80.0, "palestrina": 150.0, "trecento": 120.0, "monteverdi": 110.0,
               "josquin": 130.0}
DEMO_MODULUS = 16  # works whose key hashes to 0 mod this are reserved for --demo
DEMO_OVERRIDES = (("sample_rate", 22050), ("channels", 1), ("snr_db", None))  # small FLACs

MIN_NOTES = 16
MIN_QUARTERS = 8.0
MAX_EXPAND_QUARTERS = 256.0
FINGERPRINT_INTERVALS = 12
TICKS_PER_SECOND = 960  # 480 ticks per quarter at the file's fixed 120 bpm
FADE_OUT_S = 1.0

MELODIC_PROGRAMS = (0, 1, 4, 6, 11, 16, 19, 21, 22, 24, 25, 26, 40, 41, 42, 46, 52, 56, 57,
                    60, 61, 64, 65, 66, 68, 69, 71, 73, 74, 75, 80, 81, 104, 105)
ENSEMBLE_PROGRAMS = (0, 1, 4, 6, 16, 19, 24, 25, 46, 48, 49, 52, 61, 89)  # one for all parts
CHORD_PROGRAMS = (0, 4, 16, 24, 25, 48, 49, 88, 89, 90)
BASS_PROGRAMS = (32, 33, 34, 35, 38, 42, 43, 58)
DRUM_CHANNEL = 9
KICK, SNARE, HIHAT, RIDE = 36, 38, 42, 51
TRIADS = tuple((root, quality) for quality in ("maj", "min") for root in range(12))


# ----------------------------------------------------------------------------- catalogue
@dataclasses.dataclass(frozen=True)
class WorkRef:
    """A score in music21's corpus: a file, and for ABC collections the tune's block index."""

    path: str  # relative to music21's corpus root, e.g. "bach/bwv66.6.mxl"
    number: int | None = None

    @property
    def key(self) -> str:
        return self.path if self.number is None else f"{self.path}#{self.number}"

    @property
    def collection(self) -> str:
        return self.path.split("/", 1)[0]

    @property
    def source(self) -> str:
        """The ``source`` field of its versions' metadata records."""
        return f"music21:{self.key}"


def stable_int(*parts: object) -> int:
    """A 64-bit integer hashed from ``parts`` (stable across runs, unlike ``hash``)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def youtube_id(seed: int, work_key: str, version: int) -> str:
    """An 11-character id over [A-Za-z0-9_-], hashed from the seed, work and version."""
    digest = hashlib.sha256(f"{seed}\x1f{work_key}\x1f{version}".encode()).digest()
    return base64.urlsafe_b64encode(digest).decode()[:11]


def is_demo_work(ref: WorkRef) -> bool:
    """Whether a work belongs to the demo pool (disjoint from every training corpus)."""
    return stable_int("demo-pool", ref.key) % DEMO_MODULUS == 0


def corpus_root() -> Path:
    """Folder of music21's bundled corpus."""
    from music21 import corpus

    return Path(corpus.__file__).resolve().parent


def split_abc(text: str) -> tuple[str, list[str]]:
    """Split ABC text into its file header and its tunes (each starting at ``X:``)."""
    blocks = re.split(r"(?m)^(?=X:)", text)
    return blocks[0], [b for b in blocks[1:] if b.strip()]


def read_text(path: Path) -> str:
    """Read a score file as text (UTF-8, else Latin-1)."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def list_candidates(root: Path, pool: str, collections: Iterable[str] = COLLECTION_WEIGHTS) -> list[WorkRef]:
    """All usable works under ``root``, sorted, from the ``pool`` "train" or "demo".

    One file per stem (``x.mxl`` wins over ``x.krn``); ABC files expand into their tunes.
    ``collections`` (a subset of COLLECTION_WEIGHTS) limits the source folders.
    """
    allowed = set(collections) & set(COLLECTION_WEIGHTS)
    stems: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if (path.suffix not in SCORE_EXTENSIONS or rel.split("/", 1)[0] not in allowed
                or EXCLUDED_FILES.search(rel)):
            continue
        stem = rel[: -len(path.suffix)]
        if stem not in stems or SCORE_EXTENSIONS.index(path.suffix) < SCORE_EXTENSIONS.index(
                stems[stem].suffix):
            stems[stem] = path
    refs: list[WorkRef] = []
    for stem in sorted(stems):
        path = stems[stem]
        rel = path.relative_to(root).as_posix()
        if path.suffix == ".abc":
            refs.extend(WorkRef(rel, i) for i in range(len(split_abc(read_text(path))[1])))
        else:
            refs.append(WorkRef(rel))
    want_demo = pool == "demo"
    return [r for r in refs if is_demo_work(r) == want_demo]


def order_candidates(refs: Sequence[WorkRef], seed: int) -> list[WorkRef]:
    """Weighted random order: each collection's expected share follows COLLECTION_WEIGHTS.

    Weighted sampling without replacement (Efraimidis-Spirakis keys u**(1/w)), with each
    work's weight its collection's weight divided by the collection's size.
    """
    sizes: dict[str, int] = {}
    for ref in refs:
        sizes[ref.collection] = sizes.get(ref.collection, 0) + 1
    keyed = []
    for ref in refs:
        weight = COLLECTION_WEIGHTS[ref.collection] / sizes[ref.collection]
        u = (stable_int("order", seed, ref.key) + 1) / 2.0**64
        keyed.append((math.log(u) / weight, ref.key, ref))
    return [ref for _, _, ref in sorted(keyed, key=lambda item: item[:2], reverse=True)]


# ----------------------------------------------------------------------------- scores
@dataclasses.dataclass(frozen=True)
class Work:
    """Note content of one score.

    ``notes`` is (N, 4) float64: onset and duration in quarter notes, MIDI pitch, part index;
    sorted by onset. Part 0 is the top staff (the melody for most sources).
    """

    ref: WorkRef
    title: str
    composer: str
    notes: np.ndarray
    n_parts: int
    length_q: float
    bar_q: float
    downbeat_q: float  # offset of the first downbeat (> 0 with a pick-up bar)
    bpm: float

    def fingerprint(self) -> tuple[int, ...]:
        """Transposition-invariant opening of the melody: its first pitch intervals."""
        melody = self.notes[self.notes[:, 3] == 0]
        pitches = [int(p) for p in melody[:, 2]]
        merged = [p for i, p in enumerate(pitches) if i == 0 or p != pitches[i - 1]]
        return tuple(np.diff(merged[: FINGERPRINT_INTERVALS + 1]).tolist())


def parse_score(root: Path, ref: WorkRef):
    """Parse a corpus work with music21 (one tune of an ABC collection if ``ref.number``)."""
    from music21 import converter, stream

    path = root / ref.path
    if ref.number is None:
        score = converter.parse(path)
    else:
        header, tunes = split_abc(read_text(path))
        score = converter.parse(header + tunes[ref.number], format="abc")
    if isinstance(score, stream.Opus):
        score = score.scores[0]
    return score


def part_notes(part, index: int) -> list[list[float]]:
    """[onset_q, dur_q, pitch, index] rows of one part, tied notes merged.

    A linear pass over the flat part (music21's ``stripTies`` is far slower on long scores).
    """
    rows: list[list[float]] = []
    open_ties: dict[int, list[float]] = {}  # pitch -> row of a tie still running
    for element in part.flatten().getElementsByClass(["Note", "Chord"]):
        dur = float(element.duration.quarterLength)
        if dur <= 0:  # grace notes
            continue
        onset = float(element.offset)
        for note in getattr(element, "notes", None) or [element]:
            pitch = note.pitch.midi
            tie = (note.tie or element.tie).type if (note.tie or element.tie) else None
            row = open_ties.get(pitch)
            if tie in ("stop", "continue") and row is not None:
                row[1] = onset + dur - row[0]
            else:
                row = [onset, dur, pitch, index]
                rows.append(row)
            if tie in ("start", "continue"):
                open_ties[pitch] = row
            else:
                open_ties.pop(pitch, None)
    return rows


def score_notes(score) -> tuple[np.ndarray, int]:
    """(N, 4) note array (onset_q, dur_q, pitch, part) of a music21 score, and its part count."""
    parts = list(score.parts) or [score]
    rows = [row for index, part in enumerate(parts) for row in part_notes(part, index)]
    notes = np.array(rows, dtype=np.float64).reshape(-1, 4)
    return notes[np.lexsort((notes[:, 3], notes[:, 0]))], len(parts)


def score_meter(score) -> tuple[float, float, float | None]:
    """(bar length, first downbeat, quarter-note bpm or None) in quarter notes."""
    signature = score.recurse().getElementsByClass("TimeSignature").first()
    bar_q = float(signature.barDuration.quarterLength) if signature is not None else 4.0
    part = score.parts[0] if score.parts else score
    measures = list(part.getElementsByClass("Measure"))
    downbeat = float(measures[1].offset) % bar_q if len(measures) > 1 and bar_q > 0 else 0.0
    mark = score.recurse().getElementsByClass("MetronomeMark").first()
    bpm = mark.getQuarterBPM() if mark is not None else None
    return bar_q if bar_q > 0 else 4.0, downbeat, bpm


def load_work(ref: WorkRef, root: Path) -> Work | None:
    """Parse and extract one work; None (logged) if it fails or is too short."""
    warnings.filterwarnings("ignore")
    try:
        score = parse_score(root, ref)
        if score.highestTime <= MAX_EXPAND_QUARTERS:  # long pieces: the excerpt ends first
            try:
                score = score.expandRepeats()
            except Exception:  # music21 raises many kinds on malformed repeat marks
                pass
        notes, n_parts = score_notes(score)
        bar_q, downbeat, bpm = score_meter(score)
        meta = score.metadata
        title = (meta.title if meta is not None and meta.title else "") or Path(ref.path).stem
        composer = (meta.composer if meta is not None and meta.composer else "") or "unknown"
    except Exception as exc:  # a corpus file music21 cannot read: skip it
        log.debug("skip %s: %s", ref.key, exc)
        return None
    if len(notes) < MIN_NOTES or not (notes[:, 3] == 0).any():
        return None
    length_q = float((notes[:, 0] + notes[:, 1]).max())
    if length_q < MIN_QUARTERS:
        return None
    default_bpm = DEFAULT_BPM.get(ref.collection, 100.0)
    bpm = float(np.clip(bpm if bpm and 30 < bpm < 300 else default_bpm, 50.0, 200.0))
    return Work(ref, str(title), str(composer), notes, n_parts, length_q, bar_q, downbeat, bpm)


# ----------------------------------------------------------------------------- versions
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


# ----------------------------------------------------------------------------- arrangement
def select_voices(work: Work, voices: str) -> np.ndarray:
    """Notes of the kept parts, renumbered 0..k-1. Returns (N, 4) like ``Work.notes``."""
    notes = work.notes.copy()
    keep = {"all": list(range(work.n_parts)), "outer": [0, work.n_parts - 1], "melody": [0]}[voices]
    notes = notes[np.isin(notes[:, 3], keep)]
    notes[:, 3] = np.searchsorted(np.array(keep), notes[:, 3])
    return notes


def bar_starts(work: Work) -> np.ndarray:
    """Bar boundaries (quarters) covering [0, length_q): a pick-up bar starts at 0."""
    starts = np.arange(work.downbeat_q, work.length_q, work.bar_q)
    return starts if work.downbeat_q == 0 else np.concatenate([[0.0], starts])


def bar_chords(notes: np.ndarray, starts: np.ndarray, end: float) -> list[tuple[int, str]]:
    """Best-matching major/minor triad of each bar, by duration-weighted pitch classes."""
    templates = np.zeros((len(TRIADS), 12))
    for i, (root, quality) in enumerate(TRIADS):
        third = 4 if quality == "maj" else 3
        templates[i, [root, (root + third) % 12, (root + 7) % 12]] = [1.2, 1.0, 0.8]
    chords: list[tuple[int, str]] = []
    bounds = np.append(starts, end)
    for b0, b1 in zip(bounds[:-1], bounds[1:]):
        overlap = np.minimum(notes[:, 0] + notes[:, 1], b1) - np.maximum(notes[:, 0], b0)
        weights = np.bincount(notes[:, 2].astype(int) % 12, np.clip(overlap, 0, None), 12)
        if weights.sum() == 0:
            chords.append(chords[-1] if chords else (0, "maj"))
            continue
        chords.append(TRIADS[int(np.argmax(templates @ weights))])
    return chords


def accompaniment_notes(work: Work, style: str, first_part: int) -> np.ndarray:
    """Chord (part ``first_part``) and bass (``first_part + 1``) notes in a given style."""
    starts = bar_starts(work)
    chords = bar_chords(work.notes, starts, work.length_q)
    rows = []
    for b0, b1, (root, quality) in zip(starts, np.append(starts[1:], work.length_q), chords):
        length = b1 - b0
        triad = [48 + root, 48 + root + (4 if quality == "maj" else 3), 55 + root]
        bass = 36 + root
        if style == "arpeggio":
            pattern = [triad[0], triad[2], triad[1] + 12, triad[2]]
            rows += [(t, 0.5, pattern[i % 4], first_part)
                     for i, t in enumerate(np.arange(b0, b1 - 1e-9, 0.5))]
            rows.append((b0, length, bass, first_part + 1))
        elif style == "bass":
            rows += [(b0, length / 2, bass, first_part + 1),
                     (b0 + length / 2, length / 2, bass + 7, first_part + 1)]
            rows += [(b0, length, p, first_part) for p in triad]
        else:  # pad
            rows += [(b0, length, p, first_part) for p in triad] + [(b0, length, bass, first_part + 1)]
    return np.array(rows, dtype=np.float64).reshape(-1, 4)


def drum_notes(work: Work, part: int) -> np.ndarray:
    """A plain kick / snare / hi-hat pattern on the bar grid (pitches are GM drum keys)."""
    rows = []
    starts = bar_starts(work)
    for b0 in starts[1:] if work.downbeat_q > 0 else starts:  # no beat in a pick-up bar
        rows += [(b0, 0.25, KICK, part), (b0 + work.bar_q / 2, 0.25, SNARE, part)]
        rows += [(t, 0.25, HIHAT, part) for t in np.arange(b0, b0 + work.bar_q - 1e-9, 0.5)]
    return np.array(rows, dtype=np.float64).reshape(-1, 4)


def repeat_structure(notes: np.ndarray, work: Work, structure: str) -> tuple[np.ndarray, float]:
    """Apply "aab" (first half, snapped to a bar line, played twice). Returns notes, length."""
    if structure != "aab":
        return notes, work.length_q
    starts = bar_starts(work)
    half = float(starts[np.argmin(np.abs(starts - work.length_q / 2))]) or work.length_q
    first = notes[notes[:, 0] < half].copy()
    first[:, 1] = np.minimum(first[:, 1], half - first[:, 0])
    second = notes.copy()
    second[:, 0] += half
    return np.concatenate([first, second]), work.length_q + half


def quarters_to_seconds(q: np.ndarray, bpm: float, drift: float, span_q: float) -> np.ndarray:
    """Time map of a tempo changing linearly from ``bpm`` to ``bpm*(1+drift)`` over ``span_q``."""
    rate = bpm / 60.0  # quarters per second at q = 0
    if abs(drift) < 1e-6:
        return q / rate
    k = drift / span_q
    return np.log1p(k * q) / (k * rate)


def arrange(work: Work, spec: VersionSpec, rng: np.random.Generator) -> tuple[np.ndarray, int, float]:
    """Timed events of one version, cut to its excerpt.

    Returns (events, n_pitched_parts, start_s): events is (M, 4) float64 of onset and
    duration in seconds from the excerpt's start, MIDI key, and part (-1 = drums).
    """
    notes = select_voices(work, spec.voices)
    n_parts = len(spec.programs)
    if spec.accompaniment != "none":
        notes = np.concatenate([notes, accompaniment_notes(work, spec.accompaniment, n_parts)])
        n_parts += 2
    notes[:, 2] += spec.transpose
    if spec.drums:
        notes = np.concatenate([notes, drum_notes(work, -1)])
    notes, period_q = repeat_structure(notes, work, spec.structure)
    bpm = work.bpm * spec.tempo_factor
    start_s = spec.start_fraction * spec.duration_s
    needed_q = (start_s + spec.duration_s) * bpm / 60.0 * (1.0 + abs(spec.tempo_drift)) + period_q
    loops = max(1, int(math.ceil(needed_q / period_q)))
    timeline = np.concatenate([notes + [i * period_q, 0, 0, 0] for i in range(loops)])
    span_q = loops * period_q
    onsets = quarters_to_seconds(timeline[:, 0], bpm, spec.tempo_drift, span_q)
    ends = quarters_to_seconds(timeline[:, 0] + timeline[:, 1], bpm, spec.tempo_drift, span_q)
    total_s = float(quarters_to_seconds(np.array([span_q]), bpm, spec.tempo_drift, span_q)[0])
    start_s = min(start_s, max(0.0, total_s - spec.duration_s))
    onsets = onsets + rng.normal(0.0, spec.jitter_s, len(onsets)) if spec.jitter_s else onsets
    keep = (ends > start_s) & (onsets < start_s + spec.duration_s)
    onsets = np.clip(onsets[keep] - start_s, 0.0, None)
    ends = np.minimum(ends[keep] - start_s, spec.duration_s)
    events = np.column_stack([onsets, np.maximum(ends - onsets, 0.02), timeline[keep, 2:]])
    return events, n_parts, start_s


# ----------------------------------------------------------------------------- MIDI
def _varlen(value: int) -> bytes:
    """MIDI variable-length quantity."""
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    return bytes(reversed(out))


def channel_of(part: int) -> int:
    """MIDI channel of a pitched part (skipping the drum channel); -1 maps to drums."""
    if part < 0:
        return DRUM_CHANNEL
    channel = part % 15
    return channel + (channel >= DRUM_CHANNEL)


def midi_bytes(events: np.ndarray, programs: Sequence[int], velocities: Sequence[int],
               pans: Sequence[int], duration_s: float) -> bytes:
    """A type-0 Standard MIDI File at 120 bpm (960 ticks per second).

    Args:
        events: (M, 4) onset_s, duration_s, key, part (-1 = drums).
        programs, velocities, pans: one per pitched part.
        duration_s: the end-of-track time.
    """
    messages: list[tuple[int, int, bytes]] = []  # (tick, order, data); note-offs sort first
    for part, program in enumerate(programs[:15]):
        channel = channel_of(part)
        messages += [(0, 0, bytes([0xC0 | channel, program])),
                     (0, 0, bytes([0xB0 | channel, 10, pans[part]])),
                     (0, 0, bytes([0xB0 | channel, 7, 100]))]
    for onset, dur, key, part in events:
        part = int(part)
        channel = channel_of(part)
        velocity = 90 if part < 0 else velocities[part % len(velocities)]
        key = int(key)
        on = int(round(onset * TICKS_PER_SECOND))
        off = max(on + 1, int(round((onset + dur) * TICKS_PER_SECOND)))
        messages.append((on, 2, bytes([0x90 | channel, key, velocity])))
        messages.append((off, 1, bytes([0x80 | channel, key, 0])))
    messages.sort(key=lambda m: (m[0], m[1]))
    track = bytearray(b"\x00\xff\x51\x03" + (500000).to_bytes(3, "big"))  # 120 bpm
    tick = 0
    for when, _, data in messages:
        track += _varlen(when - tick) + data
        tick = when
    end = max(tick, int(round(duration_s * TICKS_PER_SECOND)))
    track += _varlen(end - tick) + b"\xff\x2f\x00"
    header = b"MThd" + struct.pack(">IHHH", 6, 0, 1, TICKS_PER_SECOND // 2)
    return header + b"MTrk" + struct.pack(">I", len(track)) + bytes(track)


def fold_keys(events: np.ndarray) -> np.ndarray:
    """Move pitched keys by octaves into the playable 24..108 range (drums untouched)."""
    events = events.copy()
    pitched = events[:, 3] >= 0
    keys = events[pitched, 2]
    keys = np.where(keys < 24, keys + 12 * np.ceil((24 - keys) / 12), keys)
    events[pitched, 2] = np.where(keys > 108, keys - 12 * np.ceil((keys - 108) / 12), keys)
    return events


# ----------------------------------------------------------------------------- audio
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
    """Trim, fade, filter, mix down, set level and add noise. (S, 2) in, (S', C) out."""
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
    peak = float(np.abs(audio).max())
    return (audio * (0.98 / peak if peak > 0.98 else 1.0)).astype(np.float32)


def write_flac(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    """Write 16-bit FLAC atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    sf.write(tmp, audio, sample_rate, format="FLAC", subtype="PCM_16")
    os.replace(tmp, path)


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
    overrides: tuple[tuple[str, object], ...] = ()  # VersionSpec fields forced after drawing


def render_version(task: Task) -> dict | None:
    """Render one version to FLAC; returns its metadata record, or None if it failed."""
    work = task.work
    rng = np.random.default_rng([task.seed, stable_int(work.ref.key) % 2**63, task.version])
    spec = dataclasses.replace(draw_spec(work, rng, task.version, task.seconds), **dict(task.overrides))
    events, n_parts, start_s = arrange(work, spec, rng)
    velocities = [int(v) for v in rng.integers(60, 106, n_parts)]
    pans = [int(p) for p in rng.integers(24, 105, n_parts)]
    programs = list(spec.programs) + [spec.chord_program, spec.bass_program][: n_parts - len(spec.programs)]
    rel = Path("audio", task.youtube_id[:2], task.youtube_id + ".flac")
    path = task.out_dir / rel
    if task.overwrite or not path.exists():
        try:
            midi = midi_bytes(fold_keys(events), programs, velocities, pans, spec.duration_s)
            audio = fluidsynth_render(midi, task.soundfont_dir / spec.soundfont, spec.sample_rate,
                                      spec.reverb, spec.chorus)
            write_flac(path, post_process(audio, spec, rng, start_s > 0), spec.sample_rate)
        except (subprocess.CalledProcessError, ValueError, RuntimeError) as exc:
            log.warning("version %s of %s failed: %s", task.version, work.ref.key, exc)
            return None
    return {
        "version_id": task.version_id,
        "youtube_id": task.youtube_id,
        "track_title": f"{work.title} (version {task.version + 1})",
        "composer": work.composer,
        "source": work.ref.source,
        "audio_path": rel.as_posix(),
        "start_seconds": round(start_s, 3),
        "tempo_bpm": round(work.bpm * spec.tempo_factor, 2),
        "n_events": int(len(events)),
        **{k: (round(v, 3) if isinstance(v, float) else v)
           for k, v in dataclasses.asdict(spec).items()},
        "programs": programs,
    }


# ----------------------------------------------------------------------------- driver
def _load(args: tuple[WorkRef, Path]) -> Work | None:
    return load_work(*args)


def pick_works(candidates: Iterable[WorkRef], n_works: int, root: Path, mapper,
               quiet: bool = False) -> list[Work]:
    """The first ``n_works`` candidates that load and whose melody opening is new.

    Candidates are parsed in batches through ``mapper`` (an order-keeping, possibly
    parallel ``map``), so the result does not depend on the number of processes.
    """
    from tqdm import tqdm

    chosen: list[Work] = []
    seen: set[tuple[int, ...]] = set()
    it: Iterator[WorkRef] = iter(candidates)
    while len(chosen) < n_works:
        batch = [(ref, root) for ref in itertools.islice(it, max(8, int((n_works - len(chosen)) * 1.3)))]
        if not batch:
            log.warning("only %d works available", len(chosen))
            break
        for work in tqdm(mapper(_load, batch), total=len(batch), desc="parse", unit="score",
                         disable=quiet, file=sys.stderr):
            if work is None or work.fingerprint() in seen or len(chosen) >= n_works:
                continue
            seen.add(work.fingerprint())
            chosen.append(work)
    return chosen


def split_cliques(clique_ids: Sequence[str], fractions: Sequence[float], seed: int,
                  kept: dict[str, str] | None = None) -> dict[str, list[str]]:
    """Shuffle cliques with the seed and cut them into train/val/test by ``fractions``.

    ``kept`` (clique -> split, from an earlier run into the same folder) pins those cliques
    to their split; only the others are shuffled and cut, so growing a corpus never moves a
    held-out clique into training. With three or more new cliques, val and test get at least
    one of them each.
    """
    present = set(clique_ids)
    kept = {c: s for c, s in (kept or {}).items() if c in present}
    ids = [c for c in clique_ids if c not in kept]
    np.random.default_rng([seed, 1]).shuffle(ids)
    n = len(ids)
    n_val, n_test = (round(n * f) for f in fractions[1:3])
    if n >= 3:
        n_val, n_test = max(1, n_val), max(1, n_test)
    n_train = max(0, n - n_val - n_test)
    cuts = {"train": ids[:n_train], "val": ids[n_train:n_train + n_val],
            "test": ids[n_train + n_val:]}
    for clique, split in kept.items():
        cuts[split].append(clique)
    return {name: sorted(part) for name, part in cuts.items()}


def existing_splits(out_dir: Path, name: str, sources: dict[str, str]) -> dict[str, str]:
    """Clique -> split of an earlier corpus in ``out_dir`` (empty if there is none).

    ``sources`` maps the clique ids about to be made to their ``music21:`` sources. Raises
    ValueError if an earlier clique id now names another work: the folder was made with other
    options, and keeping its splits would mix works across them.
    """
    previous_path = out_dir / f"{name}-light.json"
    if not previous_path.exists():
        return {}
    previous = json.loads(previous_path.read_text(encoding="utf-8"))
    for clique in sorted(previous.keys() & sources.keys()):
        if previous[clique][0]["source"] != sources[clique]:
            raise ValueError(f"{previous_path}: clique {clique} is {previous[clique][0]['source']} "
                             f"there but {sources[clique]} now; the folder was made with other "
                             "options (seed, collections): use a new one")
    kept = {}
    for split in ("train", "val", "test"):
        path = out_dir / f"{name}-light.json.{split}"
        if path.exists():
            kept.update(dict.fromkeys(json.loads(path.read_text(encoding="utf-8")), split))
    return kept


def write_json(path: Path, obj: object, lines: bool = False) -> None:
    """Write JSON (or JSON lines from a list) atomically."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        if lines:
            f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in obj)
        else:
            json.dump(obj, f, ensure_ascii=False, separators=(",", ":"))
    os.replace(tmp, path)


def write_metadata(out_dir: Path, name: str, cliques: dict[str, list[dict]],
                   splits: dict[str, list[str]]) -> None:
    """``<name>-light.json`` (+ split files) and ``<name>.jsonl`` in the Discogs-VI-YT format."""
    write_json(out_dir / f"{name}-light.json", cliques)
    for split, ids in splits.items():
        write_json(out_dir / f"{name}-light.json.{split}", {c: cliques[c] for c in ids})
    rows = [{"clique_id": c, "versions": [
        {"version_id": v["version_id"],
         "tracks": [{"track_title": v["track_title"], "artists": [v["composer"]], "source": v["source"]}],
         "youtube_video": [{"url": f"https://www.youtube.com/watch?v={v['youtube_id']}",
                            "source": "synthetic"}]} for v in versions]}
        for c, versions in cliques.items()]
    write_json(out_dir / f"{name}.jsonl", rows, lines=True)


def write_demo_lists(out_dir: Path, cliques: dict[str, list[dict]]) -> None:
    """collection.txt, queries.txt (same tracks) and labels.tsv, paths relative to out_dir."""
    rows = [(v["audio_path"], c) for c, versions in cliques.items() for v in versions]
    for list_name in ("collection.txt", "queries.txt"):
        (out_dir / list_name).write_text("".join(f"{p}\n" for p, _ in rows))
    (out_dir / "labels.tsv").write_text("".join(f"{p}\t{c}\n" for p, c in rows))


def build_corpus(out_dir: Path, n_works: int, versions_per_work: int, seconds: float, seed: int,
                 fractions: Sequence[float] = (0.8, 0.1, 0.1), jobs: int = 1, demo: bool = False,
                 name: str = "Synth-VI-YT", overwrite: bool = False, quiet: bool = False,
                 collections: Iterable[str] = COLLECTION_WEIGHTS,
                 soundfont_dir: Path = SOUNDFONT_DIR) -> dict[str, list[dict]]:
    """Make a corpus in ``out_dir``; returns the clique -> versions mapping that was written.

    Cliques keep at least two rendered versions (others are dropped and logged). ``demo``
    draws from the reserved demo pool, renders 22.05 kHz mono without added noise and
    writes the MIREX-style lists.
    """
    from tqdm import tqdm

    if shutil.which("fluidsynth") is None:
        raise RuntimeError("fluidsynth not found: "
                           "apt-get install fluidsynth fluid-soundfont-gm timgm6mb-soundfont")
    out_dir.mkdir(parents=True, exist_ok=True)
    root = corpus_root()
    candidates = order_candidates(list_candidates(root, "demo" if demo else "train", collections), seed)
    log.info("%d candidate works in the %s pool", len(candidates), "demo" if demo else "train")
    pool = multiprocessing.Pool(jobs) if jobs > 1 else None
    try:
        mapper = pool.imap if pool else map
        works = pick_works(candidates, n_works, root, mapper, quiet)
        clique_ids = [f"C-{i + 1:07d}" for i in range(len(works))]
        kept = existing_splits(out_dir, name, {c: work.ref.source for c, work in zip(clique_ids, works)})
        tasks = [Task(work, k, clique_ids[i], f"V-{i * versions_per_work + k + 1:07d}",
                      youtube_id(seed, work.ref.key, k), seed, seconds, out_dir, soundfont_dir, overwrite,
                      DEMO_OVERRIDES if demo else ())
                 for i, work in enumerate(works) for k in range(versions_per_work)]
        records = list(tqdm(mapper(render_version, tasks), total=len(tasks), desc="render", unit="clip",
                            disable=quiet, file=sys.stderr))
    finally:
        if pool:
            pool.close()
            pool.join()
    cliques: dict[str, list[dict]] = {}
    for task, record in zip(tasks, records):
        if record is not None:
            cliques.setdefault(task.clique_id, []).append(record)
    small = [c for c, versions in cliques.items() if len(versions) < 2]
    if small:
        log.warning("dropping %d cliques with fewer than 2 versions", len(small))
    cliques = {c: v for c, v in cliques.items() if len(v) >= 2}
    write_metadata(out_dir, name, cliques, split_cliques(list(cliques), fractions, seed, kept))
    if demo:
        write_demo_lists(out_dir, cliques)
    return cliques


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--works", type=int, default=360, help="number of works (cliques)")
    parser.add_argument("--versions-per-work", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=60.0, help="mean clip length (±15 %%)")
    parser.add_argument("--seed", type=int, default=27)
    parser.add_argument("--split", default="0.8,0.1,0.1", help="train,val,test clique fractions")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--name", default="Synth-VI-YT", help="metadata file prefix")
    parser.add_argument("--demo", action="store_true",
                        help="use the reserved demo pool and write collection/queries/labels lists")
    parser.add_argument("--collections", default=",".join(COLLECTION_WEIGHTS),
                        help="comma-separated music21 corpus folders to draw from")
    parser.add_argument("--overwrite", action="store_true", help="re-render existing audio files")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    fractions = [float(x) for x in args.split.split(",")]
    if len(fractions) != 3 or abs(sum(fractions) - 1.0) > 1e-6:
        raise SystemExit("--split needs three fractions that sum to 1")
    start = time.perf_counter()
    try:
        cliques = build_corpus(args.out_dir, args.works, args.versions_per_work, args.seconds,
                               args.seed, fractions, args.jobs, args.demo, args.name,
                               args.overwrite, args.quiet, args.collections.split(","))
    except (RuntimeError, ValueError) as err:  # missing fluidsynth, a folder made otherwise
        raise SystemExit(f"make_corpus: {err}") from None
    n_versions = sum(len(v) for v in cliques.values())
    print(f"{len(cliques)} cliques, {n_versions} versions in {args.out_dir} "
          f"({time.perf_counter() - start:.1f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
