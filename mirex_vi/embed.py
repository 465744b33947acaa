"""Tracks -> embeddings: parallel CQTs, batched model, devices, AMP and a resumable cache."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_open, remove_stale_temporaries
from .config import FeatureConfig, to_dict
from .features import TorchFrontEnd, preprocess
from .model import CQTNet
from .runtime import autocast
from .weights import LoadedWeights
from .workers import iter_files

log = logging.getLogger(__name__)


class TrackError(Exception):
    """Raised in strict mode for the first track that cannot be embedded."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


@torch.inference_mode()
def embed_inputs(
    model: CQTNet,
    inputs: Sequence[np.ndarray | torch.Tensor],
    device: torch.device,
    amp: bool,
    batch_size: int = 16,
) -> torch.Tensor:
    """Embed preprocessed inputs, batching only those of equal length.

    Padding would change a track's embedding (the global max-pool would see the pad), so
    inputs of different lengths never share a batch; results equal batch-size-1 calls.

    Args:
        inputs: ``(n_bins, T')`` float32 arrays or tensors (any device), one per track.

    Returns:
        ``(N, D)`` float32 on the CPU, rows in input order, unit norm.
    """
    out = torch.empty(len(inputs), model.cfg.embedding_dim)
    by_length: dict[int, list[int]] = {}
    for i, x in enumerate(inputs):
        by_length.setdefault(x.shape[-1], []).append(i)
    for indices in by_length.values():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            batch = torch.stack([torch.as_tensor(inputs[i]) for i in chunk])[:, None]  # (B, 1, F, T')
            with autocast(device, amp):
                emb = model(batch.to(device, memory_format=torch.channels_last, non_blocking=True))
            out[chunk] = emb.float().cpu()
    return out


def embed_stream(
    model: CQTNet,
    inputs: Iterable[np.ndarray | torch.Tensor],
    device: torch.device,
    amp: bool,
    batch_size: int = 16,
    chunk_size: int = 256,
    on_chunk: Callable[[int], None] = lambda n: None,
) -> torch.Tensor:
    """Embed a stream of preprocessed ``(n_bins, T')`` inputs of many lengths (whole stored
    tracks), ``chunk_size`` of them in memory at a time.

    cuDNN autotuning is off meanwhile: tuning each distinct length would cost more than it
    saves.

    Returns:
        ``(N, D)`` float32 on the CPU, in input order.
    """
    parts: list[torch.Tensor] = []
    chunk: list[np.ndarray | torch.Tensor] = []

    def flush() -> None:
        parts.append(embed_inputs(model, chunk, device, amp, batch_size))
        on_chunk(len(chunk))
        chunk.clear()

    benchmark, torch.backends.cudnn.benchmark = torch.backends.cudnn.benchmark, False
    try:
        for x in inputs:
            chunk.append(x)
            if len(chunk) == chunk_size:
                flush()
        if chunk:
            flush()
    finally:
        torch.backends.cudnn.benchmark = benchmark
    return torch.cat(parts) if parts else torch.empty(0, model.cfg.embedding_dim)


class EmbeddingCache:
    """One ``.npy`` per track under ``folder``, keyed by file identity, weights and features.

    The key covers the resolved path, size and mtime of the audio, the weights' sha256 and
    the feature config, so a changed file or model never reuses a stale entry. Entries are
    written atomically; one that does not load as a finite unit vector is recomputed, and
    temporaries that a killed run left behind are swept when the cache is opened.
    """

    def __init__(self, folder: Path, weights_sha256: str, features: FeatureConfig, dim: int):
        self.folder = folder
        remove_stale_temporaries(folder)
        self.dim = dim
        self._salt = json.dumps({"weights": weights_sha256, "features": to_dict(features)},
                                sort_keys=True)

    def path_for(self, audio: Path) -> Path:
        stat = audio.stat()
        ident = json.dumps([str(audio.resolve()), stat.st_size, stat.st_mtime_ns, self._salt])
        key = hashlib.sha256(ident.encode()).hexdigest()
        return self.folder / key[:2] / f"{key}.npy"

    def get(self, audio: Path) -> np.ndarray | None:
        try:
            entry = self.path_for(audio)
            emb = np.load(entry, allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None
        if emb.shape != (self.dim,) or emb.dtype != np.float32 or not np.all(np.isfinite(emb)) \
                or abs(float(np.linalg.norm(emb)) - 1.0) > 1e-3:
            log.warning("cache entry %s for %s is corrupt; recomputing", entry, audio)
            return None
        return emb

    def put(self, audio: Path, emb: np.ndarray) -> None:
        entry = self.path_for(audio)
        entry.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(entry) as f:
            np.save(f, emb.astype(np.float32))


@dataclass
class EmbeddingRun:
    """Embeddings of a track list: ``embeddings`` ``(N, D)`` float32; failed rows are zero
    and listed in ``errors`` (index -> reason), never used as if they were real."""

    embeddings: np.ndarray
    errors: dict[int, str]
    n_cached: int


def embed_tracks(
    paths: Sequence[Path],
    weights: LoadedWeights,
    device: torch.device,
    amp: bool,
    workers: int,
    batch_size: int = 16,
    cache: EmbeddingCache | None = None,
    strict: bool = False,
    on_track: Callable[[], None] = lambda: None,
    cqt_backend: str = "auto",
) -> EmbeddingRun:
    """Embed every track: cached ones are read, the rest decoded in ``workers`` processes.

    ``cqt_backend``: ``librosa`` computes CQTs in the workers (exact); ``torch`` has the
    workers only decode and computes CQTs on ``device`` (:class:`TorchFrontEnd`); ``auto``
    is ``torch`` on CUDA and ``librosa`` on the CPU. Inputs wait until ``batch_size`` of them
    are ready, then go through the model (equal lengths share a batch) and into the cache,
    so a killed run loses at most one batch. ``on_track`` is called once per finished track.

    Raises:
        TrackError: in ``strict`` mode, at the first track that cannot be embedded.
    """
    model = weights.model.to(device).eval()
    emb = np.zeros((len(paths), model.cfg.embedding_dim), dtype=np.float32)
    errors: dict[int, str] = {}
    todo: list[int] = []
    for i, path in enumerate(paths):
        cached = cache.get(path) if cache and path.is_file() else None
        if cached is None:
            todo.append(i)
        else:
            emb[i] = cached
            on_track()
    on_gpu = cqt_backend == "torch" or (cqt_backend == "auto" and device.type == "cuda")
    front_end = TorchFrontEnd(weights.features, device) if on_gpu else None
    pending: dict[int, list[tuple[int, np.ndarray | torch.Tensor]]] = {}  # T' -> [(track, input)]

    def flush(group: list[tuple[int, np.ndarray | torch.Tensor]]) -> None:
        if not group:
            return
        vectors = embed_inputs(model, [x for _, x in group], device, amp, batch_size).numpy()
        for (i, _), vector in zip(group, vectors):
            emb[i] = vector
            if cache:
                cache.put(paths[i], vector)
            on_track()
        group.clear()

    for result in iter_files([paths[i] for i in todo], weights.features, workers, decode_only=on_gpu):
        track = todo[result.index]
        if result.error is not None:
            if strict:
                raise TrackError(paths[track], result.error)
            errors[track] = result.error
            on_track()
            continue
        x = front_end(result.audio) if front_end else preprocess(result.cqt, weights.features)
        pending.setdefault(x.shape[-1], []).append((track, x))
        if sum(map(len, pending.values())) >= batch_size:
            for group in pending.values():
                flush(group)
    for group in pending.values():
        flush(group)
    return EmbeddingRun(emb, errors, n_cached=len(paths) - len(todo))
