"""The index folder: a FAISS index, its track table and a manifest, replaced atomically.

``INDEX_DIR`` holds, for generation ``g``:

- ``index.json``: the manifest (kind, track count, dimension, the weights' name and
  sha256, the feature config and its sha256, the FAISS parameters, the shard, ``g``);
- ``index.g.faiss``: the FAISS index; track ``i`` of the table has id ``i``;
- ``tracks.g.tsv``: ``path<TAB>id<TAB>duration`` per track (header line first; ``id`` is
  the YouTube id of a metadata entry, empty for a list; duration in seconds, empty when
  unknown), and ``tracks.g.offsets.npy``, the ``(N + 1,)`` int64 byte offset of each row,
  so that a search reads only the rows it prints;
- with segments (``search.segments``): ``segments.g.faiss``, a flat index of every track's
  segment embeddings, track after track, and ``segments.g.owners.npy``, the ``(S_total,)``
  int64 track id of each of its rows; the manifest holds the segment recipe;
- ``embeddings/`` (the embedding cache) and ``errors.tsv`` (tracks left out).

A writer writes generation ``g + 1`` beside ``g``, each file through a temporary, then
replaces ``index.json``: that rename is the commit. Readers only open what the manifest
names, so a killed writer leaves the previous index whole; its files are removed by the
next writer (a writer whose disk is full removes them itself). One writer at a time holds
``INDEX_DIR/.lock``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import mmap
import os
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..config import ScoringConfig, embedding_features
from ..core.atomic import atomic_open, make_folder, remove_stale_temporaries
from ..io.lists import OutputError
from ..model.weights import LoadedWeights
from . import faiss_index
from .segments import SegmentStore, recipe_of
from .segments import describe as describe_recipe


FORMAT = "mirex-vi-index/1"
# An index with segments: a reader that knew only FORMAT would search it without them.
SEGMENTS_FORMAT = "mirex-vi-index/2"
# The files of a generation g: name -> (stem, suffix), the file being ``stem.g.suffix``.
FILES = {"index": ("index", "faiss"), "table": ("tracks", "tsv"),
         "offsets": ("tracks", "offsets.npy"), "segments": ("segments", "faiss"),
         "owners": ("segments", "owners.npy")}
MANIFEST = "index.json"
TABLE_HEADER = "path\tid\tduration\n"


class IndexFolderError(ValueError):
    """An index folder that cannot be used as asked; the message says why."""


@dataclass(frozen=True)
class Track:
    """A row of the track table."""

    path: str
    track_id: str = ""
    duration: float = float("nan")

    def line(self) -> str:
        duration = "" if math.isnan(self.duration) else f"{self.duration:.3f}"
        return f"{self.path}\t{self.track_id}\t{duration}\n"

    @classmethod
    def parse(cls, line: str) -> Track:
        path, track_id, duration = line.rstrip("\n").split("\t")
        return cls(path, track_id, float(duration) if duration else float("nan"))


@dataclass(frozen=True)
class Shard:
    """Shard ``number`` (1-based) of ``count``: a contiguous n-th of the source list, so
    that merging shards 1..n in order gives the list's order back."""

    number: int
    count: int
    source_sha256: str = ""  # of the whole source list: shards of one list share it

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"i/n"`` with ``1 <= i <= n``."""
        number, sep, count = text.partition("/")
        if not (sep and number.isdigit() and count.isdigit() and 1 <= int(number) <= int(count)):
            raise ValueError(f"--shard {text!r}: expected i/n with 1 <= i <= n, e.g. 1/4")
        return cls(int(number), int(count))

    def select(self, n_items: int) -> range:
        """Positions of this shard's items in a list of ``n_items``."""
        return range((self.number - 1) * n_items // self.count, self.number * n_items // self.count)


@dataclass(frozen=True)
class Manifest:
    """What ``index.json`` says; ``params`` are the ivfpq parameters (None for flat);
    ``segments`` the segment recipe (``segments.recipe_dict``; None: no segments) and
    ``segment_count`` the segments held."""

    kind: str
    count: int
    dim: int
    weights_name: str
    weights_sha256: str
    weights_source: str  # where the weights were loaded from at build time
    features: dict
    params: dict | None = None
    shard: Shard | None = None
    generation: int = 0
    faiss_version: str = field(default_factory=faiss_index.faiss_version)
    segments: dict | None = None
    segment_count: int = 0

    @property
    def features_sha256(self) -> str:
        return features_sha256(self.features)

    @property
    def recipe(self) -> ScoringConfig | None:
        """The segment recipe (None: no segments)."""
        return None if self.segments is None else recipe_of(self.segments)

    def file(self, folder: Path, name: str) -> Path:
        """The file ``name`` (a key of :data:`FILES`) of this generation."""
        stem, suffix = FILES[name]
        return folder / f"{stem}.{self.generation}.{suffix}"

    def files(self, folder: Path) -> list[Path]:
        """Every file of this generation."""
        names = FILES if self.segments is not None else ("index", "table", "offsets")
        return [self.file(folder, name) for name in names]

    def to_json(self) -> str:
        form = FORMAT if self.segments is None else SEGMENTS_FORMAT
        data = {"format": form, "kind": self.kind, "count": self.count, "dim": self.dim,
                "weights": {"name": self.weights_name, "sha256": self.weights_sha256,
                            "source": self.weights_source},
                "features": self.features, "features_sha256": self.features_sha256,
                "params": self.params, "generation": self.generation,
                "shard": None if self.shard is None else vars(self.shard),
                "faiss_version": self.faiss_version}
        if self.segments is not None:
            data["segments"] = {"recipe": self.segments, "count": self.segment_count}
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        if data.get("format") not in (FORMAT, SEGMENTS_FORMAT):
            raise ValueError(f"format {data.get('format')!r}, expected {FORMAT!r} or "
                             f"{SEGMENTS_FORMAT!r}")
        weights = data["weights"]
        kept = data["segments"] if data["format"] == SEGMENTS_FORMAT else None
        if kept is not None:
            recipe_of(kept["recipe"])  # a recipe out of range fails as the manifest is read
        return cls(data["kind"], data["count"], data["dim"], weights["name"], weights["sha256"],
                   weights["source"], data["features"], data["params"],
                   Shard(**data["shard"]) if data["shard"] else None, data["generation"],
                   data["faiss_version"], kept and kept["recipe"], kept["count"] if kept else 0)


def features_sha256(features: dict) -> str:
    return hashlib.sha256(json.dumps(features, sort_keys=True).encode()).hexdigest()


def manifest_for(weights: LoadedWeights, source: str, kind: str, dim: int) -> Manifest:
    """A manifest (count 0) for an index of embeddings made by ``weights``."""
    return Manifest(kind, 0, dim, weights.name, weights.sha256, source,
                    embedding_features(weights.features))


class TrackTable:
    """The track table, memory-mapped: rows are read by number through the offsets."""

    def __init__(self, tsv: Path, offsets: Path):
        self._offsets = np.load(offsets, mmap_mode="r")
        with open(tsv, "rb") as f:
            self._data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, row: int) -> Track:
        start, end = int(self._offsets[row]), int(self._offsets[row + 1])
        return Track.parse(self._data[start:end].decode("utf-8", "surrogateescape"))

    def __iter__(self) -> Iterator[Track]:
        return (self[row] for row in range(len(self)))


@dataclass
class OpenIndex:
    """An index folder opened for reading (``index`` memory-mapped) or for appending;
    ``segments`` when it keeps them."""

    folder: Path
    manifest: Manifest
    index: object  # faiss.Index
    tracks: TrackTable
    segments: SegmentStore | None = None


def read_manifest(folder: Path) -> Manifest:
    """Raises: IndexFolderError: no index in ``folder``, or an unreadable manifest."""
    path = folder / MANIFEST
    if not path.is_file():
        raise IndexFolderError(f"{folder}: no index here (no {MANIFEST}); build one with "
                               "`mirex-vi index build`")
    try:
        return Manifest.from_json(path.read_text(encoding="utf-8"))
    except (ValueError, KeyError, TypeError) as err:
        raise IndexFolderError(f"{path}: not a mirex-vi index manifest ({err})") from err


def open_index(folder: Path, mmap: bool = True) -> OpenIndex:
    """Open the index that ``folder``'s manifest names; ``mmap=False`` for appending."""
    manifest = read_manifest(folder)
    try:
        index = faiss_index.read(manifest.file(folder, "index"), mmap)
        tracks = TrackTable(manifest.file(folder, "table"), manifest.file(folder, "offsets"))
        kept = None if manifest.segments is None else SegmentStore.read(
            manifest.file(folder, "segments"), manifest.file(folder, "owners"), manifest.count,
            mmap)
    except (OSError, RuntimeError, ValueError) as err:
        raise IndexFolderError(f"{folder}: index files of generation {manifest.generation} "
                               f"are missing or damaged ({err})") from err
    if index.ntotal != manifest.count or len(tracks) != manifest.count:
        raise IndexFolderError(f"{folder}: the manifest says {manifest.count} tracks, the index "
                               f"holds {index.ntotal} and the table {len(tracks)}")
    return OpenIndex(folder, manifest, index, tracks, kept)


def check_weights(manifest: Manifest, weights: LoadedWeights, folder: Path) -> None:
    """Refuse embeddings that ``manifest``'s index cannot hold.

    Raises:
        IndexFolderError: other weights (sha256) or another feature config.
    """
    if weights.sha256 != manifest.weights_sha256:
        raise IndexFolderError(
            f"{folder}: the index holds embeddings of weights {manifest.weights_name} "
            f"(sha256 {manifest.weights_sha256}); weights {weights.name} (sha256 "
            f"{weights.sha256}) would give incomparable ones")
    theirs = embedding_features(weights.features)
    if features_sha256(theirs) != manifest.features_sha256:
        changed = sorted(k for k in theirs if theirs[k] != manifest.features.get(k))
        raise IndexFolderError(f"{folder}: the index was built with another feature config "
                               f"(differs in {', '.join(changed) or 'its keys'})")



@contextlib.contextmanager
def writing(folder: Path) -> Iterator[None]:
    """Hold ``folder/.lock`` while writing.

    Raises:
        IndexFolderError: the folder cannot be made or take files, or another process is
            writing the index.
    """
    try:
        make_folder(folder, "index folder")
    except OSError as err:
        raise IndexFolderError(str(err)) from err
    try:
        lock = open(folder / ".lock", "a")
    except OSError as err:
        raise IndexFolderError(f"{folder}: the index folder does not take new files "
                               f"({err.strerror})") from err
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            raise IndexFolderError(f"{folder}: another mirex-vi process is writing this index") from err
        yield


def save(folder: Path, manifest: Manifest, index, tracks: Iterable[Track],
         segments: SegmentStore | None = None) -> Manifest:
    """Write ``index``, ``tracks`` and the ``segments`` of an index that keeps them
    (``manifest.segments``) as the next generation and commit it (call it inside
    :func:`writing`); returns the manifest written, with its counts and generation.

    Raises:
        OutputError: a file could not be written (disk full...); the files of the new
            generation are removed and the previous one, if any, stays the index.
    """
    previous = read_manifest(folder).generation if (folder / MANIFEST).is_file() else 0
    if (manifest.segments is None) != (segments is None):
        raise ValueError("an index keeps segments exactly when its manifest has a recipe")
    manifest = replace(manifest, count=int(index.ntotal), generation=previous + 1,
                       segment_count=0 if segments is None else int(segments.index.ntotal))
    try:
        _write_generation(folder, manifest, index, tracks, segments)
    except OSError as err:
        for path in manifest.files(folder):
            path.unlink(missing_ok=True)
        raise write_failed(folder, "the index", err, previous > 0) from err
    _remove_other_generations(folder, manifest)
    return manifest


def write_failed(folder: Path, what: str, err: OSError, existed: bool) -> OutputError:
    """The error of an index folder that could not take ``what`` (``err``): one line naming
    the folder, the system's reason and what became of the index."""
    kept = "the index is unchanged" if existed else "no index written"
    return OutputError(f"{folder}: cannot write {what} ({err.strerror or err}); {kept}")


def _write_generation(folder: Path, manifest: Manifest, index, tracks: Iterable[Track],
                      segments: SegmentStore | None) -> None:
    """The files of ``manifest``'s generation, the manifest last (the commit)."""
    with atomic_open(manifest.file(folder, "index")) as f:
        faiss_index.write(index, f)
    offsets = _write_table(manifest.file(folder, "table"), tracks)
    if len(offsets) - 1 != manifest.count:
        raise ValueError(f"{len(offsets) - 1} table rows for {manifest.count} indexed vectors")
    with atomic_open(manifest.file(folder, "offsets")) as f:
        np.save(f, np.frombuffer(offsets, dtype=np.int64))
    if segments is not None:
        if not len(segments.owners) or segments.owners[-1] != manifest.count - 1:
            raise ValueError(f"the segments do not end at the last track ({manifest.count - 1})")
        segments.write(manifest.file(folder, "segments"), manifest.file(folder, "owners"))
    with atomic_open(folder / MANIFEST, "w", encoding="utf-8") as f:
        f.write(manifest.to_json())


def _write_table(path: Path, tracks: Iterable[Track]) -> array:
    """Write the table; return the ``(N + 1,)`` byte offsets of its rows."""
    offsets = array("q")
    with atomic_open(path) as f:
        position = f.write(TABLE_HEADER.encode())
        for track in tracks:
            offsets.append(position)
            position += f.write(track.line().encode("utf-8", "surrogateescape"))
        offsets.append(position)
    return offsets


def _remove_other_generations(folder: Path, manifest: Manifest) -> None:
    keep = {path.name for path in manifest.files(folder)}
    for path in [*folder.glob("index.*.faiss"), *folder.glob("tracks.*"),
                 *folder.glob("segments.*")]:
        if path.name not in keep:
            path.unlink(missing_ok=True)
    remove_stale_temporaries(folder)


def bytes_per_track(folder: Path, manifest: Manifest) -> tuple[float, float, float]:
    """File bytes per track of the FAISS index, of the track table (with offsets) and of
    the segments (with their owners; 0 without segments)."""
    def size(*names: str) -> float:
        return sum(os.path.getsize(manifest.file(folder, name)) for name in names) / n

    n = max(manifest.count, 1)
    kept = size("segments", "owners") if manifest.segments is not None else 0.0
    return size("index"), size("table", "offsets"), kept


def describe(folder: Path, manifest: Manifest) -> str:
    """What ``index info`` prints."""
    index_bytes, table_bytes, segment_bytes = bytes_per_track(folder, manifest)
    lines = [f"kind: {manifest.kind}", f"tracks: {manifest.count:,}", f"dimension: {manifest.dim}",
             f"weights: {manifest.weights_name} (sha256 {manifest.weights_sha256})",
             f"feature config sha256: {manifest.features_sha256}",
             f"bytes per track: {index_bytes:.1f} in the index, {table_bytes:.1f} in the track table"]
    if manifest.params:
        lines.append("ivfpq: " + ", ".join(f"{k} {v}" for k, v in manifest.params.items()))
    if manifest.segments is not None:
        lines.append(f"{describe_recipe(manifest.recipe)}: {manifest.segment_count:,} "
                     f"({manifest.segment_count / max(manifest.count, 1):.1f} per track), "
                     f"{segment_bytes:.1f} bytes per track")
    if manifest.shard:
        lines.append(f"shard {manifest.shard.number}/{manifest.shard.count} of a list")
    lines.append(f"generation {manifest.generation}, written by FAISS {manifest.faiss_version}")
    return "\n".join(lines)
