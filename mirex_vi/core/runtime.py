"""Device selection, mixed precision and device limits, shared by inference and training.

AMP is fp16 autocast on CUDA only: CPUs without bf16 matrix units run bf16 autocast far
slower than fp32. Without AMP, CUDA runs in true fp32 (``disable_tf32_without_amp``).
``tolerance`` states how closely results made in different ways agree on each setting.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch

T = TypeVar("T")


# cuFFT plans kept per CUDA device; each distinct FFT shape (every track length) adds some,
# and each plan holds a work area in device memory. PyTorch's default keeps 4096.
FFT_PLAN_CACHE_SIZE = 64


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` -> ``cuda`` when available, else ``cpu``; ``cpu``, ``cuda``, ``cuda:N`` as given.

    Raises:
        ValueError: CUDA was asked for but is not available, or the spec is malformed.
    """
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as err:
        raise ValueError(f"invalid device {spec!r}: expected auto, cpu, cuda or cuda:N") from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {spec!r} requested but CUDA is not available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {spec!r}: only {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise ValueError(f"unsupported device {spec!r}: expected auto, cpu, cuda or cuda:N")
    return device


def amp_enabled(device: torch.device, requested: bool) -> bool:
    """AMP runs only where it helps: fp16 on CUDA."""
    return requested and device.type == "cuda"


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """fp16 autocast on CUDA when ``enabled``; a no-op otherwise."""
    if amp_enabled(device, enabled):
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def disable_tf32_without_amp(device: torch.device, amp: bool) -> None:
    """On CUDA without AMP, make fp32 convolutions and matrix products true fp32.

    cuDNN's default runs fp32 convolutions in TF32 (10-bit mantissa); ``--no-amp`` (or
    ``amp: false``) asks for fp32, so both TF32 switches go off for this process. With AMP
    on, or on the CPU, nothing changes.
    """
    if device.type == "cuda" and not amp_enabled(device, amp):
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


def bound_fft_plan_cache(device: torch.device, size: int = FFT_PLAN_CACHE_SIZE) -> None:
    """Keep at most ``size`` cuFFT plans on a CUDA ``device``; a no-op elsewhere."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        torch.backends.cuda.cufft_plan_cache[index].max_size = size


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` says the device ran out of memory (the allocator's or cuFFT's)."""
    return isinstance(err, torch.OutOfMemoryError) or (
        isinstance(err, RuntimeError)
        and any(s in str(err) for s in ("out of memory", "CUFFT_ALLOC_FAILED")))


def unless_out_of_memory(compute: Callable[[], T], device: torch.device) -> T | None:
    """``compute()``, or None when it ran out of device memory (the caching allocator's free
    blocks then go back to CUDA); any other error propagates."""
    try:
        return compute()
    except RuntimeError as err:  # torch.OutOfMemoryError is one
        if not is_out_of_memory(err):
            raise
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return None


@dataclass(frozen=True)
class Tolerance:
    """How closely two embeddings of the same audio agree when made in two ways on one
    device/AMP setting, as the largest ``|Δ d²|`` (``d² = 2 - 2 cos``, the square of a MIREX
    distance, the quantity the tests compare), and how closely ``TorchCQT`` follows librosa.

    Attributes:
        batch: batch size B against batch size 1 (``--batch-size``).
        backend: the torch CQT on the device against librosa's in the workers (``--cqt``).
        cqt: relative Frobenius error of ``TorchCQT`` against ``librosa.cqt`` on music;
            also the bound on a track's CQT in a zero-padded batch of several lengths
            against the track alone (``TorchCQT(audio, lengths)``; measured ~5e-7).
    """

    batch: float
    backend: float
    cqt: float = 2e-5


def tolerance(device_type: str, amp: bool) -> Tolerance:
    """The stated agreement (``Tolerance``) on ``device_type`` (``cpu``/``cuda``) with ``amp``.

    - CPU, fp32: batching is bit-exact (the model sees one track per forward pass there,
      ``embed.embed_inputs``); backends agree to cosine 0.9999.
    - CUDA, fp32 (TF32 off): cuDNN picks kernels per shape, so batches round differently
      (float32 noise, 1e-5); backends as on the CPU.
    - CUDA, fp16 AMP: batch sizes differ by ~1e-4 (allowed: 5e-4); backends to cosine
      0.9995 (the AMP-against-fp32 target).

    The CUDA figures are stated from the precision of each format, not yet measured
    (``benchmarks.device.gpu_check`` measures them); the CPU ones hold in the test suite.
    """
    if device_type == "cpu":
        return Tolerance(batch=0.0, backend=2e-4)
    if not amp:
        return Tolerance(batch=1e-5, backend=2e-4)
    return Tolerance(batch=5e-4, backend=1e-3)
