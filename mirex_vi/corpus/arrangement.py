"""Arrangement: the notes of one version (kept voices, accompaniment, drums, structure) timed
in seconds on its tempo curve and cut to its excerpt."""
from __future__ import annotations

import math

import numpy as np

from .scores import Work
from .versions import VersionSpec

KICK, SNARE, HIHAT, RIDE = 36, 38, 42, 51
TRIADS = tuple((root, quality) for quality in ("maj", "min") for root in range(12))


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

