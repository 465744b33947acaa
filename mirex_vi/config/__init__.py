"""Typed, frozen configuration: the single source of truth for every constant.

``base`` holds the checks, ``features`` the front end, model and scoring recipe (saved with
every package), ``train`` the training run, ``files`` the YAML configs and ``--set``.

A ``FeatureConfig`` and a ``ModelConfig`` are saved beside every set of weights, so that
training and inference cannot disagree. Unknown keys are an error at load time, not a
silent ``None`` later (the fault that broke the authors' MIREX script), and so is a value
of the wrong type or, for every numeric feature, model and training field and every
augmentation setting, out of range (``FEATURE_BOUNDS``, ``MODEL_BOUNDS``, ``TRAIN_BOUNDS``,
``AugmentConfig``): the message names the field.

A YAML config may start from another: ``base: other.yaml`` (a path relative to the
including file) loads that file first, and this file's keys override its values; nested
sections such as ``features:`` merge key by key, lists (``mix:``) are replaced whole, and a
base may have a base of its own. ``--set`` (``with_overrides``) takes dotted keys, with an
item of a list named by its index (``mix.0.share=0.3``), or a whole value in YAML
(``mix=[{features_dir: F, train_metadata: M, share: 0.3}]``).
"""

from .base import (FEATURE_BOUNDS, MODEL_BOUNDS, TEMPO_SCALE_BOUNDS, TRAIN_BOUNDS, Bounds,
                   from_dict, parse_tempo_scales, to_dict)
from .features import (CHROMA_KEYS, MODEL_SIZES, SCORING_BOUNDS, FeatureConfig, ModelConfig,
                       ScoringConfig, embedding_features)
from .files import BASE_KEY, load_yaml, with_overrides
from .train import MAIN_SOURCE, AugmentConfig, MixSource, TrainConfig

__all__ = ["BASE_KEY", "CHROMA_KEYS", "FEATURE_BOUNDS", "MAIN_SOURCE", "MODEL_BOUNDS",
           "MODEL_SIZES", "SCORING_BOUNDS", "TEMPO_SCALE_BOUNDS", "TRAIN_BOUNDS",
           "AugmentConfig", "Bounds", "FeatureConfig", "MixSource", "ModelConfig",
           "ScoringConfig", "TrainConfig", "embedding_features", "from_dict", "load_yaml",
           "parse_tempo_scales", "to_dict", "with_overrides"]
