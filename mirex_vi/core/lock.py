"""One writer at a time in a folder: an exclusive lock on a file in it, refused at once.

The lock is ``flock`` on ``FOLDER/.lock``, which holds the holder's pid (for the message of
the process it turns away) and is removed when the holder is done, so a finished or failed
write leaves no trace. The kernel releases the lock when its holder ends, however it ends:
after ``kill -9`` the file stays, and the next writer takes it over.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

LOCK_NAME = ".lock"


class FolderBusy(ValueError):
    """Another process is writing the folder; the message names it and the writer's pid."""


@contextlib.contextmanager
def writing(folder: Path, what: str = "folder") -> Iterator[None]:
    """Hold ``folder``'s lock while the block runs; ``folder`` must exist.

    Raises:
        FolderBusy: another process holds it ("``folder``: this ``what`` is being written
            by another process (pid N)").
    """
    path = folder / LOCK_NAME
    fd = _take(path, folder, what)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)  # still ours: others only ever lock the file at this path
        os.close(fd)


def _take(path: Path, folder: Path, what: str) -> int:
    """A descriptor of ``path`` that this process holds the lock of.

    A file removed (or replaced) by its holder between our opening and our locking it is
    opened again: a lock on a file no longer at ``path`` would exclude no one.
    """
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            holder = os.read(fd, 32).decode("ascii", "replace").strip()
            os.close(fd)
            pid = f" (pid {holder})" if holder.isdigit() else ""
            raise FolderBusy(f"{folder}: this {what} is being written by another process{pid}; "
                             "wait for it to end, or write elsewhere") from err
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        os.close(fd)
