"""Making weight packages: from a ``.pth`` checkpoint (``weights import`` / ``export``), as a
copy of another package, or as another package's configs with new weights (``derive``).

Every package appears whole or not at all (written into a hidden folder beside it, then
moved into place) and never replaces one. The layout is described in :mod:`.weights`,
which reads and verifies packages; this module only writes them.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from ..config import FeatureConfig, ModelConfig, from_dict, to_dict
from ..core.atomic import FILE_MODE, atomic_open
from .weights import (CARD_FILE, CHECKED_FILES, CONFIG_FILE, MODEL_FILE, SUMS_FILE, WeightsError,
                      model_with_state, read_checkpoint, read_package_config, sha256_file,
                      verify_package)


def write_package(
    folder: Path,
    state: dict[str, torch.Tensor],
    model_cfg: ModelConfig,
    features: FeatureConfig,
    provenance: dict[str, Any],
    card: str,
    name: str | None = None,
) -> str:
    """Write a complete package (weights, config, card, checksums); return the model sha256.

    The state dict is checked by loading it into a fresh model with ``strict=True`` first.
    Only inference weights are written: optimizer and training state are dropped. The
    config's name is ``name`` (default: the folder's).
    """
    from safetensors.torch import save_file

    model_with_state(state, model_cfg, folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    tmp = folder / f".{MODEL_FILE}.tmp"
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.chmod(tmp, FILE_MODE)
    os.replace(tmp, folder / MODEL_FILE)
    config = {"name": name or folder.name, "model": to_dict(model_cfg), "features": to_dict(features),
              "provenance": {"created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                             **provenance}}
    with atomic_open(folder / CARD_FILE, "w", encoding="utf-8") as f:
        f.write(card)
    return _write_config_and_sums(folder, config)


def copy_package(source: Path, folder: Path, tempo_scales: tuple[float, ...] | None = None,
                 scoring: dict[str, Any] | None = None) -> str:
    """Copy the package at ``source`` to the new ``folder``, named after it in its config (the
    checksums follow), with the feature config's ``tempo_scales`` replaced when given and
    its scoring recipe's fields changed by ``scoring`` (``ScoringConfig``); return the model
    sha256. The copy appears whole or not at all.

    Raises:
        ValueError: ``tempo_scales`` or ``scoring`` out of range (``FeatureConfig``), or a
            bad source.
    """
    verify_package(source)
    config = {**read_package_config(source), "name": folder.name}  # errors name the source
    if tempo_scales is not None or scoring:
        features = dict(config["features"])
        if tempo_scales is not None:
            features["tempo_scales"] = tempo_scales
        if scoring:
            features["scoring"] = {**features.get("scoring", {}), **scoring}
        config["features"] = to_dict(from_dict(FeatureConfig, features))

    def write(staging: Path) -> str:
        shutil.copytree(source, staging)
        return _write_config_and_sums(staging, config)

    return _staged(folder, write)


def derive_package(source: Path, folder: Path, state: dict[str, torch.Tensor],
                   provenance: dict[str, Any], card_addition: str) -> str:
    """A new package at ``folder`` (whole or not at all): the weights ``state`` with the
    package ``source``'s configs, its provenance updated by ``provenance`` (and dated now)
    and its card followed by ``card_addition``; return the model sha256."""
    verify_package(source)
    cfg = read_package_config(source)
    card = (source / CARD_FILE).read_text("utf-8") if (source / CARD_FILE).is_file() else ""
    model_cfg = from_dict(ModelConfig, cfg["model"])
    features = from_dict(FeatureConfig, cfg["features"])
    kept = {k: v for k, v in cfg.get("provenance", {}).items() if k != "created"}  # it is new
    merged = {**kept, **provenance}
    return _staged(folder, lambda staging: write_package(
        staging, state, model_cfg, features, merged, card + card_addition, folder.name))


def _staged(folder: Path, write) -> str:
    """``write(staging)`` into a hidden folder beside the new ``folder``, then moved into
    place: the package appears whole or not at all, and never replaces one.

    Raises:
        WeightsError: ``folder`` exists.
    """
    if folder.exists():
        raise WeightsError(f"{folder} exists (choose another name, or remove it first)")
    staging = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        sha = write(staging)
        os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return sha


def _write_config_and_sums(folder: Path, config: dict[str, Any]) -> str:
    with atomic_open(folder / CONFIG_FILE, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")
    sums = "".join(f"{sha256_file(folder / name)}  {name}\n" for name in CHECKED_FILES)
    with atomic_open(folder / SUMS_FILE, "w", encoding="utf-8") as f:
        f.write(sums)
    return verify_package(folder)


def import_checkpoint(checkpoint: Path, folder: Path, card_file: Path | None = None) -> str:
    """Turn a ``.pth`` checkpoint into a package at the new ``folder`` (whole or not at all),
    with the model card ``card_file`` (default: one made from the checkpoint); return the
    model sha256."""
    state, model_cfg, features, provenance = read_checkpoint(checkpoint)
    model_with_state(state, model_cfg, checkpoint)  # refused naming it, not the staging folder
    try:
        card = (card_file.read_text("utf-8") if card_file
                else default_card(folder.name, model_cfg, provenance))
    except (OSError, UnicodeDecodeError) as err:
        reason = "not UTF-8" if isinstance(err, UnicodeDecodeError) else err.strerror
        raise WeightsError(f"{card_file}: cannot read the model card ({reason})") from err
    return _staged(folder, lambda staging: write_package(staging, state, model_cfg, features,
                                                         provenance, card, folder.name))


def default_card(name: str, model_cfg: ModelConfig, provenance: dict[str, Any]) -> str:
    """A minimal model card for an imported checkpoint, stating where it came from."""
    lines = [f"# {name}", "",
             f"CQT-Net (c={model_cfg.channels}, {model_cfg.embedding_dim}-d embeddings), "
             f"imported from `{provenance.get('source_file')}` "
             f"(sha256 `{provenance.get('source_sha256')}`) with `mirex-vi weights import`.", "",
             "## Provenance", ""]
    lines += [f"- {k}: {json.dumps(v)}" for k, v in provenance.items() if k != "config"]
    return "\n".join(lines) + "\n"
