"""Tracks -> embeddings: parallel CQTs, batched model, devices, AMP and a resumable cache.

Worker processes decode (and, with the librosa backend, compute CQTs); this process's main
thread receives their results while a second thread runs the front end, the model and the
cache writes (``_consume_in_thread``), so the device works while the next files arrive.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from ..config import FeatureConfig
from ..core.runtime import autocast, unless_out_of_memory
from ..features.frontend import TorchFrontEnd, checked_cqt, preprocess
from ..features.tempo import at_tempo
from ..features.workers import FileResult, iter_files
from ..io.audio import AudioError, FileIdentity, changed_since, file_identity
from ..model.cqtnet import CQTNet
from ..model.weights import LoadedWeights
from .cache import EmbeddingCache
from .settings import EmbedSettings

log = logging.getLogger(__name__)
T = TypeVar("T")


Input = np.ndarray | torch.Tensor  # (n_bins, T') float32 model input


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
    tempo_scales: Sequence[float] = (1.0,),
) -> torch.Tensor:
    """Embed preprocessed inputs, batching only those of equal length, each at every one of
    ``tempo_scales`` (``FeatureConfig.tempo_scales``; see :func:`embed_batch`).

    Padding would change a track's embedding (the global max-pool would see the pad), so
    inputs of different lengths never share a batch; results equal batch-size-1 calls within
    ``runtime.tolerance(...).batch``. On the CPU the model sees one track per forward pass
    whatever ``batch_size``: batching gains nothing there, and oneDNN's kernels for other
    batch sizes round differently, so CPU embeddings are bit-for-bit independent of it.

    Args:
        inputs: ``(n_bins, T')`` float32 arrays or tensors (any device), one per track.

    Returns:
        ``(N, D)`` float32 on the CPU, rows in input order, unit norm.
    """
    if device.type == "cpu":
        batch_size = 1
    out = torch.empty(len(inputs), model.cfg.embedding_dim)
    by_length: dict[int, list[int]] = {}
    for i, x in enumerate(inputs):
        by_length.setdefault(x.shape[-1], []).append(i)
    for indices in by_length.values():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            batch = torch.stack([torch.as_tensor(inputs[i]) for i in chunk])[:, None]  # (B, 1, F, T')
            with autocast(device, amp):
                emb = embed_batch(model, batch.to(device, memory_format=torch.channels_last,
                                                  non_blocking=True), tempo_scales)
            out[chunk] = emb.float().cpu()
    return out


def embed_batch(model: CQTNet, batch: torch.Tensor,
                tempo_scales: Sequence[float] = (1.0,)) -> torch.Tensor:
    """``(B, D)`` unit-norm embeddings of ``(B, 1, F, T')`` model inputs of one length.

    One scale gives the model's embeddings of the batch at that tempo (:func:`at_tempo`;
    at 1.0 the batch itself, the report's single pass). Several give the normalised sum
    of those at each tempo: versions played faster or slower than the model's training
    crops still meet one of the tempi it knows.
    """
    if len(tempo_scales) == 1:
        return model(at_tempo(batch, tempo_scales[0], model.min_pooled_frames))
    total = sum(model(at_tempo(batch, scale, model.min_pooled_frames)).float() for scale in tempo_scales)
    return F.normalize(total, p=2, dim=1)


def embed_stream(
    model: CQTNet,
    inputs: Iterable[np.ndarray | torch.Tensor],
    device: torch.device,
    amp: bool,
    batch_size: int = 16,
    chunk_size: int = 256,
    on_chunk: Callable[[int], None] = lambda n: None,
    tempo_scales: Sequence[float] = (1.0,),
) -> torch.Tensor:
    """Embed a stream of preprocessed ``(n_bins, T')`` inputs of many lengths (whole stored
    tracks), ``chunk_size`` of them in memory at a time, each at every one of
    ``tempo_scales``.

    cuDNN autotuning is off meanwhile: tuning each distinct length would cost more than it
    saves.

    Returns:
        ``(N, D)`` float32 on the CPU, in input order.
    """
    parts: list[torch.Tensor] = []
    chunk: list[np.ndarray | torch.Tensor] = []

    def flush() -> None:
        parts.append(embed_inputs(model, chunk, device, amp, batch_size, tempo_scales))
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
    settings: EmbedSettings,
    cache: EmbeddingCache | None = None,
    strict: bool = False,
    on_track: Callable[[], None] = lambda: None,
) -> EmbeddingRun:
    """Embed every track: cached ones are read, the rest decoded in ``settings.workers``
    processes.

    With ``settings.torch_cqt`` the workers only decode and the CQTs are computed on the
    device (:class:`TorchFrontEnd`); otherwise the workers compute librosa's (exact). A
    track the torch CQT cannot take (not finite, out of device memory) gets librosa's.
    Inputs wait until ``settings.batch_size`` of them are ready, then go through the model
    and into the cache, so a killed run loses at most one batch. ``on_track`` is called
    once per finished track.

    A track that cannot be accessed, or that is removed or changed between the identity
    taken before reading and the end of its embedding, is an error, never cached.

    Raises:
        TrackError: in ``strict`` mode, at the first track that cannot be embedded.
        ValueError: ``cache`` is keyed for other settings.
    """
    if cache is not None and cache.settings_key != settings.cache_key():
        raise ValueError(f"cache keyed for {cache.settings_key}, embedding with "
                         f"{settings.cache_key()}")
    model = weights.model.to(settings.device).eval()
    run = EmbeddingRun(np.zeros((len(paths), model.cfg.embedding_dim), dtype=np.float32), {}, 0)
    front_end = TorchFrontEnd(weights.features, settings.device) if settings.torch_cqt else None
    embedder = _Embedder(model=model, cfg=weights.features, settings=settings, paths=paths,
                         run=run, front_end=front_end, cache=cache, strict=strict,
                         on_track=on_track)
    tracks = embedder.look_up()  # the tracks still to embed, in list order
    files = iter_files([paths[i] for i in tracks], weights.features, settings.workers,
                       decode_only=settings.torch_cqt)
    with contextlib.closing(files):  # an exception here stops the workers at once
        _consume_in_thread(((tracks[r.index], r) for r in files), embedder.add,
                           depth=max(2, settings.batch_size))
    embedder.flush()
    return run


@dataclass
class _Embedder:
    """Worker results -> embeddings, errors and cache entries (the model's thread).

    Inputs wait in ``pending`` (by length) until ``settings.batch_size`` are ready. A track
    whose torch CQT is not finite or does not fit in device memory gets librosa's CQT here;
    a non-finite embedding under AMP is recomputed in fp32; a track that still fails is an
    error. No non-finite or zero vector is ever stored or cached, nor one of a file removed
    or changed since its identity was taken (``identities``, before it was read).
    """

    model: CQTNet
    cfg: FeatureConfig
    settings: EmbedSettings
    paths: Sequence[Path]
    run: EmbeddingRun
    front_end: TorchFrontEnd | None
    cache: EmbeddingCache | None
    strict: bool
    on_track: Callable[[], None]
    pending: dict[int, list[tuple[int, Input]]] = field(default_factory=dict)
    identities: dict[int, FileIdentity] = field(default_factory=dict)

    def look_up(self) -> list[int]:
        """Take each track's identity before it is read and fill in the cached ones;
        return the tracks still to embed, in list order."""
        for i, path in enumerate(self.paths):
            try:
                identity = file_identity(path)
            except AudioError as err:
                self._fail(i, str(err))
                continue
            cached = self.cache.get(path, identity) if self.cache else None
            if cached is None:
                self.identities[i] = identity
            else:
                self.run.embeddings[i] = cached
                self.run.n_cached += 1
                self.on_track()
        return list(self.identities)

    def add(self, item: tuple[int, FileResult]) -> None:
        track, result = item
        if result.error is not None:
            self._fail(track, result.error)
            return
        x = self._model_input(track, result)
        if x is None:
            return
        self.pending.setdefault(x.shape[-1], []).append((track, x))
        if sum(map(len, self.pending.values())) >= self.settings.batch_size:
            self.flush()

    def flush(self) -> None:
        """Embed every pending input, store the vectors and cache them (one sync)."""
        done = [pair for group in self.pending.values() for pair in self._embed_group(group)]
        self.pending.clear()
        kept = []
        for i, vector in done:
            changed = changed_since(self.paths[i], self.identities[i])
            if changed:
                self._fail(i, changed)
            else:
                kept.append((i, vector))
        if self.cache:
            self.cache.put_many([(self.paths[i], self.identities[i], v) for i, v in kept])
        for i, vector in kept:
            self.run.embeddings[i] = vector
            self.on_track()

    def _fail(self, track: int, reason: str) -> None:
        if self.strict:
            raise TrackError(self.paths[track], reason)
        self.run.errors[track] = reason
        self.on_track()

    def _model_input(self, track: int, result: FileResult) -> Input | None:
        """The track's model input, through the torch front end when there is one, else
        (or when that fails) through librosa; None when the track failed."""
        if self.front_end is None:
            return preprocess(result.cqt, self.cfg)
        reason = "the device ran out of memory"
        try:
            x = unless_out_of_memory(lambda: self.front_end(result.audio), self.settings.device)
        except AudioError as err:
            x, reason = None, str(err)
        if x is not None:
            return x
        audio = result.audio.unpack()
        log.warning("%s: torch CQT failed (%s); computing it with librosa", self.paths[track],
                    reason)
        try:
            return preprocess(checked_cqt(audio, self.cfg), self.cfg)
        except AudioError as err:
            self._fail(track, str(err))
            return None

    def _embed_group(self, group: list[tuple[int, Input]]) -> list[tuple[int, np.ndarray]]:
        """``(track, (D,) vector)`` for the tracks of one equal-length group that embed."""
        inputs = [x for _, x in group]
        amp = self.settings.amp
        batch = unless_out_of_memory(lambda: self._embed(inputs, amp), self.settings.device)
        if batch is None:  # the group does not fit: one track at a time
            vectors = [self._embed_alone(x, amp) for x in inputs]
        else:
            vectors = list(batch)
        done = []
        for (track, x), vector in zip(group, vectors):
            if vector is not None and amp and not np.all(np.isfinite(vector)):
                vector = self._embed_alone(x, amp=False)  # an fp16 overflow inside the model
            if vector is None:
                self._fail(track, "the device ran out of memory in the model")
            elif not np.all(np.isfinite(vector)):
                self._fail(track, "the embedding is not finite")
            elif not np.any(vector):  # the model's output was zero: no direction to score
                self._fail(track, "the embedding is zero")
            else:
                done.append((track, vector))
        return done

    def _embed(self, inputs: list[Input], amp: bool) -> np.ndarray:
        """``(len(inputs), D)`` float32."""
        return embed_inputs(self.model, inputs, self.settings.device, amp,
                            self.settings.batch_size, self.cfg.tempo_scales).numpy()

    def _embed_alone(self, x: Input, amp: bool) -> np.ndarray | None:
        out = unless_out_of_memory(lambda: self._embed([x], amp), self.settings.device)
        return None if out is None else out[0]


def _consume_in_thread(items: Iterator[T], consume: Callable[[T], None], depth: int) -> None:
    """Call ``consume`` on every item in a second thread while this thread draws them.

    At most ``depth`` items wait between the two. An exception in ``consume`` stops the
    drawing and is raised here; one raised while drawing is raised after the items already
    drawn are consumed.
    """
    handoff: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    failure: list[BaseException] = []

    def consumer() -> None:
        while (item := handoff.get()) is not done:
            if failure:
                continue  # drain, so the drawing thread never blocks on a full queue
            try:
                consume(item)
            except BaseException as err:  # noqa: BLE001 - re-raised in the drawing thread
                failure.append(err)

    thread = threading.Thread(target=consumer, name="mirex-vi-model", daemon=True)
    thread.start()
    try:
        for item in items:
            if failure:
                break
            handoff.put(item)
    finally:
        handoff.put(done)
        thread.join()
    if failure:
        raise failure[0]
