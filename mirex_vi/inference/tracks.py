"""Audio files -> embeddings: parallel decoding and CQTs, the device's front end, batched
model passes and a resumable cache.

Worker processes decode (and, with the librosa backend, compute CQTs); this process's main
thread receives their results while a second thread runs the front end and the model
(``threads.consume_in_thread``), so the device works while the next files arrive, and a
third writes the cache (``threads.CacheWriter``). With the torch CQT, decoded tracks wait in
buckets of similar length and go through the front end a bucket at a time
(``TorchFrontEnd.batch``), then through the model in batches of equal length
(:func:`.embed.embed_inputs`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..config import FeatureConfig
from ..core.runtime import unless_out_of_memory
from ..features.frontend import PackedAudio, TorchFrontEnd, checked_cqt, length_bucket, preprocess
from ..features.workers import FileResult, iter_files
from ..io.audio import AudioError, FileIdentity, changed_since, file_identity
from ..model.cqtnet import CQTNet
from ..model.weights import LoadedWeights
from .cache import EmbeddingCache
from .embed import Input, TrackExtras, embed_inputs
from .settings import EmbedSettings
from .threads import CacheWriter, consume_in_thread

log = logging.getLogger(__name__)

# Decoded tracks held for the torch front end, in batches (``batch_size`` each), before the
# fullest length bucket goes through anyway: host memory stays bounded when lengths scatter.
WAITING_BATCHES = 4


class TrackError(Exception):
    """Raised in strict mode for the first track that cannot be embedded."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason



@dataclass
class EmbeddingRun:
    """Embeddings of a track list: ``embeddings`` ``(N, D)`` float32; failed rows are zero
    and listed in ``errors`` (index -> reason), never used as if they were real. ``extras``
    holds what a scoring recipe asked each track for besides (index -> arrays)."""

    embeddings: np.ndarray
    errors: dict[int, str]
    n_cached: int
    extras: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)


def embed_tracks(
    paths: Sequence[Path],
    weights: LoadedWeights,
    settings: EmbedSettings,
    cache: EmbeddingCache | None = None,
    strict: bool = False,
    on_track: Callable[[], None] = lambda: None,
    extras: TrackExtras | None = None,
) -> EmbeddingRun:
    """Embed every track: cached ones are read, the rest decoded in ``settings.workers``
    processes. With ``extras`` (``recipe.Recipe``), each track's model input (and feature
    map, if it wants it) also gives the arrays a scoring recipe needs, cached beside its
    vector (a cached vector without them is embedded again).

    With ``settings.torch_cqt`` the workers only decode and the CQTs are computed on the
    device (:class:`TorchFrontEnd`), ``settings.batch_size`` tracks of similar length at a
    time; otherwise the workers compute librosa's (exact). A track the torch CQT cannot take
    (not finite, out of device memory) gets librosa's. Inputs wait until
    ``settings.batch_size`` of them are ready, then go through the model and into the cache
    (written by a thread of its own), so a killed run loses at most a few batches.
    ``on_track`` is called once per finished track.

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
    writer = CacheWriter(cache) if cache is not None else None
    embedder = _Embedder(model=model, cfg=weights.features, settings=settings, paths=paths,
                         run=run, front_end=front_end, cache=cache, writer=writer,
                         strict=strict, on_track=on_track, extras=extras)
    try:
        tracks = embedder.look_up()  # the tracks still to embed, in list order
        files = iter_files([paths[i] for i in tracks], weights.features, settings.workers,
                           decode_only=settings.torch_cqt)
        with contextlib.closing(files):  # an exception here stops the workers at once
            consume_in_thread(((tracks[r.index], r) for r in files), embedder.add,
                              depth=max(2, settings.batch_size))
        embedder.finish()
    finally:
        if writer is not None:
            writer.close()
    return run


@dataclass
class _Embedder:
    """Worker results -> embeddings, errors and cache entries (the model's thread).

    Decoded audio for the torch front end waits in ``waiting`` (by :func:`length_bucket`);
    model inputs wait in ``pending`` (by length) until ``settings.batch_size`` are ready. A
    track whose torch CQT is not finite or does not fit in device memory gets librosa's CQT;
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
    writer: CacheWriter | None
    strict: bool
    on_track: Callable[[], None]
    extras: TrackExtras | None = None
    made: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)  # extras, not stored yet
    waiting: dict[int, list[tuple[int, PackedAudio]]] = field(default_factory=dict)
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
            if cached is not None and self.extras is not None:
                more = self.cache.get_extras(path, identity)
                cached = None if more is None else cached
                if more is not None:
                    self.run.extras[i] = more
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
        elif self.strict and result.warnings:  # a file cut short, a damaged stream: suspect
            raise TrackError(self.paths[track], "; ".join(result.warnings))
        elif self.front_end is None:
            self._queue(track, preprocess(result.cqt, self.cfg))
        else:
            self._wait_for_front_end(track, result.audio)

    def finish(self) -> None:
        """Embed everything still waiting."""
        while self.waiting:
            self._run_front_end(self.waiting.pop(next(iter(self.waiting))))
        self.flush()

    def _queue(self, track: int, x: Input) -> None:
        self.pending.setdefault(x.shape[-1], []).append((track, x))
        if sum(map(len, self.pending.values())) >= self.settings.batch_size:
            self.flush()

    def _wait_for_front_end(self, track: int, audio: PackedAudio) -> None:
        """Hold ``audio`` in its length bucket; once that bucket holds ``batch_size`` tracks,
        or all buckets ``WAITING_BATCHES`` times that, the fullest bucket goes through."""
        group = self.waiting.setdefault(length_bucket(len(audio.samples)), [])
        group.append((track, audio))
        size = self.settings.batch_size
        if len(group) >= size or sum(map(len, self.waiting.values())) >= WAITING_BATCHES * size:
            fullest = max(self.waiting, key=lambda bucket: len(self.waiting[bucket]))
            self._run_front_end(self.waiting.pop(fullest))

    def _run_front_end(self, group: list[tuple[int, PackedAudio]]) -> None:
        """Model inputs of one bucket's tracks through the torch front end, in one batch, or
        one track at a time when the batch does not fit in device memory; a track it
        refuses or cannot take gets librosa's CQT."""
        audios = [audio for _, audio in group]
        device = self.settings.device
        results = unless_out_of_memory(lambda: self.front_end.batch(audios), device)
        if results is None:
            results = [unless_out_of_memory(lambda a=a: self.front_end.batch([a])[0], device)
                       for a in audios]
        for (track, audio), x in zip(group, results):
            if isinstance(x, torch.Tensor):
                self._queue(track, x)
            else:
                self._librosa_input(track, audio, "the device ran out of memory" if x is None
                                    else str(x))

    def _librosa_input(self, track: int, audio: PackedAudio, reason: str) -> None:
        log.warning("%s: torch CQT failed (%s); computing it with librosa", self.paths[track],
                    reason)
        try:
            self._queue(track, preprocess(checked_cqt(audio.unpack(), self.cfg), self.cfg))
        except AudioError as err:
            self._fail(track, str(err))

    def flush(self) -> None:
        """Embed every pending input, store the vectors and hand them to the cache writer."""
        done = [pair for group in self.pending.values() for pair in self._embed_group(group)]
        self.pending.clear()
        kept = []
        for i, vector in done:
            changed = changed_since(self.paths[i], self.identities[i])
            if changed:
                self._fail(i, changed)
            else:
                kept.append((i, vector))
        for i, _ in kept:
            if i in self.made:  # cached before the vector, which needs them to be a hit
                self.run.extras[i] = self.made.pop(i)
                if self.cache is not None:
                    self.cache.put_extras(self.paths[i], self.identities[i], self.run.extras[i])
        if self.writer is not None:
            self.writer.put_many([(self.paths[i], self.identities[i], v) for i, v in kept])
        for i, vector in kept:
            self.run.embeddings[i] = vector
            self.on_track()

    def _fail(self, track: int, reason: str) -> None:
        self.made.pop(track, None)
        if self.strict:
            raise TrackError(self.paths[track], reason)
        self.run.errors[track] = reason
        self.on_track()

    def _embed_group(self, group: list[tuple[int, Input]]) -> list[tuple[int, np.ndarray]]:
        """``(track, (D,) vector)`` for the tracks of one equal-length group that embed."""
        inputs = [x for _, x in group]
        amp = self.settings.amp
        maps: dict[int, torch.Tensor] = {}  # input index -> feature map, when extras want it
        batch = unless_out_of_memory(lambda: self._embed(inputs, amp, maps), self.settings.device)
        if batch is None:  # the group does not fit: one track at a time
            vectors = [self._embed_alone(x, amp, maps, i) for i, x in enumerate(inputs)]
        else:
            vectors = list(batch)
        done = []
        for i, ((track, x), vector) in enumerate(zip(group, vectors)):
            if vector is not None and amp and not np.all(np.isfinite(vector)):
                # an fp16 overflow inside the model
                vector = self._embed_alone(x, False, maps, i)
            if vector is None:
                self._fail(track, "the device ran out of memory in the model")
            elif not np.all(np.isfinite(vector)):
                self._fail(track, "the embedding is not finite")
            elif not np.any(vector):  # the model's output was zero: no direction to score
                self._fail(track, "the embedding is zero")
            else:
                done.append((track, vector))
                if self.extras is not None:
                    self.made[track] = self.extras.extras(x, maps.pop(i, None))
        return done

    def _embed(self, inputs: list[Input], amp: bool, maps: dict[int, torch.Tensor],
               first: int = 0) -> np.ndarray:
        """``(len(inputs), D)`` float32; the feature maps go into ``maps`` by input index
        (from ``first``) when the extras want them."""
        wants = self.extras is not None and self.extras.wants_map
        on_map = (lambda i, fmap: maps.__setitem__(first + i, fmap)) if wants else None
        return embed_inputs(self.model, inputs, self.settings.device, amp,
                            self.settings.batch_size, self.cfg.tempo_scales, on_map).numpy()

    def _embed_alone(self, x: Input, amp: bool, maps: dict[int, torch.Tensor],
                     i: int) -> np.ndarray | None:
        out = unless_out_of_memory(lambda: self._embed([x], amp, maps, i), self.settings.device)
        return None if out is None else out[0]
