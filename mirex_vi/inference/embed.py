"""Model inputs -> embeddings: batches of equal length, one or several tempi, each pass's
feature map for a scoring recipe, and streams of stored tracks too many to hold at once.

Audio files go through :mod:`.tracks` first (workers, front end, cache), which calls
:func:`embed_inputs` on each batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from ..core.runtime import autocast
from ..features.tempo import at_tempo
from ..model.cqtnet import CQTNet

Input = np.ndarray | torch.Tensor  # (n_bins, T') float32 model input
MapSink = Callable[[int, torch.Tensor], None]  # (input index, (C, T'') feature map)


class TrackExtras(Protocol):
    """What a scoring recipe keeps of each track besides its vector (``recipe.Recipe``)."""

    @property
    def wants_map(self) -> bool:
        """Whether :meth:`extras` takes the feature map of the pass that embedded the track."""

    def extras(self, x: Input, fmap: torch.Tensor | None = None) -> dict[str, np.ndarray]:
        """The arrays kept for the track of model input ``x``."""


@torch.inference_mode()
def embed_inputs(
    model: CQTNet,
    inputs: Sequence[np.ndarray | torch.Tensor],
    device: torch.device,
    amp: bool,
    batch_size: int = 16,
    tempo_scales: Sequence[float] = (1.0,),
    on_map: MapSink | None = None,
) -> torch.Tensor:
    """Embed preprocessed inputs, batching only those of equal length, each at every one of
    ``tempo_scales`` (``FeatureConfig.tempo_scales``; see :func:`embed_batch`). With
    ``on_map``, each input's ``(C, T'')`` last feature map (on the device) is handed to it
    with the input's index (one pass at tempo 1 only).

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
                                                  non_blocking=True), tempo_scales,
                                  None if on_map is None else _per_input(on_map, chunk))
            out[chunk] = emb.float().cpu()
    return out


def _per_input(on_map: MapSink, indices: list[int]) -> Callable[[torch.Tensor], None]:
    """A batch's ``(B, C, T'')`` feature map -> one ``on_map`` call per input."""

    def hand_out(fmap: torch.Tensor) -> None:
        for i, one in zip(indices, fmap):
            on_map(i, one)

    return hand_out


def embed_batch(model: CQTNet, batch: torch.Tensor, tempo_scales: Sequence[float] = (1.0,),
                on_map: Callable[[torch.Tensor], None] | None = None) -> torch.Tensor:
    """``(B, D)`` unit-norm embeddings of ``(B, 1, F, T')`` model inputs of one length.

    One scale gives the model's embeddings of the batch at that tempo (:func:`at_tempo`;
    at 1.0 the batch itself, the report's single pass). Several give the normalised sum
    of those at each tempo: versions played faster or slower than the model's training
    crops still meet one of the tempi it knows. ``on_map`` receives the pass's ``(B, C,
    T'')`` feature map (``CQTNet.embed_and_map``; one pass at tempo 1 only).
    """
    if on_map is not None:
        if tuple(tempo_scales) != (1.0,):
            raise ValueError(f"a feature map comes from one pass at tempo 1, not {list(tempo_scales)}")
        emb, fmap = model.embed_and_map(batch)
        on_map(fmap)
        return emb
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
    extras: TrackExtras | None = None,
    on_extras: Callable[[int, dict[str, np.ndarray]], None] = lambda i, kept: None,
) -> torch.Tensor:
    """Embed a stream of preprocessed ``(n_bins, T')`` inputs of many lengths (whole stored
    tracks), ``chunk_size`` of them in memory at a time, each at every one of
    ``tempo_scales``. With ``extras`` (``recipe.Recipe``), each input's extras go to
    ``on_extras`` with its index, in input order; where they read a feature map it is the
    one of the pass that embedded the input, as in :func:`.tracks.embed_tracks`.

    cuDNN autotuning is off meanwhile: tuning each distinct length would cost more than it
    saves.

    Returns:
        ``(N, D)`` float32 on the CPU, in input order.
    """
    parts: list[torch.Tensor] = []
    chunk: list[np.ndarray | torch.Tensor] = []
    done = 0  # inputs embedded so far

    def flush() -> None:
        nonlocal done
        maps: dict[int, torch.Tensor] = {}  # chunk index -> (C, T'') feature map
        on_map = maps.__setitem__ if extras is not None and extras.wants_map else None
        parts.append(embed_inputs(model, chunk, device, amp, batch_size, tempo_scales, on_map))
        if extras is not None:
            for i, x in enumerate(chunk):
                on_extras(done + i, extras.extras(x, maps.pop(i, None)))
        done += len(chunk)
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
