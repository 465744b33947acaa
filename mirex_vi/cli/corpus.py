"""The ``corpus`` command: render a synthetic cover-song corpus (the ``corpus`` extra).

Only click is imported here; music21 and the generator (``mirex_vi.corpus``) load inside
the command, and a missing music21 is reported with the way to install it.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from .common import fail as _fail
from .common import setup_logging as _setup_logging


@click.command("corpus")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--works", type=click.IntRange(1),
              help="Number of works (cliques) [default: 360; with --extend, those of its corpus].")
@click.option("--versions-per-work", type=click.IntRange(2), default=4, show_default=True,
              help="Versions of each work (a clique needs two).")
@click.option("--seconds", type=click.FloatRange(min=1), default=60.0, show_default=True,
              help="Mean clip length (±15 %).")
@click.option("--seed", type=int, default=27, show_default=True)
@click.option("--split", default="0.8,0.1,0.1", show_default=True,
              help="train,val,test clique fractions.")
@click.option("--jobs", type=click.IntRange(1), default=os.cpu_count() or 1,
              help="Processes [default: CPU count].")
@click.option("--name", default="Synth-VI-YT", show_default=True, help="Metadata file prefix.")
@click.option("--demo", is_flag=True,
              help="Use the reserved demo pool, render as generator version 1 did, and write "
                   "collection/queries/labels lists.")
@click.option("--ood", is_flag=True,
              help="The out-of-distribution set: the held-out collection's untrained works "
                   "with the held-out soundfont.")
@click.option("--p-voice", type=click.FloatRange(0, 1),
              help="Probability of a sung melody with vibrato [default: 0.25; 0 with --demo].")
@click.option("--p-band", type=click.FloatRange(0, 1),
              help="Probability of a rock/pop/swing band under the melody [default: 0.3].")
@click.option("--p-codec", type=click.FloatRange(0, 1),
              help="Probability of an MP3/AAC pass at 32-128 kbps [default: 0.4].")
@click.option("--p-form", type=click.FloatRange(0, 1),
              help="Probability of a dropped/repeated section or an added intro/outro "
                   "[default: 0.3].")
@click.option("--collections",
              help="Comma-separated music21 corpus folders to draw from [default: all the "
                   "training collections].")
@click.option("--rerender", "rerender_metadata", type=click.Path(dir_okay=False, path_type=Path),
              help="Render again the versions this light-JSON metadata lists (e.g. a split of a "
                   "corpus kept as features) into OUT_DIR. Give the options that made the corpus "
                   "(--seed, --seconds, --ood/--demo, --p-*): every version is checked against its "
                   "record first. --works, --versions-per-work, --split, --name and "
                   "--collections do not apply.")
@click.option("--extend", "extend_metadata", type=click.Path(dir_okay=False, path_type=Path),
              help="Bring every clique this light-JSON metadata lists up to --versions-per-work "
                   "versions drawn by this generator (e.g. versions that change texture for a "
                   "corpus kept as features), and with a larger --works add new works as new "
                   "cliques split by --split, drawn from --collections (that needs a whole corpus: "
                   "its -light.json with the split files beside it); give the --seed that made "
                   "it. Writes the extended metadata to OUT_DIR under the same file name, and the "
                   "added versions' audio.")
@click.option("--overwrite", is_flag=True, help="Re-render existing audio files.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def corpus_command(out_dir, works, versions_per_work, seconds, seed, split, jobs, name, demo, ood,
           p_voice, p_band, p_codec, p_form, collections, rerender_metadata, extend_metadata,
           overwrite, quiet) -> None:
    """Render a synthetic cover-song corpus from music21's scores into OUT_DIR (or grow it)."""
    import dataclasses
    import importlib.util
    import time

    try:
        fractions = [float(x) for x in split.split(",")]
    except ValueError:
        fractions = []
    if len(fractions) != 3 or abs(sum(fractions) - 1.0) > 1e-6:
        _fail("--split needs three fractions that sum to 1")
    if extend_metadata and (rerender_metadata or demo or ood):
        _fail("--extend adds training versions: --rerender, --demo and --ood do not apply")
    if importlib.util.find_spec("music21") is None:
        _fail("the corpus generator needs music21: pip install mirex-vi[corpus]")
    _setup_logging(quiet)
    from ..corpus.catalogue import pool_collections
    from ..corpus.driver import build_corpus, default_mix, pool_of
    from ..corpus.extend import extend
    from ..corpus.rerender import rerender

    given = {"p_voice": p_voice, "p_band": p_band, "p_codec": p_codec, "p_form": p_form}
    extra = {"collections": collections.split(",")} if collections else {}
    start = time.perf_counter()
    try:
        pool_collections(pool_of(demo, ood), **extra)  # refused before anything is written
        mix = dataclasses.replace(default_mix(pool_of(demo, ood)),
                                  **{k: v for k, v in given.items() if v is not None})
        if extend_metadata:
            cliques = extend(extend_metadata, out_dir, versions_per_work, seed, seconds, jobs, mix,
                             overwrite=overwrite, quiet=quiet, works=works or 0, fractions=fractions,
                             **extra)
        elif rerender_metadata:
            cliques = rerender(rerender_metadata, out_dir, seed, seconds, jobs, demo, ood, mix,
                               overwrite=overwrite, quiet=quiet)
        else:
            cliques = build_corpus(out_dir, works or 360, versions_per_work, seconds, seed, fractions, jobs,
                                   demo, name, overwrite, quiet, ood=ood, mix=mix, **extra)
    except (RuntimeError, ValueError) as err:  # missing fluidsynth, a folder made otherwise
        _fail(str(err))
    except OSError as err:  # OUT_DIR under a file, no permission, a full disk
        _fail(f"{out_dir}: cannot write the corpus ({err.strerror or err}: {err.filename})")
    n_versions = sum(len(v) for v in cliques.values())
    click.echo(f"{len(cliques)} cliques, {n_versions} versions in {out_dir} "
               f"({time.perf_counter() - start:.1f} s)", err=True)
