"""``train``: CQT-Net with online triplet mining, on one CPU or under ``torchrun``."""

from __future__ import annotations

import os
from pathlib import Path

import click

from .common import fail, setup_logging


SHARED_MEMORY_HINT = (
    "hint: the DataLoader workers (num_workers > 0) pass batches through shared memory "
    "(/dev/shm), which Docker limits to 64 MB by default: run the container with "
    "--shm-size=8g (or --ipc=host), or train with --set num_workers=0.")


def _out_of_shared_memory(err: RuntimeError) -> bool:
    """Whether ``err`` is a DataLoader worker's bus error or shared-memory failure."""
    return any(s in str(err) for s in ("Bus error", "shared memory", "</torch_"))


@click.command()
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="YAML training config (e.g. configs/discogs-vinet-mirex.yaml), after its "
                   "`base:` chain.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value after the base chain, e.g. --set epochs=3 "
                   "--set features.crop_frames=3440.")
@click.option("--resume", is_flag=True, help="Continue from OUTPUT_DIR/last.pt.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--quiet", is_flag=True)
def train(config_path, overrides, resume, device, quiet) -> None:
    """Train CQT-Net with online triplet mining (torchrun-ready for several GPUs).

    A config with `init_weights` and `init_sha256` starts only from weights of that sha256.
    """
    setup_logging(quiet)
    from ..config import TrainConfig, load_yaml, with_overrides
    from ..model.weights import WeightsError
    from ..train.inputs import TrainInputError
    from ..train.loop import run_training

    try:
        cfg = load_yaml(config_path) if config_path else TrainConfig()
        cfg = with_overrides(cfg, list(overrides))
    except (ValueError, OSError) as err:
        fail(str(err))
    try:
        run_dir = run_training(cfg, resume=resume, device=device, progress=not quiet)
    except (TrainInputError, WeightsError, OSError) as err:  # data, weights, the run folder
        fail(str(err))
    except RuntimeError as err:
        if not _out_of_shared_memory(err):
            raise
        fail(f"{err}\n{SHARED_MEMORY_HINT}")
    if os.environ.get("RANK", "0") == "0":  # under torchrun, only rank 0 reports
        click.echo(f"run folder: {run_dir}", err=True)
