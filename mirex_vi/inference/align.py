"""Chroma alignment of a shortlist: the classic cover-song method (Serra et al., 2009) run
on the CQT the model already has, and fused with the embedding's ranking.

- :func:`chroma` folds a ``(T, 84)`` CQT (pooled frames, or finer ones averaged from the
  hop-512 CQT) into ``(T, 12)`` pitch classes, each frame scaled to unit maximum.
- :func:`transposition` is the optimal transposition index (OTI): the circular shift of one
  track's global chroma profile that best matches the other's.
- :func:`cross_recurrence` stacks ``stack`` frames (a time-delay embedding) and keeps the
  pairs of frames that are mutual nearest neighbours: each among the ``kappa`` closest of
  the other's row and column (a binary cross-recurrence plot).
- :func:`qmax` is Serra's local alignment of that plot: the longest run of recurrences
  along near-diagonal paths (steps (1,1), (2,1), (1,2)), with penalties for gaps.
- :func:`rerank` re-scores each query's K nearest tracks by the embedding
  (``ScoringConfig.rerank``) with the alignment, fusing the two by per-query z-scores;
  every other track keeps its place. Each track is read (:class:`Aligned`: profile and
  stacked frames) once for a block of queries, not once a pair.

The distances, the recurrences and Qmax are written in numba (compiled once and cached on
disk; they release the GIL, so the queries' rows run on torch's threads): on one core of
a 2-core CPU at 0.46-s frames, about 0.2 ms a pair of 60-s tracks and 2-6 ms a pair of
3- to 4-min tracks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numba
import numpy as np
import torch

from ..config import ScoringConfig

GAP_ONSET = 0.5  # Qmax penalty for leaving a run of recurrences (essentia's default)
GAP_EXTENSION = 0.5  # and for each further step outside one
CHROMA_MIN_HZ = 100.0  # bins below fold no pitch class (kick drums, rumble), as HPCP does
# Magnitudes m, scaled to the track's maximum, are compressed to log(1 + C m) before folding,
# so quiet accompaniment still counts (realdev alone: Qmax MAP 0.52 against 0.44 unscaled).
CHROMA_COMPRESSION = 100.0
# Queries re-ranked together, sharing the tracks read for their shortlists: at most
# RERANK_BLOCK x (rerank + 1) tracks held read (Aligned), ~240 MB of 4-min tracks at rerank 50.
RERANK_BLOCK = 64


# --- chroma -------------------------------------------------------------------------------


def chroma(cqt: np.ndarray | torch.Tensor, bins_per_octave: int = 12,
           fmin: float = 32.70319566257483, factor: int = 1) -> np.ndarray:
    """Pitch classes of a magnitude CQT.

    Args:
        cqt: ``(T, F)`` magnitudes (any positive scale), e.g. pooled store frames.
        bins_per_octave: of the CQT; a multiple of 12.
        fmin: centre of bin 0 in Hz; pitch class 0 is bin 0's.
        factor: mean-pool this many frames first (8 on the hop-512 CQT: 0.19-s frames).

    Returns:
        ``(T // factor, 12)`` float32: the magnitudes compressed (``CHROMA_COMPRESSION``),
        folded, and each frame divided by its maximum (silence stays 0).
    """
    if bins_per_octave % 12:
        raise ValueError(f"chroma needs a multiple of 12 bins per octave, got {bins_per_octave}")
    x = np.asarray(cqt, dtype=np.float32)
    t = x.shape[0] // factor
    x = x[: t * factor].reshape(t, factor, x.shape[1]).mean(axis=1)  # (T', F)
    x = np.log1p(CHROMA_COMPRESSION / max(float(x.max()), 1e-12) * np.clip(x, 0.0, None))
    per_class = bins_per_octave // 12
    freqs = fmin * 2.0 ** (np.arange(x.shape[1]) / bins_per_octave)
    first = int(np.searchsorted(freqs, CHROMA_MIN_HZ))
    first -= first % bins_per_octave  # whole octaves, so every class folds the same octaves
    usable = (x.shape[1] - first) // bins_per_octave * bins_per_octave
    folded = x[:, first : first + usable].reshape(t, -1, 12, per_class).sum(axis=(1, 3))
    return (folded / np.maximum(folded.max(axis=1, keepdims=True), 1e-12)).astype(np.float32)


def transposition(query: np.ndarray, candidate: np.ndarray) -> int:
    """OTI: the shift ``k`` for which ``np.roll(candidate, k, axis=1)`` best matches
    ``query`` by their global ``(12,)`` chroma profiles (both ``(T, 12)``)."""
    return _oti(_profile(query), _rolled(_profile(candidate)))


def _profile(x: np.ndarray) -> np.ndarray:
    """``(12,)`` global chroma profile of ``(T, 12)`` chroma, scaled to maximum 1."""
    g = x.sum(axis=0)
    return g / max(float(g.max()), 1e-12)


def _rolled(profile: np.ndarray) -> np.ndarray:
    """``(12, 12)``: row ``k`` is ``(12,)`` ``profile`` rolled by ``k`` pitch classes."""
    return np.stack([np.roll(profile, k) for k in range(12)])


def _oti(query_profile: np.ndarray, rolled: np.ndarray) -> int:
    """The row of ``rolled`` (:func:`_rolled`) that best matches ``query_profile``."""
    return int(np.argmax([query_profile @ row for row in rolled]))


def _stacked(x: np.ndarray, stack: int) -> np.ndarray:
    """``(..., T, 12)`` -> ``(..., max(1, T - stack + 1), 12 * stack)`` delay-embedded frames
    (a track shorter than ``stack`` is padded with silence)."""
    t = x.shape[-2]
    if t < stack:
        x = np.concatenate([x, np.zeros((*x.shape[:-2], stack - t, x.shape[-1]), x.dtype)], -2)
    t = x.shape[-2] - stack + 1
    return np.concatenate([x[..., i : t + i, :] for i in range(stack)], axis=-1)


@dataclass(frozen=True)
class Aligned:
    """One track's chroma, read once for all the pairs it is aligned in (:meth:`of`)."""

    profile: np.ndarray  # (12,) global chroma, maximum 1
    rolled: np.ndarray  # (12, 12) the profile rolled by 0..11 pitch classes
    stacked: np.ndarray  # (T', 12 * stack) delay-embedded frames, C-contiguous

    @classmethod
    def of(cls, x: np.ndarray, stack: int) -> Aligned:
        """``x``: ``(T, 12)`` chroma (:func:`chroma`)."""
        x = np.asarray(x, np.float32)
        profile = _profile(x)
        return cls(profile, _rolled(profile), np.ascontiguousarray(_stacked(x, stack)))

    def shifted_t(self, k: int) -> np.ndarray:
        """``(12 * stack, T')`` C-contiguous: the stacked frames of the chroma rolled by
        ``k`` pitch classes, transposed (rolling each stacked frame's 12-blocks is rolling
        the chroma before stacking)."""
        t, d = self.stacked.shape
        blocks = self.stacked.reshape(t, d // 12, 12)
        return np.ascontiguousarray(np.roll(blocks, k, axis=2).reshape(t, d).T)


@numba.njit(cache=True, nogil=True, fastmath=True)
def _squared_distances(q: np.ndarray, c_t: np.ndarray) -> np.ndarray:  # pragma: no cover - jit
    """``(n, d)`` and ``(d, m)`` -> ``(n, m)`` squared Euclidean distances. Written out so
    that it runs on one core whatever BLAS would do (small products, busy machines)."""
    n, d = q.shape
    m = c_t.shape[1]
    c_norm = np.zeros(m, dtype=np.float32)
    for k in range(d):
        for j in range(m):
            c_norm[j] += c_t[k, j] * c_t[k, j]
    out = np.empty((n, m), dtype=np.float32)
    for i in range(n):
        q_norm = np.float32(0.0)
        for k in range(d):
            q_norm += q[i, k] * q[i, k]
        for j in range(m):
            out[i, j] = q_norm + c_norm[j]
        for k in range(d):
            w = np.float32(-2.0) * q[i, k]
            for j in range(m):
                out[i, j] += w * c_t[k, j]
    return out


@numba.njit(cache=True, nogil=True)
def _within(dist: np.ndarray, row_limit: np.ndarray,
            col_limit: np.ndarray) -> np.ndarray:  # pragma: no cover - jit
    """``(n, m)`` bool: ``dist[i, j]`` within both ``row_limit[i]`` and ``col_limit[j]``."""
    n, m = dist.shape
    out = np.empty((n, m), dtype=np.bool_)
    for i in range(n):
        for j in range(m):
            out[i, j] = dist[i, j] <= row_limit[i] and dist[i, j] <= col_limit[j]
    return out


def _recurrences(q: np.ndarray, c_t: np.ndarray, kappa: float) -> np.ndarray:
    """The cross-recurrence plot of ``(n', d)`` stacked frames and ``(d, m')`` transposed
    ones (see :func:`cross_recurrence`)."""
    dist = _squared_distances(q, c_t)  # (n', m')
    n, m = dist.shape
    row_k, col_k = math.ceil(kappa * m) - 1, math.ceil(kappa * n) - 1
    row_limit = np.partition(dist, row_k, axis=1)[:, row_k]  # (n',)
    col_limit = np.partition(dist.T, col_k, axis=1)[:, col_k]  # (m',)
    return _within(dist, row_limit, col_limit)


def cross_recurrence(query: np.ndarray, candidate: np.ndarray, stack: int,
                     kappa: float) -> np.ndarray:
    """Binary cross-recurrence plot of two ``(n, 12)`` and ``(m, 12)`` chroma.

    Returns:
        ``(n', m')`` bool, ``n' = max(1, n - stack + 1)``: True where the two stacked frames
        are each among the ``ceil(kappa * m')`` nearest of the query frame's row and the
        ``ceil(kappa * n')`` nearest of the candidate frame's column.
    """
    return _recurrences(Aligned.of(query, stack).stacked,
                        Aligned.of(candidate, stack).shifted_t(0), kappa)


@numba.njit(cache=True, nogil=True)
def _qmax(plot: np.ndarray, onset: float, extension: float) -> float:  # pragma: no cover - jit
    n, m = plot.shape
    score = np.zeros((n + 2, m + 2), dtype=np.float32)  # two rows and columns of zeros first
    best = 0.0
    for i in range(2, n + 2):
        for j in range(2, m + 2):
            a, b, c = score[i - 1, j - 1], score[i - 2, j - 1], score[i - 1, j - 2]
            if plot[i - 2, j - 2]:
                value = max(a, b, c) + 1.0
            else:  # a gap: the penalty is the onset's after a recurrence, else the extension's
                pa = onset if i >= 3 and j >= 3 and plot[i - 3, j - 3] else extension
                pb = onset if i >= 4 and j >= 3 and plot[i - 4, j - 3] else extension
                pc = onset if i >= 3 and j >= 4 and plot[i - 3, j - 4] else extension
                value = max(0.0, a - pa, b - pb, c - pc)
            score[i, j] = value
            best = max(best, value)
    return best


def qmax(plot: np.ndarray, onset: float = GAP_ONSET, extension: float = GAP_EXTENSION) -> float:
    """Serra's Qmax of one ``(n, m)`` bool cross-recurrence plot: the highest cumulative
    score of a local alignment (+1 per recurrence on the path, ``onset`` off when a path
    leaves the recurrences, ``extension`` for each further step outside them)."""
    return float(_qmax(np.ascontiguousarray(plot, dtype=np.bool_), onset, extension))


def alignment_score(query: np.ndarray, candidate: np.ndarray, cfg: ScoringConfig) -> float:
    """Qmax of a pair of ``(T, 12)`` chroma, divided by the square root of the candidate's
    stacked frames (a long candidate has more chances of a long run), the candidate
    shifted by the OTI or, with ``cfg.chroma_key == "all"``, the best of the 12 shifts."""
    return aligned_score(Aligned.of(query, cfg.chroma_stack),
                         Aligned.of(candidate, cfg.chroma_stack), cfg)


def aligned_score(query: Aligned, candidate: Aligned, cfg: ScoringConfig) -> float:
    """:func:`alignment_score` of two tracks read by :meth:`Aligned.of` (``cfg.chroma_stack``)."""
    shifts = range(12) if cfg.chroma_key == "all" else [_oti(query.profile, candidate.rolled)]
    best = max(qmax(_recurrences(query.stacked, candidate.shifted_t(k), cfg.chroma_kappa))
               for k in shifts)
    return best / math.sqrt(candidate.stacked.shape[0])


def load_kernels() -> None:
    """Load (or compile) the numba kernels of :func:`alignment_score` now, which its first
    call would otherwise do: 0.3 s from numba's disk cache."""
    x = np.eye(12, dtype=np.float32)
    alignment_score(x, x, ScoringConfig())


# --- the re-rank ---------------------------------------------------------------------------


def zscore(x: torch.Tensor) -> torch.Tensor:
    """``(..., K)`` standardised along the last axis (0 where it does not vary)."""
    std = x.std(dim=-1, keepdim=True, unbiased=False)
    return torch.where(std > 0, (x - x.mean(dim=-1, keepdim=True)) / std.clamp_min(1e-12), 0.0)


def shortlists(scores: torch.Tensor, query_indices: Sequence[int], k: int,
               valid: torch.Tensor | None = None) -> torch.Tensor:
    """``(Q, K')`` indices of each query's ``K' = min(k, usable)`` highest-scored other
    tracks, best first (the query itself and invalid tracks are never in it).

    Args:
        scores: ``(Q, N)`` similarities, one row per query.
        valid: ``(N,)`` bool, False for tracks that could not be embedded.
    """
    masked = scores.clone()
    masked[torch.arange(len(masked)), torch.as_tensor(query_indices)] = -math.inf
    if valid is not None:
        masked[:, ~valid] = -math.inf
    usable = int(torch.isfinite(masked).sum(dim=1).min()) if len(masked) else 0
    return masked.topk(min(k, usable), dim=1).indices


def fuse(model: torch.Tensor, alignment: torch.Tensor, weight: float) -> torch.Tensor:
    """``(Q, K)`` fused scores: ``weight * z(model) + (1 - weight) * z(alignment)``, each
    z-scored over its query's shortlist."""
    return weight * zscore(model) + (1.0 - weight) * zscore(alignment)


def reorder(scores: torch.Tensor, shortlist: torch.Tensor, fused: torch.Tensor) -> torch.Tensor:
    """``(Q, N)`` scores in which each query's shortlist is ranked by ``fused``.

    The shortlist's own scores, best first, are handed out again in the fused order, so
    the row keeps its values: the shortlist stays above every other track (which keep
    theirs) and a matrix of distances built from these scores keeps its range.

    Args:
        scores: ``(Q, N)`` similarities.
        shortlist: ``(Q, K)`` track indices, best first by ``scores``.
        fused: ``(Q, K)`` the new scores of the shortlist.
    """
    out = scores.clone()
    values = scores.gather(1, shortlist).sort(dim=1, descending=True).values  # (Q, K)
    order = fused.argsort(dim=1, descending=True, stable=True)  # (Q, K)
    out.scatter_(1, shortlist.gather(1, order), values)
    return out


def rerank(scores: torch.Tensor, query_indices: Sequence[int], chromas: Sequence[np.ndarray],
           cfg: ScoringConfig, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Each query's ``cfg.rerank`` best re-scored by alignment and re-ranked by the score
    fused with ``cfg.fusion_weight``.

    Args:
        scores: ``(Q, N)`` embedding similarities of each query with every track.
        query_indices: ``(Q,)`` the queries' track indices.
        chromas: ``(T_i, 12)`` chroma of every track (:func:`chroma`).
        valid: ``(N,)`` bool, False for tracks that could not be embedded.

    Returns:
        ``(Q, N)`` float32: :func:`reorder` of ``scores``.
    """
    scores = torch.as_tensor(scores, dtype=torch.float32)
    short = shortlists(scores, query_indices, cfg.rerank, valid)  # (Q, K)
    rows: list[list[float]] = []
    # The queries' rows on torch's threads (the alignment's kernels release the GIL).
    with ThreadPoolExecutor(max_workers=max(1, torch.get_num_threads())) as pool:
        for start in range(0, len(query_indices), RERANK_BLOCK):
            block = slice(start, start + RERANK_BLOCK)
            rows += _aligned_rows(pool, query_indices[block], short[block].tolist(), chromas, cfg)
    aligned = torch.tensor(rows, dtype=torch.float32).reshape(short.shape)
    return reorder(scores, short, fuse(scores.gather(1, short), aligned, cfg.fusion_weight))


def _aligned_rows(pool: ThreadPoolExecutor, queries: Sequence[int], shortlist: list[list[int]],
                  chromas: Sequence[np.ndarray], cfg: ScoringConfig) -> list[list[float]]:
    """:func:`aligned_score` of each query with each track of its shortlist, by ``pool``;
    each track is read (:meth:`Aligned.of`) once, and only for as long as the block lasts."""
    read: dict[int, Aligned] = {}

    def aligned(i: int) -> Aligned:
        if i not in read:  # two threads may both read a track: they store the same value
            read[i] = Aligned.of(chromas[i], cfg.chroma_stack)
        return read[i]

    def align_row(query: int, row: list[int]) -> list[float]:
        return [aligned_score(aligned(query), aligned(c), cfg) for c in row]

    return list(pool.map(align_row, queries, shortlist))
