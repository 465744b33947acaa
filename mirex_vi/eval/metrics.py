"""Retrieval metrics for cover song identification (docs/REFERENCE.md §4).

Every query is ranked against the whole collection **minus itself** (it is dropped from
its own ranking whatever its score: the same as scoring it -inf and calling it irrelevant);
an item is relevant when it carries the query's label (clique). Per query q with R_q relevant candidates:

- ``AP_q = (1/R_q) * sum_k P@k * rel_k`` over the **full** ranking (not MAP@10);
- ``rank1``: 1-based rank of the first relevant item (MR1 = mean, MRR = mean of 1/rank1);
- ``top10``: number of relevant items in the first 10 ranks (MIREX "covers in top 10").

Queries with R_q = 0 are skipped: they enter no mean and are counted in ``n_skipped``.

Ties: candidates are ordered by score, descending, with a stable sort, so equal scores
keep ascending candidate (collection) index order. The result is therefore deterministic
and, for a relevant item tied with irrelevant ones, depends on the indices; no averaging
over tie permutations is done.

Memory is O(chunk x N): scores are ranked one block of query rows at a time, and only the
positions of relevant items survive a block; no N x N score or class matrix is built.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

log = logging.getLogger(__name__)


TOP_K = 10


def _label_values(labels: Sequence[Hashable]) -> Sequence[Hashable]:
    """``labels`` as python values: 0-d tensors would hash by identity."""
    return labels.tolist() if isinstance(labels, (np.ndarray, torch.Tensor)) else labels


def encode_labels(labels: Sequence[Hashable]) -> np.ndarray:
    """Map labels to integer codes, ``(N,)`` int64, in order of first appearance.

    Arrays and tensors are compared by value (through ``tolist``), not by element identity.
    """
    labels = _label_values(labels)
    codes: dict[Hashable, int] = {}
    return np.fromiter((codes.setdefault(x, len(codes)) for x in labels),
                       dtype=np.int64, count=len(labels))


@dataclass
class RetrievalResult:
    """Per-query retrieval statistics for the Q evaluated queries.

    Attributes:
        ap: ``(Q,)`` float64 average precision of each query over its full ranking.
        rank1: ``(Q,)`` int64 1-based rank of the first relevant candidate.
        top10: ``(Q,)`` int64 number of relevant candidates in the first 10 ranks.
        query_index: ``(Q,)`` int64 index of each query into the labels.
        n_skipped: queries left out because no candidate shares their label.
    """

    ap: np.ndarray
    rank1: np.ndarray
    top10: np.ndarray
    query_index: np.ndarray
    n_skipped: int = 0

    @property
    def n_queries(self) -> int:
        return int(self.ap.shape[0])

    def summary(self) -> dict:
        """Return ``map, mr1, mrr, top1_rate, top10_count, p_at_10, n_queries``.

        Means over zero queries are NaN (and logged); counts are plain ints.
        """
        if self.n_queries == 0:
            log.warning("no query has a relevant candidate: metrics are NaN")
            nan = float("nan")
            return dict(map=nan, mr1=nan, mrr=nan, top1_rate=nan, top10_count=0,
                        p_at_10=nan, n_queries=0)
        return dict(
            map=float(self.ap.mean()),
            mr1=float(self.rank1.mean()),
            mrr=float((1.0 / self.rank1).mean()),
            top1_rate=float((self.rank1 == 1).mean()),
            top10_count=int(self.top10.sum()),
            p_at_10=float(self.top10.mean() / TOP_K),
            n_queries=self.n_queries,
        )

    def of_queries(self, queries: Sequence[int]) -> "RetrievalResult":
        """The statistics of the evaluated queries among ``queries`` (indices into the
        labels), their candidates unchanged; ``n_skipped`` stays the whole evaluation's."""
        keep = np.isin(self.query_index, np.asarray(queries, dtype=np.int64))
        return RetrievalResult(self.ap[keep], self.rank1[keep], self.top10[keep],
                               self.query_index[keep], self.n_skipped)

    def ap_per_clique(self, labels: Sequence[Hashable]) -> dict[Hashable, float]:
        """Mean AP of the evaluated queries of each clique, ``{label: mean AP}``.

        ``labels`` must be the sequence the result was computed with.
        """
        labels = _label_values(labels)
        sums: dict[Hashable, float] = {}
        counts: dict[Hashable, int] = {}
        for q, ap in zip(self.query_index.tolist(), self.ap.tolist()):
            key = labels[q]
            sums[key] = sums.get(key, 0.0) + ap
            counts[key] = counts.get(key, 0) + 1
        return {key: sums[key] / counts[key] for key in sums}


# Above this many relevant items per query, sorting whole rows beats counting per item.
_COUNTING_MAX_RELEVANT = 32
_COUNTING_BLOCK = 1 << 25  # compared elements per counting step (bounds memory)


def _rank_relevant(scores: torch.Tensor, query: torch.Tensor,
                   codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Ranks of the relevant candidates of a block of queries (see :func:`_rank_by_sorting`).

    Cliques are small next to the collection, so counting the candidates ranked above each
    relevant item (O(R N) per query) is much cheaper than sorting the row (O(N log N));
    both give the same stable-sort ranks, and dense blocks are sorted.
    """
    relevant = codes[None, :] == codes[query][:, None]  # (q, N)
    relevant[torch.arange(query.shape[0], device=query.device), query] = False
    hit_row, hit_col = relevant.nonzero(as_tuple=True)
    del relevant
    if hit_row.shape[0] > _COUNTING_MAX_RELEVANT * query.shape[0]:
        return _rank_by_sorting(scores, query, codes)
    n = scores.shape[1]
    ranks = torch.empty_like(hit_row)
    step = max(1, _COUNTING_BLOCK // n)
    for start in range(0, hit_row.shape[0], step):
        rows, cols = hit_row[start : start + step], hit_col[start : start + step]
        row_scores = scores[rows]  # (m, N)
        value = row_scores.gather(1, cols[:, None])  # (m, 1)
        before = torch.arange(n, device=scores.device)[None, :] < cols[:, None]
        ahead = (row_scores > value) | ((row_scores == value) & before)  # (m, N)
        self_ahead = ahead.gather(1, query[rows][:, None])[:, 0]
        ranks[start : start + step] = ahead.sum(dim=1) - self_ahead.long()
    order = torch.argsort(hit_row * n + ranks)  # row-major, ascending rank within a row
    return hit_row[order], ranks[order]


def _rank_by_sorting(scores: torch.Tensor, query: torch.Tensor,
                     codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Ranks of the relevant candidates of a block of queries.

    Args:
        scores: ``(q, N)`` similarities, higher first.
        query: ``(q,)`` int64 query indices into ``codes``.
        codes: ``(N,)`` integer label codes.

    Returns:
        ``rows (M,)`` and 0-based ``ranks (M,)`` of the M relevant (query, candidate)
        pairs, grouped by row and ascending in rank within a row. The query is taken
        out of its own ranking after the sort (the ranks behind it move up by one),
        which is exact whatever its score, even among other ``-inf`` candidates.
    """
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices  # (q, N)
    is_self = order == query[:, None]
    self_pos = is_self.int().argmax(dim=1)  # (q,) where the query landed
    relevant = (codes[order] == codes[query][:, None]) & ~is_self  # (q, N) bool
    del order, is_self
    hit_row, hit_pos = relevant.nonzero(as_tuple=True)  # row-major: ascending rank per row
    hit_pos = hit_pos - (hit_pos > self_pos[hit_row]).long()
    return hit_row, hit_pos


def _per_query_stats(hit_row: torch.Tensor, hit_pos: torch.Tensor,
                     n_rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """AP, rank1, top10 and relevant count per row from the relevant ranks.

    Args:
        hit_row, hit_pos: ``(M,)`` as returned by :func:`_rank_relevant`.
        n_rows: q, the number of queries in the block.

    Returns:
        ``ap, rank1, top10, n_relevant``, each ``(q,)``; rows with no relevant item
        have ``n_relevant == 0`` and meaningless other values.
    """
    n_rel = torch.bincount(hit_row, minlength=n_rows)  # (q,)
    first = torch.cumsum(n_rel, 0) - n_rel  # (q,) offset of each row's first hit
    hit_number = torch.arange(hit_row.shape[0], device=hit_row.device) - first[hit_row] + 1
    precision = hit_number.double() / (hit_pos + 1).double()  # P@k at each relevant rank
    ap_sum = torch.zeros(n_rows, dtype=torch.float64, device=hit_row.device)
    ap_sum.index_add_(0, hit_row, precision)
    ap = ap_sum / n_rel.clamp(min=1)
    rank1 = torch.zeros(n_rows, dtype=torch.long, device=hit_row.device)
    found = n_rel > 0
    rank1[found] = hit_pos[first[found]] + 1
    top10 = torch.bincount(hit_row[hit_pos < TOP_K], minlength=n_rows)
    return tuple(t.cpu().numpy() for t in (ap, rank1, top10, n_rel))


class MetricAccumulator:
    """Collects per-query statistics from blocks of score rows.

    Args:
        labels: ``(N,)`` clique label of every collection item (any hashable values).
    """

    def __init__(self, labels: Sequence[Hashable]):
        self._codes = torch.from_numpy(encode_labels(labels)).int()  # (N,) int32: halves codes[order]
        self._device_codes: dict[torch.device, torch.Tensor] = {}
        self._parts: list[tuple[np.ndarray, ...]] = []
        self._n_skipped = 0

    @property
    def n_items(self) -> int:
        return int(self._codes.shape[0])

    def _codes_on(self, device: torch.device) -> torch.Tensor:
        if device not in self._device_codes:
            self._device_codes[device] = self._codes.to(device)
        return self._device_codes[device]

    def add(self, scores: torch.Tensor | np.ndarray,
            query_index: torch.Tensor | np.ndarray | Sequence[int]) -> None:
        """Rank a block of queries against the whole collection.

        Args:
            scores: ``(q, N)`` similarities, higher = more similar; not modified.
            query_index: ``(q,)`` index of each query row into ``labels``.
        """
        scores = torch.as_tensor(scores)
        if scores.ndim != 2 or scores.shape[1] != self.n_items:
            raise ValueError(f"scores must be (q, {self.n_items}), got {tuple(scores.shape)}")
        if torch.isnan(scores).any():
            raise ValueError("scores contain NaN")
        query = torch.as_tensor(query_index, dtype=torch.long, device=scores.device).reshape(-1)
        if query.shape[0] != scores.shape[0]:
            raise ValueError(f"{scores.shape[0]} score rows but {query.shape[0]} query indices")
        if query.numel() and (query.min() < 0 or query.max() >= self.n_items):
            raise ValueError("query index out of range")
        hit_row, hit_pos = _rank_relevant(scores, query, self._codes_on(scores.device))
        ap, rank1, top10, n_rel = _per_query_stats(hit_row, hit_pos, query.shape[0])
        keep = n_rel > 0
        self._n_skipped += int((~keep).sum())
        self._parts.append((ap[keep], rank1[keep], top10[keep], query.cpu().numpy()[keep]))

    def result(self) -> RetrievalResult:
        """Per-query statistics of every query added so far."""
        if not self._parts:
            empty = np.zeros(0)
            return RetrievalResult(empty, empty.astype(np.int64), empty.astype(np.int64),
                                   empty.astype(np.int64), self._n_skipped)
        ap, rank1, top10, query = (np.concatenate(p) for p in zip(*self._parts))
        if self._n_skipped:
            log.info("%d queries have no relevant candidate and were skipped", self._n_skipped)
        return RetrievalResult(ap.astype(np.float64), rank1.astype(np.int64),
                               top10.astype(np.int64), query.astype(np.int64), self._n_skipped)


def _chunks(n: int, size: int, progress: bool, desc: str) -> Iterable[int]:
    starts = range(0, n, size)
    if not progress:
        return starts
    from tqdm import tqdm

    return tqdm(starts, desc=desc, unit="chunk", total=len(starts))


def metrics_from_embeddings(embeddings: torch.Tensor, labels: Sequence[Hashable],
                            chunk_size: int = 1024, device: str | torch.device | None = None,
                            progress: bool = False) -> RetrievalResult:
    """Evaluate every item as a query against all others by inner product.

    Args:
        embeddings: ``(N, D)`` L2-normalised embeddings (cast to float32).
        labels: ``(N,)`` clique label of each item.
        chunk_size: query rows scored and ranked at once; memory is O(chunk_size x N).
        device: where scores are computed and sorted (default: the embeddings' device).
        progress: show a tqdm bar on stderr.
    """
    if embeddings.ndim != 2 or embeddings.shape[0] != len(labels):
        raise ValueError(f"embeddings must be ({len(labels)}, D), got {tuple(embeddings.shape)}")
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    device = torch.device(device) if device is not None else embeddings.device
    emb = embeddings.detach().to(device=device, dtype=torch.float32)
    acc = MetricAccumulator(labels)
    n = emb.shape[0]
    with torch.inference_mode():
        for start in _chunks(n, chunk_size, progress, "metrics"):
            query = torch.arange(start, min(start + chunk_size, n), device=device)
            acc.add(emb[query] @ emb.T, query)  # (q, N) scores
    return acc.result()


def metrics_from_distances(rows: Iterable[tuple[int, np.ndarray]], labels: Sequence[Hashable],
                           batch_size: int = 256) -> RetrievalResult:
    """Evaluate a distance matrix streamed row by row (smaller = more similar).

    Args:
        rows: ``(query index, distances (N,))`` pairs, the query index being 0-based
            into ``labels`` (the collection order).
        labels: ``(N,)`` clique label of each collection item.
        batch_size: rows ranked at once.
    """
    acc = MetricAccumulator(labels)
    queries: list[int] = []
    block: list[np.ndarray] = []
    for query, distances in rows:
        queries.append(int(query))
        block.append(np.asarray(distances, dtype=np.float64))
        if len(block) == batch_size:
            acc.add(-torch.from_numpy(np.stack(block)), queries)  # (b, N)
            queries, block = [], []
    if block:
        acc.add(-torch.from_numpy(np.stack(block)), queries)
    return acc.result()
