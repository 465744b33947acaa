"""Seconds per training step and samples per second of CQT-Net on random inputs.

A step is the package's ``train.training_step``: forward, online triplet loss, backward,
Adam update (fp16 autocast + GradScaler on CUDA with ``--amp``; fp32 on the CPU). Data
loading is not included: inputs are random ``(B, 84, crop_frames // 20)`` tensors with
labels shaped like a ``cliques x versions`` batch.

    # the report's step (54 x 4 crops of 7600 frames) on a GPU
    python -m benchmarks.speed.train_step --device cuda --amp
    # on a small CPU: a smaller batch, per-sample time extrapolated to 216 samples
    python -m benchmarks.speed.train_step --device cpu --cliques 2 --threads 2

The per-sample time of a small batch, times 216, estimates the full step (convolution
cost is linear in the batch); the script prints both and says which one was measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch

from mirex_vi.config import TrainConfig
from mirex_vi.core.runtime import amp_enabled, resolve_device
from mirex_vi.model.cqtnet import count_parameters
from mirex_vi.train.distributed import Ranks
from mirex_vi.train.loop import build_training_state, training_step


def measure(model_size: str, cliques: int, versions: int, crop_frames: int, steps: int,
            warmup: int, device: torch.device, amp: bool) -> dict:
    """Time ``steps`` training steps after ``warmup`` untimed ones; return the figures."""
    cfg = dataclasses.replace(TrainConfig(), model=model_size, amp=amp)
    torch.backends.cudnn.benchmark = True
    state = build_training_state(cfg, device, Ranks())
    state.model.train()
    amp = amp_enabled(device, amp)
    batch = cliques * versions
    t_prime = crop_frames // cfg.features.downsample_factor
    x = torch.rand(batch, cfg.features.n_bins, t_prime, device=device)  # (B, F, T')
    labels = torch.arange(cliques, device=device).repeat_interleave(versions)  # (B,)
    distinct = torch.arange(batch, device=device)  # (B,) every sample its own version
    generator = torch.Generator().manual_seed(cfg.seed)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        training_step(state, (x, labels, distinct), cfg, generator)
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        training_step(state, (x, labels, distinct), cfg, generator)
    sync()
    per_step = (time.perf_counter() - t0) / steps
    full_batch = cfg.cliques_per_batch * cfg.versions_per_clique
    out = dict(model=model_size, parameters=count_parameters(state.model), device=str(device),
               amp=amp, threads=torch.get_num_threads(), batch=batch, crop_frames=crop_frames,
               t_prime=t_prime, steps=steps, seconds_per_step=round(per_step, 4),
               samples_per_second=round(batch / per_step, 2),
               seconds_per_sample=round(per_step / batch, 4))
    if batch != full_batch:
        out[f"extrapolated_seconds_per_step_{full_batch}"] = round(per_step / batch * full_batch, 2)
    if device.type == "cuda":
        out["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20)
    return out


def main() -> None:
    cfg = TrainConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=cfg.model)
    parser.add_argument("--cliques", type=int, default=cfg.cliques_per_batch)
    parser.add_argument("--versions", type=int, default=cfg.versions_per_clique)
    parser.add_argument("--crop-frames", type=int, default=cfg.features.crop_frames)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", action="store_true", help="fp16 autocast (CUDA only)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    result = measure(args.model, args.cliques, args.versions, args.crop_frames, args.steps,
                     args.warmup, resolve_device(args.device), args.amp)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
