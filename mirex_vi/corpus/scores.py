"""Note content of a score: music21 parsing into a plain note array, meter and tempo."""
from __future__ import annotations

import dataclasses
import logging
import warnings
from pathlib import Path

import numpy as np

from .catalogue import WorkRef, read_text, split_abc

log = logging.getLogger(__name__)

DEFAULT_BPM = {"bach": 80.0, "palestrina": 150.0, "trecento": 120.0, "monteverdi": 110.0,
               "josquin": 130.0}

MIN_NOTES = 16
MIN_QUARTERS = 8.0
MAX_EXPAND_QUARTERS = 256.0
FINGERPRINT_INTERVALS = 12


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

