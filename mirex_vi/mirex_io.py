"""MIREX files: track lists in, the distance matrix out (docs/REFERENCE.md §5).

The matrix is written through a temporary file and renamed into place, so a crash never
leaves a partial matrix; rows are formatted one at a time, so memory stays O(N).
"""

from __future__ import annotations

import codecs
import errno
import os
import string
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .atomic import TMP_SUFFIX, atomic_open


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


def query_positions(collection: TrackList, queries: TrackList) -> list[int]:
    """The 0-based collection index of each query.

    Raises:
        InputError: naming every query line that is not in the collection.
    """
    where = {p: i for i, p in reversed(list(enumerate(collection.paths)))}
    missing = [f"  line {n}: {q}" for q, n in zip(queries.paths, queries.lines) if q not in where]
    if missing:
        raise InputError(
            f"{queries.source}: {len(missing)} query path(s) not in the collection "
            f"{collection.source}:\n" + _first(missing))
    return [where[q] for q in queries.paths]


def check_output_location(output: str | Path, inputs: Iterable[Path] = ()) -> Path:
    """Fail before any work if a result could not be written where asked, or would
    overwrite one of ``inputs``; return the absolute path to write.

    ``output`` must name a regular file or a new name in an existing folder that accepts
    files. A link to a file is written through (the link stays a link).

    Raises:
        InputError: naming the output and the reason.
    """
    text = os.fspath(output)
    if text.endswith("/"):
        raise InputError(f"{text}: output path ends in '/'; give a file name")
    path = Path(os.path.abspath(text))
    if _names_a_descriptor(path):
        raise InputError(f"{text}: output is a file descriptor (standard output, /dev/fd/N); "
                         "the result is written to a temporary file renamed into place, so "
                         "give a file name")
    if os.path.isdir(path):
        raise InputError(f"{path}: output path is a folder")
    if os.path.exists(path) and not os.path.isfile(path):
        raise InputError(f"{path}: output exists and is not a regular file (a device, pipe or "
                         "socket); the result must go to a file")
    if os.path.islink(path):
        path = Path(os.path.realpath(path))
    folder = path.parent
    if not os.path.isdir(folder):
        raise InputError(f"{path}: output folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"{path}: output folder {folder} is not writable")
    check_accepts_files(folder, f"{path}: output folder", path.name)
    source = find_same_file(path, inputs)
    if source is not None:
        raise InputError(f"{path}: output is also an input ({source}); writing it would "
                         "destroy that input")
    return path


def _names_a_descriptor(path: Path) -> bool:
    """Whether ``path`` is, or links through, an open file descriptor of some process
    (``/dev/stdout``, ``/dev/fd/N``, ``/proc/self/fd/N``): replacing what it points to would
    destroy a file the shell opened (``>> log``) or a link of the system."""
    for _ in range(40):  # the kernel's own limit on links followed
        if str(path).startswith(("/dev/fd/", "/dev/stdin", "/dev/stdout", "/dev/stderr", "/proc/")):
            return True
        if not os.path.islink(path):
            return False
        path = Path(os.path.join(path.parent, os.readlink(path)))
    return False


def check_accepts_files(folder: Path, what: str, name: str = "mirex-vi-probe") -> None:
    """Create and remove in ``folder`` the temporary that ``atomic_open`` would make for
    ``folder/name``: the one test that a folder which passes ``os.access`` (NFS with
    root_squash, sysfs) really takes new files, and that the name is not too long for it.

    Raises:
        InputError: ``what``, the folder and the system's reason.
    """
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=TMP_SUFFIX)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        if err.errno == errno.ENAMETOOLONG:
            raise InputError(f"{folder / name}: name too long for its file system (with the "
                             f"temporary written first, .{name}.XXXXXXXX{TMP_SUFFIX})") from err
        raise InputError(f"{what} {folder} does not accept new files ({err.strerror})") from err


def find_same_file(path: Path, candidates: Iterable[Path]) -> Path | None:
    """The first of ``candidates`` that is the file ``path``: the same inode when both
    exist, or, for a candidate that does not exist, the same path once links are resolved.
    One ``stat`` per candidate, so a collection of 10^5 tracks costs a fraction of a second."""
    try:
        st = os.stat(path)
        inode = (st.st_dev, st.st_ino)
    except OSError:
        inode = None
    real = os.path.realpath(path)
    for candidate in candidates:
        try:
            other = os.stat(candidate)
        except OSError:  # missing or not reachable: only its name can match
            if os.path.realpath(candidate) == real:
                return candidate
            continue
        if inode == (other.st_dev, other.st_ino):
            return candidate
    return None


def format_row(values: np.ndarray) -> bytes:
    """TAB-joined distances in ``%.6f``, vectorised: byte-identical to Python's formatting.

    Distances lie in [0, 2], so every field is ``d.dddddd``. A float32 times 1e6 is exact
    in float64 and ``rint`` rounds half to even, as correctly rounded formatting does.
    """
    v = np.asarray(values, dtype=np.float32).astype(np.float64)
    if v.size and not (np.all(np.isfinite(v)) and v.min() >= 0.0 and v.max() < 10.0):
        raise ValueError("distances must be finite and in [0, 10)")
    micro = np.rint(v * 1e6).astype(np.int64)
    out = np.empty((v.size, 9), dtype=np.uint8)
    out[:, 0] = 48 + micro // 1_000_000
    out[:, 1] = ord(".")
    frac = micro % 1_000_000
    for col, scale in enumerate((100_000, 10_000, 1_000, 100, 10, 1), start=2):
        out[:, col] = 48 + (frac // scale) % 10
    out[:, 8] = ord("\t")
    return out.tobytes()[:-1]


def write_distance_matrix(
    output: Path,
    name: str,
    collection: Sequence[Path],
    query_indices: Sequence[int],
    rows: Iterable[np.ndarray],
) -> None:
    """Write the MIREX matrix atomically: the file appears complete or not at all.

    Args:
        query_indices: 0-based collection index of each query (written 1-based).
        rows: one ``(N,)`` distance row per query, in query order.
    """
    header = name.replace("\n", " ").replace("\r", " ").strip() or "mirex_vi"
    with atomic_open(output) as f:
        f.write(f"{header}\n".encode())
        for i, path in enumerate(collection, 1):
            f.write(f"{i}\t{path}\n".encode("utf-8", "surrogateescape"))
        f.write(("Q/R\t" + "\t".join(str(i) for i in range(1, len(collection) + 1)) + "\n").encode())
        count = 0
        for q, row in zip(query_indices, rows, strict=True):
            if row.shape != (len(collection),):
                raise ValueError(f"row of shape {row.shape}, expected ({len(collection)},)")
            f.write(f"{q + 1}\t".encode() + format_row(row) + b"\n")
            count += 1
        if count != len(query_indices):
            raise ValueError(f"{count} rows for {len(query_indices)} queries")


@dataclass(frozen=True)
class DistanceMatrix:
    """A parsed MIREX matrix; ``query_indices`` are 0-based, ``distances`` ``(Q, N)``."""

    name: str
    paths: list[str]
    query_indices: list[int]
    distances: np.ndarray


def iter_distance_matrix(path: Path) -> Iterator[str | list[str] | tuple[int, np.ndarray]]:
    """Strictly parse a MIREX matrix, streaming: yields the name, the path list, then rows.

    Lines end at ``\n`` (or ``\r\n``) only; a UTF-8 BOM is skipped.

    Raises:
        ValueError: any deviation from the format, with the line number.
    """
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="\n") as f:
        lines = (line.removesuffix("\n").removesuffix("\r") for line in f)
        number = 1
        yield next(lines, "")
        paths: list[str] = []
        for number, line in enumerate(lines, 2):
            if line.startswith("Q/R\t"):
                break
            index, sep, track = line.partition("\t")
            if not sep or index != str(len(paths) + 1) or not track:
                raise ValueError(f"{path}:{number}: expected '{len(paths) + 1}<TAB>path'")
            paths.append(track)
        else:
            raise ValueError(f"{path}: no 'Q/R' line")
        n = len(paths)
        if not n or line.split("\t")[1:] != [str(i) for i in range(1, n + 1)]:
            raise ValueError(f"{path}:{number}: 'Q/R' line must list 1..{n}")
        yield paths
        for number, line in enumerate(lines, number + 1):
            fields = line.split("\t")
            if len(fields) != n + 1 or not fields[0].isdigit() or not 1 <= int(fields[0]) <= n:
                raise ValueError(f"{path}:{number}: expected a collection index and {n} distances")
            try:
                row = np.array(fields[1:], dtype=np.float64)
            except ValueError as err:
                raise ValueError(f"{path}:{number}: {err}") from err
            q = int(fields[0]) - 1
            if not np.all(np.isfinite(row)) or row.min() < 0 or row[q] != 0:
                raise ValueError(f"{path}:{number}: distances must be finite, >= 0, and 0 to itself")
            yield q, row


def read_distance_matrix(path: Path) -> DistanceMatrix:
    """Parse a whole MIREX matrix into memory (tests and small collections)."""
    parts = iter_distance_matrix(path)
    name, paths = next(parts), next(parts)
    rows = list(parts)
    if not rows:
        raise ValueError(f"{path}: no query rows")
    return DistanceMatrix(name, paths, [q for q, _ in rows], np.stack([r for _, r in rows]))
