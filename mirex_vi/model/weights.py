"""Weight packages: verified, self-describing folders of model weights.

A package ``weights/<name>/`` holds

- ``model.safetensors``: the CQT-Net state dict (authors' key names);
- ``config.json``: ``{"name", "model": ModelConfig, "features": FeatureConfig, "provenance"}``,
  the provenance holding the source checkpoint's name and sha256, its epoch, figures,
  training config and git commit, and ``init_sha256``: the sha256 of the weights that
  training started from (null for a random start; absent for the authors' checkpoint);
- ``MODEL_CARD.md``: what it was trained on, how, and how well it does;
- ``SHA256SUMS``: ``sha256sum`` lines for the two files above, checked before every load.

The authors' pickled ``model_checkpoint.pth`` (and this project's training checkpoints,
which use the same keys) are read with ``torch.load(weights_only=True)`` only. This module
finds, verifies and loads packages; :mod:`.packaging` writes them.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import FeatureConfig, ModelConfig, from_dict
from .cqtnet import CQTNet


MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "MODEL_CARD.md"
SUMS_FILE = "SHA256SUMS"
CHECKED_FILES = (MODEL_FILE, CONFIG_FILE)

# The package that identification uses when --weights is not given.
DEFAULT_WEIGHTS = "vinet-mirex-synth"


class WeightsError(ValueError):
    """A weight package or checkpoint that cannot be used; the message says why."""


@dataclass(frozen=True)
class LoadedWeights:
    """A ready model with the feature config it was trained with."""

    model: CQTNet
    features: FeatureConfig
    name: str
    sha256: str  # of model.safetensors (or of the .pth file): part of every cache key


def weights_root() -> Path:
    """Where named packages live: ``$MIREX_VI_WEIGHTS_DIR``, else the repository's ``weights/``."""
    env = os.environ.get("MIREX_VI_WEIGHTS_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "weights"


def list_packages(root: Path | None = None) -> list[Path]:
    root = root or weights_root()
    return sorted(p for p in root.glob("*") if (p / SUMS_FILE).is_file()) if root.is_dir() else []


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_package(folder: Path) -> str:
    """Check every file listed in ``SHA256SUMS``; return the model's sha256.

    Raises:
        WeightsError: missing file, unlisted required file, or a checksum mismatch.
    """
    sums_path = folder / SUMS_FILE
    if not sums_path.is_file():
        raise WeightsError(f"{folder}: not a weight package (no {SUMS_FILE})")
    expected = _parse_sums(sums_path)
    for required in CHECKED_FILES:
        if required not in expected:
            raise WeightsError(f"{sums_path}: no checksum for {required}")
    for name, digest in expected.items():
        path = folder / name
        if not path.is_file():
            raise WeightsError(f"{folder}: {name} is missing")
        try:
            actual = sha256_file(path)
        except OSError as err:
            raise WeightsError(f"{path}: cannot read it ({err.strerror})") from err
        if actual != digest:
            raise WeightsError(
                f"{path}: sha256 mismatch (expected {digest}, got {actual}); "
                "the file is corrupt or was modified"
            )
    return expected[MODEL_FILE]


def resolve_weights(spec: str | Path | None) -> Path:
    """A package folder, a package name under :func:`weights_root`, or a ``.pth`` file
    (None: the default package).

    Raises:
        WeightsError: ``spec`` names none of these, or is empty (an unset shell variable
            would otherwise pass for the default).
    """
    if spec is not None and not str(spec).strip():
        raise WeightsError(f"weights {str(spec)!r}: empty; leave the option out for the "
                           f"default package ({DEFAULT_WEIGHTS})")
    spec = str(spec if spec is not None else DEFAULT_WEIGHTS)
    path = Path(spec)
    if os.path.isfile(path) and path.suffix in (".pth", ".pt"):  # os.path: a bad name is False
        return path
    if os.path.isdir(path):
        return path
    named = weights_root() / spec
    if os.path.isdir(named):
        return named
    known = ", ".join(p.name for p in list_packages()) or "none"
    raise WeightsError(f"weights {spec!r} not found: not a folder, a .pth file, or a package "
                       f"under {weights_root()} (known: {known})")


def weight_files(spec: str | Path | None) -> list[Path]:
    """The files that loading ``spec`` reads: the ``.pth`` file, or the package's files.

    Raises:
        WeightsError: ``spec`` names no weights (see :func:`resolve_weights`).
    """
    path = resolve_weights(spec)
    return [path] if path.is_file() else [path / n for n in (*CHECKED_FILES, CARD_FILE, SUMS_FILE)]


def load_weights(spec: str | Path | None = None) -> LoadedWeights:
    """Verify and load a package (or an authors'-format checkpoint) into an eval-mode model.

    Raises:
        WeightsError: the weights are missing, corrupt, unsafe, or their configs are out of
            range or do not fit each other (naming the file and the field).
    """
    path = resolve_weights(spec)
    if path.is_file():
        state, model_cfg, features, _ = read_checkpoint(path)
        model = model_with_state(state, model_cfg, path)
        _check_fit(model, features, path)
        return LoadedWeights(model, features, path.stem, sha256_file(path))
    return load_package(path)


def load_package(folder: Path) -> LoadedWeights:
    """Verify and load the package ``folder``: checksums, config ranges, tensors, model.

    Raises:
        WeightsError: as :func:`load_weights`.
    """
    sha = verify_package(folder)
    from safetensors.torch import load_file

    cfg = read_package_config(folder)
    try:
        model_cfg = from_dict(ModelConfig, cfg["model"])
        features = from_dict(FeatureConfig, cfg["features"])
    except ValueError as err:
        raise WeightsError(f"{folder / CONFIG_FILE}: {err}") from err
    try:
        state = load_file(folder / MODEL_FILE)
    except Exception as err:  # noqa: BLE001 - safetensors' own error type: not a valid file
        raise WeightsError(f"{folder / MODEL_FILE}: not a readable safetensors file ({err}); "
                           f"its {SUMS_FILE} entry matches, so the package was made from a "
                           "damaged file") from err
    model = model_with_state(state, model_cfg, folder)
    _check_fit(model, features, folder)
    return LoadedWeights(model, features, cfg.get("name", folder.name), sha)


def _check_fit(model: CQTNet, features: FeatureConfig, where: Path) -> None:
    """Refuse features whose inputs the model cannot take: too few frames after padding and
    pooling, or too few CQT bins for its convolutions (found by one forward pass of zeros).

    Raises:
        WeightsError: naming the field.
    """
    pooled = features.min_frames // features.downsample_factor
    if pooled < CQTNet.min_pooled_frames:
        raise WeightsError(
            f"{where}: features.min_frames {features.min_frames} pools (by downsample_factor "
            f"{features.downsample_factor}) to {pooled} frames; CQT-Net needs at least "
            f"{CQTNet.min_pooled_frames}")
    try:
        with torch.inference_mode():
            model(torch.zeros(1, 1, features.n_bins, CQTNet.min_pooled_frames))
    except RuntimeError as err:
        raise WeightsError(f"{where}: features.n_bins {features.n_bins} does not fit CQT-Net "
                           f"({err})") from err


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], ModelConfig, FeatureConfig, dict]:
    """State dict, model and feature configs, and provenance from a ``.pth`` checkpoint.

    Accepts the authors' dict (``model_state_dict`` + training state), this project's
    training checkpoints (the same keys plus ``config``), or a bare state dict. The model
    size is read off the tensors; features default to the report's recipe.
    """
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure is the same user error
        raise WeightsError(_refusal(path)) from err
    if not isinstance(ckpt, dict):
        raise WeightsError(f"{path}: expected a dict, got {type(ckpt).__name__}")
    state = ckpt.get("model_state_dict", ckpt)
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: model_state_dict is a {type(state).__name__}, not a state dict")
    state = {_strip_prefixes(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if "front_end.0.weight" not in state or "proj.lin.weight" not in state:
        raise WeightsError(f"{path}: no CQT-Net weights (front_end.0.weight / proj.lin.weight)")
    model_cfg = ModelConfig(channels=state["front_end.0.weight"].shape[0],
                            embedding_dim=state["proj.lin.weight"].shape[0])
    features = FeatureConfig()
    config = ckpt.get("config")
    if isinstance(config, dict) and isinstance(config.get("features"), dict):
        try:
            features = from_dict(FeatureConfig, config["features"])
        except ValueError as err:
            raise WeightsError(f"{path}: its training config: {err}") from err
    provenance = {
        "source_file": path.name,
        "source_sha256": sha256_file(path),
        **{k: _json_safe(ckpt[k]) for k in ("epoch", "train_loss", "mAP", "date_time",
                                             "git_commit", "val_metrics", "config",
                                             "init_sha256") if k in ckpt},
    }
    return state, model_cfg, features, provenance


def _refusal(path: Path) -> str:
    """Why ``torch.load(weights_only=True)`` refused ``path``, without torch's advice to
    load it unsafely: the file holds code (pickled objects beyond tensors), or is no
    checkpoint at all."""
    try:
        code = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - not a zip checkpoint: unreadable, whatever the cause
        code = []
    if code:
        return (f"{path}: holds code besides tensors ({', '.join(code[:3])}), which loading "
                "would run; it will not be loaded")
    return f"{path}: not a loadable checkpoint (not a PyTorch file, or a damaged one)"


def model_with_state(state: dict[str, torch.Tensor], model_cfg: ModelConfig,
                     where: Path) -> CQTNet:
    """An eval-mode CQT-Net holding ``state`` (``strict=True``); ``where`` names the source in
    the error. A NaN or infinite weight is refused: it makes every embedding non-finite, so
    every track would be skipped."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise WeightsError(f"{where}: {len(bad)} tensor(s) hold NaN or infinite values "
                           f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})")
    model = CQTNet(model_cfg)
    misfits = _misfits(state, model.state_dict())
    if misfits:
        raise WeightsError(f"{where}: weights do not fit CQT-Net {model_cfg}: "
                           f"{'; '.join(misfits[:3])}{'; ...' if len(misfits) > 3 else ''}")
    model.load_state_dict(state, strict=True)
    return model.eval()


def _misfits(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> list[str]:
    """Why ``state`` cannot load into a model whose state dict is ``expected``, one short
    phrase per tensor (torch's own message takes a line each)."""
    def shape(t: torch.Tensor) -> str:
        return "x".join(map(str, t.shape)) or "a scalar"

    return ([f"{k} is {shape(state[k])} in the weights, {shape(v)} in the model"
             for k, v in expected.items() if k in state and state[k].shape != v.shape]
            + [f"{k} is missing" for k in expected if k not in state]
            + [f"{k} is not in the model" for k in state if k not in expected])


def read_package_config(folder: Path) -> dict[str, Any]:
    """The package's ``config.json`` as a dict with ``model`` and ``features`` objects."""
    try:
        cfg = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8-sig"))
        if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict) \
                or not isinstance(cfg.get("features"), dict):
            raise ValueError("needs 'model' and 'features' objects")
        return cfg
    except (OSError, ValueError) as err:
        raise WeightsError(f"{folder / CONFIG_FILE}: invalid ({err})") from err


def _parse_sums(path: Path) -> dict[str, str]:
    sums = {}
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, ValueError) as err:
        raise WeightsError(f"{path}: cannot read it ({err})") from err
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64:
            raise WeightsError(f"{path}:{number}: not a 'sha256  filename' line")
        sums[name.lstrip("*")] = digest.lower()
    return sums


def _strip_prefixes(key: str) -> str:
    for prefix in ("module.", "_orig_mod."):
        key = key.removeprefix(prefix)
    return key


def _json_safe(value: Any) -> Any:
    """JSON-friendly copy of checkpoint metadata (tensors become numbers)."""
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    return value if isinstance(value, (int, float, str, bool, list, type(None))) else str(value)
