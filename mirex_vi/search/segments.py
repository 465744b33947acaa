"""Segment indexes: every indexed track's segment embeddings, and queries scored by them as
``identify`` scores a pair with a segment recipe (``inference.segments``).

An index with segments keeps, beside its track index, a flat FAISS index of the segments
of all its tracks, track after track (``S_i`` rows for track ``i``), and ``owners``, the
track id of each row. A query's candidates are its nearest tracks and the owners of its
segments' nearest segments; each candidate gets the blended score of ``identify``'s matrix
(track score and segment rule, :func:`blended_scores`), so results stay one per track.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..config import FeatureConfig, ScoringConfig, from_dict
from ..core.atomic import atomic_open
from ..inference.segments import (PackedSegments, blend, one_window_pairs, segment_scores,
                                  segment_tempi)
from . import faiss_index

log = logging.getLogger(__name__)

# The fields of a scoring recipe that an index keeps: what makes the segments and scores them.
RECIPE_FIELDS = ("segment_length", "segment_hop", "segment_tempo_scales", "segment_source",
                 "segment_rule", "segment_k", "segment_weight")


def index_recipe(features: FeatureConfig, changes: dict | None = None) -> ScoringConfig | None:
    """The segment recipe of an index of ``features``' embeddings: the package's
    (``features.scoring``) with ``changes`` (``ScoringConfig`` fields), None without segments.

    Only :data:`RECIPE_FIELDS` are kept (the alignment re-rank is not searched), with the
    tempi resolved (``segment_tempi``), so that equal recipes make equal segments.

    Raises:
        ValueError: a change out of range, or segment options for an index without segments.
    """
    changes = changes or {}
    scoring = replace(features.scoring, **changes)
    if not scoring.segment_length:
        if set(changes) - {"segment_length", "segment_hop"}:
            raise ValueError("the segment options need segments: give --segments LENGTH,HOP "
                             "(the package's recipe has none)")
        return None
    kept = {name: getattr(scoring, name) for name in RECIPE_FIELDS}
    kept["segment_tempo_scales"] = segment_tempi(replace(features, scoring=scoring))
    return ScoringConfig(**kept)


def note_rerank(features: FeatureConfig) -> None:
    """Say that the package's alignment re-rank, if it has one, is not used here."""
    if features.scoring.rerank:
        log.info("the package's recipe re-ranks the best %d by alignment; index and search do "
                 "not (they blend segments only)", features.scoring.rerank)


def index_kind(kind: str, n_tracks: int, recipe: ScoringConfig | None) -> str:
    """``faiss_index.resolve_kind``; an index with segments is flat (``auto`` gives it).

    Raises:
        ValueError: as ``resolve_kind``, or ``ivfpq`` with segments.
    """
    if recipe is not None:
        if kind == "ivfpq":
            raise ValueError("an index with segments is flat (its candidates are scored with "
                             "their exact vectors): use --kind flat, or --segments off for ivfpq")
        kind = "flat"
    return faiss_index.resolve_kind(kind, n_tracks)


def recipe_dict(recipe: ScoringConfig) -> dict:
    """The manifest's form of an :func:`index_recipe` (tuples as lists)."""
    return {name: (list(v) if isinstance(v := getattr(recipe, name), tuple) else v)
            for name in RECIPE_FIELDS}


def recipe_of(data: dict) -> ScoringConfig:
    """Raises: ValueError: not a recipe (an unknown key, a value out of range)."""
    return from_dict(ScoringConfig, data)


def check_same_recipe(kept: ScoringConfig | None, asked: ScoringConfig | None,
                      where: str | Path) -> None:
    """Refuse segments other than an index keeps.

    Raises:
        ValueError: naming both recipes.
    """
    if kept != asked:
        raise ValueError(f"{where}: the index keeps {describe(kept)}; {describe(asked)} would "
                         "not be comparable (build a new index for other segment settings)")


def describe(recipe: ScoringConfig | None) -> str:
    """``segments 43,22 diag2 w=0.5 at tempi 1``, or ``no segments``."""
    if recipe is None:
        return "no segments"
    tempi = ",".join(f"{t:g}" for t in recipe.segment_tempo_scales)
    return f"{recipe.describe()} at tempi {tempi}"


# --- the stored segments -------------------------------------------------------------------


@dataclass
class SegmentStore:
    """The segments of an index's ``N`` tracks.

    Attributes:
        index: flat FAISS index of ``(S_total, D)`` float32 unit rows, track after track.
        owners: ``(S_total,)`` int64, the track id of each row (ascending; every track in
            ``0..N-1`` has at least one row).
    """

    index: object  # faiss.IndexFlatIP
    owners: np.ndarray

    @classmethod
    def empty(cls, dim: int) -> SegmentStore:
        return cls(faiss_index.new_index("flat", dim), np.zeros(0, np.int64))

    def append(self, segments: Sequence[np.ndarray], first_track: int) -> None:
        """Add the ``(S_i, D)`` segments of tracks ``first_track, first_track + 1, ...``."""
        if not segments:
            return
        faiss_index.add(self.index, np.concatenate(segments))
        counts = [len(s) for s in segments]
        self.owners = np.concatenate([self.owners, np.repeat(
            np.arange(first_track, first_track + len(segments), dtype=np.int64), counts)])

    def of_tracks(self, tracks: np.ndarray) -> list[np.ndarray]:
        """The ``(S_i, D)`` segments of each of ``tracks`` (ids), read from the index."""
        starts = np.searchsorted(self.owners, tracks, side="left")
        ends = np.searchsorted(self.owners, tracks, side="right")
        rows = np.concatenate([np.arange(s, e) for s, e in zip(starts, ends)] or [[]])
        vectors = faiss_index.vectors_at(self.index, rows)  # (sum S_i, D)
        return np.split(vectors, np.cumsum(ends - starts)[:-1])

    def write(self, index_path: Path, owners_path: Path) -> None:
        with atomic_open(index_path) as f:
            faiss_index.write(self.index, f)
        with atomic_open(owners_path) as f:
            np.save(f, self.owners)

    @classmethod
    def read(cls, index_path: Path, owners_path: Path, n_tracks: int, mmap: bool) -> SegmentStore:
        """Raises: ValueError (or OSError, RuntimeError from FAISS): files that do not make
        the segments of ``n_tracks`` tracks."""
        index = faiss_index.read(index_path, mmap)
        owners = np.load(owners_path, mmap_mode="r" if mmap else None, allow_pickle=False)
        steps = np.diff(owners)
        in_order = (len(owners) > 0 and owners[0] == 0 and owners[-1] == n_tracks - 1
                    and bool(np.all((steps == 0) | (steps == 1))))
        if owners.dtype != np.int64 or len(owners) != index.ntotal or not in_order:
            raise ValueError(f"{len(owners)} segment owners and {index.ntotal} segments do not "
                             f"cover {n_tracks} tracks in order")
        return cls(index, owners)


def merged_segments(stores: Sequence[SegmentStore], counts: Sequence[int],
                    dim: int) -> SegmentStore:
    """The segments of indexes of ``counts`` tracks each, joined in order (one at a time)."""
    out, first = SegmentStore.empty(dim), 0
    for store, count in zip(stores, counts):
        faiss_index.add(out.index, faiss_index.vectors_of(store.index))
        out.owners = np.concatenate([out.owners, np.asarray(store.owners) + first])
        first += count
    return out


def store_of(segments: Sequence[np.ndarray] | None, dim: int) -> SegmentStore | None:
    """The store of the ``(S_i, D)`` segments of tracks ``0, 1, ...`` (None for None)."""
    if segments is None:
        return None
    store = SegmentStore.empty(dim)
    store.append(segments, 0)
    return store


# --- queries -------------------------------------------------------------------------------


def candidates(track_index, store: SegmentStore, vectors: np.ndarray,
               segments: Sequence[np.ndarray], fetch: int) -> list[np.ndarray]:
    """Each query's candidate tracks: its ``fetch`` nearest tracks and the owners of each of
    its segments' ``fetch`` nearest segments.

    Args:
        track_index: the flat index of the tracks.
        vectors: ``(Q, D)`` float32 unit query embeddings.
        segments: ``(S_q, D)`` float32 segments of each query.

    Returns:
        ``(C_q,)`` int64 ascending track ids per query.
    """
    _, nearest = faiss_index.top_k(track_index, vectors, fetch)  # (Q, fetch)
    flat = np.ascontiguousarray(np.concatenate(segments), dtype=np.float32)
    _, rows = store.index.search(flat, min(fetch, store.index.ntotal))  # (sum S_q, n)
    by_query = np.split(rows, np.cumsum([len(s) for s in segments])[:-1])
    return [np.unique(np.concatenate([ids[ids >= 0], store.owners[found[found >= 0]]]))
            for ids, found in zip(nearest, by_query)]


def blended_scores(track_index, store: SegmentStore, vector: np.ndarray, segments: np.ndarray,
                   tracks: np.ndarray, recipe: ScoringConfig) -> np.ndarray:
    """One query's scores against ``tracks``, as ``identify``'s matrix scores the pairs.

    Args:
        vector: ``(D,)`` the query's embedding; ``segments``: its ``(S_q, D)`` segments.
        tracks: ``(C,)`` int64 track ids.

    Returns:
        ``(C,)`` float32: ``recipe``'s blend of the inner product of the embeddings and
        the segment rule over the ``(S_q, S_c)`` segment pairs (``inference.segments``).
    """
    emb = torch.from_numpy(faiss_index.vectors_at(track_index, tracks))  # (C, D)
    track = torch.from_numpy(np.asarray(vector, np.float32))[None] @ emb.T  # (1, C)
    packed = PackedSegments.pack([segments, *store.of_tracks(tracks)])
    rule = segment_scores(packed, [0], recipe)[:, 1:]  # (1, C)
    return blend(track, rule, one_window_pairs(packed, [0])[:, 1:], recipe)[0].numpy()
