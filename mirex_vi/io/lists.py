"""Text files of tracks: MIREX lists, labels, and the errors file of skipped tracks.

Every reader takes UTF-8 with or without a BOM, ``\n`` line ends only, no NUL or TAB in a
path, and names each bad line by its number (docs/REFERENCE.md §5).
"""

from __future__ import annotations

import codecs
import os
import string
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..core.atomic import atomic_open, remove_stale_temporaries


class InputError(ValueError):
    """Bad list files or output location; the message names the offending lines."""


class OutputError(Exception):
    """A result that could not be written (disk full, folder refusing files...), found only
    once the work was done; the message says what is kept."""


@dataclass(frozen=True)
class TrackList:
    """A list file's tracks: absolute ``paths`` and the ``lines`` (1-based) they came from."""

    source: Path
    paths: list[Path]
    lines: list[int]


def read_lines(path: Path, what: str = "list file") -> list[tuple[int, str]]:
    """The non-blank lines of a text file, as ``(1-based number, text)``.

    Lines end at ``\n`` only (a ``\r`` before it is dropped): characters such as U+2028 or
    ``\f`` are legal in Linux file names. A UTF-8 BOM is skipped, surrounding ASCII
    whitespace stripped. Pipes (``<(cat list)``, ``/dev/stdin``) are read like files.

    Raises:
        InputError: the file is missing, a folder, unreadable, or a line is not UTF-8 or
            holds a NUL byte (naming the lines).
    """
    if os.path.isdir(path):
        raise InputError(f"{path}: is a folder, not a {what}")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError as err:
        raise InputError(f"{path}: {what} not found") from err
    except OSError as err:
        raise InputError(f"{path}: cannot read {what} ({err.strerror})") from err
    lines, bad = [], []
    for number, raw in enumerate(data.removeprefix(codecs.BOM_UTF8).split(b"\n"), 1):
        try:
            line = raw.removesuffix(b"\r").decode("utf-8").strip(string.whitespace)
        except UnicodeDecodeError:
            bad.append(f"  line {number}: not valid UTF-8: {raw[:80]!r}")
            continue
        if "\0" in line:
            bad.append(f"  line {number}: {line[:80]!r} contains a NUL byte")
        elif line:
            lines.append((number, line))
    if bad:
        raise bad_lines(path, bad)
    return lines


def base_folder(path: Path) -> Path:
    """The folder that relative paths in the file ``path`` are resolved against: its own, or
    the current folder for a pipe (whose folder, ``/dev/fd``, means nothing)."""
    return path.parent if os.path.isfile(path) else Path.cwd()


def read_list(path: Path) -> TrackList:
    """Track paths of a list file, one per line (see :func:`read_lines`).

    A relative path is resolved against the list file's folder; paths are made absolute
    (links are kept as given).

    Raises:
        InputError: the list is missing, unreadable, empty, or a line holds a TAB, a NUL or
            bytes that are not UTF-8.
    """
    base = base_folder(path)
    paths, numbers, bad = [], [], []
    for number, line in read_lines(path):
        if "\t" in line:
            bad.append(f"  line {number}: {line!r} contains a TAB, which the output format forbids")
            continue
        paths.append(Path(os.path.abspath(base / line)))
        numbers.append(number)
    if bad:
        raise bad_lines(path, bad)
    if not paths:
        raise InputError(f"{path}: list file holds no paths")
    return TrackList(path, paths, numbers)


def bad_lines(path: Path, bad: list[str]) -> InputError:
    """The error for the file ``path`` whose ``bad`` lines (each ``  line N: why``) are listed."""
    return InputError(f"{path}: bad line(s):\n" + _first(bad))


def _first(items: list[str], n: int = 20) -> str:
    """The first ``n`` of ``items``, one a line, and how many more there are."""
    more = f"\n  ... and {len(items) - n} more" if len(items) > n else ""
    return "\n".join(items[:n]) + more


def refuse_repeats(tracks: TrackList) -> None:
    """Refuse a list that names a track twice (after resolving: ``a.wav`` and ``./a.wav``
    are one path): in a matrix it would be two tracks, each the other's version. (An index
    build takes a list with repeats, and indexes each path once.)

    Raises:
        InputError: naming each line that repeats an earlier one, and that line.
    """
    first: dict[Path, int] = {}
    bad = []
    for track, number in zip(tracks.paths, tracks.lines):
        if track in first:
            bad.append(f"  line {number}: repeats line {first[track]} ({track})")
        first.setdefault(track, number)
    if bad:
        raise bad_lines(tracks.source, bad)


def query_positions(collection: TrackList, queries: TrackList) -> list[int]:
    """The 0-based collection index of each query, once each list is checked for repeats.

    Raises:
        InputError: naming the lines that repeat an earlier one (:func:`refuse_repeats`),
            or every query line that is not in the collection.
    """
    refuse_repeats(collection)
    refuse_repeats(queries)
    where = {p: i for i, p in enumerate(collection.paths)}
    missing = [f"  line {n}: {q}" for q, n in zip(queries.paths, queries.lines) if q not in where]
    if missing:
        raise InputError(
            f"{queries.source}: {len(missing)} query path(s) not in the collection "
            f"{collection.source}:\n" + _first(missing))
    return [where[q] for q in queries.paths]


def read_labels(path: Path) -> dict[Path, str]:
    """``audio_path<TAB>clique_id`` lines -> {absolute path: clique}; relative paths are
    resolved against the TSV's folder; blank lines and a ``path<TAB>clique`` header skipped.
    Lines are read as by :func:`~mirex_vi.io.lists.read_lines` (BOM, ``\n`` only, no NUL).

    Raises:
        InputError: naming the bad lines, or both lines of a path given two cliques; or no
            clique holds two tracks (no query would have a version to find).
    """
    labels: dict[Path, str] = {}
    line_of: dict[Path, int] = {}
    base = base_folder(path)
    bad = []
    for number, line in read_lines(path, "labels file"):
        fields = [f.strip() for f in line.split("\t")]
        if len(fields) != 2 or not all(fields):
            bad.append(f"  line {number}: expected 'audio_path<TAB>clique_id', got {line!r}")
            continue
        if number == 1 and fields[1].lower() in ("clique", "clique_id", "label"):
            continue
        track = Path(os.path.abspath(base / fields[0]))
        if labels.get(track, fields[1]) != fields[1]:
            bad.append(f"  line {number}: {fields[0]} is in clique {fields[1]!r}, but line "
                       f"{line_of[track]} puts it in {labels[track]!r}")
            continue
        labels[track], line_of[track] = fields[1], number
    if bad:
        raise bad_lines(path, bad)
    if not labels:
        raise InputError(f"{path}: no labelled tracks")
    if len(set(labels.values())) == len(labels):
        raise InputError(f"{path}: no clique holds two tracks, so no query has a version to "
                         "find; nothing to score")
    return labels


def write_errors(path: Path, rows: Iterable[tuple[object, str]],
                 header: str | None = "path") -> None:
    """The errors file of skipped tracks: ``track<TAB>reason`` per row, after a
    ``header<TAB>reason`` line unless ``header`` is None.

    Each reason is folded onto one line; bytes of a track name that are not UTF-8 are
    written back as they were (surrogateescape). The file is replaced atomically, after
    the temporaries of an earlier killed write are swept.

    Raises:
        OSError: the file could not be written (whether that fails the run is the caller's call).
    """
    remove_stale_temporaries(path.parent, of=path.name)
    with atomic_open(path, "w", encoding="utf-8", errors="surrogateescape") as f:
        if header is not None:
            f.write(f"{header}\treason\n")
        f.writelines(f"{track}\t{' '.join(reason.split())}\n" for track, reason in rows)


def read_errors(path: Path) -> dict[str, str]:
    """``{track: reason}`` of an errors file written without a header (:func:`write_errors`);
    empty when there is none."""
    if not path.is_file():
        return {}
    text = path.read_text(encoding="utf-8", errors="surrogateescape")
    return dict(line.split("\t", 1) for line in text.splitlines() if "\t" in line)
