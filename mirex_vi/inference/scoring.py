"""Embeddings -> MIREX distances, in float32, a chunk of query rows at a time."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch


# Distance between unit vectors pointing in opposite directions: the largest possible,
# given to every pair that involves a track that could not be embedded.
MAX_DISTANCE = 2.0


def distance_rows(
    embeddings: np.ndarray,
    query_indices: Sequence[int],
    valid: np.ndarray,
    device: torch.device = torch.device("cpu"),
    chunk_size: int = 1024,
    rescore: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> Iterator[np.ndarray]:
    """Distance rows ``sqrt(max(0, 2 - 2 s))`` for each query, in query order.

    Args:
        embeddings: ``(N, D)`` float32, unit-norm rows (rows of invalid tracks are ignored).
        query_indices: collection index of each query.
        valid: ``(N,)`` bool, False for tracks that could not be embedded.
        rescore: ``(query rows (q,), similarities (q, N)) -> (q, N)`` in [-1, 1]: a scoring
            recipe (``recipe.Recipe.rescorer``) applied to each chunk of rows.

    Yields:
        ``(N,)`` float32 rows: finite, in [0, 2], exactly 0 at the query's own index, and
        ``MAX_DISTANCE`` to and from every invalid track.
    """
    emb = torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32)).to(device)
    invalid = torch.from_numpy(~np.asarray(valid, dtype=bool)).to(device)
    for start in range(0, len(query_indices), chunk_size):
        rows_idx = torch.as_tensor(query_indices[start : start + chunk_size], device=device)
        sims = emb[rows_idx] @ emb.T  # (q, N)
        if rescore is not None:
            sims = rescore(rows_idx, sims)
        dist = torch.sqrt(torch.clamp(2.0 - 2.0 * sims, min=0.0, max=MAX_DISTANCE**2))
        dist = torch.nan_to_num(dist, nan=MAX_DISTANCE, posinf=MAX_DISTANCE)
        dist[:, invalid] = MAX_DISTANCE
        dist[invalid[rows_idx]] = MAX_DISTANCE
        dist[torch.arange(len(rows_idx), device=device), rows_idx] = 0.0
        yield from dist.cpu().numpy()


def nearest_neighbours(
    embeddings: torch.Tensor, k: int, chunk_size: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, k)`` similarities and indices of each row's ``k`` nearest other rows.

    Args:
        embeddings: ``(N, D)`` unit-norm rows, ``k < N``.
    """
    sims_out, index_out = [], []
    for start in range(0, len(embeddings), chunk_size):
        sims = embeddings[start : start + chunk_size] @ embeddings.T  # (q, N)
        own = torch.arange(len(sims), device=sims.device)
        sims[own, start + own] = -torch.inf  # a track is not its own neighbour
        top = sims.topk(k, dim=1)
        sims_out.append(top.values)
        index_out.append(top.indices)
    return torch.cat(sims_out), torch.cat(index_out)


def expand_by_neighbours(
    embeddings: np.ndarray,
    valid: np.ndarray,
    k: int,
    device: torch.device = torch.device("cpu"),
    chunk_size: int = 1024,
) -> np.ndarray:
    """Database-side augmentation (Arandjelovic & Zisserman, 2012) over mutual neighbours:
    each valid track's embedding becomes the unit-length sum of itself and those of its
    ``k`` nearest other valid tracks that count it among their own ``k`` nearest, each
    weighted by its similarity to the track (negative ones by 0).

    Versions of a work that share a close neighbour move towards each other, so a version
    that resembles its work's other versions only through a third one is found sooner. A
    track pulled towards another work's version can be found later by its own, so the mean
    rank of the first version found can get worse while MAP improves; asking for mutual
    neighbours leaves out many such pulls (model card: a better MR1 than without).

    Args:
        embeddings: ``(N, D)`` float32, unit-norm rows (rows of invalid tracks are ignored).
        valid: ``(N,)`` bool, False for tracks that could not be embedded; they are neither
            expanded nor anyone's neighbour.
        k: neighbours per track; 0 returns the embeddings unchanged.

    Returns:
        ``(N, D)`` float32, unit-norm valid rows; invalid rows as given.
    """
    emb = np.ascontiguousarray(embeddings, dtype=np.float32)
    valid = np.asarray(valid, dtype=bool)
    k = min(k, int(valid.sum()) - 1)
    if k <= 0:
        return emb
    pool = torch.from_numpy(np.flatnonzero(valid)).to(device)
    candidates = torch.from_numpy(emb).to(device)[pool]  # (V, D)
    sims, nearest = nearest_neighbours(candidates, k, chunk_size)  # (V, k) each
    mutual = (nearest[nearest] == torch.arange(len(pool), device=device)[:, None, None]).any(2)
    weights = torch.where(mutual, sims.clamp(min=0), torch.zeros_like(sims))
    expanded = emb.copy()
    for start in range(0, len(pool), chunk_size):
        rows = slice(start, start + chunk_size)
        summed = candidates[rows] + (weights[rows, :, None] * candidates[nearest[rows]]).sum(1)
        unit = torch.nn.functional.normalize(summed, dim=1)
        expanded[pool[rows].cpu().numpy()] = unit.cpu().numpy()
    return expanded
