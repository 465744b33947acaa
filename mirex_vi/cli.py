"""The ``mirex-vi`` command line. Heavy imports live inside commands so ``--help`` is instant.

Exit codes (``EXIT_CODES``): 0 success; 1 a track failed under ``--strict``; 2 bad input
(lists, output location, weights, config), reported before any audio is processed; 3 the
result could not be written once the work was done (disk full...; the embedding cache is
kept); 130 interrupted by Ctrl-C; 143 stopped by SIGTERM. Every failure is one
``error: ...`` line on stderr, never a traceback.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from .cli_common import (EXIT_CODES, EXIT_OUTPUT, EXIT_STRICT, interruptible,
                         share_cores_with_workers, setup_logging)
from .cli_common import fail as _fail
from .cli_corpus import corpus_command
from .cli_search import evaluate_through_index, index_group, search_command
from .cli_weights import weights_group

# Off by default: the authors' scoring is the plain inner product of the embeddings.
expand_option = click.option(
    "--expand", type=click.IntRange(0), default=0, show_default=True, metavar="K",
    help="Before scoring, add to each embedding those of its K nearest neighbours among "
         "the tracks scored that have it among their K nearest too, weighted by similarity "
         "(database-side augmentation): higher MAP, but a worse mean rank of the first "
         "version found (model card). 0: plain scoring.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mirex-vi")
def main() -> None:
    """Discogs-VINet-MIREX cover song identification: MIREX matrices, training, evaluation."""


@main.command(epilog=EXIT_CODES)
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
def identify(collection, queries, output, workdir, weights_spec, device, no_amp, batch_size,
             workers, cqt_backend, strict, quiet, name, expand) -> None:
    """Write the MIREX distance matrix of QUERIES against COLLECTION to OUTPUT."""
    setup_logging(quiet)
    share_cores_with_workers()
    from .identify import identify as run_identify, prepare
    from .mirex_io import OutputError

    with interruptible():
        try:
            job = prepare(collection, queries, output, workdir, weights_spec, device)
        except ValueError as err:  # InputError, WeightsError and bad devices are all ValueErrors
            _fail(str(err))
    with interruptible(f"no output written; finished embeddings are kept in {job.workdir}"):
        try:
            summary = run_identify(job, amp=not no_amp, batch_size=batch_size, workers=workers,
                                   strict=strict, progress=not quiet, name=name,
                                   cqt_backend=cqt_backend, expand=expand)
        except OutputError as err:
            _fail(str(err), EXIT_OUTPUT)
    for path, reason in summary.errors:
        click.echo(f"skipped {path}: {reason}", err=True)
    if summary.strict_error:
        _fail(f"{summary.strict_error} (--strict: no output written)", EXIT_STRICT)
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



# --- dataset features, training, evaluation ---------------------------------------------


@main.command()
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--metadata", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Discogs-VI-YT light JSON (or split) or JSONL.")
@click.option("--audio-root", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder holding audio/<id[:2]>/<id>.<ext> (with --metadata).")
@click.option("--list", "list_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Plain list of audio paths instead (ids are the file names' stems).")
@click.option("--pooled", "encoding", type=click.Choice(["f16", "u8"]),
              help="Write one pooled store instead of the authors' layout: f16 (exact) or "
                   "u8 (8-bit log magnitude, 40x smaller than the layout).")
@click.option("--from-features", type=click.Path(exists=True, file_okay=False, path_type=Path),
              multiple=True,
              help="With --pooled: convert this authors'-layout folder or pooled store instead "
                   "of decoding audio (the versions of --metadata, or every stored one). "
                   "Repeat it to merge folders: each version comes from the first that holds it.")
@click.option("--workers", type=click.IntRange(1), help="Processes [default: CPU count].")
@click.option("--quiet", is_flag=True)
@interruptible("no partial file is left (an authors'-layout folder resumes where it stopped)")
def extract(out_dir, metadata, audio_root, list_file, encoding, from_features, workers,
            quiet) -> None:
    """CQT features of a dataset: the authors' layout (OUT_DIR/<id[:2]>/<id>.mm + .npy), or
    with --pooled one pooled store (OUT_DIR/pooled.<enc>.npy + pooled.index.tsv)."""
    setup_logging(quiet)
    if from_features:
        _convert_features(from_features, out_dir, metadata, encoding)
        return
    from .atomic import make_folder
    from .config import FeatureConfig
    from .extract import extract_features, extract_pooled, items_from_list, items_from_metadata
    from .workers import default_workers

    if (metadata is None) == (list_file is None) or (metadata is not None and audio_root is None):
        _fail("give either --metadata with --audio-root, or --list")
    try:
        items = items_from_metadata(metadata, audio_root) if metadata else items_from_list(list_file)
        make_folder(out_dir, "output folder")
        workers = workers or default_workers()
        if encoding:
            summary = extract_pooled(items, out_dir, FeatureConfig(), workers, encoding,
                                     progress=not quiet)
        else:
            summary = extract_features(items, out_dir, FeatureConfig(), workers,
                                       progress=not quiet)
    except (ValueError, OSError) as err:
        _fail(str(err))
    click.echo(summary.describe(out_dir), err=True)
    if summary.failed and summary.done == 0 and summary.skipped == 0:
        sys.exit(1)


def _convert_features(sources: tuple[Path, ...], out_dir: Path, metadata: Path | None,
                      encoding: str | None) -> None:
    """``extract --from-features``: layout folders and pooled stores -> one pooled store."""
    from .data import read_metadata
    from .pooled import convert_features, stored_ids

    if not encoding:
        _fail("--from-features needs --pooled f16 or --pooled u8")
    try:
        ids = ([v.youtube_id for vs in read_metadata(metadata).values() for v in vs] if metadata
               else sorted({yt for source in sources for yt in stored_ids(source)}))
        written = convert_features(sources, ids, out_dir, encoding)
    except (ValueError, OSError) as err:
        _fail(str(err))
    click.echo(f"wrote {written} of {len(ids)} versions to a pooled store in {out_dir}", err=True)


SHARED_MEMORY_HINT = (
    "hint: the DataLoader workers (num_workers > 0) pass batches through shared memory "
    "(/dev/shm), which Docker limits to 64 MB by default: run the container with "
    "--shm-size=8g (or --ipc=host), or train with --set num_workers=0.")


def _out_of_shared_memory(err: RuntimeError) -> bool:
    """Whether ``err`` is a DataLoader worker's bus error or shared-memory failure."""
    return any(s in str(err) for s in ("Bus error", "shared memory", "</torch_"))


@main.command()
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
    from .config import TrainConfig, load_yaml, with_overrides
    from .train import TrainInputError, run_training
    from .weights import WeightsError

    try:
        cfg = load_yaml(config_path) if config_path else TrainConfig()
        cfg = with_overrides(cfg, list(overrides))
    except (ValueError, OSError) as err:
        _fail(str(err))
    try:
        run_dir = run_training(cfg, resume=resume, device=device, progress=not quiet)
    except (TrainInputError, WeightsError, OSError) as err:  # data, weights, the run folder
        _fail(str(err))
    except RuntimeError as err:
        if not _out_of_shared_memory(err):
            raise
        _fail(f"{err}\n{SHARED_MEMORY_HINT}")
    if os.environ.get("RANK", "0") == "0":  # under torchrun, only rank 0 reports
        click.echo(f"run folder: {run_dir}", err=True)


@main.command()
@click.option("--metadata", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Labelled set as Discogs-VI light JSON (with --features-dir).")
@click.option("--features-dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--excerpt", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="Use only the first SECONDS of each stored CQT (with --metadata).")
@click.option("--labels", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="TSV of audio_path<TAB>clique_id (paths relative to the TSV's folder).")
@click.option("--matrix", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Evaluate a MIREX distance matrix (with --labels) instead of a model.")
@click.option("--weights", "weights_spec", help="Weight package folder or name, or an authors' .pth.")
@click.option("--device", default="auto", show_default=True)
@click.option("--no-amp", is_flag=True)
@click.option("--workers", type=click.IntRange(1))
@click.option("--json", "json_out", type=click.Path(dir_okay=False),
              help="Write the figures as a JSON object.")
@click.option("--plot", "plot_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Write PNG plots (rank-of-first-version histogram, AP per clique).")
@click.option("--index", "index_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="MAP@k and recall@k of the --labels tracks searched in this index (FAISS).")
@click.option("--top-k", type=click.IntRange(1), default=10, show_default=True,
              help="k of MAP@k and recall@k (with --index).")
@click.option("--nprobe", type=click.IntRange(1),
              help="Cells an ivfpq --index scans [default: the index's].")
@expand_option
@click.option("--quiet", is_flag=True)
def evaluate(metadata, features_dir, excerpt, labels, matrix, weights_spec, device, no_amp,
             workers, json_out, plot_dir, index_dir, top_k, nprobe, expand, quiet) -> None:
    """MAP, MR1, MRR, Top-1, Top-10 and P@10 of a model or of a MIREX matrix; MAP@k and
    recall@k through a catalogue index (--index)."""
    setup_logging(quiet)
    share_cores_with_workers()
    if index_dir and (not labels or plot_dir):
        _fail("--index needs --labels, and takes no --plot (the exact path plots)")
    if excerpt is not None and (matrix or not metadata):
        _fail("--excerpt needs --metadata with --features-dir")
    if expand and (matrix or index_dir):
        _fail("--expand scores a model's embeddings: not with --matrix or --index")
    from . import evaluate as ev
    from .mirex_io import check_output_location

    with interruptible():
        try:
            if json_out:  # checked first: the figures must not be lost for a bad name
                inputs = [p for p in (matrix, labels, metadata) if p]
                inputs += [p for d in (index_dir, features_dir) if d for p in d.iterdir()]
                inputs += list(ev.read_labels(labels)) if labels else []  # the audio tracks
                json_out = check_output_location(json_out, inputs)
            if plot_dir:  # so are matplotlib and the plot folder
                from .plots import check_can_plot

                check_can_plot(plot_dir)
            if index_dir:
                evaluate_through_index(index_dir, labels, top_k, nprobe, weights_spec, device,
                                       workers, json_out, quiet)
                return
            result, clique_of = _evaluation(ev, metadata, features_dir, excerpt, labels, matrix,
                                            weights_spec, device, not no_amp, workers, quiet,
                                            expand)
        except ValueError as err:
            _fail(str(err))
    figures = result.summary()
    click.echo(ev.format_figures(figures))
    try:
        if json_out:
            ev.write_json(json_out, figures)
        if plot_dir:
            from .plots import write_plots

            for png in write_plots(result, clique_of, plot_dir):
                click.echo(f"wrote {png}", err=True)
    except OSError as err:
        _fail(f"cannot write the results ({err}); the figures are above", EXIT_OUTPUT)


def _evaluation(ev, metadata, features_dir, excerpt, labels, matrix, weights_spec, device, amp,
                workers, quiet, expand):
    """The result and clique ids of the evaluation that ``evaluate``'s options ask for."""
    if matrix:
        if not labels:
            _fail("--matrix needs --labels")
        return ev.evaluate_matrix(matrix, labels)
    if metadata:
        if not features_dir:
            _fail("--metadata needs --features-dir")
        return ev.evaluate_features(metadata, features_dir, weights_spec, device, amp, excerpt,
                                    progress=not quiet, expand=expand)
    if labels:
        return ev.evaluate_audio(labels, weights_spec, device, amp, workers, progress=not quiet,
                                 expand=expand)
    _fail("give --matrix with --labels, --metadata with --features-dir, or --labels")


main.add_command(corpus_command)
main.add_command(weights_group)
main.add_command(index_group)
main.add_command(search_command)
