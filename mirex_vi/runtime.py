"""Device selection and mixed precision, shared by inference and training.

AMP is fp16 autocast on CUDA only: on these CPUs bf16 autocast is 50-75x slower than fp32.
"""

from __future__ import annotations

import contextlib

import torch


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
