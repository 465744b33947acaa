"""The front end: audio -> CQT -> model input, in numpy (librosa) and in torch.

Every constant comes from ``FeatureConfig`` (``docs/REFERENCE.md §1``). A stored CQT is
``(T, n_bins)`` float16; what the model sees is ``(n_bins, T')`` float32.

- numpy: ``compute_cqt`` (what the dataset stores; ``checked_cqt`` refuses a non-finite one)
  and ``preprocess`` (pad, pool, normalise);
- torch: ``preprocess_tensor`` (the same steps on a tensor) and ``TorchFrontEnd`` (decoded
  audio -> model input on a device, through ``cqt_torch.TorchCQT``, a track or a batch of
  them at a time), which takes audio as the workers send it, ``PackedAudio`` (int16, half
  the bytes of float32); ``length_bucket`` groups tracks into batches by length.

torch is imported only inside the torch half, so the decode/CQT worker processes, which load
this module for ``compute_cqt``, never load torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..config import FeatureConfig
from ..io.audio import AudioError

if TYPE_CHECKING:
    import torch


# Why a CQT is refused: float16 storage overflows (above 65504) on audio far outside [-1, 1].
NON_FINITE_CQT = "CQT is not finite (float16 overflow: is the audio scaled to [-1, 1]?)"
# ... and why one is refused at the other end: audio so quiet (a float file around -150 dBFS)
# that every magnitude rounds to zero in float16, so the model would see only zeros.
ZERO_CQT = "too quiet: its CQT is zero once rounded to float16 (peak around -150 dBFS or lower)"


def librosa_cqt(audio: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """``abs(librosa.cqt(audio))`` with ``cfg``'s constants, before any storage rounding.

    Args:
        audio: ``(N,)`` float32 samples at ``cfg.sample_rate``.

    Returns:
        ``(n_bins, T)`` float32 magnitude, ``T = 1 + N // hop_length``.
    """
    import librosa  # heavy import (numba); only the processes that compute CQTs pay it

    cqt = librosa.cqt(
        audio,
        sr=cfg.sample_rate,
        hop_length=cfg.hop_length,
        n_bins=cfg.n_bins,
        bins_per_octave=cfg.bins_per_octave,
        fmin=cfg.fmin,
    )  # (n_bins, T) complex
    return np.abs(cqt)


def compute_cqt(audio: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """Magnitude CQT of mono audio at ``cfg.sample_rate``, as the dataset stores it.

    Args:
        audio: ``(N,)`` float32 samples.

    Returns:
        ``(T, n_bins)`` float16 magnitude, ``T = 1 + N // hop_length``; no log.
    """
    return librosa_cqt(audio, cfg).T.astype(np.float16)


def checked_cqt(audio: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """:func:`compute_cqt`, refusing a result that is not finite or is all zero.

    Raises:
        AudioError: the float16 CQT overflowed (``NON_FINITE_CQT``) or underflowed to
            zero everywhere (``ZERO_CQT``).
    """
    with np.errstate(over="ignore"):  # reported as the AudioError below
        cqt = compute_cqt(audio, cfg)
    if not np.all(np.isfinite(cqt)):
        raise AudioError(NON_FINITE_CQT)
    if not np.any(cqt):
        raise AudioError(ZERO_CQT)
    return cqt


def preprocess(cqt: np.ndarray, cfg: FeatureConfig, min_frames: int | None = None) -> np.ndarray:
    """Stored CQT -> model input: pad, mean-pool, clip, max-normalise, transpose.

    Args:
        cqt: ``(T, n_bins)`` magnitude (any float dtype).
        min_frames: zero-pad at the end to at least this many frames; defaults to
            ``cfg.min_frames`` (inference). Training passes ``cfg.crop_frames``.

    Returns:
        ``(n_bins, T')`` float32 with ``T' = max(T, min_frames) // downsample_factor``.
    """
    min_frames = cfg.min_frames if min_frames is None else min_frames
    x = _pad_frames(np.asarray(cqt, dtype=np.float32), min_frames)
    return model_input(pool_cqt(x, cfg.downsample_factor), 0, cfg.eps)  # (n_bins, T')


def model_input(pooled: np.ndarray, min_frames: int, eps: float) -> np.ndarray:
    """Pooled frames -> model input: zero-pad, clip at 0, max-normalise, transpose (the
    steps of :func:`preprocess` after pooling).

    Args:
        pooled: ``(T', n_bins)`` magnitude.
        min_frames: zero-pad at the end to at least this many pooled frames.

    Returns:
        ``(n_bins, max(T', min_frames))`` float32.
    """
    x = _pad_frames(np.asarray(pooled, dtype=np.float32), min_frames)
    x = np.clip(x, 0.0, None)
    x /= x.max() + eps
    return np.ascontiguousarray(x.T)


def _pad_frames(x: np.ndarray, min_frames: int) -> np.ndarray:
    """``(T, n_bins)`` zero-padded at the end to at least ``min_frames`` rows."""
    if x.shape[0] < min_frames:
        x = np.pad(x, ((0, min_frames - x.shape[0]), (0, 0)))
    return x


def pool_cqt(cqt: np.ndarray, factor: int) -> np.ndarray:
    """Mean-pool the time axis by ``factor``: the pooling step of ``preprocess``.

    Args:
        cqt: ``(T, n_bins)`` magnitude (any float dtype).

    Returns:
        ``(T // factor, n_bins)`` float32; a trailing partial pool is dropped.
    """
    x = np.asarray(cqt, dtype=np.float32)
    t_out = x.shape[0] // factor
    return x[: t_out * factor].reshape(t_out, factor, x.shape[1]).mean(axis=1)


def preprocess_tensor(cqt: torch.Tensor, cfg: FeatureConfig, min_frames: int | None = None) -> torch.Tensor:
    """Torch twin of :func:`preprocess`: ``(T, F)`` -> ``(F, T')`` float32, on ``cqt``'s device."""
    min_frames = cfg.min_frames if min_frames is None else min_frames
    x = cqt.float()
    if x.shape[0] < min_frames:
        padded = x.new_zeros((min_frames, x.shape[1]))
        padded[: x.shape[0]] = x
        x = padded
    k = cfg.downsample_factor
    t_out = x.shape[0] // k
    x = x[: t_out * k].reshape(t_out, k, x.shape[1]).mean(dim=1).clamp_(min=0.0)  # (T', F)
    return (x / (x.max() + cfg.eps)).T.contiguous()


def length_bucket(n_samples: int, steps_per_octave: int = 8) -> int:
    """The bucket of tracks of about ``n_samples`` that share a batch of the torch front end:
    lengths within a factor ``2 ** (1 / steps_per_octave)`` (9 %) of each other, so padding
    a batch to its longest track costs at most that."""
    return math.ceil(steps_per_octave * math.log2(max(1, n_samples)))


@dataclass(frozen=True)
class PackedAudio:
    """Decoded audio as the workers send it to the torch front end: ``samples`` =
    ``rint(audio * 2**shift)`` in int16, half the bytes of float32.

    ``shift`` is the largest that keeps the peak within int16, so 16-bit PCM audio (every
    sample a multiple of 2**-15, peak <= 1, hence ``shift >= 15``) round-trips exactly;
    other audio is rounded to within 2**-15 of its peak. Scaling by a power of two is exact
    in float32 both ways, also for audio far outside [-1, 1].
    """

    samples: np.ndarray  # (N,) int16
    shift: int

    @classmethod
    def pack(cls, audio: np.ndarray) -> "PackedAudio":
        """``(N,)`` finite float32 audio, not all zero (as ``load_audio`` returns it)."""
        peak = float(np.abs(audio).max())
        shift = min(100, math.floor(math.log2(32768.0 / peak)))
        scaled = audio * np.float32(2.0**shift)
        if scaled.max() > 32767:  # the positive peak would round to 32768: one step less
            shift -= 1
            scaled *= np.float32(0.5)
        return cls(np.rint(scaled).astype(np.int16), shift)

    @property
    def scale(self) -> float:
        return 2.0**self.shift

    def unpack(self) -> np.ndarray:
        """``(N,)`` float32 audio."""
        return self.samples.astype(np.float32) / np.float32(self.scale)


class _HostStaging:
    """Two host buffers, used in turn, through which audio is copied to ``device``.

    On CUDA they are page-locked, so the copy runs asynchronously, overlapping the previous
    batch's CQT; a buffer is refilled only once its last copy has finished (a CUDA event).
    On the CPU they are plain memory and the same steps run, the copy being a plain one.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self._pinned = device.type == "cuda"
        self._buffers: list[torch.Tensor | None] = [None, None]  # (capacity,) uint8 each
        self._copied: list[torch.cuda.Event | None] = [None, None]
        self._turn = 0

    def to_device(self, samples: np.ndarray) -> torch.Tensor:
        """``(N,)`` host array -> a new ``(N,)`` tensor of its dtype on ``device``."""
        return self.rows_to_device([samples])[0]

    def rows_to_device(self, rows: Sequence[np.ndarray]) -> torch.Tensor:
        """``B`` host arrays of one dtype, lengths ``N_b`` -> a new ``(B, max N_b)`` tensor on
        ``device``, each row zero-padded at the end."""
        import torch

        slot, self._turn = self._turn, 1 - self._turn
        if self._copied[slot] is not None:
            self._copied[slot].synchronize()
        dtype = torch.from_numpy(np.asarray(rows[0][:0])).dtype
        shape = (len(rows), max(len(r) for r in rows))
        nbytes = shape[0] * shape[1] * dtype.itemsize
        buffer = self._buffers[slot]
        if buffer is None or buffer.numel() < nbytes:
            buffer = torch.empty(nbytes + nbytes // 4, dtype=torch.uint8, pin_memory=self._pinned)
            self._buffers[slot] = buffer
        host = buffer[:nbytes].view(dtype).view(shape)
        for row, samples in zip(host, rows):
            row[: len(samples)].copy_(torch.from_numpy(np.ascontiguousarray(samples)))
            row[len(samples) :].zero_()
        on_device = host.to(self.device, non_blocking=True, copy=True)
        if self._pinned:
            self._copied[slot] = torch.cuda.Event()
            self._copied[slot].record(torch.cuda.current_stream(self.device))
        return on_device


class TorchFrontEnd:
    """Decoded audio -> model input on ``device``, mirroring ``compute_cqt`` + ``preprocess``,
    one track at a time (``__call__``) or a batch of tracks of any lengths (:meth:`batch`).

    The CQT is :class:`~mirex_vi.features.cqt_torch.TorchCQT` (agrees with librosa to ~1e-6
    relative); it goes through float16 as stored features do, then :func:`preprocess_tensor`.
    On CUDA the cuFFT plan cache of ``device`` is bounded (``runtime.bound_fft_plan_cache``):
    every distinct batch shape needs plans of its own.
    """

    def __init__(self, cfg: FeatureConfig, device: torch.device):
        from ..core.runtime import bound_fft_plan_cache
        from .cqt_torch import TorchCQT

        self.cfg = cfg
        self.device = device
        self.cqt = TorchCQT.from_config(cfg).to(device)
        self._staging = _HostStaging(device)
        bound_fft_plan_cache(device)

    def __call__(self, audio: PackedAudio | np.ndarray) -> torch.Tensor:
        """Audio -> ``(n_bins, T')`` float32 model input on ``device``.

        Args:
            audio: ``PackedAudio``, or ``(N,)`` float32 samples.

        Raises:
            AudioError: the float16 CQT is not finite (``NON_FINITE_CQT``) or all zero
                (``ZERO_CQT``), as :func:`checked_cqt` refuses it.
        """
        result = self.batch([audio])[0]
        if isinstance(result, AudioError):
            raise result
        return result

    def _small(self, values: list, dtype: torch.dtype) -> torch.Tensor:
        """A short list as a tensor on ``device``; on CUDA through page-locked memory, so the
        copy is queued behind the device's work instead of waiting for it."""
        import torch

        tensor = torch.tensor(values, dtype=dtype)
        if self.device.type != "cuda":
            return tensor.to(self.device)
        return tensor.pin_memory().to(self.device, non_blocking=True)

    def batch(self, audios: Sequence[PackedAudio | np.ndarray]) -> list[torch.Tensor | AudioError]:
        """Several tracks -> their model inputs, through one CQT of the tracks zero-padded to
        the longest (``TorchCQT`` with ``lengths``: each track's frames equal its CQT alone
        within ``runtime.tolerance(...).cqt``), with one device sync for the whole batch.

        Args:
            audios: ``PackedAudio`` or ``(N_b,)`` float32 samples, any lengths.

        Returns:
            Per track, in order: its ``(n_bins, T'_b)`` float32 model input on ``device``, or
            the ``AudioError`` refusing its CQT (``NON_FINITE_CQT``, ``ZERO_CQT``).
        """
        import torch

        if all(isinstance(a, PackedAudio) for a in audios):
            rows, scales = [a.samples for a in audios], [a.scale for a in audios]
        else:
            rows = [a.unpack() if isinstance(a, PackedAudio) else np.asarray(a, np.float32)
                    for a in audios]
            scales = [1.0] * len(rows)
        lengths = [len(r) for r in rows]
        frames = [1 + n // self.cfg.hop_length for n in lengths]  # TorchCQT.n_frames
        with torch.inference_mode():
            scale = self._small(scales, torch.float32)[:, None]
            waves = self._staging.rows_to_device(rows).float() / scale  # (B, N); exact: powers of 2
            if len(set(lengths)) == 1:
                spec = self.cqt(waves)  # (B, n_bins, T)
            else:
                spec = self.cqt(waves, self._small(lengths, torch.int64))
            spec = spec.half().float()  # the float16 round trip of stored features
            valid = (torch.arange(spec.shape[-1], device=self.device)
                     < self._small(frames, torch.int64)[:, None])[:, None]  # (B, 1, T)
            finite = (torch.isfinite(spec) | ~valid).flatten(1).all(dim=1)
            nonzero = ((spec != 0) & valid).flatten(1).any(dim=1)
            flags = torch.stack([finite, nonzero]).cpu()  # (2, B): the batch's one sync
            return [AudioError(NON_FINITE_CQT) if not flags[0, b]
                    else AudioError(ZERO_CQT) if not flags[1, b]
                    else preprocess_tensor(spec[b, :, : frames[b]].T, self.cfg)
                    for b in range(len(rows))]
