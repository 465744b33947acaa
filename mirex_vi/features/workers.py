"""Audio files -> CQTs (or decoded audio) in parallel worker processes.

Workers decode and, unless asked only to decode, compute the CQT; the caller (identification,
evaluation on audio, dataset extraction) receives each file's array (decoded audio as int16
``PackedAudio``, half the bytes of float32) or the reason it failed as soon as it is done,
in completion order, with the decoder's warnings (a file cut short of its header's length),
which are also logged here, in the main process.
Workers are started with ``forkserver`` so they never inherit the parent's torch threads,
run below the main process's priority (``WORKER_NICENESS``), and die with it
(:mod:`~mirex_vi.core.lifeline`). The forkserver imports what the workers need once
(librosa's CQT alone costs 1.6 s of CPU), so every worker forked from it starts warm;
:func:`start_forkserver` starts it early, while the main process loads torch.

A worker hands its array over through a file in a private temporary folder and sends only a
short reply (:class:`_Reply`) through the pool's result pipe. A reply that short is written
to the pipe in one piece, so a worker killed at any moment (the OOM killer) never leaves half
a message there: half a message blocks ``ProcessPoolExecutor``'s reader thread for good, and
with it the whole run.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import signal
import tempfile
import threading
import time
import warnings
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..config import FeatureConfig
from ..core import lifeline
from ..io.audio import AudioError, decode_audio
from .frontend import PackedAudio, checked_cqt

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FileResult:
    """One finished file: ``cqt`` (``(T, n_bins)`` float16) when CQTs were asked for, ``audio``
    (``(N,)`` samples at ``cfg.sample_rate``, packed) when only decoding was, or ``error``
    saying why neither; ``warnings`` about a file that was used (one line each)."""

    index: int
    cqt: np.ndarray | None = None
    audio: PackedAudio | None = None
    error: str | None = None
    warnings: tuple[str, ...] = ()


def _preloaded(decode_only: bool) -> list[str]:
    """The modules the forkserver imports before it forks any worker, by name (the first
    must never be imported in the main process)."""
    names = ["mirex_vi.core.forkserver_preload", __name__]
    return names if decode_only else [*names, "librosa.core.constantq"]


def start_forkserver(decode_only: bool = False) -> None:
    """Start the worker pool's forkserver now, in the background, importing what the
    workers need (``decode_only``: no librosa), so that a pool started later forks warm
    workers at once, for a single file too (which this process would otherwise do itself,
    importing librosa). Optional: a pool starts the forkserver itself when none is running.
    Call it from the main thread (see :mod:`~mirex_vi.core.lifeline`)."""
    from multiprocessing import forkserver

    global _forkserver_started
    mp.get_context("forkserver").set_forkserver_preload(_preloaded(decode_only))
    forkserver.ensure_running()
    _forkserver_started = True


_forkserver_started = False  # by start_forkserver, in this process


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _job(index: int, path: str, cfg: FeatureConfig, decode_only: bool) -> FileResult:
    """One file's CQT (or decoded audio); library warnings become the file's own warnings."""
    try:
        with warnings.catch_warnings(record=True) as caught:  # under the filters --quiet sets
            samples, notes = decode_audio(path, cfg.sample_rate)
            if decode_only:
                result = FileResult(index, audio=PackedAudio.pack(samples))
            else:
                result = FileResult(index, cqt=checked_cqt(samples, cfg))
        return replace(result, warnings=(*notes, *(str(w.message) for w in caught)))
    except AudioError as err:
        return FileResult(index, error=_short(str(err)))
    except Exception as err:  # noqa: BLE001 - a decoder/transform crash on one file is that file's error
        return FileResult(index, error=_short(f"{type(err).__name__}: {err}"))


def _short(reason: str, limit: int = 1000) -> str:
    """``reason`` cut to ``limit`` characters, so that a reply stays far below PIPE_BUF."""
    return reason if len(reason) <= limit else reason[: limit - 3] + "..."


@dataclass(frozen=True)
class _Reply:
    """A pool worker's answer for file ``index``: its error, or that its array is in
    ``<results folder>/<index>.npy`` (with the audio's ``shift`` when it is decoded audio)
    and its warnings. A few hundred bytes pickled, whatever the file."""

    index: int
    error: str | None = None
    shift: int | None = None
    warnings: tuple[str, ...] = ()


def _array_file(results_dir: str, index: int) -> str:
    """Where a worker leaves the array of file ``index`` for the main process."""
    return os.path.join(results_dir, f"{index}.npy")


def _pool_job(index: int, path: str, cfg: FeatureConfig, decode_only: bool,
              results_dir: str) -> _Reply:
    """``_job`` in a pool worker: the array goes to ``results_dir``, the reply to the pipe."""
    result = _job(index, path, cfg, decode_only)
    if result.error is not None:
        return _Reply(index, error=result.error)
    array = result.cqt if result.audio is None else result.audio.samples
    file = _array_file(results_dir, index)
    try:
        np.save(file, array)
    except OSError as err:  # the temporary folder is full or gone
        with contextlib.suppress(OSError):
            os.unlink(file)
        return _Reply(index, error=_short(f"its result could not be handed over: {err}"))
    return _Reply(index, shift=None if result.audio is None else result.audio.shift,
                  warnings=tuple(map(_short, result.warnings)))


def _collect(reply: _Reply, results_dir: str) -> FileResult:
    """The ``FileResult`` of a worker's reply, its array read from (and removed from) disk."""
    if reply.error is not None:
        return FileResult(reply.index, error=reply.error)
    file = _array_file(results_dir, reply.index)
    try:
        array = np.load(file)
    except (OSError, ValueError) as err:  # the temporary folder was emptied behind our back
        return FileResult(reply.index, error=_short(f"its result could not be read back: {err}"))
    finally:
        with contextlib.suppress(OSError):
            os.unlink(file)
    if reply.shift is None:
        return FileResult(reply.index, cqt=array, warnings=reply.warnings)
    return FileResult(reply.index, audio=PackedAudio(array, reply.shift), warnings=reply.warnings)


# Workers run this much below the main process's priority: where they share the cores with
# the model's threads (identify on the CPU), the model, the pipeline's one serial stage, gets
# a core whenever it needs one (an OpenMP thread that waits for a core holds up its whole
# pass), and the workers, a few files ahead, take the rest. 60 tracks of 3 min on two
# cores: faster in each of 6 rounds against un-niced workers; at 10, by 0.2-0.4 s out of 20.
WORKER_NICENESS = 10

# The reason given to the files in flight when a worker process dies (the kernel's OOM
# killer, a signal, a crash in a decoder): which of them killed it cannot be told.
WORKER_DIED = "the worker process decoding it died (out of memory, killed, or crashed)"


def iter_files(paths: Sequence[str | Path], cfg: FeatureConfig, workers: int,
               decode_only: bool = False) -> Iterator[FileResult]:
    """CQTs (or, with ``decode_only``, decoded audio) of ``paths`` in completion order, by
    ``workers`` processes; one result per path.

    At most ``2 * workers`` files are in flight, so memory stays bounded on long lists. If a
    worker process dies, the files in flight fail with ``WORKER_DIED`` and a fresh pool
    takes the rest. If the caller stops early (an exception, Ctrl-C, SIGTERM, or closing the
    generator), the files in flight are abandoned and the workers stopped at once. The
    workers ignore Ctrl-C (the main process handles it) and die with the main process,
    however it ends.
    """
    with contextlib.closing(_iter_results(paths, cfg, workers, decode_only)) as results:
        for result in results:  # closed with this generator: the workers stop at once
            for warning in result.warnings:
                log.warning("%s: %s", paths[result.index], warning)
            yield result


def _iter_results(paths: Sequence[str | Path], cfg: FeatureConfig, workers: int,
                  decode_only: bool) -> Iterator[FileResult]:
    """:func:`iter_files`, in this process or in a pool (for one file only when the
    forkserver was started beforehand: starting it costs what doing the file here does)."""
    pooled = workers > 1 and len(paths) > 0 and (len(paths) > 1 or _forkserver_started)
    results = _results_folder() if pooled else None
    if results is None:
        for i, path in enumerate(paths):
            yield _job(i, str(path), cfg, decode_only)
        return
    queue = deque((i, str(path)) for i, path in enumerate(paths))
    with results as results_dir:
        while queue:
            yield from _run_pool(queue, cfg, workers, decode_only, results_dir)


def _results_folder() -> tempfile.TemporaryDirectory | None:
    """A private temporary folder for the workers' arrays, or None (with a warning: the
    files are then done in this process) when no temporary folder can be made."""
    try:
        return tempfile.TemporaryDirectory(prefix="mirex-vi-results-", ignore_cleanup_errors=True)
    except OSError as err:
        log.warning("no temporary folder for worker processes (%s; set TMPDIR to a writable "
                    "folder): decoding in this process", err)
        return None


def _run_pool(queue: deque[tuple[int, str]], cfg: FeatureConfig, workers: int,
              decode_only: bool, results_dir: str) -> Iterator[FileResult]:
    """Work through ``queue`` (``(index, path)``, taken as submitted) in one pool of
    ``workers`` processes, until it is empty or a worker dies; arrays travel through
    ``results_dir``."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(_preloaded(decode_only))  # if the forkserver is not yet running
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_start_worker,
                               initargs=(os.getpid(),))
    pending: dict[Future, int] = {}  # -> index
    finished = broken = False
    try:
        while not broken and (queue or pending):
            while queue and len(pending) < 2 * workers and not broken:
                try:
                    pending[pool.submit(_pool_job, *queue[0], cfg, decode_only,
                                        results_dir)] = queue[0][0]
                    queue.popleft()
                except BrokenProcessPool:
                    broken = True
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for f in done:
                index, died = pending.pop(f), isinstance(f.exception(), BrokenProcessPool)
                broken |= died
                yield FileResult(index, error=WORKER_DIED) if died else _collect(f.result(), results_dir)
        for index in pending.values():  # a broken pool: every file in flight shares the fate
            yield FileResult(index, error=WORKER_DIED)
        finished = True
    finally:
        if not finished:
            _stop_workers(pool)
        pool.shutdown(wait=True, cancel_futures=True)


def _start_worker(main_pid: int) -> None:
    """Pool initializer: leave Ctrl-C to the main process, die with it, and yield the cores
    to it (``WORKER_NICENESS``).

    The kernel's parent-death signal covers the forkserver, this process's parent; a thread
    that checks every second that ``main_pid`` still exists covers systems without it and a
    forkserver started without :mod:`~mirex_vi.core.forkserver_preload`.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    lifeline.die_with_parent()
    with contextlib.suppress(OSError, AttributeError):  # AttributeError: no os.nice (Windows)
        os.nice(WORKER_NICENESS)
    threading.Thread(target=_exit_without, args=(main_pid,), daemon=True,
                     name="exit-without-main").start()


def _exit_without(main_pid: int, interval_s: float = 1.0) -> None:
    """Exit this process once ``main_pid`` no longer exists."""
    while True:
        time.sleep(interval_s)
        try:
            os.kill(main_pid, 0)
        except (ProcessLookupError, PermissionError):  # gone, or its pid reused by another user
            os._exit(1)


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Terminate ``pool``'s worker processes, abandoning the files they are working on.

    ``ProcessPoolExecutor`` has no public way to do this before Python 3.14
    (``terminate_workers``), hence its ``_processes`` (pid -> process).
    """
    terminate = getattr(pool, "terminate_workers", None)
    if terminate is not None:
        terminate()
        return
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        process.terminate()
