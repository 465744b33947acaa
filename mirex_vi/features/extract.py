"""A dataset's audio -> stored CQT features (``mirex-vi extract``): Discogs-VI-YT or a plain list.

Files are decoded and transformed by ``workers.iter_files``. Each finished CQT is written
either in the authors' layout (``layout``: one file per track, so an interrupted run
resumes where it stopped) or, pooled, into one pooled store (``pooled``, docs/REFERENCE.md
§8: 20x to 40x smaller; written in one go, so an interrupted run starts again).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..config import FeatureConfig
from ..core.atomic import remove_stale_temporaries
from ..io.lists import OutputError, read_errors, write_errors
from .frontend import pool_cqt
from .layout import has_feature, save_feature
from .pooled import PooledStore, is_store, write_store
from .workers import iter_files

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExtractSummary:
    done: int
    skipped: int  # already extracted
    failed: dict[str, str]  # track id -> reason

    def describe(self, out_dir: Path) -> str:
        text = f"extracted {self.done}, already there {self.skipped}, failed {len(self.failed)}"
        if self.failed:
            text += f" (reasons in {out_dir / ERRORS_FILE})"
        return text


ERRORS_FILE = "extract_errors.tsv"
# What an output that failed once the work was done asks of the user.
RERUN = "rerun the same command once the problem is solved"


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` with ``1 <= I <= N``.

    Raises:
        ValueError: anything else.
    """
    index, sep, count = text.partition("/")
    if not (sep and index.isdigit() and count.isdigit() and 1 <= int(index) <= int(count)):
        raise ValueError(f"--shard {text!r}: give I/N with 1 <= I <= N, e.g. 3/8")
    return int(index), int(count)


def select_shard(items: Sequence[tuple[str, Path]], index: int,
                 count: int) -> list[tuple[str, Path]]:
    """Shard ``index`` (1-based) of ``count`` of ``items``: sorted by track id, every
    ``count``-th from ``index - 1``.

    A function of the ids alone, whatever order the metadata lists them in, so every machine
    of a scheduler's array computes the same split; the shards are disjoint and cover every
    item; round robin over the sorted ids gives shards of equal size within one and, as ids
    are random, an even mix of long and short tracks.
    """
    return sorted(items, key=lambda item: item[0])[index - 1::count]


def extract_features(
    items: Sequence[tuple[str, Path]],
    out_dir: Path,
    cfg: FeatureConfig,
    workers: int,
    progress: bool = True,
) -> ExtractSummary:
    """Write the CQT of each ``(track_id, audio_path)`` in the authors' layout under ``out_dir``.

    Finished tracks are skipped, so an interrupted run resumes; each file is written
    atomically (temporaries a killed run left are swept first); a failed track writes
    nothing and is reported with its reason.

    Raises:
        OutputError: a feature file or the errors file could not be written (disk full...);
            the tracks written before are kept, so a rerun goes on from there.
    """
    from tqdm import tqdm

    remove_stale_temporaries(out_dir)
    todo = [(tid, path) for tid, path in items if not has_feature(out_dir, tid)]
    skipped = len(items) - len(todo)
    if skipped:
        log.info("%d of %d tracks already extracted; skipping them", skipped, len(items))
    failed: dict[str, str] = {}
    with tqdm(total=len(todo), desc="extract", unit="track", disable=not progress) as bar:
        for result in iter_files([p for _, p in todo], cfg, workers):
            tid, path = todo[result.index]
            if result.error is not None:
                failed[tid] = result.error
                log.warning("%s (%s): %s", tid, path, result.error)
            else:
                try:
                    save_feature(out_dir, tid, result.cqt)
                except OSError as err:
                    raise cannot_write(out_dir, f"the features of {tid}", err,
                                        f"the tracks written before it are kept: {RERUN}") from err
            bar.update()
    _write_errors(out_dir, failed)
    return ExtractSummary(done=len(todo) - len(failed), skipped=skipped, failed=failed)


def extract_pooled(
    items: Sequence[tuple[str, Path]],
    out_dir: Path,
    cfg: FeatureConfig,
    workers: int,
    encoding: str,
    progress: bool = True,
) -> ExtractSummary:
    """Write the pooled CQT of each ``(track_id, audio_path)`` into one store at ``out_dir``.

    Tracks stream from the workers into the store (memory holds one track at a time); the
    store appears whole when every track is done, or not at all. A folder that already holds
    a store of these tracks (less those that failed then) is left as it is.

    Raises:
        ValueError: ``out_dir`` holds a store that lacks other tracks of ``items`` (a store
            is written in one go: choose a new folder), or no track could be extracted.
        OutputError: the store or the errors file could not be written (disk full...).
    """
    from tqdm import tqdm

    remove_stale_temporaries(out_dir)
    if is_store(out_dir):
        return _finished_store(items, out_dir)
    failed: dict[str, str] = {}
    bar = tqdm(total=len(items), desc="extract", unit="track", disable=not progress)

    def pooled_tracks():
        for result in iter_files([p for _, p in items], cfg, workers):
            tid, path = items[result.index]
            bar.update()
            if result.error is not None:
                failed[tid] = result.error
                log.warning("%s (%s): %s", tid, path, result.error)
                continue
            pooled = pool_cqt(result.cqt, cfg.downsample_factor)  # (T', n_bins)
            if pooled.shape[0] == 0:
                failed[tid] = f"shorter than one pool of {cfg.downsample_factor} CQT frames"
                continue
            yield tid, pooled

    try:
        done = write_store(out_dir, pooled_tracks(), encoding)
    except ValueError:  # "no versions to write": fine when every track failed, as a layout's
        if len(failed) < len(items):
            raise
        done = 0
    except OSError as err:
        raise cannot_write(out_dir, "the pooled store", err, f"no store written: {RERUN}") from err
    finally:
        bar.close()
    _write_errors(out_dir, failed)
    return ExtractSummary(done=done, skipped=0, failed=failed)


def _finished_store(items: Sequence[tuple[str, Path]], out_dir: Path) -> ExtractSummary:
    """The summary of a store written before, if it holds ``items`` less its failures."""
    store = PooledStore.open(out_dir)
    failed = read_errors(out_dir / ERRORS_FILE)
    missing = [tid for tid, _ in items if not store.has(tid) and tid not in failed]
    if missing:
        raise ValueError(f"{out_dir} already holds a pooled store without {len(missing)} "
                         f"of these tracks (e.g. {missing[0]}); write to a new folder")
    return ExtractSummary(done=0, skipped=sum(store.has(tid) for tid, _ in items),
                          failed={tid: failed[tid] for tid, _ in items if tid in failed})


def _write_errors(out_dir: Path, failed: dict[str, str]) -> None:
    """``track_id<TAB>reason`` per failed track (no header), when there are any.

    Raises:
        OutputError: the file could not be written.
    """
    if not failed:
        return
    try:
        write_errors(out_dir / ERRORS_FILE, failed.items(), header=None)
    except OSError as err:
        raise cannot_write(out_dir, f"{ERRORS_FILE}, the reasons of {len(failed)} failed "
                            "track(s)", err, "the features are written and the reasons were "
                            "logged above") from err


def cannot_write(out_dir: Path, what: str, err: OSError, then: str) -> OutputError:
    """The one-line error of ``out_dir`` refusing ``what`` once the work is done: the
    system's reason, then what is kept and what to do (``then``)."""
    return OutputError(f"{out_dir}: cannot write {what} ({err.strerror or err}); {then}")
