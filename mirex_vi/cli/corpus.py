"""The ``corpus`` commands: ``corpus`` renders a synthetic cover-song corpus (the ``corpus``
extra); ``corpus-real`` makes pseudo-cover cliques of real recordings into a pooled store.

Only click is imported here; music21, basic-pitch and the generator (``mirex_vi.corpus``)
load inside the commands, and a missing one is reported with the way to install it.
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
def corpus_command(out_dir: Path, rerender_metadata: Path | None, extend_metadata: Path | None,
                   **options) -> None:
    """Render a synthetic cover-song corpus from music21's scores into OUT_DIR (or grow it)."""
    import importlib.util
    import time

    fractions = _fractions(options.pop("split"))
    if extend_metadata and (rerender_metadata or options["demo"] or options["ood"]):
        _fail("--extend adds training versions: --rerender, --demo and --ood do not apply")
    if importlib.util.find_spec("music21") is None:
        _fail("the corpus generator needs music21: pip install mirex-vi[corpus]")
    _setup_logging(options["quiet"])
    from ..corpus.catalogue import pool_collections
    from ..corpus.driver import build_corpus
    from ..corpus.extend import extend
    from ..corpus.rerender import rerender

    start = time.perf_counter()
    try:
        spec = _corpus_spec(options, fractions, extending=extend_metadata is not None)
        pool_collections(spec.pool, spec.collections)  # refused before anything is written
        if extend_metadata:
            cliques = extend(extend_metadata, out_dir, spec.versions_per_work, spec.seed,
                             spec.seconds, spec.jobs, spec.render_mix, overwrite=spec.overwrite,
                             quiet=spec.quiet, works=spec.n_works, fractions=spec.fractions,
                             collections=spec.collections)
        elif rerender_metadata:
            cliques = rerender(rerender_metadata, out_dir, spec.seed, spec.seconds, spec.jobs,
                               spec.demo, spec.ood, spec.render_mix, overwrite=spec.overwrite,
                               quiet=spec.quiet)
        else:
            cliques = build_corpus(out_dir, spec)
    except (RuntimeError, ValueError) as err:  # missing fluidsynth, a folder made otherwise
        _fail(str(err))
    except OSError as err:  # OUT_DIR under a file, no permission, a full disk
        _fail(f"{out_dir}: cannot write the corpus ({err.strerror or err}: {err.filename})")
    n_versions = sum(len(v) for v in cliques.values())
    click.echo(f"{len(cliques)} cliques, {n_versions} versions in {out_dir} "
               f"({time.perf_counter() - start:.1f} s)", err=True)


def _fractions(split: str) -> tuple[float, ...]:
    """``--split`` as three fractions that sum to 1 (else the error exit)."""
    try:
        fractions = tuple(float(x) for x in split.split(","))
    except ValueError:
        fractions = ()
    if len(fractions) != 3 or abs(sum(fractions) - 1.0) > 1e-6:
        _fail("--split needs three fractions that sum to 1")
    return fractions


def _corpus_spec(options: dict, fractions: tuple[float, ...], extending: bool):
    """The ``CorpusSpec`` of the command's options: the pool's mix with the ``--p-*`` given,
    ``--works`` (with ``--extend``, 0 for "those of its corpus"). ValueError as ``CorpusSpec``."""
    import dataclasses

    from ..corpus.driver import CorpusSpec, default_mix, pool_of

    given = {k: options.pop(k) for k in ("p_voice", "p_band", "p_codec", "p_form")}
    mix = dataclasses.replace(default_mix(pool_of(options["demo"], options["ood"])),
                              **{k: v for k, v in given.items() if v is not None})
    works, collections = options.pop("works"), options.pop("collections")
    if collections:
        options["collections"] = tuple(collections.split(","))
    return CorpusSpec(n_works=works or (0 if extending else 360), fractions=fractions, mix=mix,
                      **options)


@click.command("corpus-real")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--real-audio", "folders", multiple=True, required=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="A folder of real recordings from Debian packages (repeatable; links are "
                   "followed). planetblupi music is refused.")
@click.option("--seed", type=int, default=27, show_default=True)
@click.option("--segment-seconds", default="30,90", show_default=True,
              help="min,max length of the segments each recording is cut into (each a clique).")
@click.option("--fx-versions", type=click.IntRange(0), default=3, show_default=True,
              help="Audio-domain versions of each segment (pitch, tempo, EQ, reverb, "
                   "compression, codec, another recording underneath).")
@click.option("--renders", type=click.IntRange(0, 2), default=2, show_default=True,
              help="Renders of each segment's basic-pitch transcription (0: no transcription).")
@click.option("--max-recordings", type=click.IntRange(0), default=0,
              help="Use only this many recordings, in key order (a sample across packages) "
                   "[default: 0, all].")
@click.option("--max-segments", type=click.IntRange(0), default=0,
              help="At most this many cliques per recording, spread over it [default: 0, all].")
@click.option("--split", default="0.8,0.1,0.1", show_default=True,
              help="train,val,test fractions of recordings (all of a recording's cliques share "
                   "its split).")
@click.option("--jobs", type=click.IntRange(1), default=os.cpu_count() or 1,
              help="Processes [default: CPU count].")
@click.option("--name", default="Real-VI-YT", show_default=True, help="Metadata file prefix.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def corpus_real_command(out_dir: Path, folders: tuple[Path, ...], segment_seconds: str,
                        split: str, **options) -> None:
    """Cut the real recordings in --real-audio folders into segments and write their
    pseudo-cover cliques (the segment, its audio-domain versions, renders of its
    transcription) to OUT_DIR as a u8 pooled store with light JSON, split by recording, and
    a pool manifest (file, package, licence, duration, sha256, segments). Rerunning it
    resumes an interrupted build."""
    import time

    fractions = _fractions(split)
    try:
        seconds = tuple(float(x) for x in segment_seconds.split(","))
    except ValueError:
        seconds = ()
    if len(seconds) != 2:
        _fail("--segment-seconds needs two lengths in seconds: min,max")
    _setup_logging(options["quiet"])
    from ..corpus.real import RealSpec, build_real_store

    start = time.perf_counter()
    try:
        spec = RealSpec(segment_seconds=seconds, fractions=fractions, **options)
        cliques = build_real_store(out_dir, folders, spec)
    except (ValueError, ImportError) as err:  # planetblupi, another build there, no basic-pitch
        _fail(str(err))
    except OSError as err:  # OUT_DIR under a file, no permission, a full disk
        _fail(f"{out_dir}: cannot write the store ({err.strerror or err}: {err.filename})")
    n_versions = sum(len(v) for v in cliques.values())
    n_recordings = len({vs[0]["recording"] for vs in cliques.values()})
    click.echo(f"{len(cliques)} cliques, {n_versions} versions of {n_recordings} recordings in "
               f"{out_dir} ({time.perf_counter() - start:.1f} s)", err=True)
