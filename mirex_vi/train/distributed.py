"""Processes and devices for training: one process, or one per GPU under ``torchrun``.

Under torchrun the process group is initialised from the environment (NCCL on CUDA, gloo
on the CPU) and the model is wrapped in DistributedDataParallel; a single process needs
neither.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
from torch import nn

from ..core.runtime import resolve_device


@dataclass(frozen=True)
class Ranks:
    """Where this process stands: ``rank`` of ``world_size`` (1 when not distributed)."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_spec: str = "auto") -> tuple[Ranks, torch.device]:
    """Join the torchrun process group when ``WORLD_SIZE`` > 1; else a single process.

    Under torchrun each process takes GPU ``LOCAL_RANK`` (NCCL), or runs on the CPU with
    gloo when CUDA is unavailable or ``device_spec`` is ``cpu``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks(), resolve_device(device_spec)
    use_cuda = device_spec != "cpu" and torch.cuda.is_available()
    if use_cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not torch_dist.is_initialized():
        # Long timeout: the other ranks wait while rank 0 validates on full tracks.
        torch_dist.init_process_group("nccl" if use_cuda else "gloo",
                                      timeout=dt.timedelta(hours=3))
    return Ranks(torch_dist.get_rank(), torch_dist.get_world_size()), device


def barrier(ranks: Ranks) -> None:
    """Wait for every process (nothing to wait for in a single one)."""
    if ranks.world_size > 1:
        torch_dist.barrier()


def distribute(module: nn.Module, device: torch.device, ranks: Ranks) -> nn.Module:
    """``module`` in DistributedDataParallel when there are several processes."""
    if ranks.world_size == 1:
        return module
    return nn.parallel.DistributedDataParallel(
        module, device_ids=[device.index] if device.type == "cuda" else None)
