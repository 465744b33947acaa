"""Safe output locations: checked before any work, so a result is never lost at the end.

An output must not be one of the inputs (by file identity, not by name), its folder must
exist and accept new files, and its name must fit the file system with the temporary name
that :func:`~mirex_vi.core.atomic.atomic_open` writes first.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path


from ..core.atomic import TMP_SUFFIX
from .lists import InputError


def check_output_location(output: str | Path, inputs: Iterable[Path] = ()) -> Path:
    """Fail before any work if a result could not be written where asked, or would
    overwrite one of ``inputs``; return the absolute path to write.

    ``output`` must name a regular file or a new name in an existing folder that accepts
    files. A link to a file is written through (the link stays a link).

    Raises:
        InputError: naming the output and the reason.
    """
    text = os.fspath(output)
    if text.endswith("/"):
        raise InputError(f"{text}: output path ends in '/'; give a file name")
    path = Path(os.path.abspath(text))
    if _names_a_descriptor(path):
        raise InputError(f"{text}: output is a file descriptor (standard output, /dev/fd/N); "
                         "the result is written to a temporary file renamed into place, so "
                         "give a file name")
    if os.path.isdir(path):
        raise InputError(f"{path}: output path is a folder")
    if os.path.exists(path) and not os.path.isfile(path):
        raise InputError(f"{path}: output exists and is not a regular file (a device, pipe or "
                         "socket); the result must go to a file")
    if os.path.islink(path):
        path = Path(os.path.realpath(path))
    folder = path.parent
    if not os.path.isdir(folder):
        raise InputError(f"{path}: output folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"{path}: output folder {folder} is not writable")
    check_accepts_files(folder, f"{path}: output folder", path.name)
    source = find_same_file(path, inputs)
    if source is not None:
        raise InputError(f"{path}: output is also an input ({source}); writing it would "
                         "destroy that input")
    return path


def _names_a_descriptor(path: Path) -> bool:
    """Whether ``path`` is, or links through, an open file descriptor of some process
    (``/dev/stdout``, ``/dev/fd/N``, ``/proc/self/fd/N``): replacing what it points to would
    destroy a file the shell opened (``>> log``) or a link of the system."""
    for _ in range(40):  # the kernel's own limit on links followed
        if str(path).startswith(("/dev/fd/", "/dev/stdin", "/dev/stdout", "/dev/stderr", "/proc/")):
            return True
        if not os.path.islink(path):
            return False
        path = Path(os.path.join(path.parent, os.readlink(path)))
    return False


def check_accepts_files(folder: Path, what: str, name: str = "mirex-vi-probe") -> None:
    """Create and remove in ``folder`` the temporary that ``atomic_open`` would make for
    ``folder/name``: the one test that a folder which passes ``os.access`` (NFS with
    root_squash, sysfs) really takes new files, and that the name is not too long for it.

    Raises:
        InputError: ``what``, the folder and the system's reason.
    """
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=TMP_SUFFIX)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        if err.errno == errno.ENAMETOOLONG:
            raise InputError(f"{folder / name}: name too long for its file system (with the "
                             f"temporary written first, .{name}.XXXXXXXX{TMP_SUFFIX})") from err
        raise InputError(f"{what} {folder} does not accept new files ({err.strerror})") from err


def find_same_file(path: Path, candidates: Iterable[Path]) -> Path | None:
    """The first of ``candidates`` that is the file ``path``: the same inode when both
    exist, or, for a candidate that does not exist, the same path once links are resolved.
    One ``stat`` per candidate, so a collection of 10^5 tracks costs a fraction of a second."""
    try:
        st = os.stat(path)
        inode = (st.st_dev, st.st_ino)
    except OSError:
        inode = None
    real = os.path.realpath(path)
    for candidate in candidates:
        try:
            other = os.stat(candidate)
        except OSError:  # missing or not reachable: only its name can match
            if os.path.realpath(candidate) == real:
                return candidate
            continue
        if inode == (other.st_dev, other.st_ino):
            return candidate
    return None
