"""``extract``: CQT features of a dataset, in the authors' layout or as one pooled store."""

from __future__ import annotations

import errno
import sys
from pathlib import Path

import click

from .common import EXIT_OUTPUT, fail, interruptible, setup_logging


@click.command()
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
@click.option("--shard", metavar="I/N",
              help="Only part I of N (1 <= I <= N) of the versions: sorted by id, every N-th "
                   "from the I-th, so N machines can share a dataset (docs/reproduce.md); "
                   "give each shard its own OUT_DIR with --pooled, then merge them with "
                   "--from-features.")
@click.option("--workers", type=click.IntRange(1), help="Processes [default: CPU count].")
@click.option("--quiet", is_flag=True)
@interruptible("no partial file is left (an authors'-layout folder resumes where it stopped)")
def extract(out_dir, metadata, audio_root, list_file, encoding, from_features, shard, workers,
            quiet) -> None:
    """CQT features of a dataset: the authors' layout (OUT_DIR/<id[:2]>/<id>.mm + .npy), or
    with --pooled one pooled store (OUT_DIR/pooled.<enc>.npy + pooled.index.tsv)."""
    setup_logging(quiet)
    if from_features:
        if shard:
            fail("--shard splits the extraction; --from-features merges the shards' stores")
        _convert_features(from_features, out_dir, metadata, encoding)
        return
    from ..config import FeatureConfig
    from ..core.atomic import make_folder
    from ..features.extract import extract_features, extract_pooled, parse_shard, select_shard
    from ..features.workers import default_workers
    from ..io.lists import OutputError
    from ..io.metadata import items_from_list, items_from_metadata

    if (metadata is None) == (list_file is None) or (metadata is not None and audio_root is None):
        fail("give either --metadata with --audio-root, or --list")
    try:
        items = items_from_metadata(metadata, audio_root) if metadata else items_from_list(list_file)
        if shard:
            items = select_shard(items, *parse_shard(shard))
        make_folder(out_dir, "output folder")
        workers = workers or default_workers()
        if encoding:
            summary = extract_pooled(items, out_dir, FeatureConfig(), workers, encoding,
                                     progress=not quiet)
        else:
            summary = extract_features(items, out_dir, FeatureConfig(), workers,
                                       progress=not quiet)
    except (ValueError, OSError) as err:
        fail(str(err))
    except OutputError as err:  # after the work: a full disk is no bad input
        fail(str(err), EXIT_OUTPUT)
    click.echo(summary.describe(out_dir), err=True)
    if summary.failed and summary.done == 0 and summary.skipped == 0:
        sys.exit(1)


# What only a write meets: reading the sources never fills a disk.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _convert_features(sources: tuple[Path, ...], out_dir: Path, metadata: Path | None,
                      encoding: str | None) -> None:
    """``extract --from-features``: layout folders and pooled stores -> one pooled store."""
    from ..features.extract import RERUN, cannot_write
    from ..features.pooled import convert_features, stored_ids
    from ..io.metadata import read_metadata

    if not encoding:
        fail("--from-features needs --pooled f16 or --pooled u8")
    try:
        ids = ([v.youtube_id for vs in read_metadata(metadata).values() for v in vs] if metadata
               else sorted({yt for source in sources for yt in stored_ids(source)}))
        written = convert_features(sources, ids, out_dir, encoding)
    except OSError as err:
        if err.errno in DISK_FULL:
            fail(str(cannot_write(out_dir, "the pooled store", err, f"no store written: {RERUN}")),
                 EXIT_OUTPUT)
        fail(str(err))
    except ValueError as err:
        fail(str(err))
    click.echo(f"wrote {written} of {len(ids)} versions to a pooled store in {out_dir}", err=True)
