"""The operating system's errors (issue #18, items 2 and 5): a track it refuses is skipped
with its reason, a cache it refuses is carried on without, an output it refuses exits 3
with the cache kept; and the cache key is taken before a track is read."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

import mirex_vi.inference.cache
import mirex_vi.inference.tracks
import mirex_vi.io.lists
import mirex_vi.io.matrix
from conftest import DiskFull, run_cli, write_list
from mirex_vi.config import FeatureConfig
from mirex_vi.inference.cache import EmbeddingCache
from mirex_vi.inference.identify import errors_file
from mirex_vi.inference.settings import EmbedSettings
from mirex_vi.io.audio import FileIdentity
from mirex_vi.io.matrix import read_distance_matrix
from mirex_vi.synth import melody, write_audio

ROOT = os.geteuid() == 0


def call(collection, output, package, *extra):
    return run_cli("identify", collection, collection, output, "--weights", package,
                   "--workers", "1", *extra)


def refuse(monkeypatch, name: str, below: Path, error: int) -> None:
    """Make ``os.<name>`` fail with ``error`` for every path under ``below``: what a folder
    without search permission, an unreadable file or a full disk does, for root too."""
    real = getattr(os, name)

    def fake(path, *args, **kwargs):
        if isinstance(path, (str, os.PathLike)) and os.fspath(path).startswith(str(below)):
            raise OSError(error, os.strerror(error), str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, name, fake)


def assert_skipped(code, out, tmp_path, bad: Path, reason: str):
    """``bad`` (the middle track) got distance 2.0 and ``reason`` in stderr and the log."""
    assert code == 0 and f"skipped {bad}: {reason}" in out and "Traceback" not in out, out
    d = read_distance_matrix(tmp_path / "o.txt").distances
    assert np.all(d[1, [0, 2]] == 2.0) and np.all(d[[0, 2], 1] == 2.0) and 0 < d[0, 2] < 2
    log = errors_file(tmp_path / "o.txt.work", tmp_path / "o.txt").read_text().splitlines()
    assert log[1] == f"{bad}\t{reason}"


def middle(tmp_path, tracks, bad: Path) -> Path:
    return write_list(tmp_path / "c.txt", [str(tracks[0]), str(bad), str(tracks[1])])


def test_a_name_over_255_bytes(tmp_path, tracks, tiny_package):
    bad = tmp_path / ("x" * 300 + ".wav")
    code, out = call(middle(tmp_path, tracks, bad), tmp_path / "o.txt", tiny_package)
    assert_skipped(code, out, tmp_path, bad, "cannot access it (File name too long)")


@pytest.mark.skipif(ROOT, reason="root may search any folder")
def test_a_folder_without_search_permission(tmp_path, tracks, tiny_package):
    locked = tmp_path / "locked"
    bad = write_audio(locked / "t.wav", melody([60, 62, 64, 65] * 4))
    locked.chmod(0)
    try:
        code, out = call(middle(tmp_path, tracks, bad), tmp_path / "o.txt", tiny_package)
    finally:
        locked.chmod(0o755)
    assert_skipped(code, out, tmp_path, bad, "cannot access it (Permission denied)")


def test_a_folder_without_search_permission_faked(tmp_path, tracks, tiny_package, monkeypatch):
    bad = write_audio(tmp_path / "locked" / "t.wav", melody([60, 62, 64, 65] * 4))
    refuse(monkeypatch, "stat", tmp_path / "locked", errno.EACCES)
    code, out = call(middle(tmp_path, tracks, bad), tmp_path / "o.txt", tiny_package)
    assert_skipped(code, out, tmp_path, bad, "cannot access it (Permission denied)")


@pytest.mark.skipif(ROOT, reason="root may read any file")
def test_an_unreadable_file(tmp_path, tracks, tiny_package):
    bad = write_audio(tmp_path / "t.wav", melody([60, 62, 64, 65] * 4))
    bad.chmod(0)
    code, out = call(middle(tmp_path, tracks, bad), tmp_path / "o.txt", tiny_package)
    assert_skipped(code, out, tmp_path, bad, "cannot read it (Permission denied)")


def test_an_unreadable_file_faked(tmp_path, tracks, tiny_package, monkeypatch):
    bad = write_audio(tmp_path / "t.wav", melody([60, 62, 64, 65] * 4))
    refuse(monkeypatch, "open", bad, errno.EACCES)
    code, out = call(middle(tmp_path, tracks, bad), tmp_path / "o.txt", tiny_package)
    assert_skipped(code, out, tmp_path, bad, "cannot read it (Permission denied)")


def after_decoding(monkeypatch, nth: int, action) -> None:
    """Run ``action`` once a track is decoded, before it is embedded and cached: on the
    ``nth`` (0-based) call of ``embed.preprocess``, which takes each decoded track's CQT."""
    real, calls = mirex_vi.inference.tracks.preprocess, []

    def hooked(*args, **kwargs):
        if len(calls) == nth:
            action()
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(mirex_vi.inference.tracks, "preprocess", hooked)


def test_a_track_deleted_between_decoding_and_caching(tmp_path, tracks, tiny_package, monkeypatch):
    bad = write_audio(tmp_path / "t.wav", melody([60, 62, 64, 65] * 4))
    after_decoding(monkeypatch, 1, bad.unlink)
    code, out = call(middle(tmp_path, tracks, bad), tmp_path / "o.txt", tiny_package)
    assert_skipped(code, out, tmp_path, bad, "removed while it was being processed")
    assert len(list((tmp_path / "o.txt.work").rglob("*.npy"))) == 2


def test_a_file_replaced_while_processed_never_poisons_the_cache(tmp_path, tracks, tiny_package,
                                                               monkeypatch):
    track = write_audio(tmp_path / "t.wav", melody([60, 62, 64, 65] * 4))
    collection = middle(tmp_path, tracks, track)
    after_decoding(monkeypatch, 1, lambda: write_audio(track, melody([70, 65, 72, 60] * 5)))
    code, out = call(collection, tmp_path / "o.txt", tiny_package)
    assert code == 0 and "changed while it was being processed" in out, out
    monkeypatch.undo()
    assert call(collection, tmp_path / "o.txt", tiny_package)[0] == 0  # reuses the cache
    assert call(collection, tmp_path / "clean.txt", tiny_package, "--workdir", tmp_path / "w2")[0] == 0
    assert (tmp_path / "o.txt").read_bytes() == (tmp_path / "clean.txt").read_bytes()


def _settings(device: str, amp: bool = True, cqt: str = "auto", **more) -> EmbedSettings:
    import torch

    return EmbedSettings.resolve(torch.device(device), amp, cqt_backend=cqt, **more)


def test_cache_key_holds_backend_amp_and_device_type(tmp_path, tracks):
    identity = FileIdentity(10, 20)
    keys = set()
    for device, amp, cqt in (("cpu", False, "librosa"), ("cpu", False, "torch"),
                             ("cuda", True, "torch"), ("cuda", False, "torch"),
                             ("cuda", True, "librosa")):
        cache = EmbeddingCache(tmp_path, "sha", FeatureConfig(), 16, _settings(device, amp, cqt))
        keys.add(cache.path_for(tracks[0], identity))
    assert len(keys) == 5
    assert _settings("cuda").cache_key() == {"cqt": "torch", "amp": True, "device": "cuda"}


def test_cache_key_is_the_one_existing_caches_were_written_under(tmp_path):
    """Batch size and workers stay out of the key, and a key never changes for the same
    settings: a cache written by an earlier version must still be found."""
    cpu = [_settings("cpu"), _settings("cpu", amp=False, cqt="librosa", batch_size=8, workers=3)]
    assert [s.cache_key() for s in cpu] == [{"cqt": "librosa", "amp": False, "device": "cpu"}] * 2
    assert _settings("cuda", amp=False, cqt="librosa").cache_key() == {
        "cqt": "librosa", "amp": False, "device": "cuda"}
    cache = EmbeddingCache(tmp_path, "0" * 64, FeatureConfig(), 512, cpu[0])
    entry = cache.path_for(Path("/music/a.wav"), FileIdentity(1234, 5678))
    assert entry.relative_to(tmp_path) == Path(  # the key of the default CQT features
        "18/1807de2392a20dbaa3fdd6d5b8bff5e84b5b613365d87d966125900e3b748482.npy")


def test_torch_and_librosa_runs_never_share_cache_entries(tmp_path, tracks, tiny_package):
    collection = write_list(tmp_path / "c.txt", [str(p) for p in tracks[:2]])
    for backend in ("librosa", "torch"):
        code, out = call(collection, tmp_path / "o.txt", tiny_package, "--cqt", backend)
        assert code == 0 and "(0 embeddings from cache)" in out, out


# --- the output and the cache on a full or refusing disk ----------------------------------


def assert_output_failed_and_cache_kept(code, out, output: Path, work: Path, n: int):
    lines = [line for line in out.splitlines() if line.startswith("error:")]
    assert code == 3 and len(lines) == 1 and "No space left on device" in lines[0], out
    assert "Traceback" not in out and f"kept in {work}" in lines[0]
    assert not output.exists() and not list(output.parent.glob(f".{output.name}.*"))
    assert len(list(work.rglob("*.npy"))) == n


def test_a_full_disk_under_the_output_exits_3_and_keeps_the_cache(tmp_path, tracks, tiny_package,
                                                                  monkeypatch):
    collection = write_list(tmp_path / "c.txt", [str(p) for p in tracks[:3]])
    monkeypatch.setattr(mirex_vi.io.matrix, "atomic_open", DiskFull)
    code, out = call(collection, tmp_path / "o.txt", tiny_package, "--quiet")
    assert_output_failed_and_cache_kept(code, out, tmp_path / "o.txt", tmp_path / "o.txt.work", 3)
    monkeypatch.undo()
    code, out = call(collection, tmp_path / "o.txt", tiny_package)
    assert code == 0 and "(3 embeddings from cache)" in out


def cache_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelname == "WARNING" and "cannot write to the embedding cache" in r.getMessage()]


def test_a_full_disk_under_the_workdir_warns_and_carries_on(tmp_path, tracks, tiny_package,
                                                           monkeypatch, caplog):
    collection = write_list(tmp_path / "c.txt", [str(p) for p in tracks[:3]])
    assert call(collection, tmp_path / "clean.txt", tiny_package, "--workdir", tmp_path / "w")[0] == 0
    monkeypatch.setattr(mirex_vi.inference.cache, "atomic_open", DiskFull)
    code, out = call(collection, tmp_path / "o.txt", tiny_package, "--quiet")
    assert code == 0, out
    warnings = cache_warnings(caplog)
    assert len(warnings) == 1 and "No space left on device" in warnings[0]
    assert (tmp_path / "o.txt").read_bytes() == (tmp_path / "clean.txt").read_bytes()


def test_an_error_log_on_a_full_disk_warns_and_carries_on(tmp_path, tracks, tiny_package,
                                                          monkeypatch, caplog):
    collection = middle(tmp_path, tracks, tmp_path / "gone.wav")
    monkeypatch.setattr(mirex_vi.io.lists, "atomic_open", DiskFull)
    code, out = call(collection, tmp_path / "o.txt", tiny_package, "--quiet")
    assert code == 0 and f"skipped {tmp_path / 'gone.wav'}" in out, out
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("cannot write the error log" in w and "No space left" in w for w in warnings)
    assert read_distance_matrix(tmp_path / "o.txt").distances[0, 1] == 2.0
    assert not errors_file(tmp_path / "o.txt.work", tmp_path / "o.txt").exists()


def test_an_output_folder_that_passes_access_but_refuses_files_faked(tmp_path, tracks, tiny_package,
                                                                    monkeypatch):
    collection = write_list(tmp_path / "c.txt", [str(tracks[0])])
    (tmp_path / "squashed").mkdir()
    refuse(monkeypatch, "open", tmp_path / "squashed", errno.EACCES)  # NFS with root_squash
    code, out = call(collection, tmp_path / "squashed" / "o.txt", tiny_package)
    assert code == 2 and "does not accept new files (Permission denied)" in out, out


def sysfs_refuses_files() -> bool:
    try:
        fd, probe = tempfile.mkstemp(dir="/sys")
    except OSError:
        return os.access("/sys", os.W_OK | os.X_OK)
    os.close(fd)
    os.unlink(probe)
    return False


@pytest.mark.skipif(not sysfs_refuses_files(), reason="needs /sys writable to access() only (root)")
def test_an_output_folder_that_passes_access_but_refuses_files(tmp_path, tracks, tiny_package):
    collection = write_list(tmp_path / "c.txt", [str(tracks[0])])
    code, out = call(collection, "/sys/o.txt", tiny_package, "--workdir", tmp_path / "w")
    assert code == 2 and "does not accept new files" in out, out


@pytest.fixture()
def full_tmpfs(tmp_path):
    """A 256 KiB tmpfs under ``tmp_path`` with no space left (root, where mount works)."""
    folder = tmp_path / "full"
    folder.mkdir()
    if not ROOT or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)],
                                  capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        with open(folder / "filler", "wb", buffering=0) as f, contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 4096)
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_really_full_disk_under_the_output(tmp_path, tracks, tiny_package, full_tmpfs):
    collection = write_list(tmp_path / "c.txt", [str(p) for p in tracks[:2]])
    code, out = call(collection, full_tmpfs / "o.txt", tiny_package, "--workdir", tmp_path / "w")
    assert_output_failed_and_cache_kept(code, out, full_tmpfs / "o.txt", tmp_path / "w", 2)


def test_a_really_full_disk_under_the_workdir(tmp_path, tracks, tiny_package, full_tmpfs, caplog):
    collection = write_list(tmp_path / "c.txt", [str(p) for p in tracks[:2]])
    code, out = call(collection, tmp_path / "o.txt", tiny_package, "--workdir", full_tmpfs / "w")
    assert code == 0 and len(cache_warnings(caplog)) == 1, out
    assert read_distance_matrix(tmp_path / "o.txt").distances.shape == (2, 2)


def test_a_file_where_a_folder_must_be_is_named(tmp_path, tracks, tiny_package):
    """identify's --workdir and extract's OUT_DIR under (or being) a file said only "File
    exists" or "[Errno 20] Not a directory: ..."."""
    collection = write_list(tmp_path / "c.txt", [str(t) for t in tracks])
    (tmp_path / "plain").write_text("a file\n")
    for workdir in (tmp_path / "plain", tmp_path / "plain" / "w"):
        code, out = call(collection, tmp_path / "o.txt", tiny_package, "--workdir", workdir)
        assert code == 2, out
        assert (f"{workdir}: cannot create the work folder ({tmp_path / 'plain'} is a file, "
                "not a folder)") in out
    code, out = run_cli("extract", tmp_path / "plain" / "feats", "--list", collection,
                        "--workers", "1", "--quiet")
    assert code == 2 and f"({tmp_path / 'plain'} is a file, not a folder)" in out, out
    assert not (tmp_path / "o.txt").exists()
