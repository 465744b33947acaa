"""The ``mirex-vi`` command line. Heavy imports live inside commands so ``--help`` is instant.

Exit codes: 0 success; 1 a track failed under ``--strict``; 2 bad input (lists, output
location, weights, config), reported before any audio is processed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from .cli_common import fail as _fail
from .cli_common import setup_logging as _setup_logging
from .cli_common import share_cores_with_workers as _share_cores_with_workers
from .cli_search import evaluate_through_index, index_group, search_command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mirex-vi")
def main() -> None:
    """Discogs-VINet-MIREX cover song identification: MIREX matrices, training, evaluation."""


@main.command()
@click.argument("collection", type=click.Path(path_type=Path))
@click.argument("queries", type=click.Path(path_type=Path))
@click.argument("output", type=click.Path(path_type=Path))
@click.option("--workdir", type=click.Path(path_type=Path),
              help="Cache and error log folder [default: OUTPUT.work beside the output].")
@click.option("--weights", "weights_spec", help="Weight package folder or name, or an authors' .pth.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--no-amp", is_flag=True, help="Run the model in fp32 on CUDA too.")
@click.option("--batch-size", type=click.IntRange(1),
              help="Tracks of equal length per forward pass [default: 16 on CUDA, 1 on CPU, "
                   "where batching gains nothing and would make a resumed run differ in the "
                   "last digit].")
@click.option("--workers", type=click.IntRange(1), help="Decode/CQT processes [default: CPU count].")
@click.option("--cqt", "cqt_backend", type=click.Choice(["auto", "librosa", "torch"]), default="auto",
              show_default=True, help="CQT on the device in torch (auto: on CUDA) or librosa.")
@click.option("--strict", is_flag=True, help="Stop at the first bad audio file (exit 1, no output).")
@click.option("--quiet", is_flag=True, help="No progress bar or info messages.")
@click.option("--name", help="First line of the output [default: system and weights name].")
def identify(collection, queries, output, workdir, weights_spec, device, no_amp, batch_size,
             workers, cqt_backend, strict, quiet, name) -> None:
    """Write the MIREX distance matrix of QUERIES against COLLECTION to OUTPUT."""
    _setup_logging(quiet)
    _share_cores_with_workers()
    from .identify import identify as run_identify, prepare

    try:
        job = prepare(collection, queries, output, workdir, weights_spec, device)
    except ValueError as err:  # InputError, WeightsError and bad devices are all ValueErrors
        _fail(str(err))
    summary = run_identify(job, amp=not no_amp, batch_size=batch_size, workers=workers,
                           strict=strict, progress=not quiet, name=name, cqt_backend=cqt_backend)
    for path, reason in summary.errors:
        click.echo(f"skipped {path}: {reason}", err=True)
    if summary.strict_error:
        _fail(f"{summary.strict_error} (--strict: no output written)", code=1)
    click.echo(summary.describe(), err=True)


@main.command()
def warmup() -> None:
    """Compile librosa's numba kernels and verify the default weights (used at image build)."""
    import numpy as np

    from .config import FeatureConfig
    from .features import compute_cqt
    from .weights import load_weights

    cfg = FeatureConfig()
    noise = np.random.default_rng(0).standard_normal(2 * cfg.sample_rate).astype(np.float32)
    compute_cqt(0.1 * noise, cfg)
    loaded = load_weights()
    click.echo(f"warm: CQT compiled, weights {loaded.name} verified (sha256 {loaded.sha256})")



# --- weight packages -------------------------------------------------------------------


@main.group()
def weights() -> None:
    """List, verify, import and export weight packages."""


@weights.command("list")
def weights_list() -> None:
    """Show the packages under the weights folder."""
    from .weights import DEFAULT_WEIGHTS, list_packages, weights_root

    packages = list_packages()
    if not packages:
        click.echo(f"no weight packages under {weights_root()}")
    for folder in packages:
        marker = " (default)" if folder.name == DEFAULT_WEIGHTS else ""
        click.echo(f"{folder.name}{marker}\t{folder}")


@weights.command("verify")
@click.argument("names", nargs=-1)
def weights_verify(names) -> None:
    """Check the sha256 of NAMES (folders or names; default: every package)."""
    from .weights import list_packages, resolve_weights, verify_package

    folders = [resolve_weights(n) for n in names] if names else list_packages()
    if not folders:
        _fail("no weight packages to verify")
    failed = 0
    for folder in folders:
        try:
            click.echo(f"OK\t{folder.name}\t{verify_package(folder)}")
        except ValueError as err:
            click.echo(f"FAILED\t{folder.name}\t{err}", err=True)
            failed += 1
    if failed:
        _fail(f"{failed} package(s) failed verification")


def _package_command(verb: str, help_text: str):
    @weights.command(verb, help=help_text)
    @click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path))
    @click.option("--name", required=True, help="Package name (a folder under --root).")
    @click.option("--root", type=click.Path(file_okay=False, path_type=Path),
                  help="Where to create the package [default: the weights folder].")
    @click.option("--card", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                  help="MODEL_CARD.md to ship [default: generated from the checkpoint].")
    def command(checkpoint, name, root, card) -> None:
        from .weights import import_checkpoint, weights_root

        folder = (root or weights_root()) / name
        try:
            sha = import_checkpoint(checkpoint, folder, card.read_text("utf-8") if card else None)
        except ValueError as err:
            _fail(str(err))
        click.echo(f"wrote {folder} (model.safetensors sha256 {sha})")

    return command


_package_command("import", "Turn the authors' model_checkpoint.pth into a weight package.")
_package_command("export", "Turn a training checkpoint (best.pt/last.pt) into a weight package.")


# --- dataset features, training, evaluation ---------------------------------------------


@main.command()
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--metadata", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Discogs-VI-YT light JSON (or split) or JSONL.")
@click.option("--audio-root", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder holding audio/<id[:2]>/<id>.<ext> (with --metadata).")
@click.option("--list", "list_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Plain list of audio paths instead (ids are the file names' stems).")
@click.option("--workers", type=click.IntRange(1), help="Processes [default: CPU count].")
@click.option("--quiet", is_flag=True)
def extract(out_dir, metadata, audio_root, list_file, workers, quiet) -> None:
    """CQT features of a dataset in the authors' layout (OUT_DIR/<id[:2]>/<id>.mm + .npy)."""
    _setup_logging(quiet)
    from .config import FeatureConfig
    from .extract import default_workers, extract_features, items_from_list, items_from_metadata

    if (metadata is None) == (list_file is None) or (metadata is not None and audio_root is None):
        _fail("give either --metadata with --audio-root, or --list")
    try:
        items = items_from_metadata(metadata, audio_root) if metadata else items_from_list(list_file)
        out_dir.mkdir(parents=True, exist_ok=True)
    except (ValueError, OSError) as err:
        _fail(str(err))
    summary = extract_features(items, out_dir, FeatureConfig(), workers or default_workers(),
                               progress=not quiet)
    click.echo(summary.describe(out_dir), err=True)
    if summary.failed and summary.done == 0 and summary.skipped == 0:
        sys.exit(1)


@main.command()
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="YAML training config (e.g. configs/discogs-vinet-mirex.yaml).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value, e.g. --set epochs=3 --set features.crop_frames=3440.")
@click.option("--resume", is_flag=True, help="Continue from OUTPUT_DIR/last.pt.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--quiet", is_flag=True)
def train(config_path, overrides, resume, device, quiet) -> None:
    """Train CQT-Net with online triplet mining (torchrun-ready for several GPUs)."""
    _setup_logging(quiet)
    from .config import TrainConfig, load_yaml, with_overrides
    from .train import run_training

    try:
        cfg = load_yaml(config_path) if config_path else TrainConfig()
        cfg = with_overrides(cfg, list(overrides))
    except (ValueError, OSError) as err:
        _fail(str(err))
    run_dir = run_training(cfg, resume=resume, device=device)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, only rank 0 reports
        click.echo(f"run folder: {run_dir}", err=True)


@main.command()
@click.option("--metadata", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Labelled set as Discogs-VI light JSON (with --features-dir).")
@click.option("--features-dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--labels", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="TSV of audio_path<TAB>clique_id (paths relative to the TSV's folder).")
@click.option("--matrix", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Evaluate a MIREX distance matrix (with --labels) instead of a model.")
@click.option("--weights", "weights_spec", help="Weight package folder or name, or an authors' .pth.")
@click.option("--device", default="auto", show_default=True)
@click.option("--no-amp", is_flag=True)
@click.option("--workers", type=click.IntRange(1))
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the figures as a JSON object.")
@click.option("--plot", "plot_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Write PNG plots (rank-of-first-version histogram, AP per clique).")
@click.option("--index", "index_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="MAP@k and recall@k of the --labels tracks searched in this index (FAISS).")
@click.option("--top-k", type=click.IntRange(1), default=10, show_default=True,
              help="k of MAP@k and recall@k (with --index).")
@click.option("--nprobe", type=click.IntRange(1),
              help="Cells an ivfpq --index scans [default: the index's].")
@click.option("--quiet", is_flag=True)
def evaluate(metadata, features_dir, labels, matrix, weights_spec, device, no_amp, workers,
             json_out, plot_dir, index_dir, top_k, nprobe, quiet) -> None:
    """MAP, MR1, MRR, Top-1, Top-10 and P@10 of a model or of a MIREX matrix; MAP@k and
    recall@k through a catalogue index (--index)."""
    _setup_logging(quiet)
    _share_cores_with_workers()
    if index_dir:
        if not labels or plot_dir:
            _fail("--index needs --labels, and takes no --plot (the exact path plots)")
        evaluate_through_index(index_dir, labels, top_k, nprobe, weights_spec, device, workers,
                               json_out, quiet)
        return
    from . import evaluate as ev

    try:
        if matrix:
            if not labels:
                _fail("--matrix needs --labels")
            result, clique_of = ev.evaluate_matrix(matrix, labels)
        elif metadata:
            if not features_dir:
                _fail("--metadata needs --features-dir")
            result, clique_of = ev.evaluate_features(metadata, features_dir, weights_spec,
                                                     device, not no_amp, progress=not quiet)
        elif labels:
            result, clique_of = ev.evaluate_audio(labels, weights_spec, device, not no_amp,
                                                  workers, progress=not quiet)
        else:
            _fail("give --matrix with --labels, --metadata with --features-dir, or --labels")
    except ValueError as err:
        _fail(str(err))
    figures = result.summary()
    click.echo(ev.format_figures(figures))
    if json_out:
        ev.write_json(json_out, figures)
    if plot_dir:
        from .plots import write_plots

        for png in write_plots(result, clique_of, plot_dir):
            click.echo(f"wrote {png}", err=True)


main.add_command(index_group)
main.add_command(search_command)
