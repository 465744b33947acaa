"""The pooled feature store, and the feature sources that training and validation read.

A store (docs/REFERENCE.md §8, docs/pooled-store.md) is a folder holding two files:

- ``pooled.<enc>.npy``: ``(rows, n_bins)``, every version's mean-pooled CQT stacked;
  ``enc`` is ``f16`` (float16) or ``u8`` (uint8 log magnitude, 80 dB below the version's
  own peak: ``q = clip(rint(255 * (1 + 20 log10(m / peak) / 80)), 0, 255)``);
- ``pooled.index.tsv``: header ``youtube_id  row  n_rows  peak`` (tab-separated); version
  ``youtube_id`` is rows ``row .. row + n_rows - 1``, ``peak`` its pooled maximum (6
  significant digits).

Other files in the folder (the shared corpus keeps its metadata there) are ignored. The
pooling factor is not recorded: a store holds what ``pool_cqt`` made with the writer's
``downsample_factor`` (20 for every store this project writes).

A *feature source* is anything with ``has(youtube_id)`` and ``pooled(youtube_id)``: a
``PooledStore``, or ``AuthorsLayout`` (one float16 CQT memmap per version, pooled on read).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from ..core.atomic import atomic_open
from ..core.lock import FolderBusy, writing
from ..io.metadata import Cliques, count_versions
from .frontend import pool_cqt
from .layout import has_feature, load_feature

log = logging.getLogger(__name__)


def filter_available(cliques: Cliques, features: str | Path | FeatureSource) -> Cliques:
    """Drop versions without stored features, then cliques left with fewer than 2 versions.

    ``features`` is a feature source or a folder (``pooled.open_features``).
    """
    source = open_features(features, downsample_factor=1)  # the factor plays no part in has()
    kept: Cliques = {}
    n_missing = 0
    for cid, versions in cliques.items():
        present = [v for v in versions if source.has(v.youtube_id)]
        n_missing += len(versions) - len(present)
        if len(present) >= 2:
            kept[cid] = present
    n_dropped_versions = count_versions(cliques) - count_versions(kept)
    log.info(
        "features: %d versions missing; dropped %d cliques (%d versions) with < 2 versions left; "
        "kept %d cliques, %d versions",
        n_missing, len(cliques) - len(kept), n_dropped_versions - n_missing,
        len(kept), count_versions(kept),
    )
    return kept


ENCODINGS = {"f16": np.dtype(np.float16), "u8": np.dtype(np.uint8)}
INDEX_NAME = "pooled.index.tsv"
INDEX_HEADER = ("youtube_id", "row", "n_rows", "peak")
U8_RANGE_DB = 80.0
# u8 code q -> magnitude relative to the peak; code 0 stands for "80 dB or more below".
_U8_DECODE = np.where(np.arange(256) > 0,
                      10.0 ** ((U8_RANGE_DB / 20) * (np.arange(256) / 255 - 1)), 0.0).astype(np.float32)


def rows_name(encoding: str) -> str:
    return f"pooled.{encoding}.npy"


def round_peak(peak: float) -> float:
    """The peak as the index stores it (6 significant digits)."""
    return float(f"{peak:.6g}")


def encode_u8(pooled: np.ndarray, peak: float) -> np.ndarray:
    """``(T', F)`` magnitude -> ``(T', F)`` uint8 log magnitude relative to ``peak``.

    The step is 80/255 = 0.31 dB, so a decoded value is within ±1.8 % of the original
    for values less than 79.8 dB below ``peak``; values further below decode to 0.
    """
    if peak <= 0:
        return np.zeros(pooled.shape, dtype=np.uint8)
    with np.errstate(divide="ignore"):
        db = 20.0 * np.log10(np.asarray(pooled, dtype=np.float64) / peak)
    return np.clip(np.rint(255.0 * (1.0 + db / U8_RANGE_DB)), 0, 255).astype(np.uint8)


def decode_u8(codes: np.ndarray, peak: float = 1.0) -> np.ndarray:
    """``(T', F)`` uint8 codes -> ``(T', F)`` float32 magnitude (``peak`` times the relative one)."""
    return _U8_DECODE[codes] * np.float32(peak)


@dataclass(frozen=True)
class _Entry:
    row: int
    n_rows: int
    peak: float


class PooledStore:
    """A read-only pooled store; rows are memory-mapped (the index is held in memory).

    Pickles without its memmap (a DataLoader worker under ``spawn`` reopens the file).
    """

    def __init__(self, rows_path: Path, entries: dict[str, _Entry]):
        self.rows_path = rows_path
        self.encoding = rows_path.name.split(".")[1]
        self.entries = entries
        self._rows = np.load(rows_path, mmap_mode="r")

    @classmethod
    def open(cls, path: str | Path) -> PooledStore:
        """Open the store in folder ``path`` (or the folder of the ``pooled.<enc>.npy`` given).

        Raises:
            ValueError: no store there, or a malformed one (naming the file and line).
        """
        folder = Path(path)
        if folder.is_file():
            folder = folder.parent
        found = [folder / rows_name(e) for e in ENCODINGS if (folder / rows_name(e)).is_file()]
        if len(found) != 1 or not (folder / INDEX_NAME).is_file():
            raise ValueError(f"{folder}: not a pooled store (expected {INDEX_NAME} and exactly "
                             f"one of {', '.join(rows_name(e) for e in ENCODINGS)})")
        try:
            rows = np.load(found[0], mmap_mode="r")
        except (ValueError, EOFError) as err:  # never numpy's advice to unpickle
            raise ValueError(f"{found[0]}: not a readable array (a damaged .npy)") from err
        encoding = found[0].name.split(".")[1]
        if rows.ndim != 2 or rows.dtype != ENCODINGS[encoding]:
            raise ValueError(f"{found[0]}: expected a 2-D {ENCODINGS[encoding]} array, "
                             f"got {rows.ndim}-D {rows.dtype}")
        return cls(found[0], read_index(folder / INDEX_NAME, rows.shape[0]))

    def __getstate__(self) -> dict:
        return {"rows_path": self.rows_path, "entries": self.entries}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["rows_path"], state["entries"])

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def n_rows(self) -> int:
        return int(self._rows.shape[0])

    def has(self, youtube_id: str) -> bool:
        return youtube_id in self.entries

    def pooled(self, youtube_id: str, scaled: bool = True) -> np.ndarray:
        """A version's ``(T', n_bins)`` float32 pooled magnitude.

        float16 rows are returned as stored; uint8 rows are decoded, times the version's
        peak unless ``scaled=False`` (max-normalisation makes the peak irrelevant).
        """
        e = self.entries[youtube_id]
        block = self._rows[e.row : e.row + e.n_rows]
        if self.encoding == "u8":
            return decode_u8(block, e.peak if scaled else 1.0)
        return np.asarray(block, dtype=np.float32)


def read_index(path: Path, n_rows: int) -> dict[str, _Entry]:
    """Parse and check ``pooled.index.tsv`` against an array of ``n_rows`` rows.

    Raises:
        ValueError: a bad header or line, a duplicate id, a row range outside the array
            or a non-finite or negative peak, as ``path:line: what``.
    """
    entries: dict[str, _Entry] = {}
    with open(path, encoding="utf-8") as f:
        header = tuple(f.readline().rstrip("\n").split("\t"))
        if header != INDEX_HEADER:
            raise ValueError(f"{path}:1: header {header}, expected {INDEX_HEADER}")
        for lineno, line in enumerate(f, start=2):
            fields = line.rstrip("\n").split("\t")
            try:
                if len(fields) != 4 or not fields[0]:
                    raise ValueError
                yt, row, count, peak = fields[0], int(fields[1]), int(fields[2]), float(fields[3])
            except ValueError:
                raise ValueError(f"{path}:{lineno}: expected the 4 fields {INDEX_HEADER}, "
                                 f"got {line.rstrip()!r}") from None
            if yt in entries:
                raise ValueError(f"{path}:{lineno}: duplicate id {yt!r}")
            if row < 0 or count < 1 or row + count > n_rows:
                raise ValueError(f"{path}:{lineno}: rows {row}..{row + count - 1} of {yt!r} "
                                 f"lie outside the array's {n_rows} rows")
            if not math.isfinite(peak) or peak < 0:
                raise ValueError(f"{path}:{lineno}: peak {peak} of {yt!r} is not finite and >= 0")
            entries[yt] = _Entry(row, count, peak)
    return entries


def write_store(out: str | Path, items: Iterable[tuple[str, np.ndarray]],
                encoding: str) -> int:
    """Write a store from ``(youtube_id, (T', n_bins) pooled magnitude)`` pairs, streaming.

    Each version is encoded and written as it arrives (memory holds one version and the
    index). Both files are written atomically, the index last. The folder is locked
    (:mod:`~mirex_vi.core.lock`) from the first check to the index: a second writer is
    refused at once, since it could only find the store written (and refuse it) or mix its
    rows with the other's index.

    Returns:
        The number of versions written.

    Raises:
        FolderBusy: another process is writing a store in the folder (a ``ValueError``).
        ValueError: an unknown encoding, a folder that already holds a store (it is never
            replaced: a failed rewrite would lose it), no items, a duplicate id, or a version
            that is empty, not finite or of another width (naming the id).
    """
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown encoding {encoding!r}; known: {', '.join(ENCODINGS)}")
    folder = Path(out)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with writing(folder, "pooled store"):
            lines, total = _write_files(folder, items, encoding)
    except BaseException:
        if created:  # a failed write leaves no folder it made (rmdir takes only an empty one)
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    log.info("%s: %d versions, %d rows (%s)", folder, len(lines), total, encoding)
    return len(lines)


def _write_files(folder: Path, items: Iterable[tuple[str, np.ndarray]],
                 encoding: str) -> tuple[list[str], int]:
    """The body of ``write_store`` in the locked ``folder``: the index lines and the rows."""
    other = [rows_name(e) for e in ENCODINGS if e != encoding and (folder / rows_name(e)).is_file()]
    if other:
        raise ValueError(f"{folder} already holds {other[0]}; a store has one rows file")
    if is_store(folder):
        raise ValueError(f"{folder} already holds a pooled store; write to a new folder")
    # Rows without an index (a writer killed between the two) are rewritten; an index
    # without rows is removed, so that it never stands beside the new rows.
    (folder / INDEX_NAME).unlink(missing_ok=True)
    lines: list[str] = []
    with atomic_open(folder / rows_name(encoding)) as f:
        total = _write_rows(f, items, encoding, lines)
    with atomic_open(folder / INDEX_NAME, "w", encoding="utf-8") as f:
        f.write("\t".join(INDEX_HEADER) + "\n")
        f.writelines(lines)
    return lines, total


def _write_rows(f, items: Iterable[tuple[str, np.ndarray]], encoding: str,
                lines: list[str]) -> int:
    """The ``.npy`` body of ``write_store``; appends one index line per version to ``lines``.

    The header is written first for 0 rows and rewritten with the total at the end; numpy
    pads the header so that its length does not depend on the first dimension.
    """
    dtype, total, n_bins, data_start, seen = ENCODINGS[encoding], 0, None, 0, set()
    for yt, pooled in items:
        m = np.asarray(pooled, dtype=np.float32)
        if n_bins is None and m.ndim == 2:
            n_bins = m.shape[1]
            np.lib.format.write_array_header_1_0(f, _npy_header(dtype, 0, n_bins))
            data_start = f.tell()
        if yt in seen or m.ndim != 2 or m.shape[0] == 0 or m.shape[1] != n_bins:
            raise ValueError(f"version {yt!r}: a duplicate id, or a shape {m.shape} that is not "
                             f"(T' >= 1, {n_bins})")
        if not np.isfinite(m).all():
            raise ValueError(f"version {yt!r}: non-finite values")
        seen.add(yt)
        peak = round_peak(float(m.max()))
        f.write((encode_u8(m, peak) if encoding == "u8" else m.astype(dtype)).tobytes())
        lines.append(f"{yt}\t{total}\t{m.shape[0]}\t{peak:.6g}\n")
        total += m.shape[0]
    if n_bins is None:
        raise ValueError("no versions to write")
    f.seek(0)
    np.lib.format.write_array_header_1_0(f, _npy_header(dtype, total, n_bins))
    if f.tell() != data_start:
        raise RuntimeError("the .npy header changed length when its shape was filled in")
    return total


def _npy_header(dtype: np.dtype, rows: int, n_bins: int) -> dict:
    return {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
            "shape": (rows, n_bins)}


# --- feature sources ------------------------------------------------------------------------


class FeatureSource(Protocol):
    """Where training and validation read a version's pooled features."""

    def has(self, youtube_id: str) -> bool: ...

    def pooled(self, youtube_id: str) -> np.ndarray:
        """``(T', n_bins)`` float32 pooled magnitude."""
        ...


@dataclass(frozen=True)
class AuthorsLayout:
    """The authors' layout (``<dir>/<id[:2]>/<id>.mm`` + ``.npy``), pooled on read."""

    features_dir: Path
    downsample_factor: int

    def has(self, youtube_id: str) -> bool:
        return has_feature(self.features_dir, youtube_id)

    def pooled(self, youtube_id: str) -> np.ndarray:
        """``pool_cqt`` of the stored ``(T, n_bins)`` CQT: ``(T // factor, n_bins)`` float32."""
        return pool_cqt(load_feature(self.features_dir, youtube_id), self.downsample_factor)


def is_store(path: str | Path) -> bool:
    folder = Path(path)
    return (folder / INDEX_NAME).is_file() and any((folder / rows_name(e)).is_file()
                                                  for e in ENCODINGS)


def open_features(features: str | Path | FeatureSource, downsample_factor: int) -> FeatureSource:
    """The pooled store in folder ``features`` if it holds one, else the authors' layout there;
    a source passed in is returned as it is."""
    if not isinstance(features, (str, Path)):
        return features
    if is_store(features):
        return PooledStore.open(features)
    return AuthorsLayout(Path(features), downsample_factor)


# --- conversion -----------------------------------------------------------------------------


def layout_ids(features_dir: str | Path) -> list[str]:
    """Every version id stored in an authors'-layout folder, sorted."""
    return sorted(p.stem for p in Path(features_dir).glob("*/*.npy")
                  if has_feature(features_dir, p.stem))


def stored_ids(features_dir: str | Path) -> list[str]:
    """Every version id in a folder holding a pooled store or the authors' layout, sorted."""
    if is_store(features_dir):
        return sorted(PooledStore.open(features_dir).entries)
    return layout_ids(features_dir)


def convert_features(sources: Sequence[str | Path], ids: Iterable[str], out: str | Path,
                     encoding: str, downsample_factor: int = 20) -> int:
    """Write a store of the versions ``ids``, each read from the first of ``sources`` (folders
    holding a pooled store or the authors' layout) that holds it, one at a time.

    Merges stores (a kept corpus and the versions added to it) as well as it converts a
    layout: a uint8 version read from a uint8 store is written back to the same codes.
    Versions that no source holds, or shorter than one pool, are skipped (and logged).

    Returns:
        The number of versions written.

    Raises:
        ValueError: ``out`` is one of ``sources``, or as ``write_store``.
    """
    if any(Path(out).resolve() == Path(source).resolve() for source in sources):
        raise ValueError(f"{out}: the store would replace one it reads; write it elsewhere")
    opened = [open_features(source, downsample_factor) for source in sources]
    ids, skipped = list(ids), []

    def items() -> Iterator[tuple[str, np.ndarray]]:
        for yt in ids:
            source = next((s for s in opened if s.has(yt)), None)
            pooled = source.pooled(yt) if source is not None else None
            if pooled is None or pooled.shape[0] == 0:
                skipped.append(yt)
                continue
            yield yt, pooled

    try:
        written = write_store(out, items(), encoding)
    except ValueError as err:  # write_store's "no versions to write": say which and why
        if isinstance(err, FolderBusy) or len(skipped) < len(ids):
            raise
        held = f"none of the {len(ids)} versions asked for" if ids else "no versions"
        raise ValueError(f"{', '.join(map(str, sources))}: holds {held} (at least one pool of "
                         f"{downsample_factor} frames long); nothing to write") from err
    if skipped:
        log.warning("%d versions without features or shorter than %d frames were skipped, "
                    "e.g. %s", len(skipped), downsample_factor, ", ".join(skipped[:5]))
    return written
