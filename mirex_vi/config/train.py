"""How a model is trained: the schedule, the batches, the stores, augmentation, distillation."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .base import MIX_SHARE_BOUNDS, TRAIN_BOUNDS, _check_bounds, _check_types, _tempo_scales, from_dict
from .features import MODEL_SIZES, FeatureConfig, ModelConfig

@dataclass(frozen=True)
class AugmentConfig:
    """CQT-domain augmentation of training crops (``mirex_vi.augment``); all off by default.

    Each op runs with its probability. Lengths count pooled frames, widths CQT bins, levels
    dB: pitch shift by ``-pitch_max_bins..pitch_max_bins`` bins; time stretch by a factor
    log-uniform in ``[stretch_min, stretch_max]``; a smooth spectral envelope (timbre, EQ)
    and a smooth gain over time within ``±envelope_db`` / ``±gain_db``, each a sum of
    ``*_terms`` random cosines; a noise floor at ``noise_db`` relative to the crop's peak;
    one time mask of up to ``time_mask_max`` frames and one frequency mask of up to
    ``freq_mask_max`` bins.
    """

    pitch_prob: float = 0.0
    pitch_max_bins: int = 6
    stretch_prob: float = 0.0
    stretch_min: float = 0.7
    stretch_max: float = 1.4
    envelope_prob: float = 0.0
    envelope_db: float = 10.0
    envelope_terms: int = 4
    gain_prob: float = 0.0
    gain_db: float = 6.0
    gain_terms: int = 3
    noise_prob: float = 0.0
    noise_db: float = -40.0
    time_mask_prob: float = 0.0
    time_mask_max: int = 20
    freq_mask_prob: float = 0.0
    freq_mask_max: int = 12

    def __post_init__(self) -> None:
        """Raises ValueError naming the first setting of the wrong type or out of range."""
        _check_types(self)
        for name in ("pitch", "stretch", "envelope", "gain", "noise", "time_mask", "freq_mask"):
            p = getattr(self, f"{name}_prob")
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"augment.{name}_prob={p} is not a probability")
        if not 0.0 < self.stretch_min <= self.stretch_max:
            raise ValueError(f"augment: need 0 < stretch_min={self.stretch_min} "
                             f"<= stretch_max={self.stretch_max}")
        for name in ("pitch_max_bins", "time_mask_max", "freq_mask_max"):
            if getattr(self, name) < 0:
                raise ValueError(f"augment.{name}={getattr(self, name)} must be >= 0")
        for name in ("envelope_terms", "gain_terms"):
            if getattr(self, name) < 1:
                raise ValueError(f"augment.{name}={getattr(self, name)} must be >= 1")


@dataclass(frozen=True)
class MixSource:
    """A further store of training cliques that ``train`` mixes with the main one
    (``TrainConfig.mix``): its features, its training split and its share of each batch's
    cliques (docs/training.md, "Several stores")."""

    features_dir: str = ""
    train_metadata: str = ""  # light JSON (.train split) or JSONL
    share: float = 0.0  # in (0, 1]; the shares of all extra sources sum to less than 1

    def __post_init__(self) -> None:
        _check_types(self)
        if not (math.isfinite(self.share) and MIX_SHARE_BOUNDS.admits(self.share)):
            raise ValueError(f"share must be {MIX_SHARE_BOUNDS.describe()}, got {self.share!r}")


def _mix_sources(value: Any) -> tuple[MixSource, ...]:
    """``TrainConfig.mix`` from YAML (a list of mappings) or code (MixSource items).

    Raises:
        ValueError: naming the item (``TrainConfig.mix.0: ...``) that is not a source, or
            when the shares leave the main source none.
    """
    if not isinstance(value, (list, tuple)):
        raise ValueError("TrainConfig.mix must be a list of {features_dir, train_metadata, "
                         f"share}}, got {value!r}")
    sources = []
    for i, item in enumerate(value):
        if not isinstance(item, (dict, MixSource)):
            raise ValueError(f"TrainConfig.mix.{i}: expected a mapping of features_dir, "
                             f"train_metadata and share, got {item!r}")
        try:
            sources.append(item if isinstance(item, MixSource) else from_dict(MixSource, item))
        except ValueError as err:
            raise ValueError(f"TrainConfig.mix.{i}: {err}") from err
    total = sum(m.share for m in sources)
    if sources and not round(1.0 - total, 9) > 0:
        raise ValueError(f"TrainConfig.mix: the shares sum to {total:g}, which leaves the main "
                         "source (features_dir, train_metadata) none: they must sum to < 1")
    return tuple(sources)


MAIN_SOURCE = "main"  # the name of the first training source when there are several


def _source_names(name: str, value: Any, known: tuple[str, ...]) -> tuple[str, ...]:
    """``value`` (a list of source names, or a tuple) as a tuple of distinct names.

    Raises:
        ValueError: naming the field ``name``, unless every item is one of ``known``, once.
    """
    items = value if isinstance(value, (list, tuple)) else None
    if items is None or not all(isinstance(v, str) and v in known for v in items) \
            or len(set(items)) != len(items):
        raise ValueError(f"{name} must name distinct training sources among "
                         f"{', '.join(known)}, got {value!r}")
    return tuple(items)


@dataclass(frozen=True)
class TrainConfig:
    """Training recipe (docs/REFERENCE.md §3); paths are filled in by the user."""

    train_metadata: str = ""  # light JSON (.train split) or JSONL
    val_metadata: str = ""  # light JSON (.val split); empty: no validation
    features_dir: str = ""
    output_dir: str = "runs/discogs-vinet-mirex"
    model: str = "mirex"  # a key of MODEL_SIZES
    init_weights: str = ""  # start from these weights (package or .pth); empty: random init
    init_sha256: str = ""  # pin: sha256 that init_weights must have; empty: not checked
    cliques_per_batch: int = 54
    versions_per_clique: int = 4
    epochs: int = 40
    warmup_epochs: int = 5
    lr_start: float = 1e-4
    lr_peak: float = 1e-2
    lr_end: float = 1e-5
    margin: float = 0.3
    seed: int = 27
    amp: bool = True  # fp16 autocast + GradScaler on CUDA; ignored on CPU
    num_workers: int = 2
    val_chunk_size: int = 1024
    max_val_frames: int = 0  # 0: full tracks in validation, as in the report
    cls_weight: float = 0.0  # > 0: add this x a BNNeck classification loss (not the report)
    label_smoothing: float = 0.1  # of the classification loss
    memory_size: int = 0  # > 0: hardest negatives also from the last N embeddings (not the report)
    val_features_dir: str = ""  # features of the val_metadata versions; empty: features_dir
    # Further training stores, each with its share of every batch's cliques; the main one
    # (features_dir, train_metadata) takes the rest (docs/training.md, "Several stores").
    mix: tuple[MixSource, ...] = ()
    # > 0: add this x mean(1 - cos) between the embedding and the init_weights model's at
    # teacher_tempo_scales, on the same crop (not the report)
    distill_weight: float = 0.0
    teacher_tempo_scales: tuple[float, ...] = (0.7, 1.0, 1.4)
    # The training sources whose crops are distilled: "main", "mix.0", ...; empty: all
    distill_sources: tuple[str, ...] = ()
    features: FeatureConfig = field(default_factory=FeatureConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # all off: the report

    def __post_init__(self) -> None:
        object.__setattr__(self, "mix", _mix_sources(self.mix))
        object.__setattr__(self, "teacher_tempo_scales", _tempo_scales(
            "TrainConfig.teacher_tempo_scales", self.teacher_tempo_scales))
        object.__setattr__(self, "distill_sources", _source_names(
            "TrainConfig.distill_sources", self.distill_sources, self.source_names))
        _check_bounds(self, TRAIN_BOUNDS)
        if self.model not in MODEL_SIZES:
            raise ValueError(f"TrainConfig.model must be one of {', '.join(MODEL_SIZES)}, "
                             f"got {self.model!r}")

    @property
    def model_config(self) -> ModelConfig:
        return MODEL_SIZES[self.model]

    @property
    def source_names(self) -> tuple[str, ...]:
        """The training sources' names: ``main``, then ``mix.0``, ``mix.1``, ..."""
        return (MAIN_SOURCE, *(f"mix.{i}" for i in range(len(self.mix))))

    @property
    def shares(self) -> tuple[float, ...]:
        """The share of each training source's cliques in a batch: the main one, then ``mix``."""
        return (1.0 - sum(m.share for m in self.mix), *(m.share for m in self.mix))
