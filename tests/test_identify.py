"""The MIREX call end to end: lists in, a strictly parsed matrix out, every bad-input case."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import kill_midway, leave_temporaries, noise_tracks, run_cli, write_list
from mirex_vi.core.runtime import tolerance
from mirex_vi.inference.identify import errors_file
from mirex_vi.io.matrix import format_row, read_distance_matrix
from mirex_vi.synth import sines, write_audio


def identify(tmp_path, collection, queries, package, *extra):
    return run_cli("identify", collection, queries, tmp_path / "out.txt", "--weights", package,
                   "--workers", "1", "--quiet", *extra)


def test_end_to_end_relative_paths_spaces_and_unicode(tmp_path, tracks, tiny_package):
    # Relative paths (against the list's folder), surrounding whitespace and blank lines.
    rel = [f"  audio dir/{p.name}  " for p in tracks]
    collection = write_list(tmp_path / "collection.txt", ["", *rel, ""])
    queries = write_list(tmp_path / "queries.txt", [rel[2], rel[0]])
    code, out = identify(tmp_path, collection, queries, tiny_package, "--name", "test system")
    assert code == 0, out
    matrix = read_distance_matrix(tmp_path / "out.txt")
    assert matrix.name == "test system"
    assert matrix.paths == [str(p) for p in tracks]
    assert matrix.query_indices == [2, 0]
    d = matrix.distances
    assert d.shape == (2, 4) and np.all(np.isfinite(d)) and d.min() >= 0 and d.max() <= 2
    assert d[0, 2] == 0 and d[1, 0] == 0
    assert np.all(d[0, [0, 1, 3]] > 0)
    assert abs(d[0, 0] - d[1, 2]) < 1e-6  # symmetric


def test_raw_format_uses_single_tabs(tmp_path, tracks, tiny_package):
    collection = write_list(tmp_path / "c.txt", [str(p) for p in tracks])
    assert identify(tmp_path, collection, collection, tiny_package)[0] == 0
    lines = (tmp_path / "out.txt").read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("Discogs-VINet-MIREX") and "tiny-test" in lines[0]
    assert lines[5] == "Q/R\t1\t2\t3\t4"
    for i, line in enumerate(lines[6:], 1):
        fields = line.split("\t")
        assert fields[0] == str(i) and len(fields) == 5 and all(fields[1:])


def test_workers_and_batching_give_the_same_matrix(tmp_path, tracks, tiny_package):
    collection = write_list(tmp_path / "c.txt", [str(p) for p in tracks])
    out = {}
    for label, args in {"serial": ["--workers", "1", "--batch-size", "1"],
                        "parallel": ["--workers", "2", "--batch-size", "8"]}.items():
        code, text = run_cli("identify", collection, collection, tmp_path / f"{label}.txt",
                             "--weights", tiny_package, "--quiet", *args)
        assert code == 0, text
        out[label] = read_distance_matrix(tmp_path / f"{label}.txt").distances
    # Compare 2 - 2 cos = d^2: d itself amplifies float noise near 0 (dd = ds / d). On the
    # CPU batching is bit-exact, so the matrices are too.
    np.testing.assert_allclose(out["serial"] ** 2, out["parallel"] ** 2, rtol=0,
                               atol=tolerance("cpu", amp=False).batch)
    assert (tmp_path / "serial.txt").read_bytes().split(b"\n")[1:] == \
        (tmp_path / "parallel.txt").read_bytes().split(b"\n")[1:]


@pytest.mark.parametrize("case", ["missing", "empty", "not_audio", "silence", "directory"])
def test_bad_audio_is_skipped_with_max_distance(tmp_path, tracks, tiny_package, case):
    bad = tmp_path / "bad.wav"
    if case == "empty":
        bad.write_bytes(b"")
    elif case == "not_audio":
        bad.write_text("<html>not audio</html>")
    elif case == "silence":
        write_audio(bad, np.zeros(22050, dtype=np.float32))
    elif case == "directory":
        bad.mkdir()
    collection = write_list(tmp_path / "c.txt", [str(tracks[0]), str(bad), str(tracks[1])])
    code, out = identify(tmp_path, collection, collection, tiny_package,
                         "--workdir", tmp_path / "work")
    assert code == 0, out
    assert f"skipped {bad}" in out and "1 track(s) skipped" in out
    d = read_distance_matrix(tmp_path / "out.txt").distances
    assert d[1, 1] == 0 and np.all(d[1, [0, 2]] == 2.0) and np.all(d[[0, 2], 1] == 2.0)
    assert 0 < d[0, 2] < 2
    errors = errors_file(tmp_path / "work", tmp_path / "out.txt").read_text().splitlines()
    assert errors[0] == "path\treason" and errors[1].startswith(f"{bad}\t")


def test_strict_stops_with_exit_1_and_no_output(tmp_path, tracks, tiny_package):
    collection = write_list(tmp_path / "c.txt", [str(tracks[0]), str(tmp_path / "gone.wav")])
    code, out = identify(tmp_path, collection, collection, tiny_package, "--strict")
    assert code == 1 and "gone.wav" in out and "file not found" in out
    assert not (tmp_path / "out.txt").exists()


def test_list_errors_exit_2_before_any_audio(tmp_path, tracks, tiny_package):
    good = write_list(tmp_path / "c.txt", [str(tracks[0]), str(tracks[1])])
    cases = {
        "missing list": (tmp_path / "nope.txt", good, "list file not found"),
        "empty list": (write_list(tmp_path / "e.txt", ["", "   "]), good, "holds no paths"),
        "query not in collection": (good, write_list(tmp_path / "q.txt", [str(tracks[0]), "", "x.wav"]),
                                    "line 3: .*x.wav"),
    }
    for label, (collection, queries, message) in cases.items():
        code, out = identify(tmp_path, collection, queries, tiny_package)
        assert code == 2, label
        assert re.search(message, out), (label, out)
    code, out = run_cli("identify", good, good, tmp_path / "no dir" / "out.txt",
                        "--weights", tiny_package)
    assert code == 2 and "does not exist" in out
    code, out = run_cli("identify", good, good, tmp_path / "out.txt", "--weights", tmp_path / "none")
    assert code == 2 and "not found" in out
    code, out = run_cli("identify", good, good, tmp_path / "out.txt", "--weights", tiny_package,
                        "--device", "cuda:7")
    assert code == 2 and "CUDA" in out
    assert not (tmp_path / "out.txt").exists()


def test_unwritable_output_folder(tmp_path, tracks, tiny_package):
    if os.geteuid() == 0:
        pytest.skip("root can write anywhere")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    good = write_list(tmp_path / "c.txt", [str(tracks[0])])
    code, out = run_cli("identify", good, good, locked / "out.txt", "--weights", tiny_package)
    assert code == 2 and "not writable" in out


def test_cache_is_reused_and_corrupt_entries_recomputed(tmp_path, tracks, tiny_package):
    collection = write_list(tmp_path / "c.txt", [str(p) for p in tracks])
    args = ("--workdir", tmp_path / "work")
    assert identify(tmp_path, collection, collection, tiny_package, *args)[0] == 0
    first = (tmp_path / "out.txt").read_bytes()
    entries = sorted((tmp_path / "work" / "embeddings").rglob("*.npy"))
    assert len(entries) == 4
    entries[0].write_bytes(b"garbage")
    np.save(entries[1], np.zeros(16, dtype=np.float32))  # loads, but is not a unit vector
    stale, fresh = leave_temporaries(entries[2].parent)
    code, out = run_cli("identify", collection, collection, tmp_path / "out.txt", "--weights",
                        tiny_package, "--workers", "1", *args)
    assert code == 0 and "(2 embeddings from cache)" in out
    assert (tmp_path / "out.txt").read_bytes() == first
    assert not stale.exists() and fresh.exists()  # a killed run's leftovers are swept


def identify_command(collection: Path, out: Path, package: Path, work: Path) -> list[str]:
    return [sys.executable, "-m", "mirex_vi", "identify", str(collection), str(collection),
            str(out), "--weights", str(package), "--workers", "1", "--batch-size", "1",
            "--quiet", "--workdir", str(work)]


def test_kill_and_resume_gives_identical_matrix(tmp_path, tiny_package):
    collection = write_list(tmp_path / "c.txt", [str(p) for p in noise_tracks(tmp_path / "a")])
    work, out = tmp_path / "work", tmp_path / "out.txt"
    cmd = identify_command(collection, out, tiny_package, work)
    done_before = kill_midway(cmd, work)
    assert 3 <= done_before < 12, "the run finished before it could be killed"
    assert not out.exists() and not list(tmp_path.glob(".out.txt*"))
    # SIGKILL cannot be caught, so a hidden temporary file may be left mid-write; what must
    # never exist is a half-written entry at a final path. The cache only counts an entry
    # that loads as a finite unit vector (EmbeddingCache.get), so every one of them must.
    resumed = subprocess.run([c for c in cmd if c != "--quiet"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"({done_before} embeddings from cache)" in resumed.stderr
    clean = subprocess.run(identify_command(collection, tmp_path / "clean.txt", tiny_package,
                                            tmp_path / "work2"), capture_output=True)
    assert clean.returncode == 0
    assert out.read_bytes() == (tmp_path / "clean.txt").read_bytes()


def test_run_sh_three_and_four_arguments(tmp_path, tracks, tiny_package):
    run_sh = Path(__file__).resolve().parent.parent / "run.sh"
    collection = write_list(tmp_path / "c.txt", [str(p) for p in tracks[:2]])
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "MIREX_VI_WEIGHTS_DIR": str(tiny_package.parent)}
    for args in ([collection, collection, tmp_path / "o3.txt"],
                 [collection, collection, tmp_path / "wd", tmp_path / "o4.txt"]):
        result = subprocess.run(["bash", str(run_sh), *map(str, args)], env=env,
                                capture_output=True, text=True, input="")
        # No default package in this weights dir: run.sh must still reach mirex-vi identify.
        assert result.returncode == 2 and "vinet-mirex-synth" in result.stderr, result.stderr
    result = subprocess.run(["bash", str(run_sh), "weights", "list"], env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0 and "tiny-test" in result.stdout


def test_fast_row_formatter_is_byte_identical_to_python_formatting():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.random(20000) * 2, [0.0, 2.0, 1.0, 0.5, 1e-7, 1.9999995]])
    values = np.concatenate([values, np.float32(np.arange(4000) / 2e6 + 5e-7)]).astype(np.float32)
    simple = "\t".join(f"{float(v):.6f}" for v in values).encode()
    assert format_row(values) == simple
    with pytest.raises(ValueError):
        format_row(np.array([np.nan], dtype=np.float32))


@pytest.mark.parametrize("workers", ["1", "2"])  # in process, and through worker processes
def test_torch_cqt_backend_gives_the_same_embeddings(tmp_path, tracks, tiny_package, workers):
    collection = write_list(tmp_path / "c.txt", [str(p) for p in tracks])
    rows = {}
    for backend in ("librosa", "torch"):
        out = tmp_path / f"{backend}.txt"
        code, text = run_cli("identify", collection, collection, out, "--weights", tiny_package,
                             "--workers", workers, "--quiet", "--cqt", backend)
        assert code == 0, text
        rows[backend] = read_distance_matrix(out).distances
    # distance = sqrt(2 - 2 cos): cos >= 0.9999 between backends means |d| small everywhere.
    np.testing.assert_allclose(rows["torch"], rows["librosa"], atol=2e-3)
    np.testing.assert_allclose(rows["torch"] ** 2, rows["librosa"] ** 2, rtol=0,
                               atol=tolerance("cpu", amp=False).backend)


@pytest.mark.parametrize("backend", ["librosa", "torch"])
def test_far_too_loud_float_wav_is_skipped_with_a_reason(tmp_path, tracks, tiny_package, backend):
    """A float WAV at 3000x full scale (a steady 55 Hz tone, peak 3000) overflows the float16
    CQT on either backend: the track is skipped with the same clear reason, never embedded
    as NaN or cached."""
    loud = write_audio(tmp_path / "loud.wav", 3000 * sines([55.0], 10.0), subtype="FLOAT")
    collection = write_list(tmp_path / "c.txt", [str(tracks[0]), str(loud), str(tracks[1])])
    code, out = identify(tmp_path, collection, collection, tiny_package, "--cqt", backend,
                         "--workdir", tmp_path / "work")
    assert code == 0, out
    assert f"skipped {loud}: CQT is not finite (float16 overflow" in out
    d = read_distance_matrix(tmp_path / "out.txt").distances
    assert np.all(np.isfinite(d)) and np.all(d[1, [0, 2]] == 2.0)
    assert len(list((tmp_path / "work" / "embeddings").rglob("*.npy"))) == 2
