"""Typed, frozen configuration: the single source of truth for every constant.

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

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


@dataclass(frozen=True)
class Bounds:
    """The allowed range of a numeric config field: ``low <= value <= high``, or
    ``low < value`` when ``low_open``."""

    low: float
    high: float = math.inf
    low_open: bool = False

    def describe(self) -> str:
        if self.high < math.inf:
            return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"
        return f"> {self.low:g}" if self.low_open else f">= {self.low:g}"

    def admits(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        return above and value <= self.high


# Every field of FeatureConfig and ModelConfig, checked on construction (so on every load
# of a package, checkpoint or YAML config). The CQT's own limit, its band below the
# Nyquist frequency, is checked in FeatureConfig.__post_init__; what training and the
# model need of the crop and pad lengths, where they are used (data.py, weights.py).
FEATURE_BOUNDS = {
    "sample_rate": Bounds(1000, 384000),
    "hop_length": Bounds(1),
    "n_bins": Bounds(1),
    "bins_per_octave": Bounds(1),
    "fmin": Bounds(0, low_open=True),
    "downsample_factor": Bounds(1),
    "min_frames": Bounds(0),
    "crop_frames": Bounds(1),
    "min_crop_frames": Bounds(0),
    "eps": Bounds(0, low_open=True),
}
TEMPO_SCALE_BOUNDS = Bounds(0.25, 4)  # each of FeatureConfig.tempo_scales, teacher_tempo_scales
MODEL_BOUNDS = {"channels": Bounds(1), "embedding_dim": Bounds(1)}
# Every numeric training field, so that a bad value is refused as the config is read, not
# met as a traceback (a division by zero, a NaN loss) once the run folder is written.
TRAIN_BOUNDS = {
    "cliques_per_batch": Bounds(1),
    "versions_per_clique": Bounds(1),
    "epochs": Bounds(1),
    "warmup_epochs": Bounds(0),
    "lr_start": Bounds(0),
    "lr_peak": Bounds(0, low_open=True),  # the schedule is expressed as a fraction of it
    "lr_end": Bounds(0),
    "margin": Bounds(0),
    "seed": Bounds(0),  # numpy's generators take no negative seed
    "num_workers": Bounds(0),
    "val_chunk_size": Bounds(1),
    "max_val_frames": Bounds(0),
    "cls_weight": Bounds(0),
    "label_smoothing": Bounds(0, 1),
    "memory_size": Bounds(0),
    "distill_weight": Bounds(0),
}
MIX_SHARE_BOUNDS = Bounds(0, 1, low_open=True)  # each of TrainConfig.mix's shares


def _check_bounds(obj: Any, bounds: dict[str, Bounds]) -> None:
    """Check the types of ``obj``'s fields, then each bounded field's range.

    Raises:
        ValueError: naming the first field out of range, e.g. ``FeatureConfig.eps``.
    """
    _check_types(obj)
    for name, allowed in bounds.items():
        value = getattr(obj, name)
        if not (math.isfinite(value) and allowed.admits(value)):
            raise ValueError(f"{type(obj).__name__}.{name} must be {allowed.describe()}, "
                             f"got {value!r}")


def _tempo_scales(name: str, scales: Any) -> tuple[float, ...]:
    """``scales`` (a list, as JSON and YAML give it, or a tuple) as a tuple of floats.

    Raises:
        ValueError: naming the field ``name``, unless they are one or more numbers
            within ``TEMPO_SCALE_BOUNDS``.
    """
    items = scales if isinstance(scales, (list, tuple)) else ()
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in items)
    if not (items and numbers and all(math.isfinite(v) and TEMPO_SCALE_BOUNDS.admits(v)
                                      for v in items)):
        raise ValueError(f"{name} must be one or more numbers {TEMPO_SCALE_BOUNDS.describe()}, "
                         f"got {list(items) or scales!r}")
    return tuple(float(v) for v in items)


def _check_types(obj: Any) -> None:
    """Reject values of the wrong type (YAML ``"3"`` for an int), allowing int for float."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        expected = type(default)
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            object.__setattr__(obj, f.name, float(value))
        elif not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ValueError(
                f"{type(obj).__name__}.{f.name}: expected {expected.__name__}, got {value!r}"
            )


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

    def __post_init__(self) -> None:
        object.__setattr__(self, "tempo_scales",
                           _tempo_scales("FeatureConfig.tempo_scales", self.tempo_scales))
        _check_bounds(self, FEATURE_BOUNDS)
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


# Named sizes. "mirex" is the submitted model, "ismir2024" the paper's Discogs-VINet,
# "tiny" a fast model for tests.
MODEL_SIZES: dict[str, ModelConfig] = {
    "mirex": ModelConfig(channels=40, embedding_dim=512),
    "ismir2024": ModelConfig(channels=32, embedding_dim=512),
    "tiny": ModelConfig(channels=4, embedding_dim=16),
}


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
    features: FeatureConfig = field(default_factory=FeatureConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # all off: the report

    def __post_init__(self) -> None:
        object.__setattr__(self, "mix", _mix_sources(self.mix))
        object.__setattr__(self, "teacher_tempo_scales", _tempo_scales(
            "TrainConfig.teacher_tempo_scales", self.teacher_tempo_scales))
        _check_bounds(self, TRAIN_BOUNDS)
        if self.model not in MODEL_SIZES:
            raise ValueError(f"TrainConfig.model must be one of {', '.join(MODEL_SIZES)}, "
                             f"got {self.model!r}")

    @property
    def model_config(self) -> ModelConfig:
        return MODEL_SIZES[self.model]

    @property
    def shares(self) -> tuple[float, ...]:
        """The share of each training source's cliques in a batch: the main one, then ``mix``."""
        return (1.0 - sum(m.share for m in self.mix), *(m.share for m in self.mix))


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build a (possibly nested) frozen dataclass, rejecting unknown keys.

    Raises:
        ValueError: a key is not a field of ``cls``, naming the key.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} key(s): {', '.join(unknown)}")
    kwargs = {}
    for name, value in data.items():
        sub = _dataclass_type(fields[name])
        kwargs[name] = from_dict(sub, value) if sub and isinstance(value, dict) else value
    obj = cls(**kwargs)
    _check_types(obj)
    return obj


def parse_tempo_scales(text: str) -> tuple[float, ...]:
    """``"0.7,1,1.4"`` as ``(0.7, 1.0, 1.4)``; ranges are ``FeatureConfig``'s check.

    Raises:
        ValueError: an item is not a number.
    """
    return tuple(float(v) for v in text.split(","))


def to_dict(obj: Any) -> dict[str, Any]:
    """Plain nested dict of a config, for JSON/YAML and checkpoints (tuples become lists,
    which YAML's safe dumper can write)."""
    return dataclasses.asdict(obj, dict_factory=lambda items: {
        k: list(v) if isinstance(v, tuple) else v for k, v in items})


BASE_KEY = "base"


def load_yaml(path: str | Path, cls: type[T] = TrainConfig) -> T:
    """A config from a YAML file, after its ``base:`` chain (see the module docstring).

    Raises:
        ValueError: a file of the chain is not a mapping, holds an unknown key or a value
            of the wrong type (naming that file), or the chain comes back on itself.
    """
    return from_dict(cls, _resolve_chain(Path(path), cls, ()))


def _resolve_chain(path: Path, cls: type, seen: tuple[Path, ...]) -> dict[str, Any]:
    """The merged mapping of ``path`` over its bases; ``seen``: the files that include it."""
    path = path.resolve()
    if path in seen:
        chain = " -> ".join(str(p) for p in (*seen, path))
        raise ValueError(f"{path}: base chain is a cycle: {chain}")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        reason = err.strerror if isinstance(err, OSError) else _one_line(err)
        base_of = f" (the base of {seen[-1]})" if seen else ""
        raise ValueError(f"{path}{base_of}: not a readable YAML config ({reason})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    base = data.pop(BASE_KEY, None)
    try:
        from_dict(cls, data)  # each file's own keys and types, so errors name the file
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err
    if base is None:
        return data
    if not isinstance(base, str) or not base:
        raise ValueError(f"{path}: {BASE_KEY} must be a file name, got {base!r}")
    return _merge(_resolve_chain(path.parent / base, cls, (*seen, path)), data)


def _one_line(err: Exception) -> str:
    """A parser's message (YAML's spans lines, with a caret under the column) on one line."""
    return " ".join(str(err).split())


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``override``'s values; sections present in both merge key by key."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def with_overrides(cfg: T, assignments: list[str]) -> T:
    """Apply ``key=value`` overrides (``features.crop_frames=3600``, ``mix.0.share=0.3``: an
    item the list already holds, by its index); values parsed as YAML."""
    data = to_dict(cfg)
    for item in assignments:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} is not of the form key=value")
        *parents, leaf = key.strip().split(".")
        node = data
        for p in parents:
            slot = _slot(node, p)
            if slot is None or not isinstance(node[slot], (dict, list)):
                raise ValueError(f"override {item!r}: {p!r} is not a section or a list item")
            node = node[slot]
        slot = _slot(node, leaf)
        if slot is None:
            raise ValueError(f"override {item!r}: unknown key {key!r}")
        try:
            node[slot] = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise ValueError(f"override {item!r}: not a YAML value ({_one_line(err)})") from err
    return from_dict(type(cfg), data)


def _slot(node: dict | list, name: str) -> str | int | None:
    """Where ``name`` is in a section (its key) or a list (its index); None if nowhere."""
    if isinstance(node, dict):
        return name if name in node else None
    if isinstance(node, list) and name.isdigit() and int(name) < len(node):
        return int(name)
    return None


def _dataclass_type(f: dataclasses.Field) -> type | None:
    t = f.type if isinstance(f.type, type) else globals().get(str(f.type))
    return t if t is not None and dataclasses.is_dataclass(t) else None
