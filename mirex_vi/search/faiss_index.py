"""Nearest neighbours on FAISS: the exact ``flat`` and the compressed ``ivfpq`` structures.

Scores are inner products of unit embeddings; distances are the MIREX convention
``sqrt(max(0, 2 - 2 s))`` (docs/REFERENCE.md §4). Results are ordered as the exact path
orders a matrix row: by distance, ties by collection order (the lower row first).

- ``flat`` (``IndexFlatIP``) keeps every vector: exact, ``4 * dim`` bytes per track.
- ``ivfpq`` (``IndexIVFPQ``) is trained on the collection: a coarse k-means of ``nlist``
  cells, and per track a product-quantised code of ``m`` sub-vectors of ``nbits`` bits
  (48 bytes for 512-d) plus its 8-byte id; a query scans the ``nprobe`` nearest cells.

FAISS is an optional extra; importing this module without it raises an ``ImportError``
that says how to install it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np


logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # it logs each SIMD probe
try:
    import faiss
except ImportError as err:  # the `search` extra is not installed
    raise ImportError("catalogue search needs FAISS: pip install 'mirex-vi[search]' "
                      "(or pip install faiss-cpu)") from err

KINDS = ("flat", "ivfpq")
# `auto` picks ivfpq from this many tracks on: a flat index of a million 512-d tracks
# already takes 2 GB of memory.
IVFPQ_FROM = 1_000_000
PQ_NBITS = 6
# FAISS's floor for k-means (39 points per centroid) for the codebooks of 2**PQ_NBITS codes.
IVFPQ_MIN_TRACKS = 39 * 2**PQ_NBITS
PQ_SUBVECTOR_DIM = 8
POINTS_PER_CELL = 64  # training points per coarse cell (FAISS warns below 39)
DEFAULT_NPROBE = 4  # cells a query scans; the README's benchmark shows the trade-off
TRAINING_SEED = 20


@dataclass(frozen=True)
class IvfPqParams:
    """Shape of an ``ivfpq`` index; the code of a track is ``ceil(m * nbits / 8)`` bytes."""

    nlist: int
    m: int
    nbits: int
    nprobe: int

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_kind(kind: str, n_tracks: int) -> str:
    """``auto`` -> ``flat`` below :data:`IVFPQ_FROM` tracks, else ``ivfpq``.

    Raises:
        ValueError: an unknown kind, or ``ivfpq`` for too few tracks to train.
    """
    if kind == "auto":
        kind = "ivfpq" if n_tracks >= IVFPQ_FROM else "flat"
    if kind not in KINDS:
        raise ValueError(f"unknown index kind {kind!r}: expected auto, {' or '.join(KINDS)}")
    if kind == "ivfpq" and n_tracks < IVFPQ_MIN_TRACKS:
        raise ValueError(f"ivfpq needs at least {IVFPQ_MIN_TRACKS:,} tracks to train "
                         f"(got {n_tracks:,}); use --kind flat")
    return kind


def ivfpq_params(n_tracks: int, dim: int, nprobe: int | None = None) -> IvfPqParams:
    """Cells: the power of two nearest ``sqrt(n)`` (1,024 for a million), at most
    ``n / POINTS_PER_CELL`` so each has training points; sub-vectors of
    :data:`PQ_SUBVECTOR_DIM` dimensions (the largest divisor of ``dim`` that keeps them
    at least that long)."""
    nlist = 2 ** round(math.log2(math.sqrt(n_tracks)))
    while nlist > 1 and nlist * POINTS_PER_CELL > n_tracks:
        nlist //= 2
    m = max(d for d in range(1, max(1, dim // PQ_SUBVECTOR_DIM) + 1) if dim % d == 0)
    return IvfPqParams(nlist, m, PQ_NBITS, min(nprobe or DEFAULT_NPROBE, nlist))


def new_index(kind: str, dim: int, params: IvfPqParams | None = None) -> faiss.Index:
    """An empty index (untrained for ``ivfpq``)."""
    if kind == "flat":
        return faiss.IndexFlatIP(dim)
    spec = f"IVF{params.nlist},PQ{params.m}x{params.nbits}"
    index = faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT)  # an IndexIVFPQ
    index.nprobe = params.nprobe
    index.do_polysemous_training = False  # slow, and only for Hamming filtering (unused)
    return index


def training_size(params: IvfPqParams) -> int:
    """How many vectors :func:`train` wants (it copes with fewer)."""
    return max(params.nlist * POINTS_PER_CELL, 2**params.nbits * 256)


def training_rows(n_tracks: int, params: IvfPqParams) -> np.ndarray:
    """A fixed pseudo-random choice of ``(n,)`` rows to train on, ascending."""
    size = min(n_tracks, training_size(params))
    return np.sort(np.random.default_rng(TRAINING_SEED).choice(n_tracks, size, replace=False))


def train(index: faiss.Index, sample: np.ndarray) -> None:
    """Train the coarse quantizer and the codebooks on ``(n, dim)`` float32 vectors."""
    if not index.is_trained:
        index.train(np.ascontiguousarray(sample, dtype=np.float32))


def build(kind: str, vectors: np.ndarray, params: IvfPqParams | None = None) -> faiss.Index:
    """An index of ``(N, dim)`` float32 unit vectors: row ``i`` gets id ``i``."""
    index = new_index(kind, vectors.shape[1], params)
    if kind == "ivfpq":
        train(index, vectors[training_rows(len(vectors), params)])
    add(index, vectors)
    return index


def add(index: faiss.Index, vectors: np.ndarray, chunk: int = 65536) -> None:
    """Append ``(n, dim)`` float32 vectors; they get the next ids."""
    for start in range(0, len(vectors), chunk):
        index.add(np.ascontiguousarray(vectors[start : start + chunk], dtype=np.float32))


def vectors_of(index: faiss.Index) -> np.ndarray:
    """The ``(N, dim)`` float32 vectors of a flat index (a copy)."""
    return index.reconstruct_n(0, index.ntotal)


def vectors_at(index: faiss.Index, ids: np.ndarray) -> np.ndarray:
    """The ``(n, dim)`` float32 vectors of a flat index's ``(n,)`` ``ids``."""
    return index.reconstruct_batch(np.ascontiguousarray(ids, dtype=np.int64))


def kind_of(index: faiss.Index) -> str:
    return "flat" if isinstance(index, faiss.IndexFlat) else "ivfpq"


def mirex_distance(scores: np.ndarray) -> np.ndarray:
    """``sqrt(max(0, 2 - 2 s))`` in float32, as the exact path computes it (scores are
    clipped to [-1, 1] first, which changes no distance but keeps the -FLT_MAX that FAISS
    gives a missing result from overflowing)."""
    s = np.clip(np.asarray(scores, dtype=np.float32), -1.0, 1.0)
    return np.sqrt(np.float32(2.0) - np.float32(2.0) * s)


def top_k(index: faiss.Index, queries: np.ndarray, k: int,
          nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest tracks of each query.

    Args:
        queries: ``(Q, dim)`` float32 unit vectors.
        nprobe: cells an ``ivfpq`` index scans (default: the one it was built with).

    Returns:
        ``distances (Q, k)`` float32 and ``ids (Q, k)`` int64, each row ascending in
        distance with ties in ascending id, as a stable sort of the exact row orders it;
        where fewer than ``k`` tracks were found the row ends in ids ``-1`` (distance inf).
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    params = faiss.SearchParametersIVF(nprobe=nprobe) if nprobe and kind_of(index) == "ivfpq" else None
    fetch = min(k + 1, index.ntotal)  # one more shows whether a tie crosses the k-th place
    scores, ids = index.search(queries, fetch, params=params)
    distances, ids = _in_row_order(mirex_distance(scores), ids)
    if fetch > k:
        # FAISS keeps any of the tracks tied at the k-th place; take them all, then the first.
        for row in np.flatnonzero((ids[:, k] >= 0) & (distances[:, k] == distances[:, k - 1])):
            distances[row], ids[row] = _ties_included(index, queries[row], distances[row, k - 1],
                                                      scores[row].min(), fetch, params)
    return _width(distances, ids, k)


def _width(distances: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut or pad ``(Q, n)`` rows to ``k`` columns (padding: distance inf, id -1)."""
    pad = ((0, 0), (0, max(0, k - ids.shape[1])))
    return (np.pad(distances, pad, constant_values=np.inf)[:, :k],
            np.pad(ids, pad, constant_values=-1)[:, :k])


def _in_row_order(distances: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort each row by distance, then id; missing results (id -1) go last at inf."""
    distances = np.where(ids >= 0, distances, np.inf).astype(np.float32)
    order = np.lexsort((np.where(ids >= 0, ids, np.iinfo(np.int64).max), distances), axis=-1)
    return np.take_along_axis(distances, order, axis=-1), np.take_along_axis(ids, order, axis=-1)


def _ties_included(index: faiss.Index, query: np.ndarray, last: float, lowest_score: float,
                   fetch: int, params) -> tuple[np.ndarray, np.ndarray]:
    """The first ``fetch`` tracks of one query among every track within distance ``last``
    (a range search a little wider than the lowest score seen, since distinct scores can
    round to one distance)."""
    radius = float(lowest_score) - 1e-5
    _, scores, ids = index.range_search(query[None], radius, params=params)
    distances = mirex_distance(scores)
    keep = distances <= last
    distances, ids = _width(*_in_row_order(distances[keep][None], ids[keep][None]), fetch)
    return distances[0], ids[0]


def write(index: faiss.Index, stream) -> None:
    """Serialise ``index`` into a binary file object (e.g. ``atomic_open``'s)."""
    faiss.write_index(index, faiss.PyCallbackIOWriter(stream.write))


def read(path: Path, mmap: bool) -> faiss.Index:
    """Load an index; ``mmap`` maps its vectors or codes from the file (read-only use)."""
    return faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC if mmap else 0)


def faiss_version() -> str:
    return faiss.__version__
