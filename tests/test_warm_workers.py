"""The worker pool's forkserver imports what the workers need once: workers start warm."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import multiprocessing as mp, sys
from concurrent.futures import ProcessPoolExecutor

def loaded():
    return "librosa.core.constantq" in sys.modules, "mirex_vi.features.workers" in sys.modules

if __name__ == "__main__":  # not run by the workers, which import this file too
    from mirex_vi.features.workers import start_forkserver

    if sys.argv[1] != "none":
        start_forkserver(decode_only=sys.argv[1] == "decode")
    with ProcessPoolExecutor(1, mp_context=mp.get_context("forkserver")) as pool:
        print(*pool.submit(loaded).result())
"""


def _worker_modules(script, mode: str) -> str:
    done = subprocess.run([sys.executable, str(script), mode], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_workers_forked_after_start_forkserver_have_their_modules_loaded(tmp_path):
    script = tmp_path / "pool.py"  # a file: the workers import their function from it
    script.write_text(SCRIPT)
    assert _worker_modules(script, "cqt") == "True True"
    assert _worker_modules(script, "decode") == "False True"  # decoding only: no librosa
    assert _worker_modules(script, "none") == "False False"  # a bare forkserver imports nothing
