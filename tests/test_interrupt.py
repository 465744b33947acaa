"""Interruption (issue #18, item 3): SIGKILL of the main process takes every helper process
with it; SIGTERM and Ctrl-C end with one line and exit 143 / 130; and ``--quiet`` is quiet."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import write_list
from mirex_vi.synth import write_audio

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> Path:
    """Eight 30 s noise tracks: long enough that a run is still busy when signalled."""
    folder = tmp_path_factory.mktemp("long")
    rng = np.random.default_rng(0)
    paths = [write_audio(folder / f"{i}.wav", (0.1 * rng.standard_normal(22050 * 30)).astype(np.float32))
             for i in range(8)]
    return write_list(folder / "c.txt", [str(p) for p in paths])


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except OSError:
        return False


def start_and_signal(tmp_path, collection, package, signum) -> tuple[int, str, list[int]]:
    """Start ``identify`` with two workers in its own session, send ``signum`` (Ctrl-C goes
    to the whole process group, as a terminal sends it) once the first embedding is cached.

    Returns:
        The exit code, stderr, and the helper processes that outlived it by 5 s.
    """
    work, stderr = tmp_path / "work", tmp_path / "stderr.txt"
    cmd = [sys.executable, "-m", "mirex_vi", "identify", str(collection), str(collection),
           str(tmp_path / "out.txt"), "--weights", str(package), "--workers", "2", "--quiet",
           "--workdir", str(work)]
    with open(stderr, "w") as err:  # a file: survivors holding a pipe would block reading it
        proc = subprocess.Popen(cmd, stderr=err, start_new_session=True)
    deadline = time.time() + 120
    while not list(work.rglob("*.npy")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    helpers = descendants(proc.pid)
    assert proc.poll() is None and len(helpers) >= 3, "the run ended before it was signalled"
    if signum == signal.SIGINT:
        os.killpg(proc.pid, signum)
    else:
        proc.send_signal(signum)
    code = proc.wait(timeout=60)
    deadline = time.time() + 5
    while any(map(alive, helpers)) and time.time() < deadline:
        time.sleep(0.1)
    survivors = [p for p in helpers if alive(p)]
    for pid in survivors:  # do not leave them to the next test
        os.kill(pid, signal.SIGKILL)
    return code, stderr.read_text(), survivors


def test_sigkill_of_the_main_process_leaves_no_helper_behind(tmp_path, collection, tiny_package):
    code, _, survivors = start_and_signal(tmp_path, collection, tiny_package, signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert survivors == [], "forkserver, resource tracker or workers outlived the main process"
    assert not (tmp_path / "out.txt").exists()


@pytest.mark.parametrize("signum, code, what", [(signal.SIGTERM, 143, "stopped by SIGTERM"),
                                                (signal.SIGINT, 130, "interrupted (Ctrl-C)")])
def test_sigterm_and_ctrl_c_end_cleanly_with_one_line(tmp_path, collection, tiny_package,
                                                      signum, code, what):
    got, stderr, survivors = start_and_signal(tmp_path, collection, tiny_package, signum)
    assert got == code, stderr
    assert stderr.splitlines() == [f"error: {what}; no output written; finished embeddings "
                                   f"are kept in {tmp_path / 'work'}"]
    assert survivors == []
    assert not (tmp_path / "out.txt").exists() and not list(tmp_path.rglob(".*.tmp"))
    resumed = subprocess.run([sys.executable, "-m", "mirex_vi", "identify", str(collection),
                              str(collection), str(tmp_path / "out.txt"), "--weights",
                              str(tiny_package), "--workers", "2", "--quiet", "--workdir",
                              str(tmp_path / "work")], capture_output=True, text=True)
    assert resumed.returncode == 0 and "embeddings from cache)" in resumed.stderr


def test_quiet_silences_library_warnings_in_the_workers_too(tmp_path, tiny_package):
    rng = np.random.default_rng(0)
    clips = [write_audio(tmp_path / f"{i}.wav", (0.1 * rng.standard_normal(2000)).astype(np.float32))
             for i in range(2)]  # 0.09 s: librosa warns that its FFT is longer than the clip
    collection = write_list(tmp_path / "c.txt", [str(p) for p in clips])
    for workers in ("1", "2"):
        result = subprocess.run([sys.executable, "-m", "mirex_vi", "identify", str(collection),
                                 str(collection), str(tmp_path / f"out{workers}.txt"), "--weights",
                                 str(tiny_package), "--workers", workers, "--quiet"],
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert "Warning" not in result.stderr, result.stderr
        assert result.stderr.splitlines()[-1].startswith("wrote ")


def test_a_worker_killed_mid_run_fails_only_its_files(collection):
    """The OOM killer's case: the files in flight fail with a reason, the rest are done."""
    from mirex_vi.config import FeatureConfig
    from mirex_vi.workers import WORKER_DIED, iter_files

    paths = collection.read_text().split()
    results = []
    for result in iter_files(paths, FeatureConfig(), workers=2):
        if not results:
            workers = [p for p in descendants(os.getpid())
                       if "forkserver" in Path(f"/proc/{p}/cmdline").read_text()
                       and int(Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[1])
                       != os.getpid()]
            os.kill(workers[0], signal.SIGKILL)
        results.append(result)
    assert sorted(r.index for r in results) == list(range(len(paths)))
    failed = [r for r in results if r.error is not None]
    assert failed and all(r.error == WORKER_DIED for r in failed)
    assert len(failed) <= 4 and all(r.cqt is not None for r in results if r.error is None)
