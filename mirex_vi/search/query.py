"""Queries against an index folder: the top-k tracks of each query, and MAP@k / recall@k.

Queries are embedded like indexed tracks (through the index's cache when it is writable,
so a query that is in the index costs nothing) by the index's own weights, with their
segments when the index keeps them. Results follow the exact path's conventions
(docs/REFERENCE.md §4): MIREX distances, ties in collection order, and a query that is in
the index at distance 0 to itself, first among its results unless ``exclude_self`` drops
it. In an index with segments, a track's distance is that of ``identify``'s matrix with
the index's segment recipe (``segments.blended_scores``), one result per track.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..core.atomic import atomic_open
from ..inference.settings import EmbedSettings
from . import faiss_index
from .build import CACHE_FOLDER, Embedder, index_weights, make_embedder
from .folder import OpenIndex, check_weights, open_index
from .segments import blended_scores, candidates, note_rerank

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Hit:
    rank: int  # 1-based
    path: str
    distance: float


@dataclass(frozen=True)
class QueryResult:
    query: str
    hits: list[Hit]


def open_for_queries(folder: Path, weights: str | None, settings: EmbedSettings,
                     cache_dir: Path | None, progress: bool = True) -> tuple[OpenIndex, Embedder]:
    """Open ``folder`` memory-mapped and an embedder with the index's weights (and its
    segment recipe).

    The cache defaults to the index's own (read by every query that the index holds); if
    that folder is not writable, queries are embedded without a cache.

    Raises:
        ValueError: no index, or weights that are not the index's.
    """
    opened = open_index(folder, mmap=True)
    if cache_dir is None:
        cache_dir = folder / CACHE_FOLDER
        if not os.access(cache_dir if cache_dir.exists() else folder, os.W_OK | os.X_OK):
            log.info("%s is not writable: queries are embedded without a cache", cache_dir)
            cache_dir = None
    embedder = make_embedder(weights or index_weights(opened.manifest), settings, cache_dir,
                             progress)
    check_weights(opened.manifest, embedder.weights, folder)
    note_rerank(embedder.weights.features)
    return opened, embedder.with_segments(opened.manifest.recipe)


def query_paths(queries: Path) -> list[Path]:
    """The tracks of a list file, or ``queries`` itself when it is an audio file.

    Raises:
        InputError: an unreadable or empty list.
    """
    from ..io.lists import read_list
    from ..io.metadata import AUDIO_EXTENSIONS

    if queries.suffix.lower() in AUDIO_EXTENSIONS:
        return [Path(os.path.abspath(queries))]
    return read_list(queries).paths


@dataclass(frozen=True)
class EmbeddedQueries:
    """The queries that embedded: their ``positions`` in the query list, ``(n, D)``
    ``vectors`` and, with a segment recipe, ``segments`` (``(S_i, D)`` each); ``errors``:
    the ``(path, reason)`` of those that did not."""

    positions: list[int]
    vectors: np.ndarray
    segments: list[np.ndarray] | None
    errors: list[tuple[Path, str]]


def embed_queries(paths: Sequence[Path], embedder: Embedder) -> EmbeddedQueries:
    run = embedder.embed(paths)
    ok = [i for i in range(len(paths)) if i not in run.errors]
    segments = [run.extras[i]["segments"] for i in ok] if embedder.segments else None
    return EmbeddedQueries(ok, run.embeddings[ok], segments,
                           [(paths[i], why) for i, why in sorted(run.errors.items())])


def search(opened: OpenIndex, queries: Sequence[str], vectors: np.ndarray, k: int,
           exclude_self: bool = False, nprobe: int | None = None, chunk: int = 1024,
           segments: Sequence[np.ndarray] | None = None) -> Iterator[QueryResult]:
    """The ``k`` nearest indexed tracks of each query, in query order.

    Args:
        queries: the query paths (absolute, as in the track table).
        vectors: ``(Q, D)`` float32 unit embeddings of ``queries``.
        exclude_self: drop the indexed track whose path is the query's.
        nprobe: cells an ivfpq index scans (default: the index's).
        segments: ``(S_q, D)`` float32 segments of each query, made by the index's recipe
            (``EmbeddedQueries.segments``); needed by an index with segments, which scores
            by them (:func:`_search_segments`).
    """
    fetch = min(k + 1, opened.manifest.count)  # one more, in case the query itself is dropped
    if opened.segments is not None:
        if segments is None:
            raise ValueError(f"{opened.folder} keeps segments: the queries need theirs")
        yield from _search_segments(opened, queries, vectors, segments, k, fetch, exclude_self,
                                    chunk)
        return
    for start in range(0, len(queries), chunk):
        distances, ids = faiss_index.top_k(opened.index, vectors[start : start + chunk], fetch, nprobe)
        for query, row_d, row_i in zip(queries[start : start + chunk], distances, ids):
            yield QueryResult(query, _hits(opened, query, row_d, row_i, k, exclude_self))


def _search_segments(opened: OpenIndex, queries: Sequence[str], vectors: np.ndarray,
                     segments: Sequence[np.ndarray], k: int, fetch: int, exclude_self: bool,
                     chunk: int) -> Iterator[QueryResult]:
    """:func:`search` in an index with segments: each query's candidates are its ``fetch``
    nearest tracks and the owners of its segments' ``fetch`` nearest segments, each at the
    distance of its blended score."""
    recipe = opened.manifest.recipe
    for start in range(0, len(queries), chunk):
        part = slice(start, start + chunk)
        found = candidates(opened.index, opened.segments, vectors[part], segments[part], fetch)
        for query, vector, own, ids in zip(queries[part], vectors[part], segments[part], found):
            scores = blended_scores(opened.index, opened.segments, vector, own, ids, recipe)
            distances = faiss_index.mirex_distance(scores)
            yield QueryResult(query, _hits(opened, query, distances, ids, k, exclude_self))


def _hits(opened: OpenIndex, query: str, distances: np.ndarray, ids: np.ndarray, k: int,
          exclude_self: bool) -> list[Hit]:
    """One query's hits from its ``(fetch,)`` candidate distances and ids."""
    found = [(float(d), int(i), opened.tracks[int(i)].path) for d, i in zip(distances, ids) if i >= 0]
    if exclude_self:
        found = [f for f in found if f[2] != query]
    found = sorted((0.0 if path == query else d, i, path) for d, i, path in found)[:k]
    return [Hit(rank, path, round(d, 6)) for rank, (d, _, path) in enumerate(found, 1)]


# The usual TSV escapes (Linear TSV, PostgreSQL's text format): a name with a TAB or a line
# break stays one field of one row, and unescaping gives it back. Other characters are as is.
TSV_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def write_tsv(results: Iterable[QueryResult], out) -> None:
    r"""``query<TAB>rank<TAB>path<TAB>distance`` per hit, distances as ``%.6f``; the paths
    escaped by ``TSV_ESCAPES`` (``\\``, ``\t``, ``\n``, ``\r``)."""
    for result in results:
        query = result.query.translate(TSV_ESCAPES)
        for hit in result.hits:
            out.write(f"{query}\t{hit.rank}\t{hit.path.translate(TSV_ESCAPES)}\t"
                      f"{hit.distance:.6f}\n")


def write_json(results: Iterable[QueryResult], out) -> None:
    """A JSON list of ``{"query", "results": [{"rank", "path", "distance"}, ...]}``."""
    out.write("[")
    for n, result in enumerate(results):
        out.write(",\n " if n else "\n ")
        json.dump({"query": result.query, "results": [asdict(h) for h in result.hits]}, out,
                  ensure_ascii=False)
    out.write("\n]\n")


# --- evaluation through the index ---------------------------------------------------------


@dataclass(frozen=True)
class IndexFigures:
    """MAP@k, recall@k and Top-1 rate over the labelled queries with a relevant indexed
    track; ``n_skipped`` queries had none."""

    k: int
    map_at_k: float
    recall_at_k: float
    top1_rate: float
    n_queries: int
    n_skipped: int

    def write_json(self, path: Path) -> None:
        with atomic_open(path, "w", encoding="utf-8") as f:
            json.dump(asdict(self), f, indent=2)
            f.write("\n")

    def lines(self) -> str:
        return "\n".join([f"{'MAP@' + str(self.k):>13}: {self.map_at_k:.4f}",
                          f"{'recall@' + str(self.k):>13}: {self.recall_at_k:.4f}",
                          f"{'Top-1 rate':>13}: {self.top1_rate:.4f}",
                          f"{'queries':>13}: {self.n_queries}"])


def evaluate_labels(folder: Path, labels_tsv: Path, k: int, nprobe: int | None,
                    weights: str | None, settings: EmbedSettings,
                    progress: bool = True) -> IndexFigures:
    """Search every track of a labels TSV in the index (itself excluded) and score the
    top ``k``.

    Raises:
        ValueError: no index, other weights, a labelled track that cannot be embedded, or
            no labelled track with another of its clique in the index.
    """
    from ..io.lists import read_labels
    from ..io.lists import InputError

    labels = {str(path): clique for path, clique in read_labels(labels_tsv).items()}
    opened, embedder = open_for_queries(folder, weights, settings, None, progress)
    queries = list(labels)
    embedded = embed_queries([Path(q) for q in queries], embedder)
    if embedded.errors:
        bad = "\n".join(f"  {path}: {reason}" for path, reason in embedded.errors)
        raise InputError(f"{len(embedded.errors)} labelled track(s) could not be embedded:\n{bad}")
    results = search(opened, queries, embedded.vectors, k, True, nprobe,
                     segments=embedded.segments)
    figures = score_results(opened, labels, results, k)
    if figures.n_queries == 0:  # every figure would be NaN
        raise InputError(f"{folder}: no labelled track has another of its clique in the index "
                         f"({labels_tsv}); nothing to score")
    return figures


def score_results(opened: OpenIndex, labels: dict[str, str], results: Iterable[QueryResult],
                  k: int) -> IndexFigures:
    """Figures of the top-``k`` ``results`` (searched with ``exclude_self``) of labelled
    queries.

    A relevant track is an indexed one with the query's label. Per query with R relevant
    tracks: ``AP@k = sum over relevant ranks r <= k of P@r / min(R, k)`` (1 for a perfect
    top k), ``recall@k`` = relevant tracks in the top k / R. With k at least the index
    size, AP@k of a flat index is the full-ranking AP of the exact path.
    """
    indexed = [t.path for t in opened.tracks if t.path in labels]
    in_index = Counter(labels[path] for path in indexed)
    indexed = set(indexed)
    aps, recalls, top1 = [], [], []
    skipped = 0
    for result in results:
        label = labels[result.query]
        n_relevant = in_index[label] - (result.query in indexed)
        if n_relevant == 0:
            skipped += 1
            continue
        relevant = np.array([labels.get(h.path) == label for h in result.hits], dtype=bool)
        precision = np.cumsum(relevant) / np.arange(1, len(relevant) + 1)
        aps.append(float(precision[relevant].sum()) / min(n_relevant, k))
        recalls.append(relevant.sum() / n_relevant)
        top1.append(bool(relevant[:1].any()))
    nan = float("nan")
    return IndexFigures(k, float(np.mean(aps)) if aps else nan,
                        float(np.mean(recalls)) if recalls else nan,
                        float(np.mean(top1)) if top1 else nan, len(aps), skipped)
