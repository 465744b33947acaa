"""Within-clique covariance normalisation (WCCN) of a package's embeddings, folded into its
last layer.

Cosine scoring weighs every direction of the 512-d embedding alike, although versions of
one work differ along some directions far more than along others. WCCN (Hatch, Kajarekar
& Stolcke, 2006) rescales them: with ``S`` the average within-clique covariance of the
training set's embeddings, shrunk towards its mean variance, an embedding ``e`` becomes
``S^(-1/2) e`` before L2 normalisation. CQT-Net ends in a linear layer without bias
(``proj.lin``) followed by L2 normalisation, and ``e`` is that layer's output scaled to unit
length, so the transform folds into the layer's weights exactly: the package keeps the
authors' architecture and state-dict keys, and identification is unchanged code.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import torch

from ..eval.evaluate import embed_cliques
from ..features.pooled import filter_available
from ..io.metadata import read_metadata
from ..model.packaging import derive_package
from ..model.weights import load_package, resolve_weights


LAST_LAYER = "proj.lin.weight"


def within_clique_scatter(embeddings: torch.Tensor, labels: Sequence[str]) -> torch.Tensor:
    """``(D, D)`` average outer product of each embedding's offset from its clique's mean.

    Args:
        embeddings: ``(N, D)`` embeddings; ``labels``: their ``(N,)`` clique ids. A clique
            with one embedding has no offset and is left out of the average.
    """
    emb = embeddings.double()
    index: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        index.setdefault(label, []).append(i)
    scatter, count = torch.zeros(emb.shape[1], emb.shape[1], dtype=torch.float64), 0
    for rows in (r for r in index.values() if len(r) > 1):
        offsets = emb[rows] - emb[rows].mean(0)
        scatter += offsets.T @ offsets
        count += len(rows)
    if count == 0:
        raise ValueError("no clique has two versions: within-clique covariance is undefined")
    return scatter / count


def wccn_transform(scatter: torch.Tensor, shrinkage: float) -> torch.Tensor:
    """``(D, D)`` symmetric ``(S + shrinkage * mean(diag S) * I)^(-1/2)`` of a scatter ``S``:
    shrinkage 0 whitens ``S`` exactly; a larger one moves the result towards a multiple of
    the identity, which cosine scoring ignores."""
    dim = scatter.shape[0]
    shrunk = scatter + shrinkage * torch.trace(scatter) / dim * torch.eye(dim, dtype=scatter.dtype)
    values, vectors = torch.linalg.eigh(shrunk)
    return (vectors / values.sqrt()) @ vectors.T


def whiten_package(source: str | Path, folder: Path, metadata: Path, features_dir: Path,
                   n_tracks: int | None, shrinkage: float, seed: int = 0,
                   device: torch.device | str = "cpu") -> tuple[str, int]:
    """Write ``folder``: the package ``source`` with WCCN folded into ``proj.lin``, the
    within-clique covariance measured on the whole-track embeddings of up to ``n_tracks``
    versions of ``metadata`` (whole cliques, drawn with ``seed``; None: every version).

    Returns:
        The new model's sha256 and the number of tracks used.

    Raises:
        ValueError: no clique of ``metadata`` has two versions with features, or the source
            package cannot be used.
    """
    source = resolve_weights(source)
    loaded = load_package(source)
    cliques = filter_available(read_metadata(metadata), features_dir)
    cliques = {c: v for c, v in cliques.items() if len(v) > 1}
    if not cliques:
        raise ValueError(f"{metadata}: no clique has two versions with features in {features_dir}")
    ids = sorted(cliques)
    random.Random(seed).shuffle(ids)
    picked, total = {}, 0
    for clique in ids:
        if n_tracks is not None and total >= n_tracks:
            break
        picked[clique] = cliques[clique]
        total += len(cliques[clique])
    emb, labels = embed_cliques(loaded.model, loaded.features, picked, features_dir,
                                torch.device(device), amp=False, progress=False)
    transform = wccn_transform(within_clique_scatter(emb, labels), shrinkage)
    state = loaded.model.cpu().state_dict()
    state[LAST_LAYER] = (transform @ state[LAST_LAYER].double()).float()
    note = {"wccn": {"from_sha256": loaded.sha256, "metadata": str(metadata),
                     "tracks": len(labels), "shrinkage": shrinkage, "seed": seed}}
    card = (f"\n## Within-clique covariance normalisation\n\n`proj.lin` refitted with "
            f"`mirex-vi weights whiten` from `{source.name}` (sha256 `{loaded.sha256}`): WCCN "
            f"measured on {len(labels)} whole tracks of `{metadata.name}` (seed {seed}), "
            f"shrinkage {shrinkage}; every other weight is as trained.\n")
    return derive_package(source, folder, state, note, card), len(labels)
