"""Imported by the worker pool's forkserver, and only there, first: it dies with the main
process (see :mod:`~mirex_vi.core.lifeline`), and leaves Ctrl-C to the main process while it
imports the rest of what the workers need (librosa takes seconds; ``multiprocessing`` ignores
SIGINT in the forkserver only once its imports are done)."""

from __future__ import annotations

import signal

from .lifeline import die_with_parent

die_with_parent()
signal.signal(signal.SIGINT, signal.SIG_IGN)
