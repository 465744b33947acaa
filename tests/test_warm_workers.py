"""The worker pool's processes: forked warm from a forkserver that imported what they need
once, used for a single file too once it runs, and below the main process's priority."""

from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor

from mirex_vi.features import workers

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


ONE_FILE = """
import sys
import numpy as np
import soundfile as sf

if __name__ == "__main__":
    from mirex_vi.config import FeatureConfig
    from mirex_vi.features.workers import iter_files, start_forkserver

    if sys.argv[2] == "started":
        start_forkserver()
    tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(22050) / 22050)
    sf.write(sys.argv[1], tone.astype(np.float32), 22050, subtype="PCM_16")
    [result] = iter_files([sys.argv[1]], FeatureConfig(), workers=2)
    print(result.cqt.shape[1], "librosa.core.constantq" in sys.modules)
"""


def test_one_file_goes_to_a_warm_forkserver_when_one_was_started(tmp_path):
    """With the forkserver started (as identify does while torch loads), one file is done by
    a warm worker instead of importing librosa here; without it, here (no pool to start)."""
    script = tmp_path / "one.py"
    script.write_text(ONE_FILE)

    def run(mode: str) -> str:
        done = subprocess.run([sys.executable, str(script), str(tmp_path / "a.wav"), mode],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    assert run("started") == "84 False"
    assert run("cold") == "84 True"


def test_workers_yield_the_cores_to_the_main_process():
    with ProcessPoolExecutor(1, mp_context=mp.get_context("forkserver"),
                             initializer=workers._start_worker, initargs=(os.getpid(),)) as pool:
        assert pool.submit(os.nice, 0).result() == min(19, os.nice(0) + workers.WORKER_NICENESS)
