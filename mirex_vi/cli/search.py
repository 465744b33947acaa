"""The ``index`` commands and ``search``: catalogue search on FAISS (the ``search`` extra).

Only click is imported here; FAISS, torch and the index modules load inside the commands,
after ``require_faiss``, which reports a missing FAISS with the way to install it.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

import click

from .common import (EXIT_OUTPUT, embed_settings, fail, interruptible, require_faiss,
                     scoring_changes, segment_options, setup_logging, share_cores_with_workers,
                     with_options)


def _embedding_options(command):
    """The options of the commands that embed tracks into or against an index."""
    options = [
        click.option("--weights", "weights_spec",
                     help="Weight package folder or name, or an authors' .pth [default: the "
                          "index's; for build, the default package]."),
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N."),
        click.option("--workers", type=click.IntRange(1), help="Decode/CQT processes [default: CPU count]."),
        click.option("--cache", "cache_dir", type=click.Path(file_okay=False, path_type=Path),
                     help="Embedding cache folder [default: INDEX_DIR/embeddings]."),
        click.option("--quiet", is_flag=True, help="No progress bar or info messages."),
    ]
    return with_options(options, command)


def _audio_root_option(command):
    return click.option("--audio-root", type=click.Path(exists=True, file_okay=False, path_type=Path),
                        help="With Discogs-VI-YT metadata: the folder holding "
                             "audio/<id[:2]>/<id>.<ext>.")(command)


def _kind_options(command):
    command = click.option("--nprobe", type=click.IntRange(1),
                           help="ivfpq: cells a query scans [default: 4].")(command)
    return click.option("--kind", type=click.Choice(["auto", "flat", "ivfpq"]), default="auto",
                        show_default=True,
                        help="flat: exact; ivfpq: compressed, trained on the tracks "
                             "(auto: ivfpq from 1,000,000 tracks).")(command)


# What Ctrl-C or SIGTERM leaves of an index command (each write replaces the manifest last).
UNCHANGED = "no index written or changed"
INDEX_KEPT = f"{UNCHANGED}; finished embeddings are kept in the cache"
# What an index command that embedded tracks but could not write the index adds (exit 3).
RERUN = "rerun the same command once the problem is solved: it reuses what the cache {} holds"


@contextlib.contextmanager
def _index_errors(cache_dir: Path | None = None) -> Iterator[None]:
    """Bad input exits 2; an index that could not be written exits 3, saying how to rerun
    when tracks were embedded into the cache ``cache_dir``."""
    from ..io.lists import OutputError

    try:
        yield
    except ValueError as err:
        fail(str(err))
    except OutputError as err:
        fail(f"{err}; {RERUN.format(cache_dir)}" if cache_dir else str(err), EXIT_OUTPUT)


def _report(summary) -> None:
    for path, reason in summary.errors:
        click.echo(f"skipped {path}: {reason}", err=True)
    click.echo(summary.describe(), err=True)


@click.group("index")
def index_group() -> None:
    """Catalogue indexes of embeddings for `search` (needs FAISS: mirex-vi[search])."""


@index_group.command("build")
@click.argument("source", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("index_dir", type=click.Path(file_okay=False, path_type=Path))
@_audio_root_option
@_kind_options
@click.option("--shard", help="i/n: index only the i-th of n contiguous parts of SOURCE "
                              "(1 <= i <= n; a flat index, joined by `index merge`).")
@segment_options
@_embedding_options
@interruptible(INDEX_KEPT)
def index_build(source, index_dir, audio_root, kind, nprobe, shard, weights_spec, device,
                workers, cache_dir, quiet, **segments) -> None:
    """Embed every track of SOURCE (a list file or Discogs-VI-YT metadata) into a new
    index in INDEX_DIR, with every track's segments when the package's recipe or
    --segments asks for them (a flat index; docs/search.md). Run again after an
    interruption: cached embeddings are reused."""
    setup_logging(quiet)
    share_cores_with_workers()
    require_faiss()
    from ..search import build
    from ..search.folder import Shard

    cache_dir = cache_dir or index_dir / build.CACHE_FOLDER
    with _index_errors(cache_dir):
        part = Shard.parse(shard) if shard else None
        embedder = build.make_embedder(weights_spec, embed_settings(device, workers), cache_dir,
                                       not quiet)
        summary = build.build_index(source, index_dir, embedder, kind, part, nprobe, audio_root,
                                    scoring_changes(**segments))
    _report(summary)


@index_group.command("add")
@click.argument("index_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("source", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_audio_root_option
@segment_options
@_embedding_options
@interruptible(INDEX_KEPT)
def index_add(index_dir, source, audio_root, weights_spec, device, workers, cache_dir, quiet,
              **segments) -> None:
    """Append the tracks of SOURCE that INDEX_DIR does not hold yet (same weights only),
    with their segments if it keeps them (segment options, if given, must not change the
    index's recipe)."""
    setup_logging(quiet)
    share_cores_with_workers()
    require_faiss()
    from ..search import build
    from ..search.folder import read_manifest

    cache_dir = cache_dir or index_dir / build.CACHE_FOLDER
    with _index_errors(cache_dir):
        weights_spec = weights_spec or build.index_weights(read_manifest(index_dir))
        embedder = build.make_embedder(weights_spec, embed_settings(device, workers), cache_dir,
                                       not quiet)
        summary = build.add_tracks(index_dir, source, embedder, audio_root,
                                   scoring_changes(**segments))
    _report(summary)


@index_group.command("merge")
@click.argument("index_dir", type=click.Path(file_okay=False, path_type=Path))
@click.argument("inputs", nargs=-1, required=True,
                type=click.Path(exists=True, file_okay=False, path_type=Path))
@_kind_options
@click.option("--quiet", is_flag=True)
@interruptible(UNCHANGED)
def index_merge(index_dir, inputs, kind, nprobe, quiet) -> None:
    """Join the flat indexes INPUTS (e.g. every shard of a list) into a new INDEX_DIR."""
    setup_logging(quiet)
    share_cores_with_workers()
    require_faiss()
    from ..search import build

    with _index_errors():
        summary = build.merge_indexes(index_dir, list(inputs), kind, nprobe)
    _report(summary)


@index_group.command("info")
@click.argument("index_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
def index_info(index_dir) -> None:
    """What INDEX_DIR holds: kind, tracks, weights, parameters, bytes per track."""
    require_faiss()
    from ..search.folder import describe, read_manifest

    try:
        manifest = read_manifest(index_dir)
    except ValueError as err:
        fail(str(err))
    click.echo(describe(index_dir, manifest))


@click.command("search")
@click.argument("index_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("queries", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--top-k", type=click.IntRange(1), default=10, show_default=True,
              help="Results per query.")
@click.option("--format", "fmt", type=click.Choice(["tsv", "json"]), default="tsv",
              show_default=True,
              help="tsv: query<TAB>rank<TAB>path<TAB>distance per result, a backslash, TAB, "
                   r"CR or LF in a path written as \\, \t, \r, \n (docs/search.md).")
@click.option("--exclude-self", is_flag=True, help="Drop a query that is in the index from "
                                                   "its own results.")
@click.option("--nprobe", type=click.IntRange(1),
              help="ivfpq: cells a query scans [default: the index's].")
@_embedding_options
@interruptible()
def search_command(index_dir, queries, top_k, fmt, exclude_self, nprobe, weights_spec, device,
                   workers, cache_dir, quiet) -> None:
    """Print the nearest indexed tracks of each track of QUERIES (a list file, or one audio
    file), with MIREX distances sqrt(2 - 2 s) (needs FAISS: mirex-vi[search]). In an index
    with segments, s blends the segment rule as `identify` does (the index's recipe)."""
    setup_logging(quiet)
    share_cores_with_workers()
    require_faiss()
    from ..search import query

    try:
        paths = query.query_paths(queries)
        opened, embedder = query.open_for_queries(index_dir, weights_spec,
                                                  embed_settings(device, workers), cache_dir,
                                                  not quiet)
    except ValueError as err:
        fail(str(err))
    embedded = query.embed_queries(paths, embedder)
    for path, reason in embedded.errors:
        click.echo(f"skipped query {path}: {reason}", err=True)
    if not embedded.positions:
        fail(f"none of the {len(paths)} queries could be searched")
    results = query.search(opened, [str(paths[i]) for i in embedded.positions], embedded.vectors,
                           top_k, exclude_self, nprobe, segments=embedded.segments)
    (query.write_json if fmt == "json" else query.write_tsv)(results, sys.stdout)
