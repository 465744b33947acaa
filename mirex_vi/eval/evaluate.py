"""Retrieval figures of a model on a labelled set (stored features or audio), or of a MIREX matrix.

``embed_cliques`` and ``score_embeddings`` are the two halves that benchmarks, ``whiten``
and ``search`` reuse: stored versions -> ``(N, D)`` embeddings -> figures.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.atomic import atomic_open
from ..core.runtime import amp_enabled, resolve_device
from ..io.lists import InputError, base_folder, read_labels
from ..io.matrix import iter_distance_matrix
from .metrics import RetrievalResult, metrics_from_distances, metrics_from_embeddings

if TYPE_CHECKING:
    import numpy as np
    import torch

    from ..config import FeatureConfig
    from ..inference.embed import TrackExtras
    from ..inference.recipe import Rescore
    from ..inference.settings import EmbedSettings
    from ..io.metadata import Cliques
    from ..model.cqtnet import CQTNet


RESCORED_ROWS = 256  # query rows re-scored by a recipe at once

FIGURE_NAMES = {"map": "MAP", "mr1": "MR1", "mrr": "MRR", "top1_rate": "Top-1 rate",
                "top10_count": "Top-10 count", "p_at_10": "P@10", "n_queries": "queries"}


def evaluate_matrix(matrix: Path, labels_tsv: Path) -> tuple[RetrievalResult, list[str]]:
    """Figures of a MIREX distance matrix; every listed track must have a label, and some
    query another track of its clique. Relative paths in the matrix are resolved against
    the matrix file's folder."""
    labels = read_labels(labels_tsv)
    parts = iter_distance_matrix(matrix)
    next(parts)  # the system name
    paths = [Path(os.path.abspath(base_folder(matrix) / p)) for p in next(parts)]
    missing = [str(p) for p in paths if p not in labels]
    if missing:
        raise InputError(f"{labels_tsv}: no label for {len(missing)} track(s) of {matrix}, e.g. "
                         + ", ".join(missing[:5]))
    cliques = [labels[p] for p in paths]
    result = metrics_from_distances(parts, cliques)
    if result.n_queries == 0:  # every figure would be NaN
        raise InputError(f"{matrix}: no query has another track of its clique among the "
                         f"matrix's tracks ({labels_tsv}); nothing to score")
    return result, cliques


def evaluate_features(metadata: Path, features_dir: Path, weights: str | None, device: str,
                      amp: bool, excerpt: float | None = None, progress: bool = True,
                      expand: int = 0, scoring: dict | None = None
                      ) -> tuple[RetrievalResult, list[str]]:
    """Figures of a model on a Discogs-VI split whose CQTs are stored under ``features_dir``
    (of their first ``excerpt`` seconds only, when given), scored as
    :func:`score_embeddings` with ``expand`` and the package's scoring recipe, changed by
    ``scoring`` (``ScoringConfig`` fields) when given.

    Raises:
        ValueError: ``scoring`` names a setting out of range.
    """
    from ..features.pooled import filter_available
    from ..io.metadata import read_metadata
    from ..model.weights import load_weights

    cliques = filter_available(read_metadata(metadata), features_dir)
    if not cliques:
        raise InputError(f"{metadata}: no clique with >= 2 versions has features in {features_dir}")
    loaded = load_weights(weights)
    return evaluate_cliques(loaded.model, with_scoring(loaded.features, scoring), cliques,
                            features_dir, resolve_device(device), amp, excerpt, progress, expand)


def with_scoring(cfg: FeatureConfig, scoring: dict | None) -> FeatureConfig:
    """``cfg`` with its scoring recipe's fields changed by ``scoring`` (ValueError when one
    is out of range)."""
    from dataclasses import replace

    return replace(cfg, scoring=replace(cfg.scoring, **scoring)) if scoring else cfg


def evaluate_cliques(model: CQTNet, cfg: FeatureConfig, cliques: Cliques, features_dir: Path,
                     device: torch.device, amp: bool, excerpt: float | None = None,
                     progress: bool = True, expand: int = 0) -> tuple[RetrievalResult, list[str]]:
    """Figures of ``model`` on the stored features of ``cliques`` (see :func:`embed_cliques`):
    every version a query against all others, scored by the recipe ``cfg.scoring`` (its
    segments and chroma made from the same stored features). Returns the result and the
    ``(N,)`` clique ids in embedding order."""
    import numpy as np

    from ..inference.recipe import Recipe

    recipe = Recipe(model, cfg, device, amp_enabled(device, amp))
    kept: dict[int, dict[str, np.ndarray]] = {}  # version index -> its extras
    emb, labels = embed_cliques(model, cfg, cliques, features_dir, device, amp, excerpt, progress,
                                recipe if recipe.needs_extras else None, kept.__setitem__)
    rescore = None
    if recipe.needs_extras:
        rescore = recipe.rescorer([kept[i] for i in range(len(emb))], np.ones(len(emb), bool),
                                  device)
    return score_embeddings(emb, labels, device, expand, progress, rescore), labels


def score_embeddings(emb: torch.Tensor, labels: list[str], device: torch.device, expand: int = 0,
                     progress: bool = False, rescore: Rescore | None = None) -> RetrievalResult:
    """Figures of ``(N, D)`` unit-norm embeddings with their ``(N,)`` clique ids, every one a
    query against all others; with ``expand`` > 0, after each is expanded by that many
    nearest neighbours (``scoring.expand_by_neighbours``), as ``identify --expand`` does;
    with ``rescore`` (``recipe.Recipe.rescorer``), each block of rows re-scored by it."""
    import numpy as np
    import torch

    from ..inference.scoring import expand_by_neighbours
    from .metrics import MetricAccumulator

    if expand:
        emb = torch.from_numpy(expand_by_neighbours(emb.cpu().numpy(), np.ones(len(emb), bool),
                                                    expand, device))
    if rescore is None:
        return metrics_from_embeddings(emb, labels, device=device, progress=progress)
    emb, acc = emb.to(device), MetricAccumulator(labels)
    for start in range(0, len(emb), RESCORED_ROWS):
        rows = torch.arange(start, min(start + RESCORED_ROWS, len(emb)), device=device)
        acc.add(rescore(rows, emb[rows] @ emb.T), rows)  # (q, N)
    return acc.result()


def embed_cliques(model: CQTNet, cfg: FeatureConfig, cliques: Cliques, features_dir: Path,
                  device: torch.device, amp: bool, excerpt: float | None = None,
                  progress: bool = True, extras: TrackExtras | None = None,
                  on_extras: Callable[[int, dict[str, np.ndarray]], None] = lambda i, kept: None,
                  ) -> tuple[torch.Tensor, list[str]]:
    """``(N, D)`` embeddings of every version of ``cliques`` from its stored features (a
    pooled store or the authors' layout; every version must have them), and their ``(N,)``
    clique ids.

    Each whole track, or with ``excerpt`` its first ``round(excerpt * cfg.frame_rate)`` CQT
    frames (on the pooling grid), becomes a model input as in validation
    (``features.stored.FullTrackDataset``) and is embedded on ``device`` at ``cfg.tempo_scales``.
    With ``extras`` (``inference.recipe.Recipe``), each version's extras go to ``on_extras``
    with its index (``inference.embed.embed_stream``).

    Raises:
        InputError: naming the versions whose embedding is zero or not finite.
    """
    from tqdm import tqdm

    from ..features.stored import FullTrackDataset
    from ..inference.embed import embed_stream

    frames = round(excerpt * cfg.frame_rate) if excerpt else 0
    if excerpt and frames < cfg.downsample_factor:
        raise InputError(f"--excerpt {excerpt}: shorter than one pooled frame "
                         f"({cfg.downsample_factor / cfg.frame_rate:.2f} s)")
    dataset = FullTrackDataset(cliques, features_dir, cfg, max_frames=frames, from_start=True)
    inputs = (dataset[i][0] for i in range(len(dataset)))
    with tqdm(total=len(dataset), desc="embed", unit="track", disable=not progress) as bar:
        emb = embed_stream(model.to(device), inputs, device, amp_enabled(device, amp),
                           on_chunk=bar.update, tempo_scales=cfg.tempo_scales, extras=extras,
                           on_extras=on_extras)
    unusable = [v.youtube_id for v, ok in zip(dataset.versions, _usable(emb)) if not ok]
    if unusable:  # never scored as if real: a zero vector ties with everything
        cause = "a stored CQT that is all zero or not finite"
        if amp_enabled(device, amp):
            cause += ", or an fp16 overflow: try --no-amp"
        more = ", ..." if len(unusable) > 10 else ""
        raise InputError(f"{features_dir}: {len(unusable)} stored version(s) give a zero or "
                         f"non-finite embedding ({cause}): {', '.join(unusable[:10])}{more}")
    return emb, [v.clique_id for v in dataset.versions]


def _usable(emb: torch.Tensor) -> list[bool]:
    """Per ``(N, D)`` embedding row: finite and not zero."""
    import torch

    return (torch.isfinite(emb).all(dim=1) & emb.ne(0).any(dim=1)).tolist()


def evaluate_audio(labels_tsv: Path, weights: str | None, settings: EmbedSettings,
                   progress: bool = True, expand: int = 0,
                   scoring: dict | None = None) -> tuple[RetrievalResult, list[str]]:
    """Figures of a model on the audio files of a labels TSV (decoded and embedded here
    with ``settings``), scored as :func:`score_embeddings` with ``expand`` and the
    package's scoring recipe, changed by ``scoring`` when given (as
    :func:`evaluate_features`)."""
    import numpy as np
    import torch
    from tqdm import tqdm

    from ..inference.tracks import embed_tracks
    from ..inference.recipe import Recipe
    from ..model.weights import load_weights

    labels = read_labels(labels_tsv)
    paths = list(labels)
    loaded = load_weights(weights)
    recipe = Recipe(loaded.model, with_scoring(loaded.features, scoring), settings.device,
                    settings.amp)
    with tqdm(total=len(paths), desc="embed", unit="track", disable=not progress) as bar:
        run = embed_tracks(paths, loaded, settings, on_track=bar.update,
                           extras=recipe if recipe.needs_extras else None)
    if run.errors:
        bad = "\n".join(f"  {paths[i]}: {reason}" for i, reason in sorted(run.errors.items()))
        raise InputError(f"{len(run.errors)} labelled track(s) could not be embedded:\n{bad}")
    cliques = [labels[p] for p in paths]
    emb = torch.from_numpy(run.embeddings)
    rescore = recipe.rescorer([run.extras.get(i) for i in range(len(paths))],
                              np.ones(len(paths), bool), settings.device)
    return score_embeddings(emb, cliques, settings.device, expand, progress, rescore), cliques


def format_figures(figures: dict) -> str:
    """One ``name: value`` line per figure, in the order of ``FIGURE_NAMES``."""
    lines = []
    for key, label in FIGURE_NAMES.items():
        value = figures[key]
        lines.append(f"{label:>13}: {value:.4f}" if isinstance(value, float) else f"{label:>13}: {value}")
    return "\n".join(lines)


def write_json(path: Path, figures: dict) -> None:
    with atomic_open(path, "w", encoding="utf-8") as f:
        json.dump({k: figures[k] for k in FIGURE_NAMES}, f, indent=2)
        f.write("\n")
