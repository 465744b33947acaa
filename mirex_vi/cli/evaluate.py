"""``evaluate``: retrieval figures of a model, a MIREX matrix or a catalogue index."""

from __future__ import annotations

from pathlib import Path

import click

from .common import (EXIT_OUTPUT, embed_settings, expand_option, fail, interruptible,
                     require_faiss, scoring_changes, scoring_options, setup_logging,
                     share_cores_with_workers)


@click.command()
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
@scoring_options
@click.option("--quiet", is_flag=True)
def evaluate(**opts) -> None:
    """MAP, MR1, MRR, Top-1, Top-10 and P@10 of a model or of a MIREX matrix; MAP@k and
    recall@k through a catalogue index (--index)."""
    setup_logging(opts["quiet"])
    share_cores_with_workers()
    mode = _mode(opts)
    from ..eval import evaluate as ev

    with interruptible():
        try:
            json_out = _checked_outputs(opts)
            if mode == "index":
                _evaluate_index(opts, json_out)
                return
            result, clique_of = _evaluation(mode, opts, ev)
        except ValueError as err:
            fail(str(err))
    figures = result.summary()
    click.echo(ev.format_figures(figures))
    try:
        if json_out:
            ev.write_json(json_out, figures)
        if opts["plot_dir"]:
            from ..eval.plots import write_plots

            for png in write_plots(result, clique_of, opts["plot_dir"]):
                click.echo(f"wrote {png}", err=True)
    except OSError as err:
        fail(f"cannot write the results ({err}); the figures are above", EXIT_OUTPUT)


def _mode(opts: dict) -> str:
    """Which evaluation the options ask for: ``index`` (MAP@k through a catalogue index),
    ``matrix`` (a MIREX matrix), ``features`` (a model on stored features) or ``audio`` (a
    model on labelled audio files). Exits 2 for options that do not fit together."""
    if opts["index_dir"] and (not opts["labels"] or opts["plot_dir"]):
        fail("--index needs --labels, and takes no --plot (the exact path plots)")
    if opts["excerpt"] is not None and (opts["matrix"] or not opts["metadata"]):
        fail("--excerpt needs --metadata with --features-dir")
    if opts["expand"] and (opts["matrix"] or opts["index_dir"]):
        fail("--expand scores a model's embeddings: not with --matrix or --index")
    if _scoring(opts) and (opts["matrix"] or opts["index_dir"]):
        fail("the scoring options (--segments, --rerank, ...) score a model's embeddings: "
             "not with --matrix or --index")
    if opts["index_dir"]:
        return "index"
    if opts["matrix"]:
        if not opts["labels"]:
            fail("--matrix needs --labels")
        return "matrix"
    if opts["metadata"]:
        if not opts["features_dir"]:
            fail("--metadata needs --features-dir")
        return "features"
    if opts["labels"]:
        return "audio"
    fail("give --matrix with --labels, --metadata with --features-dir, or --labels")


def _checked_outputs(opts: dict) -> Path | None:
    """Check the --json location and the --plot folder (and matplotlib) before the work, so
    that the figures are never lost for a bad name. Returns the resolved --json path."""
    from ..io.lists import read_labels
    from ..io.outputs import check_output_location

    json_out = opts["json_out"]
    if json_out:
        inputs = [p for p in (opts["matrix"], opts["labels"], opts["metadata"]) if p]
        inputs += [p for d in (opts["index_dir"], opts["features_dir"]) if d for p in d.iterdir()]
        inputs += list(read_labels(opts["labels"])) if opts["labels"] else []  # the audio tracks
        json_out = check_output_location(json_out, inputs)
    if opts["plot_dir"]:
        from ..eval.plots import check_can_plot

        check_can_plot(opts["plot_dir"])
    return json_out


def _evaluation(mode: str, opts: dict, ev):
    """The result and clique ids of a ``matrix``, ``features`` or ``audio`` evaluation."""
    amp, progress = not opts["no_amp"], not opts["quiet"]
    if mode == "matrix":
        return ev.evaluate_matrix(opts["matrix"], opts["labels"])
    if mode == "features":
        return ev.evaluate_features(opts["metadata"], opts["features_dir"], opts["weights_spec"],
                                    opts["device"], amp, opts["excerpt"], progress=progress,
                                    expand=opts["expand"], scoring=_scoring(opts))
    settings = embed_settings(opts["device"], opts["workers"], amp)
    return ev.evaluate_audio(opts["labels"], opts["weights_spec"], settings, progress=progress,
                             expand=opts["expand"], scoring=_scoring(opts))


def _scoring(opts: dict) -> dict:
    """The changes to the package's scoring recipe that the options ask for."""
    names = ("segments", "segment_rule", "segment_weight", "segment_tempo_scales",
             "segment_source", "rerank", "fusion_weight")
    return scoring_changes(**{name: opts[name] for name in names})


def _evaluate_index(opts: dict, json_out: Path | None) -> None:
    """Print (and with ``json_out``, a checked location, write) MAP@k and recall@k of the
    labelled tracks searched in a catalogue index."""
    require_faiss()
    from ..search.query import evaluate_labels

    settings = embed_settings(opts["device"], opts["workers"])
    figures = evaluate_labels(opts["index_dir"], opts["labels"], opts["top_k"], opts["nprobe"],
                              opts["weights_spec"], settings, progress=not opts["quiet"])
    click.echo(figures.lines())
    try:
        if json_out:
            figures.write_json(json_out)
    except OSError as err:
        fail(f"{json_out}: cannot write the figures ({err.strerror or err}); they are above",
             EXIT_OUTPUT)
