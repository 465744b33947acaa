"""The index folder: a FAISS index, its track table and a manifest, replaced atomically.

``INDEX_DIR`` holds, for generation ``g``:

- ``index.json``: the manifest (kind, track count, dimension, the weights' name and
  sha256, the feature config and its sha256, the FAISS parameters, the shard, ``g``);
- ``index.g.faiss``: the FAISS index; track ``i`` of the table has id ``i``;
- ``tracks.g.tsv``: ``path<TAB>id<TAB>duration`` per track (header line first; ``id`` is
  the YouTube id of a metadata entry, empty for a list; duration in seconds, empty when
  unknown), and ``tracks.g.offsets.npy``, the ``(N + 1,)`` int64 byte offset of each row,
  so that a search reads only the rows it prints;
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

from ..config import embedding_features
from ..core.atomic import atomic_open, make_folder, remove_stale_temporaries
from ..io.lists import OutputError
from ..model.weights import LoadedWeights
from . import faiss_index


FORMAT = "mirex-vi-index/1"
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
    """What ``index.json`` says; ``params`` are the ivfpq parameters (None for flat)."""

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

    @property
    def features_sha256(self) -> str:
        return features_sha256(self.features)

    def file(self, folder: Path, suffix: str) -> Path:
        stem = "index" if suffix == "faiss" else "tracks"
        return folder / f"{stem}.{self.generation}.{suffix}"

    def to_json(self) -> str:
        data = {"format": FORMAT, "kind": self.kind, "count": self.count, "dim": self.dim,
                "weights": {"name": self.weights_name, "sha256": self.weights_sha256,
                            "source": self.weights_source},
                "features": self.features, "features_sha256": self.features_sha256,
                "params": self.params, "generation": self.generation,
                "shard": None if self.shard is None else vars(self.shard),
                "faiss_version": self.faiss_version}
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        if data.get("format") != FORMAT:
            raise ValueError(f"format {data.get('format')!r}, expected {FORMAT!r}")
        weights = data["weights"]
        return cls(data["kind"], data["count"], data["dim"], weights["name"], weights["sha256"],
                   weights["source"], data["features"], data["params"],
                   Shard(**data["shard"]) if data["shard"] else None, data["generation"],
                   data["faiss_version"])


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
    """An index folder opened for reading (``index`` memory-mapped) or for appending."""

    folder: Path
    manifest: Manifest
    index: object  # faiss.Index
    tracks: TrackTable


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
        index = faiss_index.read(manifest.file(folder, "faiss"), mmap)
        tracks = TrackTable(manifest.file(folder, "tsv"), manifest.file(folder, "offsets.npy"))
    except (OSError, RuntimeError, ValueError) as err:
        raise IndexFolderError(f"{folder}: index files of generation {manifest.generation} "
                               f"are missing or damaged ({err})") from err
    if index.ntotal != manifest.count or len(tracks) != manifest.count:
        raise IndexFolderError(f"{folder}: the manifest says {manifest.count} tracks, the index "
                               f"holds {index.ntotal} and the table {len(tracks)}")
    return OpenIndex(folder, manifest, index, tracks)


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


def save(folder: Path, manifest: Manifest, index, tracks: Iterable[Track]) -> Manifest:
    """Write ``index`` and ``tracks`` as the next generation and commit it (call it inside
    :func:`writing`); returns the manifest written, with its count and generation.

    Raises:
        OutputError: a file could not be written (disk full...); the files of the new
            generation are removed and the previous one, if any, stays the index.
    """
    previous = read_manifest(folder).generation if (folder / MANIFEST).is_file() else 0
    manifest = replace(manifest, count=int(index.ntotal), generation=previous + 1)
    try:
        _write_generation(folder, manifest, index, tracks)
    except OSError as err:
        for suffix in ("faiss", "tsv", "offsets.npy"):
            manifest.file(folder, suffix).unlink(missing_ok=True)
        raise write_failed(folder, "the index", err, previous > 0) from err
    _remove_other_generations(folder, manifest)
    return manifest


def write_failed(folder: Path, what: str, err: OSError, existed: bool) -> OutputError:
    """The error of an index folder that could not take ``what`` (``err``): one line naming
    the folder, the system's reason and what became of the index."""
    kept = "the index is unchanged" if existed else "no index written"
    return OutputError(f"{folder}: cannot write {what} ({err.strerror or err}); {kept}")


def _write_generation(folder: Path, manifest: Manifest, index, tracks: Iterable[Track]) -> None:
    """The files of ``manifest``'s generation, the manifest last (the commit)."""
    with atomic_open(manifest.file(folder, "faiss")) as f:
        faiss_index.write(index, f)
    offsets = _write_table(manifest.file(folder, "tsv"), tracks)
    if len(offsets) - 1 != manifest.count:
        raise ValueError(f"{len(offsets) - 1} table rows for {manifest.count} indexed vectors")
    with atomic_open(manifest.file(folder, "offsets.npy")) as f:
        np.save(f, np.frombuffer(offsets, dtype=np.int64))
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
    keep = {manifest.file(folder, s).name for s in ("faiss", "tsv", "offsets.npy")}
    for path in [*folder.glob("index.*.faiss"), *folder.glob("tracks.*")]:
        if path.name not in keep:
            path.unlink(missing_ok=True)
    remove_stale_temporaries(folder)


def bytes_per_track(folder: Path, manifest: Manifest) -> tuple[float, float]:
    """File bytes per track of the FAISS index and of the track table (with offsets)."""
    n = max(manifest.count, 1)
    table = sum(os.path.getsize(manifest.file(folder, s)) for s in ("tsv", "offsets.npy"))
    return os.path.getsize(manifest.file(folder, "faiss")) / n, table / n


def describe(folder: Path, manifest: Manifest) -> str:
    """What ``index info`` prints."""
    index_bytes, table_bytes = bytes_per_track(folder, manifest)
    lines = [f"kind: {manifest.kind}", f"tracks: {manifest.count:,}", f"dimension: {manifest.dim}",
             f"weights: {manifest.weights_name} (sha256 {manifest.weights_sha256})",
             f"feature config sha256: {manifest.features_sha256}",
             f"bytes per track: {index_bytes:.1f} in the index, {table_bytes:.1f} in the track table"]
    if manifest.params:
        lines.append("ivfpq: " + ", ".join(f"{k} {v}" for k, v in manifest.params.items()))
    if manifest.shard:
        lines.append(f"shard {manifest.shard.number}/{manifest.shard.count} of a list")
    lines.append(f"generation {manifest.generation}, written by FAISS {manifest.faiss_version}")
    return "\n".join(lines)
