"""Helper processes that die with their parent, whatever ends it (SIGKILL included).

:func:`die_with_parent` asks the Linux kernel to SIGKILL the calling process as soon as its
parent ends (``prctl(PR_SET_PDEATHSIG)``); elsewhere it does nothing and says so.

The worker pool's forkserver is a fresh interpreter that ``multiprocessing`` can only ask to
import modules (``set_forkserver_preload``); it imports :mod:`mirex_vi.core.forkserver_preload`,
which calls :func:`die_with_parent`, and its parent is the main process. Pool workers are
the forkserver's children and call it themselves, so a killed main process takes the
forkserver and the workers with it; the resource tracker then sees its pipe close and
exits on its own. The kernel signals on the exit of the parent *thread* that started a
process, so pools are started from the main thread. The main process never calls it: it
must outlive a parent shell that exits (``nohup``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import signal
import sys


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent() -> bool:
    """SIGKILL this process when its parent ends; True where the kernel agreed (Linux)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):  # no libc or no prctl in it
        return False
