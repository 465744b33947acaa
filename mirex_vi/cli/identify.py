"""``identify`` (the MIREX call) and ``warmup`` (compile and verify at image build)."""

from __future__ import annotations

from pathlib import Path

import click

from .common import (EXIT_CODES, EXIT_OUTPUT, EXIT_STRICT, expand_option, fail, interruptible,
                     scoring_changes, scoring_options, setup_logging, share_cores_with_workers)


@click.command(epilog=EXIT_CODES)
@click.argument("collection", type=click.Path(path_type=Path))
@click.argument("queries", type=click.Path(path_type=Path))
@click.argument("output", type=click.Path())  # a str: a trailing '/' must reach the check
@click.option("--workdir", type=click.Path(path_type=Path),
              help="Cache and error log folder [default: OUTPUT.work beside the output].")
@click.option("--weights", "weights_spec", help="Weight package folder or name, or an authors' .pth.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--no-amp", is_flag=True,
              help="Run the model in true fp32 on CUDA too: no fp16 autocast, and TF32 "
                   "convolutions and matrix products off.")
@click.option("--batch-size", type=click.IntRange(1),
              help="Tracks of equal length per forward pass on CUDA [default: 16]. On the "
                   "CPU the model takes one track at a time whatever this says, so CPU "
                   "embeddings never depend on it (batching gains nothing there).")
@click.option("--workers", type=click.IntRange(1), help="Decode/CQT processes [default: CPU count].")
@click.option("--cqt", "cqt_backend", type=click.Choice(["auto", "librosa", "torch"]), default="auto",
              show_default=True, help="CQT on the device in torch (auto: on CUDA, after a "
                                      "self-check against librosa) or librosa in the workers.")
@click.option("--strict", is_flag=True, help="Stop at the first bad audio file (exit 1, no output).")
@click.option("--quiet", is_flag=True, help="No progress bar or info messages.")
@click.option("--name", help="First line of the output [default: system and weights name].")
@expand_option
@scoring_options
def identify(collection, queries, output, workdir, weights_spec, device, no_amp, batch_size,
             workers, cqt_backend, strict, quiet, name, expand, **scoring) -> None:
    """Write the MIREX distance matrix of QUERIES against COLLECTION to OUTPUT."""
    setup_logging(quiet)
    share_cores_with_workers()
    from ..features.workers import default_workers, start_forkserver

    if (workers or default_workers()) > 1:  # the workers warm up while torch loads
        start_forkserver(decode_only=cqt_backend == "torch")
    from ..inference.identify import identify as run_identify, prepare
    from ..inference.settings import EmbedSettings
    from ..io.lists import OutputError

    with interruptible():
        try:
            job = prepare(collection, queries, output, workdir, weights_spec, device)
            recipe = _recipe(job.weights.features, scoring_changes(**scoring))
        except ValueError as err:  # InputError, WeightsError and bad devices are all ValueErrors
            fail(str(err))
    settings = EmbedSettings.resolve(job.device, not no_amp, batch_size, workers, cqt_backend)
    with interruptible(f"no output written; finished embeddings are kept in {job.workdir}"):
        try:
            summary = run_identify(job, settings, strict=strict, progress=not quiet, name=name,
                                   expand=expand, scoring=recipe)
        except OutputError as err:
            fail(str(err), EXIT_OUTPUT)
    for path, reason in summary.errors:
        click.echo(f"skipped {path}: {reason}", err=True)
    if summary.strict_error:
        fail(f"{summary.strict_error} (--strict: no output written)", EXIT_STRICT)
    click.echo(summary.describe(), err=True)


def _recipe(features, changes: dict):
    """The package's scoring recipe with ``changes``, or None when there are none (ValueError
    when they do not fit the package, e.g. segments off the map of a three-tempo package)."""
    from dataclasses import replace

    if not changes:
        return None
    return replace(features, scoring=replace(features.scoring, **changes)).scoring


@click.command()
def warmup() -> None:
    """Compile librosa's numba kernels and the alignment's (re-rank), and verify the default
    weights (used at image build)."""
    import numpy as np

    from ..config import FeatureConfig
    from ..features.frontend import compute_cqt
    from ..inference.align import load_kernels
    from ..model.weights import load_weights

    cfg = FeatureConfig()
    noise = np.random.default_rng(0).standard_normal(2 * cfg.sample_rate).astype(np.float32)
    compute_cqt(0.1 * noise, cfg)
    load_kernels()
    loaded = load_weights()
    click.echo(f"warm: CQT and alignment compiled, weights {loaded.name} verified (sha256 "
               f"{loaded.sha256})")
