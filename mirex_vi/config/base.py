"""The checks every config shares: typed fields, bounded numbers, dicts in and out."""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Any, TypeVar

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


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build a (possibly nested) frozen dataclass, rejecting unknown keys.

    Raises:
        ValueError: a key is not a field of ``cls``, naming the key.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)  # nested configs, resolved in their own module
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} key(s): {', '.join(unknown)}")
    kwargs = {}
    for name, value in data.items():
        sub = hints.get(name)
        sub = sub if isinstance(sub, type) and dataclasses.is_dataclass(sub) else None
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
