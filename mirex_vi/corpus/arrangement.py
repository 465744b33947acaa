"""Arrangement: the notes of one version (kept voices, accompaniment or band, drums, structure
and form) timed in seconds on its tempo curve and cut to its excerpt.

Note arrays are (N, 4) float64 rows of onset and duration in quarter notes, MIDI key and
part (0.. pitched parts, -1 drums), like ``Work.notes``, until ``arrange`` times them.
"""
from __future__ import annotations

import math

import numpy as np

from .scores import Work
from .versions import VersionSpec

KICK, SNARE, HIHAT, PEDAL_HAT, OPEN_HAT, RIDE = 36, 38, 42, 44, 46, 51
TRIADS = tuple((root, quality) for quality in ("maj", "min") for root in range(12))

# Band patterns over a 4/4 bar, in quarter notes from its downbeat; a bar of another length
# plays the events that start inside it. Bass steps are semitones above the bar's root, or
# "third" (of its triad) and "approach" (a semitone below the next bar's root).
BAND_DRUMS = {
    "rock": [(0.0, KICK), (2.0, KICK), (2.5, KICK), (1.0, SNARE), (3.0, SNARE)]
            + [(t / 2, HIHAT) for t in range(8)],
    "pop": [(0.0, KICK), (1.5, KICK), (2.0, KICK), (1.0, SNARE), (3.0, SNARE), (3.5, OPEN_HAT)]
           + [(t / 2, HIHAT) for t in range(7)],
    "swing": [(0.0, KICK), (1.0, PEDAL_HAT), (3.0, PEDAL_HAT), (1.5, RIDE), (3.5, RIDE)]
             + [(float(t), RIDE) for t in range(4)],
}
BAND_BASS = {
    "rock": [(t / 2, 0.5, 0) for t in range(8)],
    "pop": [(0.0, 1.5, 0), (1.5, 0.5, 0), (2.0, 1.0, 7), (3.0, 1.0, 0)],
    "swing": [(0.0, 1.0, 0), (1.0, 1.0, "third"), (2.0, 1.0, 7), (3.0, 1.0, "approach")],
}
BAND_CHORDS = {  # (offset, duration) of each chord stroke
    "rock": [(float(t), 0.9) for t in range(4)],
    "pop": [(0.0, 1.5), (1.5, 2.5)],
    "swing": [(1.0, 0.5), (3.0, 0.5)],
}
SWING_RATIO = 2 / 3  # where a swung off-beat eighth falls within its beat


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


def band_bars(work: Work) -> list[tuple[float, float, int, str, int]]:
    """(start, length, root, quality, next root) of each full bar (not a pick-up bar)."""
    starts = bar_starts(work)
    chords = bar_chords(work.notes, starts, work.length_q)
    ends = np.append(starts[1:], work.length_q)
    roots = [root for root, _ in chords] + [chords[0][0]]
    first = 1 if work.downbeat_q > 0 else 0
    return [(float(starts[i]), float(ends[i] - starts[i]), chords[i][0], chords[i][1], roots[i + 1])
            for i in range(first, len(starts))]


def band_notes(work: Work, style: str, first_part: int) -> np.ndarray:
    """Chords (part ``first_part``) and bass (``first_part + 1``) in a band pattern."""
    rows = []
    for b0, length, root, quality, next_root in band_bars(work):
        third = 4 if quality == "maj" else 3
        triad = [48 + root, 48 + root + third, 55 + root]
        for offset, dur in BAND_CHORDS[style]:
            if offset < length:
                rows += [(b0 + offset, min(dur, length - offset), p, first_part) for p in triad]
        for offset, dur, step in BAND_BASS[style]:
            if offset < length:
                key = {"third": 36 + root + third, "approach": 35 + next_root}.get(step, None)
                rows.append((b0 + offset, min(dur, length - offset),
                             key if key is not None else 36 + root + step, first_part + 1))
    return np.array(rows, dtype=np.float64).reshape(-1, 4)


def band_drums(work: Work, style: str) -> np.ndarray:
    """The band's drum kit (part -1) on every full bar."""
    rows = [(b0 + offset, 0.25, key, -1) for b0, length, *_ in band_bars(work)
            for offset, key in BAND_DRUMS[style] if offset < length]
    return np.array(rows, dtype=np.float64).reshape(-1, 4)


def swing(notes: np.ndarray, downbeat_q: float, ratio: float = SWING_RATIO) -> np.ndarray:
    """Swung eighths: a point half-way through a beat moves to ``ratio`` of it, the rest of
    the beat stretches or shrinks linearly (onsets and note ends alike)."""
    def warp(q: np.ndarray) -> np.ndarray:
        beat = np.floor(q - downbeat_q)
        frac = q - downbeat_q - beat
        return downbeat_q + beat + np.where(frac < 0.5, frac * 2 * ratio,
                                            ratio + (frac - 0.5) * 2 * (1 - ratio))

    out = notes.copy()
    out[:, 0] = warp(notes[:, 0])
    out[:, 1] = np.maximum(warp(notes[:, 0] + notes[:, 1]) - out[:, 0], 1e-3)
    return out


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


def section_bounds(work: Work, section_bars: int, period_q: float) -> np.ndarray:
    """Edges of the sections of ``section_bars`` bars over [0, period_q): the first section
    holds any pick-up, the last whatever remains."""
    starts = np.arange(work.downbeat_q, period_q - 1e-9, section_bars * work.bar_q)[1:]
    return np.concatenate([[0.0], starts, [period_q]])


def _section(notes: np.ndarray, start: float, end: float) -> np.ndarray:
    """The notes that start in [start, end), cut at ``end``."""
    part = notes[(notes[:, 0] >= start) & (notes[:, 0] < end)].copy()
    part[:, 1] = np.minimum(part[:, 1], end - part[:, 0])
    return part


def change_form(notes: np.ndarray, period_q: float, work: Work, spec: VersionSpec
                ) -> tuple[np.ndarray, float]:
    """Apply ``spec.form`` to one pass of the piece; returns the notes and the new length.

    "drop" leaves out one section (never the first), "repeat" plays one twice, "intro" plays
    the last section before the piece and "outro" after it; ``spec.form_at`` picks the
    section for "drop" and "repeat".
    """
    if spec.form == "plain":
        return notes, period_q
    bounds = section_bounds(work, spec.section_bars, period_q)
    n = len(bounds) - 1
    i = min(n - 1, 1 + int(spec.form_at * (n - 1)))
    start, end = bounds[i], bounds[i + 1]
    if spec.form in ("intro", "outro"):
        start, end = bounds[-2], bounds[-1]
    length = end - start
    section = _section(notes, start, end)
    before = notes[notes[:, 0] < start].copy()
    before[:, 1] = np.minimum(before[:, 1], start - before[:, 0])
    after = notes[notes[:, 0] >= end]
    shift = [[length, 0, 0, 0]]
    if spec.form == "drop":
        return np.concatenate([before, after - shift]), period_q - length
    if spec.form == "repeat":
        return np.concatenate([before, section, section + shift, after + shift]), period_q + length
    if spec.form == "intro":
        return np.concatenate([section - [[start, 0, 0, 0]], notes + shift]), period_q + length
    return np.concatenate([notes, section + [[period_q - start, 0, 0, 0]]]), period_q + length


def quarters_to_seconds(q: np.ndarray, bpm: float, drift: float, span_q: float) -> np.ndarray:
    """Time map of a tempo changing linearly from ``bpm`` to ``bpm*(1+drift)`` over ``span_q``."""
    rate = bpm / 60.0  # quarters per second at q = 0
    if abs(drift) < 1e-6:
        return q / rate
    k = drift / span_q
    return np.log1p(k * q) / (k * rate)


def layered_notes(work: Work, spec: VersionSpec) -> tuple[np.ndarray, int]:
    """The kept voices, transposed, with the accompaniment or band and the drums of ``spec``.

    Returns the (N, 4) notes of one pass of the score and the number of pitched parts."""
    notes = select_voices(work, spec.voices)
    n_parts = len(spec.programs)
    if spec.accompaniment != "none":
        notes = np.concatenate([notes, accompaniment_notes(work, spec.accompaniment, n_parts)])
        n_parts += 2
    elif spec.band != "none":
        notes = np.concatenate([notes, band_notes(work, spec.band, n_parts)])
        n_parts += 2
    notes[:, 2] += spec.transpose
    if spec.drums:
        notes = np.concatenate([notes, drum_notes(work, -1)])
    if spec.band != "none":
        notes = np.concatenate([notes, band_drums(work, spec.band)])
    if spec.band == "swing":
        notes = swing(notes, work.downbeat_q)
    return notes, n_parts


def arrange(work: Work, spec: VersionSpec, rng: np.random.Generator) -> tuple[np.ndarray, int, float]:
    """Timed events of one version, cut to its excerpt.

    Returns (events, n_pitched_parts, start_s): events is (M, 4) float64 of onset and
    duration in seconds from the excerpt's start, MIDI key, and part (-1 = drums).
    """
    notes, n_parts = layered_notes(work, spec)
    notes, period_q = repeat_structure(notes, work, spec.structure)
    notes, period_q = change_form(notes, period_q, work, spec)
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

