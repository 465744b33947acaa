"""Segment-level matching: a track as overlapping windows, each embedded, and the rules that
score a pair of tracks from their ``(S_q, S_c)`` matrix of segment similarities.

One vector per track averages a shared section away when a version keeps only part of the
work (an excerpt, a medley, a long intro). Windows of ``ScoringConfig.segment_length``
pooled frames every ``segment_hop`` are cut from the track's model input, max-normalised
and zero-padded to the model's shortest input as training crops are (``train.data``), and
embedded (:func:`embed_segments`). With ``segment_source`` 'map' the same windows are read
off the track pass's own last feature map instead (:func:`map_segments`): nearly free, and
close to embedding them, though each window is not max-normalised on its own. A pair's
score is the track score blended with one rule over the segment pairs (``segment_rule``):
the best pair (``max``), the mean of the ``k`` best (``topk``) or the best run of ``k``
consecutive pairs along a diagonal (``diag``: the two tracks match over several windows in
the same order).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..config import FeatureConfig, ScoringConfig
from ..core.runtime import autocast
from ..model.cqtnet import CQTNet
from .embed import embed_batch


# Windows of one track at most: scoring a pair costs S_q x S_c window pairs, and a batch of
# tracks is padded to its longest, so one long track must not make every pair slow.
MAX_WINDOWS = 16


def padded_length(cfg: ScoringConfig) -> int:
    """Frames of each window's model input: the window, zero-padded to the model's minimum."""
    return max(cfg.segment_length, CQTNet.min_pooled_frames)


def segment_tempi(features: FeatureConfig) -> tuple[float, ...]:
    """The tempi segments are embedded at: the recipe's, else the package's."""
    return features.scoring.segment_tempo_scales or features.tempo_scales


# --- windows and their embeddings --------------------------------------------------------


def window_starts(n_frames: int, length: int, hop: int) -> list[int]:
    """First frame of each window of ``length`` frames, every ``hop``, in a track of
    ``n_frames`` pooled frames.

    A track no longer than ``length`` is one window. A longer one has at least two, spread
    evenly from its first frame to its last, their spacing the nearest to ``hop`` that
    leaves no frame out (at most ``length``): a tail is never dropped, and no window
    nearly repeats another when the track is a little longer than a multiple of ``hop``.
    A track that would need more than ``MAX_WINDOWS`` has that many, further apart (past
    ``MAX_WINDOWS * length`` frames, with gaps between them).
    """
    if n_frames < 1:
        raise ValueError(f"a track needs at least one pooled frame, got {n_frames}")
    span = n_frames - length  # frames the first window's start can move
    if span <= 0:
        return [0]
    gaps = max(1, math.floor(span / hop + 0.5), math.ceil(span / length))
    gaps = min(gaps, MAX_WINDOWS - 1)
    return [round(i * span / gaps) for i in range(gaps + 1)]


def cut_windows(x: np.ndarray | torch.Tensor, n_frames: int, cfg: ScoringConfig,
                eps: float) -> torch.Tensor:
    """A track's windows (``cfg.segment_length`` frames every ``cfg.segment_hop``) as model
    inputs.

    Args:
        x: ``(F, T')`` model input (``features.frontend.model_input``), of which the first
            ``n_frames`` frames are the track (the rest is padding).
        eps: ``FeatureConfig.eps``, added to each window's maximum.

    Returns:
        ``(S, F, P)`` float32, ``P = padded_length(cfg)``: each window zero-padded at the
        end and divided by its own maximum, as a training crop is.
    """
    length = cfg.segment_length
    x = torch.as_tensor(x, dtype=torch.float32)[:, : max(1, min(n_frames, x.shape[-1]))]
    starts = window_starts(x.shape[-1], length, cfg.segment_hop)
    out = x.new_zeros((len(starts), x.shape[0], padded_length(cfg)))
    for i, start in enumerate(starts):
        window = x[:, start : start + length]
        out[i, :, : window.shape[-1]] = window
    return out / (out.amax(dim=(1, 2), keepdim=True) + eps)


def track_frames(x: np.ndarray | torch.Tensor) -> int:
    """Frames of a ``(F, T')`` model input up to its last frame that is not all zero: the
    track without the padding ``preprocess`` added (and without trailing digital silence)."""
    playing = torch.as_tensor(x).abs().amax(dim=0) > 0  # (T',)
    return int(playing.nonzero().max()) + 1 if bool(playing.any()) else 1


@torch.inference_mode()
def embed_segments(model: CQTNet, tracks: Sequence[tuple[np.ndarray | torch.Tensor, int]],
                   features: FeatureConfig, device: torch.device, amp: bool,
                   batch_size: int = 16) -> list[torch.Tensor]:
    """The segment embeddings of each track, windowed by ``features.scoring``.

    The windows of all ``tracks`` go through the model together, ``batch_size`` at a time,
    each at every one of :func:`segment_tempi` (``embed.embed_batch``). A track's embeddings
    depend on the tracks embedded with it only by rounding; a caller that needs them bit
    for bit (a cache) embeds one track per call.

    Args:
        tracks: ``((F, T') model input, n_frames)`` per track (see :func:`cut_windows`).

    Returns:
        ``(S_i, D)`` float32 unit rows on the CPU per track, windows in time order.
    """
    cfg, tempi = features.scoring, segment_tempi(features)
    windows = [cut_windows(x, n, cfg, features.eps) for x, n in tracks]
    flat = torch.cat(windows) if windows else torch.empty(0, 1, padded_length(cfg))
    out = torch.empty(len(flat), model.cfg.embedding_dim)
    for start in range(0, len(flat), batch_size):
        batch = flat[start : start + batch_size, None].to(  # (B, 1, F, P)
            device, memory_format=torch.channels_last)
        with autocast(device, amp):
            out[start : start + len(batch)] = embed_batch(model, batch, tempi).float().cpu()
    return list(out.split([len(w) for w in windows]))


def map_segments(model: CQTNet, fmap: torch.Tensor, n_frames: int, cfg: ScoringConfig) -> torch.Tensor:
    """A track's segment embeddings read off its last feature map: the windows of
    :func:`window_starts`, each the run of columns starting nearest to it, max-pooled over
    those columns and projected as the whole map is (:meth:`CQTNet.embed_and_map`). A
    track whose windows fall on one run is one segment, its whole map: its own embedding.

    Args:
        fmap: ``(C, T'')`` the track's map, max-pooled over frequency (any device, dtype).
        n_frames: the track's frames without padding (:func:`track_frames`).
        cfg: a recipe that reads the map (``ScoringConfig.reads_map``: its windows lie on
            the map's column grid).

    Returns:
        ``(S, D)`` float32 unit rows on ``fmap``'s device, windows in time order.
    """
    width = CQTNet.map_columns(cfg.segment_length)
    last = max(fmap.shape[-1] - width, 0)
    firsts = sorted({min(round(start / CQTNet.column_stride), last)
                     for start in window_starts(n_frames, cfg.segment_length, cfg.segment_hop)})
    if len(firsts) == 1:
        pooled = fmap.amax(dim=1)[None]  # (1, C)
    else:
        pooled = torch.stack([fmap[:, c : c + width].amax(dim=1) for c in firsts])  # (S, C)
    return model.head(pooled)


def feature_map(model: CQTNet, x: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """``(C, T'')`` last feature map of one ``(F, T')`` model input, from a pass of its own
    on ``device`` (the caller's autocast applies): for :func:`map_segments` where the
    embedding pass's own map is not at hand."""
    batch = torch.as_tensor(x)[None, None].to(device, memory_format=torch.channels_last)
    return model.embed_and_map(batch)[1][0]


# --- scoring pairs from their segments ---------------------------------------------------


@dataclass(frozen=True)
class PackedSegments:
    """Segment embeddings of ``N`` tracks in one padded tensor.

    Attributes:
        embeddings: ``(N, S_max, D)`` float32; rows past a track's count are zero.
        counts: ``(N,)`` int64, windows per track (>= 1).
    """

    embeddings: torch.Tensor
    counts: torch.Tensor

    @classmethod
    def pack(cls, segments: Sequence[torch.Tensor | np.ndarray]) -> PackedSegments:
        """From ``(S_i, D)`` embeddings per track (each ``S_i >= 1``)."""
        counts = torch.tensor([len(s) for s in segments], dtype=torch.int64)
        if len(segments) == 0 or int(counts.min()) < 1:
            raise ValueError("every track needs at least one segment")
        emb = torch.zeros(len(segments), int(counts.max()), segments[0].shape[-1])
        for i, s in enumerate(segments):
            emb[i, : len(s)] = torch.as_tensor(s, dtype=torch.float32)
        return cls(emb, counts)

    def to(self, device: torch.device) -> PackedSegments:
        return PackedSegments(self.embeddings.to(device), self.counts.to(device))


def segment_scores(packed: PackedSegments, query_indices: Sequence[int], cfg: ScoringConfig,
                   max_elements: int = 1 << 25) -> torch.Tensor:
    """``cfg.segment_rule``'s score of each query against every track.

    Args:
        packed: the segments of all ``N`` tracks.
        query_indices: the tracks that are queries.
        max_elements: segment-pair similarities held at once (``Q_chunk * N * S_max**2``).

    Returns:
        ``(Q, N)`` float32 on ``packed``'s device, in [-1, 1].
    """
    emb, counts = packed.embeddings, packed.counts
    n, s_max, _ = emb.shape
    chunk = max(1, max_elements // max(1, n * s_max * s_max))
    valid = torch.arange(s_max, device=emb.device)[None] < counts[:, None]  # (N, S)
    rows = []
    for start in range(0, len(query_indices), chunk):
        q = torch.as_tensor(query_indices[start : start + chunk], device=emb.device)
        sims = torch.einsum("asd,ntd->anst", emb[q], emb)  # (a, N, S, S)
        mask = valid[q][:, None, :, None] & valid[None, :, None, :]
        rows.append(_reduce(sims, mask, counts[q], counts, cfg.segment_rule, cfg.segment_k))
    return torch.cat(rows)


def _reduce(sims: torch.Tensor, mask: torch.Tensor, q_counts: torch.Tensor,
            c_counts: torch.Tensor, rule: str, k: int) -> torch.Tensor:
    """``(a, N, S, S)`` segment similarities and their validity -> ``(a, N)`` rule scores."""
    sims = sims.masked_fill(~mask, -math.inf)
    if rule == "max":
        return sims.amax(dim=(2, 3))
    if rule == "topk":
        flat = sims.flatten(2)  # (a, N, S*S)
        top = flat.topk(min(k, flat.shape[-1]), dim=-1).values  # (a, N, k')
        pairs = (q_counts[:, None] * c_counts[None]).clamp(max=top.shape[-1])  # (a, N)
        kept = torch.arange(top.shape[-1], device=top.device) < pairs[..., None]
        return torch.where(kept, top, 0.0).sum(-1) / pairs
    return _best_diagonal_run(sims, q_counts, c_counts, k)


def _best_diagonal_run(sims: torch.Tensor, q_counts: torch.Tensor, c_counts: torch.Tensor,
                       k: int) -> torch.Tensor:
    """``(a, N)``: the best mean over ``w`` consecutive cells ``(i + t, j + t)`` of each
    ``(S, S)`` matrix, ``w = min(k, S_q, S_c)`` per pair (invalid cells are ``-inf``)."""
    s = sims.shape[-1]
    w_max = min(k, s)
    by_length = []  # best run of each length 1..w_max, (a, N) each
    total = torch.zeros_like(sims)
    for w in range(1, w_max + 1):
        total = total[..., : s - w + 1, : s - w + 1] + sims[..., w - 1 :, w - 1 :]
        by_length.append(total.amax(dim=(2, 3)) / w)
    w_pair = torch.minimum(q_counts[:, None], c_counts[None]).clamp(max=w_max)  # (a, N)
    return torch.stack(by_length, -1).gather(-1, (w_pair - 1)[..., None]).squeeze(-1)


def one_window_pairs(packed: PackedSegments, query_indices: Sequence[int]) -> torch.Tensor:
    """``(Q, N)`` bool: True where both tracks are a single window."""
    single = packed.counts == 1  # (N,)
    return single[torch.as_tensor(query_indices, device=single.device)][:, None] & single[None]


def blend(track: torch.Tensor, segment: torch.Tensor, one_window: torch.Tensor,
          cfg: ScoringConfig) -> torch.Tensor:
    """``(Q, N)`` pair similarities: ``(1 - w) * track + w * segment``, ``w =
    cfg.segment_weight``, except the track score alone where ``one_window``
    (:func:`one_window_pairs`): two tracks no longer than a window have nothing in their
    segments that their embeddings lack, but the segments' tempi."""
    mixed = (1.0 - cfg.segment_weight) * track + cfg.segment_weight * segment
    return torch.where(one_window, track, mixed)
