"""Audio files -> CQTs in parallel worker processes, and the dataset ``extract`` command.

Workers decode and (unless asked only to decode) transform; the caller (identification or dataset
extraction) receives each file's array or the reason it failed as soon as it is done, in
completion order.
Workers are started with ``forkserver`` so they never inherit the parent's torch threads.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .atomic import atomic_open, remove_stale_temporaries
from .audio import AudioError, load_audio
from .config import FeatureConfig
from .features import compute_cqt, has_feature, save_feature

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FileResult:
    """One finished file: ``data`` (a ``(T, n_bins)`` float16 CQT, or ``(N,)`` float32 audio
    when only decoding was asked for), or ``error`` saying why not."""

    index: int
    data: np.ndarray | None = None
    error: str | None = None


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def file_to_cqt(path: str | Path, cfg: FeatureConfig) -> np.ndarray:
    """Decode one file and return its ``(T, n_bins)`` float16 CQT.

    Raises:
        AudioError: the file is unusable (missing, unreadable, silent...).
    """
    audio = load_audio(path, cfg.sample_rate)
    cqt = compute_cqt(audio, cfg)
    if not np.all(np.isfinite(cqt)):
        raise AudioError("CQT is not finite (float16 overflow: is the audio scaled to [-1, 1]?)")
    return cqt


def _job(index: int, path: str, cfg: FeatureConfig, decode_only: bool) -> FileResult:
    try:
        data = load_audio(path, cfg.sample_rate) if decode_only else file_to_cqt(path, cfg)
        return FileResult(index, data=data)
    except AudioError as err:
        return FileResult(index, error=str(err))
    except Exception as err:  # noqa: BLE001 - a decoder/transform crash on one file is that file's error
        return FileResult(index, error=f"{type(err).__name__}: {err}")


def iter_files(paths: Sequence[str | Path], cfg: FeatureConfig, workers: int,
               decode_only: bool = False) -> Iterator[FileResult]:
    """CQTs (or decoded audio) of ``paths`` in completion order, by ``workers`` processes.

    At most ``2 * workers`` files are in flight, so memory stays bounded on long lists.
    """
    if workers <= 1 or len(paths) <= 1:
        for i, path in enumerate(paths):
            yield _job(i, str(path), cfg, decode_only)
        return
    ctx = mp.get_context("forkserver")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        pending: set[Future] = set()
        todo = iter(enumerate(paths))
        try:
            for i, path in todo:
                pending.add(pool.submit(_job, i, str(path), cfg, decode_only))
                if len(pending) >= 2 * workers:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    yield from (f.result() for f in done)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                yield from (f.result() for f in done)
        finally:
            for f in pending:
                f.cancel()


AUDIO_EXTENSIONS = (".mp4", ".m4a", ".webm", ".flac", ".wav", ".ogg", ".mp3", ".opus")


def items_from_metadata(metadata: Path, audio_root: Path) -> list[tuple[str, Path]]:
    """``(youtube_id, audio path)`` of every version in a Discogs-VI-YT metadata file.

    Audio is looked up as ``<audio_root>/audio/<id[:2]>/<id>.<ext>`` (any common
    extension); a version with no file is kept with the expected ``.mp4`` path, so it is
    reported as missing rather than silently dropped.
    """
    from .data import read_metadata

    items = []
    for versions in read_metadata(metadata).values():
        for v in versions:
            folder = audio_root / "audio" / v.youtube_id[:2]
            found = [folder / f"{v.youtube_id}{ext}" for ext in AUDIO_EXTENSIONS
                     if (folder / f"{v.youtube_id}{ext}").is_file()]
            items.append((v.youtube_id, found[0] if found else folder / f"{v.youtube_id}.mp4"))
    return items


def items_from_list(list_file: Path) -> list[tuple[str, Path]]:
    """``(stem, path)`` per line of a plain list (relative paths against the list's folder).

    Raises:
        ValueError: two files share a stem, so their features would collide.
    """
    from .mirex_io import read_list

    paths = read_list(list_file).paths
    seen: dict[str, Path] = {}
    for path in paths:
        if path.stem in seen:
            raise ValueError(f"{list_file}: {seen[path.stem]} and {path} share the id {path.stem!r}")
        seen[path.stem] = path
    return list(seen.items())


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
    """
    from tqdm import tqdm

    remove_stale_temporaries(out_dir)
    todo = [(tid, path) for tid, path in items if not has_feature(out_dir, tid)]
    skipped = len(items) - len(todo)
    if skipped:
        log.info("%d of %d tracks already extracted; skipping them", skipped, len(items))
    failed: dict[str, str] = {}
    bar = tqdm(total=len(todo), desc="extract", unit="track", disable=not progress)
    for result in iter_files([p for _, p in todo], cfg, workers):
        tid, path = todo[result.index]
        if result.error is not None:
            failed[tid] = result.error
            log.warning("%s (%s): %s", tid, path, result.error)
        else:
            save_feature(out_dir, tid, result.data)
        bar.update()
    bar.close()
    if failed:
        with atomic_open(out_dir / ERRORS_FILE, "w", encoding="utf-8") as f:
            f.write("".join(f"{tid}\t{' '.join(why.split())}\n" for tid, why in failed.items()))
    return ExtractSummary(done=len(todo) - len(failed), skipped=skipped, failed=failed)
