"""Tracks -> embeddings: parallel CQTs, batched model, devices, AMP and a resumable cache."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic import atomic_open, remove_stale_temporaries
from .audio import AudioError, FileIdentity, changed_since, file_identity
from .config import FeatureConfig, to_dict
from .features import TorchFrontEnd, preprocess
from .model import CQTNet
from .runtime import amp_enabled, autocast
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


def inference_settings(device: torch.device, amp: bool, cqt_backend: str = "auto") -> dict[str, Any]:
    """What changes an embedding besides the weights and the features: where the CQT is
    computed (``torch`` or ``librosa``, ``auto`` resolved), AMP in effect, device type."""
    on_gpu = cqt_backend == "torch" or (cqt_backend == "auto" and device.type == "cuda")
    return {"cqt": "torch" if on_gpu else "librosa", "amp": amp_enabled(device, amp),
            "device": device.type}


class EmbeddingCache:
    """One ``.npy`` per track under ``folder``, keyed by file identity, weights, features
    and inference settings.

    The key covers the resolved path of the audio and its size and mtime as taken *before*
    it was read (:func:`~mirex_vi.audio.file_identity`), the weights' sha256, the feature
    config and the :func:`inference_settings`, so a changed file, model, CQT backend, AMP
    or device type never reuses a stale entry. Entries are written atomically; one that does
    not load as a finite unit vector is recomputed, and temporaries that a killed run left
    behind are swept when the cache is opened. The cache is an optimisation: when an entry
    cannot be written (disk full...) it warns once and stops writing.
    """

    def __init__(self, folder: Path, weights_sha256: str, features: FeatureConfig, dim: int,
                 settings: dict[str, Any]):
        self.folder = folder
        remove_stale_temporaries(folder)
        self.dim = dim
        self.settings = settings
        self._salt = json.dumps({"weights": weights_sha256, "features": to_dict(features),
                                 "inference": settings}, sort_keys=True)
        self._writable = True

    def path_for(self, audio: Path, identity: FileIdentity) -> Path:
        ident = json.dumps([str(audio.resolve()), identity.size, identity.mtime_ns, self._salt])
        key = hashlib.sha256(ident.encode()).hexdigest()
        return self.folder / key[:2] / f"{key}.npy"

    def get(self, audio: Path, identity: FileIdentity) -> np.ndarray | None:
        """The ``(dim,)`` float32 entry of ``audio`` as it was when ``identity`` was taken."""
        try:
            entry = self.path_for(audio, identity)
            emb = np.load(entry, allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None
        if emb.shape != (self.dim,) or emb.dtype != np.float32 or not np.all(np.isfinite(emb)) \
                or abs(float(np.linalg.norm(emb)) - 1.0) > 1e-3:
            log.warning("cache entry %s for %s is corrupt; recomputing", entry, audio)
            return None
        return emb

    def put(self, audio: Path, identity: FileIdentity, emb: np.ndarray) -> None:
        """Store the ``(dim,)`` embedding of ``audio`` read with ``identity``."""
        if not self._writable:
            return
        try:
            entry = self.path_for(audio, identity)
            entry.parent.mkdir(parents=True, exist_ok=True)
            with atomic_open(entry) as f:
                np.save(f, emb.astype(np.float32))
        except OSError as err:
            self._writable = False
            log.warning("cannot write to the embedding cache %s (%s); carrying on without it, "
                        "so a rerun computes these embeddings again", self.folder,
                        err.strerror or err)


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

    A track that cannot be accessed, or that is removed or changed between the identity
    taken before reading and the end of its embedding, is an error, never cached.

    Raises:
        TrackError: in ``strict`` mode, at the first track that cannot be embedded.
        ValueError: ``cache`` is keyed for other inference settings.
    """
    settings = inference_settings(device, amp, cqt_backend)
    if cache is not None and cache.settings != settings:
        raise ValueError(f"cache keyed for {cache.settings}, embedding with {settings}")
    model = weights.model.to(device).eval()
    tally = _Tally(paths, model.cfg.embedding_dim, cache, strict, on_track)
    todo = tally.look_up()  # track -> identity, in list order
    tracks = list(todo)
    front_end = TorchFrontEnd(weights.features, device) if settings["cqt"] == "torch" else None
    pending: dict[int, list[tuple[int, np.ndarray | torch.Tensor]]] = {}  # T' -> [(track, input)]

    def flush(group: list[tuple[int, np.ndarray | torch.Tensor]]) -> None:
        if not group:
            return
        vectors = embed_inputs(model, [x for _, x in group], device, amp, batch_size).numpy()
        for (i, _), vector in zip(group, vectors):
            tally.embedded(i, todo[i], vector)
        group.clear()

    files = iter_files([paths[i] for i in tracks], weights.features, workers,
                       decode_only=front_end is not None)
    with contextlib.closing(files):  # an exception here stops the workers at once
        for result in files:
            track = tracks[result.index]
            if result.error is not None:
                tally.failed(track, result.error)
                continue
            x = front_end(result.audio) if front_end else preprocess(result.cqt, weights.features)
            pending.setdefault(x.shape[-1], []).append((track, x))
            if sum(map(len, pending.values())) >= batch_size:
                for group in pending.values():
                    flush(group)
    for group in pending.values():
        flush(group)
    return tally.run


class _Tally:
    """Where :func:`embed_tracks` puts each track's outcome: the run, the cache, ``on_track``."""

    def __init__(self, paths: Sequence[Path], dim: int, cache: EmbeddingCache | None,
                 strict: bool, on_track: Callable[[], None]):
        self.paths, self.cache, self.strict, self.on_track = paths, cache, strict, on_track
        self.run = EmbeddingRun(np.zeros((len(paths), dim), dtype=np.float32), {}, 0)

    def look_up(self) -> dict[int, FileIdentity]:
        """Take each track's identity before it is read and fill in the cached ones.

        Returns:
            The tracks still to embed (index -> identity), in list order.
        """
        todo: dict[int, FileIdentity] = {}
        for i, path in enumerate(self.paths):
            try:
                identity = file_identity(path)
            except AudioError as err:
                self.failed(i, str(err))
                continue
            cached = self.cache.get(path, identity) if self.cache else None
            if cached is None:
                todo[i] = identity
            else:
                self.run.embeddings[i] = cached
                self.run.n_cached += 1
                self.on_track()
        return todo

    def failed(self, track: int, reason: str) -> None:
        """Record why ``track`` has no embedding.

        Raises:
            TrackError: in strict mode.
        """
        if self.strict:
            raise TrackError(self.paths[track], reason)
        self.run.errors[track] = reason
        self.on_track()

    def embedded(self, track: int, identity: FileIdentity, vector: np.ndarray) -> None:
        """Keep (and cache) the ``(D,)`` ``vector`` of ``track``, unless the file has been
        removed or changed since ``identity`` was taken."""
        changed = changed_since(self.paths[track], identity)
        if changed:
            self.failed(track, changed)
            return
        self.run.embeddings[track] = vector
        if self.cache:
            self.cache.put(self.paths[track], identity, vector)
        self.on_track()
