"""A package's scoring recipe (``FeatureConfig.scoring``) at inference: what each track
keeps besides its embedding, and how a block of query rows is re-scored with it.

Each track's model input gives, beside its embedding, its segment embeddings (``segments``;
with ``segment_source`` 'map' read off the embedding pass's own feature map) and its chroma
(``align.chroma`` of its pooled frames), so nothing is decoded twice; both are cached
beside the embedding (:meth:`Recipe.cache_key`). The rows of
inner products are then blended with the segment rule and their best K re-ranked by
alignment (:meth:`Recipe.rescorer`), in that order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from ..config import FeatureConfig, ScoringConfig
from ..core.runtime import autocast
from ..model.cqtnet import CQTNet
from . import align, segments

Rescore = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (rows, (q, N) sims) -> sims
CHROMA_VERSION = 1  # bump when align.chroma changes, so cached chroma is made again


@dataclass(frozen=True)
class Recipe:
    """The recipe ``features.scoring`` for a model; ``features`` is the package's config
    with the recipe in force (the package's own or one overridden on the command line)."""

    model: CQTNet
    features: FeatureConfig
    device: torch.device
    amp: bool
    batch_size: int = 16

    @classmethod
    def of(cls, model: CQTNet, features: FeatureConfig, scoring: ScoringConfig | None,
           device: torch.device, amp: bool, batch_size: int = 16) -> Recipe:
        """The recipe ``scoring``, or the package's own (``features.scoring``) when None."""
        if scoring is not None:
            features = replace(features, scoring=scoring)
        return cls(model, features, device, amp, batch_size)

    @property
    def scoring(self) -> ScoringConfig:
        return self.features.scoring

    @property
    def needs_extras(self) -> bool:
        """Whether tracks must keep more than their embedding."""
        return bool(self.scoring.segment_length or self.scoring.rerank)

    @property
    def wants_map(self) -> bool:
        """Whether segments are read off the track pass's feature map (``extras``' ``fmap``)."""
        return self.scoring.reads_map

    def cache_key(self) -> dict | None:
        """What makes a track's extras, for the cache (None: no extras)."""
        if not self.needs_extras:
            return None
        s, key = self.scoring, None
        if s.segment_length:
            key = [s.segment_length, s.segment_hop, list(segments.segment_tempi(self.features))]
            key += ["map"] if self.wants_map else []
        return {"segments": key, "chroma": CHROMA_VERSION}

    @torch.inference_mode()
    def extras(self, x: np.ndarray | torch.Tensor,
               fmap: torch.Tensor | None = None) -> dict[str, np.ndarray]:
        """A track's extras from its ``(F, T')`` model input: ``segments`` ``(S, D)`` float32
        (with segments on) and ``chroma`` ``(T, 12)`` float32 of its unpadded frames.

        Args:
            fmap: with :attr:`wants_map`, the ``(C, T'')`` feature map of the pass that
                embedded ``x`` (``CQTNet.embed_and_map``); None: made here by a pass of its own.
        """
        n = segments.track_frames(x)
        frames = torch.as_tensor(x, dtype=torch.float32)[:, :n].T.cpu().numpy()  # (T, F)
        out = {"chroma": align.chroma(frames, self.features.bins_per_octave, self.features.fmin)}
        if self.wants_map:
            with autocast(self.device, self.amp):
                if fmap is None:
                    fmap = segments.feature_map(self.model, x, self.device)
                rows = segments.map_segments(self.model, fmap, n, self.scoring)
            out["segments"] = rows.float().cpu().numpy()
        elif self.scoring.segment_length:
            out["segments"] = segments.embed_segments(self.model, [(x, n)], self.features,
                                                      self.device, self.amp,
                                                      self.batch_size)[0].numpy()
        return out

    def rescorer(self, extras: Sequence[dict[str, np.ndarray] | None], valid: np.ndarray,
                 device: torch.device) -> Rescore | None:
        """The re-scoring of blocks of query rows, or None for plain scoring.

        Args:
            extras: per track, its :meth:`extras` (None for a track that failed).
            valid: ``(N,)`` bool, False for tracks that could not be embedded: never in a
                shortlist, and their segments are never compared.
        """
        if not self.needs_extras:
            return None
        cfg, dim = self.scoring, self.model.cfg.embedding_dim
        packed = None
        if cfg.segment_length:
            packed = segments.PackedSegments.pack(
                [e["segments"] if e is not None else np.zeros((1, dim), np.float32)
                 for e in extras]).to(device)
        chromas = [e["chroma"] if e is not None else np.zeros((1, 12), np.float32)
                   for e in extras]
        valid_t = torch.as_tensor(np.asarray(valid, dtype=bool))

        def rescore(rows: torch.Tensor, sims: torch.Tensor) -> torch.Tensor:
            if packed is not None:
                queries = rows.tolist()
                sims = segments.blend(sims, segments.segment_scores(packed, queries, cfg),
                                      segments.one_window_pairs(packed, queries), cfg)
            if cfg.rerank:
                sims = align.rerank(sims.cpu(), rows.tolist(), chromas, cfg, valid_t).to(device)
            return sims

        return rescore
