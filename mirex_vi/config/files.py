"""YAML configs: ``base:`` chains and ``--set`` overrides, into the typed configs."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml

from .base import from_dict, to_dict
from .train import TrainConfig

T = TypeVar("T")

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
