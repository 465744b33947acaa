"""Issue #46, faults 2, 6, 7, 8 and 9: full disks under `index` and `extract` (exit 3, one
line naming the folder), one errors file per output, escaped search TSV, nothing left by a
refusal, one-line weight errors, and only the project's lines on stderr."""

from __future__ import annotations

import contextlib
import gc
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli, write_list
from mirex_vi.io.matrix import read_distance_matrix
from mirex_vi.model.weights import WeightsError, load_weights
from mirex_vi.synth import melody, write_audio

needs_faiss = pytest.mark.skipif(importlib.util.find_spec("faiss") is None,
                                 reason="FAISS (mirex-vi[search]) is not installed")


def tune(shift: int) -> np.ndarray:
    return melody([60 + shift + k % 5 for k in range(12)])


# --- faults 2 and 7: a full disk ----------------------------------------------------------


@pytest.fixture()
def tmpfs(tmp_path):
    """A 1 MiB tmpfs at ``tmp_path/disk`` (root, where mount works); fill it with :func:`fill`."""
    folder = tmp_path / "disk"
    folder.mkdir()
    if os.geteuid() != 0 or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)],
            capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root and mount)")
    try:
        yield folder
    finally:
        gc.collect()  # a traceback kept by the in-process CLI can hold an index's memory map
        subprocess.run(["umount", str(folder)], check=True)


def fill(disk: Path) -> None:
    """Leave no free space on ``disk``."""
    with open(disk / "filler", "wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 4096)


def assert_one_error_line(code: int, out: str, folder: Path) -> str:
    """Exit 3 and a single ``error:`` line naming ``folder``; returns the line."""
    lines = out.strip().splitlines()
    assert code == 3 and len(lines) == 1 and lines[0].startswith("error: "), out
    assert str(folder) in lines[0] and "No space left on device" in lines[0], out
    return lines[0]


def index(*args) -> tuple[int, str]:
    return run_cli("index", *args, "--workers", "1", "--quiet")


@needs_faiss
def test_index_build_on_a_full_disk_exits_3_naming_the_folder(tmp_path, tracks, tiny_package,
                                                              tmpfs):
    fill(tmpfs)
    listed = write_list(tmp_path / "c.txt", [str(t) for t in tracks[:2]])
    code, out = index("build", listed, tmpfs / "idx", "--weights", tiny_package,
                      "--cache", tmp_path / "cache")
    assert_one_error_line(code, out, tmpfs / "idx")
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 2  # the finished work is kept
    assert sorted(p.name for p in (tmpfs / "idx").iterdir()) == [".lock"]


@needs_faiss
def test_index_add_on_a_full_disk_exits_3_and_keeps_the_index(tmp_path, tracks, tiny_package,
                                                              tmpfs):
    idx = tmpfs / "idx"
    code, out = index("build", write_list(tmp_path / "a.txt", [str(tracks[0])]), idx,
                      "--weights", tiny_package, "--cache", tmp_path / "cache")
    assert code == 0, out
    before = {p.name: p.read_bytes() for p in idx.iterdir()}
    fill(tmpfs)
    code, out = index("add", idx, write_list(tmp_path / "b.txt", [str(t) for t in tracks[1:3]]),
                      "--cache", tmp_path / "cache")
    assert_one_error_line(code, out, idx)
    assert {p.name: p.read_bytes() for p in idx.iterdir()} == before
    assert run_cli("index", "info", idx)[1].count("tracks: 1\n") == 1


@needs_faiss
def test_index_merge_on_a_full_disk_exits_3(tmp_path, tracks, tiny_package, tmpfs):
    code, out = index("build", write_list(tmp_path / "a.txt", [str(tracks[0])]), tmp_path / "a",
                      "--weights", tiny_package)
    assert code == 0, out
    fill(tmpfs)
    code, out = run_cli("index", "merge", tmpfs / "m", tmp_path / "a", "--quiet")
    assert_one_error_line(code, out, tmpfs / "m")
    assert not (tmpfs / "m" / "index.json").exists()


@needs_faiss
def test_an_index_folder_that_cannot_be_made_is_one_line(tmp_path, tracks, tiny_package):
    """It ended in a traceback (exit 1) from ``mkdir``."""
    (tmp_path / "plain").write_text("a file\n")
    code, out = index("build", write_list(tmp_path / "a.txt", [str(tracks[0])]),
                      tmp_path / "plain" / "idx", "--weights", tiny_package)
    assert code == 2 and out.strip().splitlines() == [
        f"error: {tmp_path / 'plain' / 'idx'}: cannot create the index folder "
        f"({tmp_path / 'plain'} is a file, not a folder)"], out


@pytest.mark.parametrize("how", ["layout", "pooled", "converted"])
def test_extract_on_a_full_disk_exits_3_naming_the_folder(tmp_path, tracks, tmpfs, how):
    """It said ``error: [Errno 28] No space left on device`` and exit 2 ("bad input")."""
    listed = write_list(tmp_path / "c.txt", [str(t) for t in tracks[:2]])
    source = ["--list", listed]
    if how == "converted":
        assert run_cli("extract", tmp_path / "layout", *source, "--workers", "1", "--quiet")[0] == 0
        source = ["--from-features", tmp_path / "layout"]
    fill(tmpfs)
    code, out = run_cli("extract", tmpfs / "feats", *source,
                        *([] if how == "layout" else ["--pooled", "u8"]), "--workers", "1",
                        "--quiet")
    line = assert_one_error_line(code, out, tmpfs / "feats")
    assert "rerun" in line
    assert not [p for p in (tmpfs / "feats").rglob("*") if p.is_file()]


# --- fault 6: one errors file per output --------------------------------------------------


def test_distinct_outputs_in_one_workdir_keep_distinct_errors_files(tmp_path, tracks, tiny_package):
    """``A/out.txt`` and ``B/out.txt`` shared ``WORKDIR/out.txt.errors.tsv``: B's run emptied
    the file A's message named."""
    missing = tmp_path / "missing.wav"
    logs = {}
    for run, bad in (("A", missing), ("B", None)):
        (tmp_path / run).mkdir()
        listed = write_list(tmp_path / f"{run}.txt",
                            [str(t) for t in tracks[:2]] + ([str(bad)] if bad else []))
        code, out = run_cli("identify", listed, listed, tmp_path / run / "out.txt", "--weights",
                            tiny_package, "--workers", "1", "--quiet", "--workdir", tmp_path / "w")
        assert code == 0, out
        logs[run] = [Path(m) for m in re.findall(r"see (\S+\.errors\.tsv)$", out, re.M)]
    [log_a], [] = logs["A"], logs["B"]
    assert log_a.parent == tmp_path / "w"
    assert log_a.read_text().splitlines()[1:] == [f"{missing}\tfile not found"]


# --- fault 8: escaped TSV ------------------------------------------------------------------


def unescape(field: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"t": "\t", "n": "\n", "r": "\r"}.get(m[1], m[1]), field)


@needs_faiss
def test_tsv_escapes_tab_newline_and_backslash():
    from mirex_vi.search.query import Hit, QueryResult, write_tsv

    hits = [Hit(1, "/m/new\nline.wav", 0.0), Hit(2, "/m/back\\slash\r.wav", 0.5)]
    rows = []

    class Out:
        write = rows.append

    write_tsv([QueryResult("/q/a\tb.wav", hits)], Out)
    lines = "".join(rows).splitlines()
    assert [line.split("\t") for line in lines] == [
        ["/q/a\\tb.wav", "1", "/m/new\\nline.wav", "0.000000"],
        ["/q/a\\tb.wav", "2", "/m/back\\\\slash\\r.wav", "0.500000"]]
    assert [unescape(f) for f in lines[1].split("\t")[::2]] == ["/q/a\tb.wav", "/m/back\\slash\r.wav"]


IDS = ["aaaaaaaaaa1", "bbbbbbbbbb1"]


def metadata(tmp_path: Path, root: Path) -> Path:
    """Light metadata of one clique of two versions, their audio under ``root``."""
    for n, yid in enumerate(IDS):
        write_audio(root / "audio" / yid[:2] / f"{yid}.flac", tune(n))
    meta = tmp_path / "set.json"
    meta.write_text(json.dumps(
        {"C-1": [{"version_id": f"V-{n}", "youtube_id": yid} for n, yid in enumerate(IDS)]}))
    return meta


@needs_faiss
def test_search_rows_stay_rows_whatever_the_names(tmp_path, tiny_package):
    root = tmp_path / "new\nline root"
    code, out = index("build", metadata(tmp_path, root), tmp_path / "idx", "--weights",
                      tiny_package, "--audio-root", root)
    assert code == 0, out
    query = write_audio(tmp_path / "odd\tname \\ here.wav", tune(0))
    code, out = run_cli("search", tmp_path / "idx", query, "--workers", "1", "--quiet")
    assert code == 0, out
    rows = [line.split("\t") for line in out.splitlines()]
    assert [len(r) for r in rows] == [4, 4], out
    assert {unescape(r[0]) for r in rows} == {str(query)}
    assert [unescape(r[2]) for r in rows] == [str(root / "audio" / "aa" / f"{IDS[0]}.flac"),
                                              str(root / "audio" / "bb" / f"{IDS[1]}.flac")]


@needs_faiss
def test_a_tab_in_an_indexed_path_is_refused(tmp_path, tiny_package):
    """A TAB in a metadata path split its track table row: every search then failed."""
    root = tmp_path / "tab\troot"
    code, out = index("build", metadata(tmp_path, root), tmp_path / "idx", "--weights",
                      tiny_package, "--audio-root", root)
    assert code == 2 and len(out.strip().splitlines()) == 1 and "TAB" in out, out
    assert not (tmp_path / "idx" / "index.json").exists()


# --- fault 9: refusals leave nothing, one-line weight errors -----------------------------------


def repackage(source: Path, folder: Path, edit) -> Path:
    """A copy of the package ``source`` whose config.json ``edit`` changes, sums refreshed."""
    shutil.copytree(source, folder)
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))
    sums = [f"{hashlib.sha256((folder / n).read_bytes()).hexdigest()}  {n}"
            for n in ("model.safetensors", "config.json")]
    (folder / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    return folder


def wrong_dim(config: dict) -> None:
    config["model"]["embedding_dim"] *= 4


def test_a_wrong_embedding_dim_is_one_line(tmp_path, tiny_package):
    folder = repackage(tiny_package, tmp_path / "pkg", wrong_dim)
    with pytest.raises(WeightsError) as err:
        load_weights(folder)
    assert "\n" not in str(err.value) and "proj.lin.weight" in str(err.value), err.value


@pytest.mark.parametrize("refusal", ["device", "config", "embedding_dim"])
def test_a_refusal_before_the_work_creates_nothing(tmp_path, tracks, tiny_package, refusal):
    package = tiny_package
    extra = []
    if refusal == "device":
        extra = ["--device", "cuda:99"]  # not there, with or without CUDA
    elif refusal == "config":
        package = repackage(tiny_package, tmp_path / "pkg", lambda c: c.pop("features"))
    else:
        package = repackage(tiny_package, tmp_path / "pkg", wrong_dim)
    listed = write_list(tmp_path / "c.txt", [str(t) for t in tracks[:2]])
    before = sorted(tmp_path.rglob("*"))
    for workdir in ([], ["--workdir", tmp_path / "new" / "deeper"]):
        code, out = run_cli("identify", listed, listed, tmp_path / "out.txt", "--weights",
                            package, "--workers", "1", "--quiet", *extra, *workdir)
        assert code == 2 and len(out.strip().splitlines()) == 1, out
        assert sorted(tmp_path.rglob("*")) == before


# --- fault 9: only the project's lines on stderr ------------------------------------------------


PROJECT_LINE = re.compile(r"^(error: |warning: |info: |skipped |wrote |embed: )")


def foreign_lines(stderr: str) -> list[str]:
    """The lines of ``stderr`` that are not the project's (progress bars end in ``\\r``),
    and the project's that do not start a line (written after a progress bar)."""
    lines = [line.strip() for line in re.split(r"[\r\n]+", stderr)]
    return [line for line in lines if line and not PROJECT_LINE.match(line)] + re.findall(
        r"\S(?:warning: |error: |skipped |wrote ).*", stderr)


def cli(*args: str | Path, script: str = "") -> subprocess.CompletedProcess:
    """``mirex-vi ARGS`` in a fresh interpreter, after ``script`` (e.g. a patch)."""
    code = f"import sys\n{script}\nfrom mirex_vi.cli import main\nsys.exit(main())"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=300)


def test_library_warnings_become_project_lines(tmp_path, tracks, tiny_package):
    """A library's ``UserWarning`` in this process printed its file, line and source line."""
    patch = ("import warnings\n"
             "import mirex_vi.features.workers as w\n"
             "real = w.checked_cqt\n"
             "def noisy(samples, cfg):\n"
             "    warnings.warn('n_fft=256 is too large for input signal of length=22')\n"
             "    return real(samples, cfg)\n"
             "w.checked_cqt = noisy")
    listed = write_list(tmp_path / "c.txt", [str(t) for t in tracks[:2]])
    done = cli("identify", listed, listed, tmp_path / "out.txt", "--weights", tiny_package,
               "--workers", "1", script=patch)
    assert done.returncode == 0, done.stderr
    assert not foreign_lines(done.stderr), done.stderr
    assert f"warning: {tracks[0]}: n_fft=256 is too large for input signal of length=22\n" \
        in done.stderr  # the track's own warning line


def test_an_odd_list_leaves_only_project_lines_on_stderr(tmp_path, tracks, tiny_package):
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg makes the MP3")
    mp3 = tmp_path / "garbled.mp3"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(tracks[0]), "-b:a", "64k", str(mp3)],
                   check=True)
    data = bytearray(mp3.read_bytes())
    rng = np.random.default_rng(0)
    start = len(data) // 3
    data[start : start + 2000 : 7] = rng.integers(0, 256, len(range(start, start + 2000, 7)),
                                                  dtype=np.uint8).tobytes()
    mp3.write_bytes(bytes(data))
    short = write_audio(tmp_path / "short.wav", tune(0)[:22])
    listed = write_list(tmp_path / "c.txt", [str(tracks[1]), str(mp3), str(short)])
    for workers in ("1", "2"):
        done = cli("identify", listed, listed, tmp_path / f"out{workers}.txt", "--weights",
                   tiny_package, "--workers", workers)
        assert done.returncode == 0, done.stderr
        assert not foreign_lines(done.stderr), done.stderr
        assert read_distance_matrix(tmp_path / f"out{workers}.txt").distances.shape == (3, 3)
