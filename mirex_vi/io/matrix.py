"""The MIREX distance matrix (docs/REFERENCE.md §5): written atomically, read back row by row.

The matrix is written through a temporary file and renamed into place, so a crash never
leaves a partial matrix; rows are formatted one at a time, so memory stays O(N).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.atomic import atomic_open
from .lists import base_folder


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

    Lines end at ``\n`` (or ``\r\n``) only; a UTF-8 BOM is skipped. A track may be listed
    once (relative paths resolved against the matrix's folder) and a query given one row:
    a repeat would be scored as a track of its own.

    Raises:
        ValueError: any deviation from the format, with the line number; a repeated track
            or query row, naming both lines.
    """
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="\n") as f:
        lines = (line.removesuffix("\n").removesuffix("\r") for line in f)
        number = 1
        yield next(lines, "")
        paths: list[str] = []
        track_line: dict[str, int] = {}  # resolved path -> its line
        base = base_folder(path)
        for number, line in enumerate(lines, 2):
            if line.startswith("Q/R\t"):
                break
            index, sep, track = line.partition("\t")
            if not sep or index != str(len(paths) + 1) or not track:
                raise ValueError(f"{path}:{number}: expected '{len(paths) + 1}<TAB>path'")
            resolved = os.path.abspath(base / track)
            if resolved in track_line:
                raise ValueError(f"{path}:{number}: repeats the track of line "
                                 f"{track_line[resolved]} ({resolved})")
            track_line[resolved] = number
            paths.append(track)
        else:
            raise ValueError(f"{path}: no 'Q/R' line")
        n = len(paths)
        if not n or line.split("\t")[1:] != [str(i) for i in range(1, n + 1)]:
            raise ValueError(f"{path}:{number}: 'Q/R' line must list 1..{n}")
        yield paths
        row_line: dict[int, int] = {}  # query -> the line of its row
        for number, line in enumerate(lines, number + 1):
            fields = line.split("\t")
            if len(fields) != n + 1 or not fields[0].isdigit() or not 1 <= int(fields[0]) <= n:
                raise ValueError(f"{path}:{number}: expected a collection index and {n} distances")
            if int(fields[0]) in row_line:
                raise ValueError(f"{path}:{number}: repeats the row of query {fields[0]} (line "
                                 f"{row_line[int(fields[0])]})")
            row_line[int(fields[0])] = number
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
