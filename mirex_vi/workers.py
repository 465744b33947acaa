"""Audio files -> CQTs (or decoded audio) in parallel worker processes.

Workers decode and, unless asked only to decode, compute the CQT; the caller (identification,
evaluation on audio, dataset extraction) receives each file's array (decoded audio as int16
``PackedAudio``, half the bytes of float32) or the reason it failed as soon as it is done,
in completion order.
Workers are started with ``forkserver`` so they never inherit the parent's torch threads.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .audio import AudioError, load_audio
from .config import FeatureConfig
from .features import PackedAudio, checked_cqt


@dataclass(frozen=True)
class FileResult:
    """One finished file: ``cqt`` (``(T, n_bins)`` float16) when CQTs were asked for, ``audio``
    (``(N,)`` samples at ``cfg.sample_rate``, packed) when only decoding was, or ``error``
    saying why neither."""

    index: int
    cqt: np.ndarray | None = None
    audio: PackedAudio | None = None
    error: str | None = None


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def file_to_cqt(path: str | Path, cfg: FeatureConfig) -> np.ndarray:
    """Decode one file and return its ``(T, n_bins)`` float16 CQT.

    Raises:
        AudioError: the file is unusable (missing, unreadable, silent...).
    """
    return checked_cqt(load_audio(path, cfg.sample_rate), cfg)


def _job(index: int, path: str, cfg: FeatureConfig, decode_only: bool) -> FileResult:
    try:
        if decode_only:
            return FileResult(index, audio=PackedAudio.pack(load_audio(path, cfg.sample_rate)))
        return FileResult(index, cqt=file_to_cqt(path, cfg))
    except AudioError as err:
        return FileResult(index, error=str(err))
    except Exception as err:  # noqa: BLE001 - a decoder/transform crash on one file is that file's error
        return FileResult(index, error=f"{type(err).__name__}: {err}")


def iter_files(paths: Sequence[str | Path], cfg: FeatureConfig, workers: int,
               decode_only: bool = False) -> Iterator[FileResult]:
    """CQTs (or, with ``decode_only``, decoded audio) of ``paths`` in completion order, by
    ``workers`` processes.

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
