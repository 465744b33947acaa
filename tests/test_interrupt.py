"""Interruption (issue #18, item 3): SIGKILL of the main process takes every helper process
with it; SIGTERM and Ctrl-C end with one line and exit 143 / 130; ``--quiet`` is quiet; and a
worker killed at any moment fails only its files."""

from __future__ import annotations

import os
import pickle
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import write_list
from mirex_vi.synth import sines, write_audio

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


def _default_sigint() -> None:
    """Give the child a terminal's default Ctrl-C. A shell starts background jobs with SIGINT
    ignored, and Python keeps an inherited SIG_IGN; under `.ci/run &` the run would ignore the
    test's Ctrl-C and finish with exit 0."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


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
        proc = subprocess.Popen(cmd, stderr=err, start_new_session=True,
                                preexec_fn=_default_sigint)
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
    from mirex_vi.features.workers import WORKER_DIED, iter_files

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


@pytest.mark.parametrize("decode_only", [False, True])
def test_a_worker_reply_fits_in_one_atomic_pipe_write(tmp_path, decode_only):
    """A worker killed while writing half a reply to the result pipe hangs the pool's reader
    for good. The reply for a 10-minute file is far below PIPE_BUF (written in one piece);
    the array goes through the results folder and comes back equal to the in-process one."""
    from mirex_vi.config import FeatureConfig
    from mirex_vi.features.workers import _collect, _job, _pool_job

    cfg = FeatureConfig()
    tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(22050 * 600) / 22050)
    path = str(write_audio(tmp_path / "long.wav", tone.astype(np.float32)))
    reply = _pool_job(0, path, cfg, decode_only, str(tmp_path))
    assert len(pickle.dumps(reply)) < select.PIPE_BUF
    result, expected = _collect(reply, str(tmp_path)), _job(0, path, cfg, decode_only)
    if decode_only:
        assert result.audio.shift == expected.audio.shift
        np.testing.assert_array_equal(result.audio.samples, expected.audio.samples)
    else:
        np.testing.assert_array_equal(result.cqt, expected.cqt)
    assert sorted(os.listdir(tmp_path)) == ["long.wav"], "the handed-over array is left behind"


def test_a_long_error_reply_is_short_too(tmp_path):
    from mirex_vi.config import FeatureConfig
    from mirex_vi.features.workers import _pool_job

    reply = _pool_job(0, str(tmp_path / ("x" * 200) / ("y" * 5000)), FeatureConfig(), False,
                      str(tmp_path))
    assert reply.error and len(pickle.dumps(reply)) < select.PIPE_BUF


def test_an_unwritable_results_folder_fails_the_file_with_a_reason(tmp_path):
    from mirex_vi.config import FeatureConfig
    from mirex_vi.features.workers import _pool_job

    path = write_audio(tmp_path / "a.wav", sines([220.0], 5.0))
    reply = _pool_job(3, str(path), FeatureConfig(), False, str(tmp_path / "gone"))
    assert reply.index == 3 and "could not be handed over" in reply.error


def test_without_a_temporary_folder_files_are_done_in_process(tmp_path, monkeypatch, caplog):
    import tempfile

    from mirex_vi.config import FeatureConfig
    from mirex_vi.features.workers import iter_files

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "missing"))
    paths = [write_audio(tmp_path / f"{i}.wav", sines([220.0 * (i + 1)], 5.0)) for i in range(3)]
    results = list(iter_files(paths, FeatureConfig(), workers=2))
    assert [r.index for r in results] == [0, 1, 2] and all(r.cqt is not None for r in results)
    assert "no temporary folder for worker processes" in caplog.text


@pytest.mark.parametrize("signum, code, what", [(signal.SIGTERM, 143, "stopped by SIGTERM"),
                                                (signal.SIGINT, 130, "interrupted (Ctrl-C)")])
def test_extract_stopped_midway_ends_in_one_line_and_leaves_no_temporary(tmp_path, collection,
                                                                         signum, code, what):
    """The pooled store is one temporary file until the end: SIGTERM used to kill the run
    outright, leaving it (hidden, but as big as the store), and Ctrl-C printed 'Aborted!'."""
    out = tmp_path / "store"
    cmd = [sys.executable, "-m", "mirex_vi", "extract", str(out), "--list", str(collection),
           "--pooled", "u8", "--workers", "2", "--quiet"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=_default_sigint)
    deadline = time.time() + 120
    while not list(out.glob(".*.tmp")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it was signalled"
    time.sleep(0.5)  # into the CQTs
    os.killpg(proc.pid, signum) if signum == signal.SIGINT else proc.send_signal(signum)
    stderr = proc.communicate(timeout=60)[1]
    assert proc.returncode == code, stderr
    assert stderr.splitlines() == [f"error: {what}; no partial file is left (an authors'-layout "
                                   "folder resumes where it stopped)"]
    assert not list(out.iterdir())


def test_index_build_stopped_midway_writes_no_index_and_resumes(tmp_path, collection, tiny_package):
    pytest.importorskip("faiss")
    index = tmp_path / "index"
    cmd = [sys.executable, "-m", "mirex_vi", "index", "build", str(collection), str(index),
           "--weights", str(tiny_package), "--workers", "2", "--quiet"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list(index.rglob("*.npy")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it was signalled"
    proc.send_signal(signal.SIGTERM)
    stderr = proc.communicate(timeout=60)[1]
    assert proc.returncode == 143 and stderr.splitlines() == [
        "error: stopped by SIGTERM; no index written or changed; finished embeddings are kept "
        "in the cache"], stderr
    assert not (index / "index.json").exists() and not list(index.rglob(".*.tmp"))
    resumed = subprocess.run(cmd, capture_output=True, text=True)
    assert resumed.returncode == 0 and "0 embeddings from cache" not in resumed.stderr, resumed.stderr
