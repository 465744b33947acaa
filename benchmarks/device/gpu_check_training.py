"""Steps 6-8 of ``benchmarks.device.gpu_check``: training on the device.

6. a short AMP training run on a small synthetic pooled store: the loss, the scaler state in
   ``last.pt``, and the export of ``best.pt`` to a weight package that loads;
7. a run checkpointed on the CPU (a disabled scaler saves ``{}``) resumed on the device;
8. a one-rank NCCL (gloo on the CPU) process group with the model wrapped in DDP: one epoch,
   an all-reduce, and a checkpoint whose state dict carries no ``module.`` prefix.

Each step takes ``(device, sizes, work)``: ``sizes`` a ``gpu_check.Sizes``, ``work`` a
scratch folder where the store is written once for all three.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import torch
import torch.distributed as torch_dist

from benchmarks.common import REPO
from mirex_vi.config import TrainConfig, load_yaml, with_overrides
from mirex_vi.features.pooled import write_store
from mirex_vi.model.packaging import import_checkpoint
from mirex_vi.model.weights import load_weights
from mirex_vi.train.checkpoint import BEST, LAST, METRICS, checkpoint_payload
from mirex_vi.train.distributed import Ranks
from mirex_vi.train.inputs import build_train_loader
from mirex_vi.train.loop import build_training_state, run_training, train_epoch


def _training_overrides(work: Path, sizes) -> list[str]:
    """Config overrides for a small pooled store of synthetic cliques (time-shifted noisy
    copies of a random pattern) and its train/val metadata, written on the first call."""
    if not (work / "store").exists():
        rng = np.random.default_rng(0)
        items, splits = [], {"train": {}, "val": {}}
        for c in range(sizes.cliques):
            pattern = rng.random((240, 84)) ** 4  # (T', F) pooled frames
            versions = splits["val" if c >= 0.75 * sizes.cliques else "train"][f"C-{c:07d}"] = []
            for v in range(sizes.versions):
                yt = f"g{c:04d}v{v:02d}xx"
                items.append((yt, np.roll(pattern, int(rng.integers(0, 40)), axis=0)
                              + 0.15 * rng.random(pattern.shape)))
                versions.append({"version_id": f"V-{c}-{v}", "youtube_id": yt})
        for name, cliques in splits.items():
            (work / f"light.json.{name}").write_text(json.dumps(cliques))
        write_store(work / "store", items, "f16")
    return [f"train_metadata={work / 'light.json.train'}",
            f"val_metadata={work / 'light.json.val'}", f"features_dir={work / 'store'}",
            "amp=true", f"num_workers={sizes.loader_workers}"]


def _tiny_config(work: Path, sizes, *overrides: str) -> TrainConfig:
    """``configs/tiny.yaml`` on the store, in batches of ``sizes``, then ``overrides``."""
    batches = [f"cliques_per_batch={sizes.cliques_per_batch}",
               f"versions_per_clique={sizes.versions}"]
    return with_overrides(load_yaml(REPO / "configs" / "tiny.yaml"),
                          _training_overrides(work, sizes) + batches + list(overrides))


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / METRICS).read_text().splitlines()]


def _scaler_saved(checkpoint: Path) -> bool:
    return bool(torch.load(checkpoint, map_location="cpu", weights_only=True)["scaler_state_dict"])


def amp_training(device: torch.device, sizes, work: Path) -> dict:
    cfg = _tiny_config(work, sizes, f"output_dir={work / 'run'}", f"model={sizes.model}",
                       f"epochs={sizes.epochs}")
    run_dir = run_training(cfg, device=str(device))
    losses = [m["train_loss"] for m in _metrics(run_dir)]
    exported = import_checkpoint(run_dir / BEST, work / "exported")
    load_weights(work / "exported")
    return dict(model=sizes.model, losses=losses, loss_falls=losses[-1] < losses[0],
                val_map=[m["val"].get("map") for m in _metrics(run_dir)],
                scaler_state_saved=_scaler_saved(run_dir / LAST), exported_sha256=exported)


def resume_from_cpu(device: torch.device, sizes, work: Path) -> dict:
    base = _tiny_config(work, sizes, f"output_dir={work / 'resume'}")
    run_training(with_overrides(base, ["epochs=1"]), device="cpu")
    empty_on_cpu = not _scaler_saved(work / "resume" / LAST)
    run_dir = run_training(with_overrides(base, ["epochs=2"]), resume=True, device=str(device))
    return dict(cpu_scaler_state_empty=empty_on_cpu, epochs=[m["epoch"] for m in _metrics(run_dir)],
                scaler_state_saved_after_resume=_scaler_saved(run_dir / LAST))


def ddp_one_rank(device: torch.device, sizes, work: Path) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    backend = "nccl" if device.type == "cuda" else "gloo"
    torch_dist.init_process_group(backend, rank=0, world_size=1)
    try:
        cfg = _tiny_config(work, sizes)
        loader, sampler = build_train_loader(cfg, Ranks(), device)
        state = build_training_state(cfg, device, Ranks(), n_classes=len(sampler.members))
        ids = None if device.type != "cuda" else [device.index or torch.cuda.current_device()]
        state.model = torch.nn.parallel.DistributedDataParallel(state.model, device_ids=ids)
        before = [p.detach().clone() for p in state.bare_model.parameters()]
        stats = train_epoch(state, loader, cfg, torch.Generator().manual_seed(0))
        total = torch.ones(1, device=device)
        torch_dist.all_reduce(total)
        keys = checkpoint_payload(state, cfg, {"loss": stats["loss"]}, {})["model_state_dict"]
        changed = any(not torch.equal(a, b) for a, b in zip(before, state.bare_model.parameters()))
        return dict(backend=backend, steps=stats["steps"], loss=stats["loss"],
                    all_reduce=total.item(), parameters_changed=changed,
                    unwrapped_state_dict=not any(k.startswith("module.") for k in keys))
    finally:
        torch_dist.destroy_process_group()
