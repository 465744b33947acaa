"""What makes a track's embedding and score: the front end, the model's size, the scoring recipe.

A ``FeatureConfig`` and a ``ModelConfig`` are saved beside every set of weights, so that
training and inference cannot disagree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .base import FEATURE_BOUNDS, MODEL_BOUNDS, Bounds, _check_bounds, _tempo_scales, to_dict

SEGMENT_RULES = ("max", "topk", "diag")
SEGMENT_SOURCES = ("windows", "map")
CHROMA_KEYS = ("oti", "all")
SEGMENT_LENGTH_BOUNDS = Bounds(8, 2000)  # pooled frames, when segments are on
# CQT-Net's last feature map (model.cqtnet): one column for its shortest input, 172 pooled
# frames, and one more every 16 frames; segments read off the map lie on that grid.
MAP_MIN_FRAMES, MAP_STRIDE = 172, 16
SCORING_BOUNDS = {
    "segment_length": Bounds(0, 2000),  # 0: off; else SEGMENT_LENGTH_BOUNDS
    "segment_hop": Bounds(0, 2000),  # in [1, segment_length] when segments are on
    "segment_k": Bounds(1, 64),
    "segment_weight": Bounds(0, 1),
    "rerank": Bounds(0, 10_000),
    "fusion_weight": Bounds(0, 1),
    "chroma_stack": Bounds(1, 32),
    "chroma_kappa": Bounds(0, 1, low_open=True),
}


@dataclass(frozen=True)
class ScoringConfig:
    """How a pair of tracks is scored beyond the inner product of their embeddings; all off
    by default (``inference.segments``, ``inference.align``).

    With ``segment_length`` > 0 each track is also embedded as windows of that many pooled
    frames every ``segment_hop``, at ``segment_tempo_scales`` (empty: the package's
    ``tempo_scales``; one tempo is as good on real covers and a third of the work), and a
    pair scores ``(1 - segment_weight) * track + segment_weight * rule`` over its segment
    pairs: ``max``, ``topk`` (mean of the ``segment_k`` best) or ``diag`` (best mean of
    ``segment_k`` consecutive pairs along a diagonal). With ``segment_source`` 'map' the
    windows are read off the one tempo-1 pass's last feature map instead of embedded each
    (length ``172 + 16k``, hop a multiple of 16; ``inference.segments.map_segments``).
    With ``rerank`` = K > 0 each query's K best are re-scored by chroma alignment (Qmax
    over ``chroma_stack`` stacked frames, ``chroma_kappa`` nearest neighbours, key by
    ``oti`` or ``all`` 12) and re-ordered by
    ``fusion_weight * z(model) + (1 - fusion_weight) * z(alignment)``.
    """

    segment_length: int = 0
    segment_hop: int = 0
    segment_tempo_scales: tuple[float, ...] = (1.0,)
    segment_source: str = "windows"
    segment_rule: str = "diag"
    segment_k: int = 2
    segment_weight: float = 0.75
    rerank: int = 0
    fusion_weight: float = 0.7
    chroma_stack: int = 3
    chroma_kappa: float = 0.1
    chroma_key: str = "oti"

    def __post_init__(self) -> None:
        scales = self.segment_tempo_scales
        object.__setattr__(self, "segment_tempo_scales", _tempo_scales(
            "ScoringConfig.segment_tempo_scales", scales) if scales else ())
        _check_bounds(self, SCORING_BOUNDS)
        name = type(self).__name__
        if self.segment_length and not SEGMENT_LENGTH_BOUNDS.admits(self.segment_length):
            raise ValueError(f"{name}.segment_length must be 0 (off) or "
                             f"{SEGMENT_LENGTH_BOUNDS.describe()}, got {self.segment_length}")
        if self.segment_length and not 1 <= self.segment_hop <= self.segment_length:
            raise ValueError(f"{name}.segment_hop must be in [1, segment_length="
                             f"{self.segment_length}], got {self.segment_hop}")
        for field_name, allowed in (("segment_rule", SEGMENT_RULES), ("chroma_key", CHROMA_KEYS),
                                    ("segment_source", SEGMENT_SOURCES)):
            if getattr(self, field_name) not in allowed:
                raise ValueError(f"{name}.{field_name} must be one of {', '.join(allowed)}, "
                                 f"got {getattr(self, field_name)!r}")
        if self.reads_map:
            self._check_map_grid()

    @property
    def reads_map(self) -> bool:
        """Whether segments are on and read off the feature map."""
        return bool(self.segment_length) and self.segment_source == "map"

    def _check_map_grid(self) -> None:
        length, hop = self.segment_length, self.segment_hop
        if length < MAP_MIN_FRAMES or (length - MAP_MIN_FRAMES) % MAP_STRIDE or hop % MAP_STRIDE:
            raise ValueError(f"segments read off the feature map need a length of "
                             f"{MAP_MIN_FRAMES} + {MAP_STRIDE}k pooled frames and a hop that "
                             f"is a multiple of {MAP_STRIDE}, got {length},{hop}")
        if self.segment_tempo_scales not in ((), (1.0,)):
            raise ValueError("segments read off the feature map come from the pass at tempo 1, "
                             f"not at {list(self.segment_tempo_scales)}")

    def describe(self) -> str:
        """What is on, for the matrix's first line: ``segments 172,48 map diag2 w=0.75,
        re-rank 50 W=0.7``, or ``plain`` when nothing is."""
        parts = []
        if self.segment_length:
            source = " map" if self.segment_source == "map" else ""
            parts.append(f"segments {self.segment_length},{self.segment_hop}{source} "
                         f"{self.segment_rule}{self.segment_k} w={self.segment_weight:g}")
        if self.rerank:
            parts.append(f"re-rank {self.rerank} W={self.fusion_weight:g}")
        return ", ".join(parts) or "plain"


@dataclass(frozen=True)
class FeatureConfig:
    """CQT front end and its preprocessing (docs/REFERENCE.md §1)."""

    sample_rate: int = 22050
    hop_length: int = 512
    n_bins: int = 84
    bins_per_octave: int = 12
    fmin: float = 32.70319566257483  # C1, librosa's default
    downsample_factor: int = 20  # mean-pool this many CQT frames into one
    min_frames: int = 4000  # zero-pad shorter tracks to this many frames at inference
    crop_frames: int = 7600  # random crop length in training
    min_crop_frames: int = 0  # > 0: crop lengths uniform in [this, crop_frames] (not the report)
    eps: float = 1e-6  # added to the max before max-normalisation
    # Embed every input at each of these tempi (its pooled time axis resampled by the
    # factor) and average the embeddings; (1.0,) is one plain pass, as in the report.
    tempo_scales: tuple[float, ...] = (1.0,)
    # How pairs are scored at inference: the package's recipe (plain inner products by default).
    scoring: ScoringConfig = field(default_factory=ScoringConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tempo_scales",
                           _tempo_scales("FeatureConfig.tempo_scales", self.tempo_scales))
        _check_bounds(self, FEATURE_BOUNDS)
        if self.scoring.reads_map and self.tempo_scales != (1.0,):
            raise ValueError(f"segments read off the feature map need one pass at tempo 1, "
                             f"not tempo_scales {list(self.tempo_scales)}: use "
                             "segment_source 'windows'")
        # The band up to one bin above the top bin must stay below Nyquist (a margin wider
        # than librosa's filter bandwidth); compared in octaves, which cannot overflow.
        octaves_above_fmin = self.n_bins / self.bins_per_octave
        if octaves_above_fmin > math.log2(self.sample_rate / 2 / self.fmin):
            raise ValueError(
                f"FeatureConfig.n_bins: {self.n_bins} bins from fmin {self.fmin:g} Hz at "
                f"{self.bins_per_octave} per octave pass the Nyquist frequency of sample_rate "
                f"{self.sample_rate} ({self.sample_rate / 2:g} Hz)")

    @property
    def frame_rate(self) -> float:
        """CQT frames per second (43.07 for the defaults)."""
        return self.sample_rate / self.hop_length


@dataclass(frozen=True)
class ModelConfig:
    """CQT-Net size: ``channels`` is c in docs/REFERENCE.md §2."""

    channels: int = 40
    embedding_dim: int = 512

    def __post_init__(self) -> None:
        _check_bounds(self, MODEL_BOUNDS)


# Named sizes. "mirex" is the submitted model, "ismir2024" the paper's Discogs-VINet,
# "tiny" a fast model for tests.
MODEL_SIZES: dict[str, ModelConfig] = {
    "mirex": ModelConfig(channels=40, embedding_dim=512),
    "ismir2024": ModelConfig(channels=32, embedding_dim=512),
    "tiny": ModelConfig(channels=4, embedding_dim=16),
}


def embedding_features(features: FeatureConfig) -> dict[str, Any]:
    """``to_dict(features)`` less its scoring recipe: what makes a track's embedding, so
    what keys the embedding cache and an index's manifest."""
    return {k: v for k, v in to_dict(features).items() if k != "scoring"}
