"""Every version's audio of a metadata file, fetched into the layout ``extract`` reads
(``mirex-vi download``): ``AUDIO_ROOT/audio/<id[:2]>/<id>.<ext>``.

Worker threads take the versions in order; each skips a version whose audio is already
there and probes as audio, and otherwise fetches it (``ytdlp.fetch``: rate, retries, the
rename into place). Results come back in completion order through a bounded queue, so the
workers never run far ahead of a slow consumer (the pooled-store sink of
``features.download``). Failures never stop the run: each goes, with its kind, to
``AUDIO_ROOT/download_errors.tsv``, and versions that failed for good (removed, private...)
are not asked for again by a rerun unless ``retry_failed``. One run at a time holds a
folder (``core.lock``), so the temporaries found at the start are a killed run's, and go.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ..core.atomic import atomic_open, make_folder, remove_stale_temporaries
from ..core.lock import writing
from .ytdlp import (PERMANENT, FetchError, FetchOptions, RateLimiter, Stopped, fetch, find_audio,
                    temporaries)

log = logging.getLogger(__name__)

ERRORS_FILE = "download_errors.tsv"
ERRORS_HEADER = ("youtube_id", "kind", "message")
# How long a stopped run waits for the downloads in flight to abandon their temporaries; a
# worker still in a network call after that dies with the process, and the next run sweeps.
STOP_WAIT_S = 10.0


@dataclass(frozen=True)
class Outcome:
    """One version: ``fetched`` now, already ``present``, or ``failed`` with its kind."""

    youtube_id: str
    state: str  # "fetched" | "present" | "failed"
    path: Path | None = None  # the audio, when on disk
    kind: str = ""
    message: str = ""


class Sink(Protocol):
    """Where outcomes go after the fetch (the pooled store); it may turn one into a failure."""

    def add(self, outcome: Outcome) -> list[Outcome]:
        """The outcomes finished so far (not necessarily ``outcome``'s)."""
        ...

    def flush(self) -> list[Outcome]:
        """The rest, once every version is through."""
        ...


@dataclass
class DownloadSummary:
    fetched: int = 0
    present: int = 0
    failures: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (kind, message)
    earlier: int = 0  # failed for good in an earlier run, not tried again

    def describe(self, root: Path) -> str:
        text = f"fetched {self.fetched}, already there {self.present}, failed {len(self.failures)}"
        if self.failures:
            kinds = Counter(kind for kind, _ in self.failures.values())
            text += " (" + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()))
            if self.earlier:
                text += f"; {self.earlier} in an earlier run, not tried again"
            text += f"; reasons in {root / ERRORS_FILE})"
        return text

    def record(self, outcome: Outcome) -> None:
        if outcome.state == "failed":
            self.failures[outcome.youtube_id] = (outcome.kind, outcome.message)
            log.warning("%s: %s: %s", outcome.youtube_id, outcome.kind, outcome.message)
        elif outcome.state == "fetched":
            self.fetched += 1
        else:
            self.present += 1


def download(ids: Sequence[str], root: Path, opts: FetchOptions, *, retry_failed: bool = False,
             done: frozenset[str] = frozenset(), sink: Sink | None = None,
             progress: bool = True) -> DownloadSummary:
    """Fetch the audio of ``ids`` under ``root/audio``; ``done`` ids count as already there.

    Raises:
        OSError: ``root`` cannot be made (one line, naming it).
        FolderBusy: another process is writing into ``root`` (a ``ValueError``).
    """
    from tqdm import tqdm

    make_folder(root / "audio", "audio folder")
    summary = DownloadSummary()
    with writing(root, "audio folder"):
        _sweep(root)
        earlier = {} if retry_failed else read_failures(root / ERRORS_FILE)
        todo = []
        for yid in dict.fromkeys(ids):  # once each, in order
            if yid in done:
                summary.present += 1
            elif earlier.get(yid, ("",))[0] in PERMANENT:
                summary.failures[yid] = earlier[yid]
                summary.earlier += 1
            else:
                todo.append(yid)
        bar = tqdm(total=len(todo), desc="download", unit="version", disable=not progress)
        try:
            with contextlib.closing(fetch_all(todo, root, opts)) as outcomes:
                for outcome in outcomes:
                    for finished in sink.add(outcome) if sink else [outcome]:
                        summary.record(finished)
                    bar.update()
                    bar.set_postfix(failed=len(summary.failures), refresh=False)
            for finished in sink.flush() if sink else []:
                summary.record(finished)
        finally:
            bar.close()
            write_failures(root / ERRORS_FILE, summary.failures)
    return summary


def _sweep(root: Path) -> None:
    """Remove the temporaries a killed run left (the caller holds the folder's lock)."""
    remove_stale_temporaries(root, older_than_s=0, of=ERRORS_FILE)
    for folder in (root / "audio").iterdir():
        for tmp in temporaries(folder) if folder.is_dir() else ():
            log.info("removing %s, left by an interrupted run", tmp)
            tmp.unlink(missing_ok=True)


def fetch_all(ids: Sequence[str], root: Path, opts: FetchOptions) -> Iterator[Outcome]:
    """The outcome of each of ``ids``, in completion order, from ``opts.workers`` threads.

    Closing the generator (an exception or Ctrl-C in the consumer) stops the workers: a
    download in progress is abandoned at its next chunk and its temporaries removed.
    """
    todo, lock, stop = iter(ids), threading.Lock(), threading.Event()
    results: queue.Queue = queue.Queue(maxsize=2 * opts.workers)
    limiter = RateLimiter(opts.per_minute)

    def work() -> None:
        try:
            while not stop.is_set():
                with lock:
                    yid = next(todo, None)
                if yid is None:
                    break
                outcome = _one(yid, root, opts, limiter, stop)
                if outcome is not None:
                    results.put(outcome)
        finally:
            results.put(None)

    threads = [threading.Thread(target=work, name=f"download-{i}", daemon=True)
               for i in range(min(opts.workers, len(ids)))]
    for t in threads:
        t.start()
    running = len(threads)
    try:
        while running:
            outcome = results.get()
            if outcome is None:
                running -= 1
            else:
                yield outcome
    finally:
        stop.set()
        deadline = time.monotonic() + STOP_WAIT_S
        while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):  # unblock the workers' put()s
                results.get(timeout=0.1)


def _one(yid: str, root: Path, opts: FetchOptions, limiter: RateLimiter,
         stop: threading.Event) -> Outcome | None:
    """One version's outcome; None when the run stopped before it was done."""
    folder = root / "audio" / yid[:2]
    try:
        found = find_audio(folder, yid)
        if found is not None:
            return Outcome(yid, "present", found)
        return Outcome(yid, "fetched", fetch(yid, folder, opts, limiter, stop))
    except FetchError as err:
        return Outcome(yid, "failed", kind=err.kind, message=str(err))
    except Stopped:
        return None
    except OSError as err:  # this version's folder or file; the next may well succeed
        return Outcome(yid, "failed", kind="disk", message=str(err))
    except Exception as err:  # noqa: BLE001 - a crash in yt-dlp on one version is that version's
        return Outcome(yid, "failed", kind="other", message=f"{type(err).__name__}: {err}")


def read_failures(path: Path) -> dict[str, tuple[str, str]]:
    """``{youtube_id: (kind, message)}`` of an errors file; empty when there is none."""
    if not path.is_file():
        return {}
    rows = (line.split("\t", 2) for line in path.read_text(encoding="utf-8").splitlines()[1:])
    return {r[0]: (r[1], r[2]) for r in rows if len(r) == 3}


def write_failures(path: Path, failures: dict[str, tuple[str, str]]) -> None:
    """Replace the errors file (atomically) with ``failures``; remove it when there are none."""
    if not failures:
        path.unlink(missing_ok=True)
        return
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write("\t".join(ERRORS_HEADER) + "\n")
        f.writelines(f"{yid}\t{kind}\t{' '.join(message.split())}\n"
                     for yid, (kind, message) in failures.items())
