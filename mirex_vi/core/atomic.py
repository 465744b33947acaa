"""Atomic file writes: a crash or a kill never leaves a partial file at the final path; and
the folders they go into, made with an error a user can act on."""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)


def _file_mode() -> int:
    """What ``open()`` would give a new file: 0666 less the process umask."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


FILE_MODE = _file_mode()
TMP_SUFFIX = ".tmp"


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb", fsync: bool = True, **kwargs) -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success it replaces ``path``.

    On any exception the temporary file is removed and ``path`` is left untouched.
    ``mode`` is ``"wb"`` or ``"w"`` (text; ``kwargs`` go to ``open``, e.g. encoding).
    ``fsync=False`` leaves making the data durable before the rename to the caller (one
    ``os.sync`` for many files).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    try:
        os.fchmod(fd, FILE_MODE)  # mkstemp makes 0600; a result file should read as usual
        with open(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sync_files(files: list[IO]) -> None:
    """Make the data of several open files durable: one ``syncfs`` of their file system
    where Linux offers it (one flush for the whole batch), else an ``fsync`` per file."""
    if not files:
        return
    for f in files:
        f.flush()
    if _syncfs(files[0].fileno()):
        return
    for f in files:
        os.fsync(f.fileno())


def _syncfs(fd: int) -> bool:
    """``syncfs(2)`` of the file system holding ``fd``; False where there is none."""
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).syncfs(fd) == 0
    except (OSError, AttributeError):  # not Linux/glibc
        return False


def remove_stale_temporaries(folder: str | Path, older_than_s: float = 3600.0,
                             of: str | None = None) -> None:
    """Delete (and log) the hidden temporaries that a killed writer (SIGKILL, power loss)
    left anywhere under ``folder``, or, with ``of`` (a file name), only those of
    ``folder/of`` (``atomic_open``'s ``.of.*.tmp``) directly in ``folder``.

    ``atomic_open`` cleans up after any exception, but nothing runs after a SIGKILL. Only
    files untouched for ``older_than_s`` go, so a concurrent writer's file is never taken.
    """
    cutoff = time.time() - older_than_s
    folder = Path(folder)
    found = folder.glob(f".{glob.escape(of)}.*{TMP_SUFFIX}") if of else folder.rglob(f".*{TMP_SUFFIX}")
    removed = 0
    for tmp in found:
        try:
            if tmp.is_file() and tmp.stat().st_mtime < cutoff:
                tmp.unlink()
                removed += 1
        except FileNotFoundError:  # another process swept it first
            pass
        except OSError as err:  # a read-only folder: leftovers stay, nothing else is harmed
            log.warning("cannot remove the leftover %s (%s)", tmp, err.strerror)
    if removed:
        log.info("removed %d temporary files left by an interrupted run in %s", removed, folder)


def make_folder(folder: str | Path, what: str) -> None:
    """Create ``folder`` and its parents.

    Raises:
        OSError: one line naming ``folder`` as ``what`` ("work folder") and why: the file
            that stands where a folder must be, else the system's reason.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()),
                       None)
        why = f"{blocker} is a file, not a folder" if blocker else err.strerror
        raise OSError(f"{folder}: cannot create the {what} ({why})") from err
