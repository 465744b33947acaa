"""Hostile calls refused before any audio is read (exit 2, inputs intact), and list files
read exactly as written (issue #18, items 1, 4 and 7)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest

from conftest import leave_temporaries, run_cli, write_list
from mirex_vi.inference.identify import errors_file
from mirex_vi.io.lists import read_errors, write_errors
from mirex_vi.io.matrix import read_distance_matrix
from mirex_vi.synth import melody, write_audio


def call(collection, queries, output, package, *extra):
    return run_cli("identify", collection, queries, output, "--weights", package,
                   "--workers", "1", "--quiet", *extra)


def assert_refused_before_audio(code, out, tmp_path, message):
    assert code == 2 and message in out and "Traceback" not in out, out
    assert not list(tmp_path.rglob("*.npy")), "audio was processed"


@pytest.mark.parametrize("target", ["collection", "queries", "track", "weights"])
def test_output_that_is_an_input_is_refused_and_left_intact(tmp_path, tracks, tiny_package, target):
    collection = write_list(tmp_path / "c.txt", [str(p) for p in tracks[:2]])
    queries = write_list(tmp_path / "q.txt", [str(tracks[0])])
    output = {"collection": collection, "queries": queries, "track": tracks[1],
              "weights": tiny_package / "model.safetensors"}[target]
    before = output.read_bytes()
    code, out = call(collection, queries, output, tiny_package, "--workdir", tmp_path / "w")
    assert_refused_before_audio(code, out, tmp_path, "output is also an input")
    assert output.read_bytes() == before


def test_output_reached_through_another_name_is_still_an_input(tmp_path, tracks, tiny_package):
    collection = write_list(tmp_path / "c.txt", [str(p) for p in tracks[:2]])
    os.link(collection, tmp_path / "hard.txt")
    (tmp_path / "soft.txt").symlink_to(collection)
    for output in ("hard.txt", "soft.txt", "./sub/../c.txt"):
        (tmp_path / "sub").mkdir(exist_ok=True)
        code, out = call(collection, collection, tmp_path / output, tiny_package)
        assert_refused_before_audio(code, out, tmp_path, "output is also an input")
    assert collection.read_text() == "".join(f"{p}\n" for p in tracks[:2])


def test_output_that_is_no_file_name_is_refused(tmp_path, tracks, tiny_package):
    collection = write_list(tmp_path / "c.txt", [str(tracks[0])])
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "stdout").symlink_to(tmp_path / "fifo")  # what /dev/stdout is to a pipe
    (tmp_path / "fd1").symlink_to("/proc/self/fd/1")  # standard output, whatever it is
    cases = {f"{tmp_path}/new/": "ends in '/'", str(tmp_path): "is a folder",
             str(tmp_path / "fifo"): "not a regular file", "/dev/null": "not a regular file",
             str(tmp_path / "stdout"): "not a regular file",
             str(tmp_path / ("y" * 250)): "name too long",  # its temporary has 14 more bytes
             "/dev/stdout": "is a file descriptor", str(tmp_path / "fd1"): "is a file descriptor"}
    for output, message in cases.items():
        code, out = call(collection, collection, output, tiny_package)
        assert_refused_before_audio(code, out, tmp_path, message)
    assert (tmp_path / "stdout").is_symlink() and not (tmp_path / "new").exists()


def test_workdir_equal_to_output_is_refused(tmp_path, tracks, tiny_package):
    collection = write_list(tmp_path / "c.txt", [str(tracks[0])])
    code, out = call(collection, collection, tmp_path / "o.txt", tiny_package,
                     "--workdir", tmp_path / "o.txt")
    assert_refused_before_audio(code, out, tmp_path, "work folder cannot be the output")


def test_output_through_a_link_replaces_its_target_and_keeps_the_link(tmp_path, tracks, tiny_package):
    collection = write_list(tmp_path / "c.txt", [str(tracks[0]), str(tracks[1])])
    (tmp_path / "target.txt").write_text("old")
    (tmp_path / "link.txt").symlink_to(tmp_path / "target.txt")
    code, out = call(collection, collection, tmp_path / "link.txt", tiny_package)
    assert code == 0, out
    assert (tmp_path / "link.txt").is_symlink()
    assert read_distance_matrix(tmp_path / "target.txt").paths == [str(tracks[0]), str(tracks[1])]


def test_a_killed_writers_temporary_beside_the_output_is_swept(tmp_path, tracks, tiny_package):
    collection = write_list(tmp_path / "c.txt", [str(tracks[0])])
    stale, fresh = leave_temporaries(tmp_path / "out")
    stale, fresh = stale.rename(tmp_path / "out" / ".o.txt.k1.tmp"), fresh.rename(tmp_path / "out" / ".o.txt.k2.tmp")
    other = tmp_path / "out" / ".unrelated.k3.tmp"
    other.write_bytes(b"x")
    os.utime(other, (0, 0))
    assert call(collection, collection, tmp_path / "out" / "o.txt", tiny_package)[0] == 0
    assert not stale.exists() and fresh.exists() and other.exists()


def test_runs_sharing_a_workdir_keep_their_own_error_logs(tmp_path, tracks, tiny_package):
    work = tmp_path / "shared"
    for name, bad in (("one.txt", "gone-1.wav"), ("two.txt", "gone-2.wav")):
        collection = write_list(tmp_path / f"c-{name}", [str(tracks[0]), str(tmp_path / bad)])
        assert call(collection, collection, tmp_path / name, tiny_package, "--workdir", work)[0] == 0
    for name, bad in (("one.txt", "gone-1.wav"), ("two.txt", "gone-2.wav")):
        log = errors_file(work, tmp_path / name).read_text().splitlines()
        assert len(log) == 2 and log[1].startswith(str(tmp_path / bad))



def test_errors_file_folds_reasons_and_keeps_undecodable_names(tmp_path):
    track = Path(os.fsdecode(b"/music/caf\xe9.wav"))  # a Latin-1 name: not UTF-8
    write_errors(tmp_path / "e.tsv", [(track, "cannot\n decode\tit ")])
    assert (tmp_path / "e.tsv").read_bytes() == (b"path\treason\n"
                                                 b"/music/caf\xe9.wav\tcannot decode it\n")
    failed = {"x": "too short", os.fsdecode(b"y\xff"): "gone"}
    write_errors(tmp_path / "x.tsv", failed.items(), header=None)
    assert (tmp_path / "x.tsv").read_bytes() == b"x\ttoo short\ny\xff\tgone\n"
    assert read_errors(tmp_path / "x.tsv") == failed and read_errors(tmp_path / "no.tsv") == {}


# --- list files -------------------------------------------------------------------------


def test_bom_crlf_and_line_separators_inside_names(tmp_path, tiny_package):
    """Only \\n ends a line: U+2028, U+0085 and \\f are legal in Linux file names."""
    names = ["a\u2028b.wav", "c\x85d.wav", "e\x0cf.wav", "plain.wav"]
    for i, name in enumerate(names):
        write_audio(tmp_path / name, melody([60 + i, 64, 67, 72] * 4))
    raw = "\ufeff" + "".join(f"{n}\r\n" for n in names)
    (tmp_path / "c.txt").write_bytes(raw.encode("utf-8"))
    write_list(tmp_path / "q.txt", [names[3], names[0]])
    code, out = call(tmp_path / "c.txt", tmp_path / "q.txt", tmp_path / "o.txt", tiny_package)
    assert code == 0 and "skipped" not in out, out
    matrix = read_distance_matrix(tmp_path / "o.txt")
    assert matrix.paths == [str(tmp_path / n) for n in names]
    assert matrix.query_indices == [3, 0]


@pytest.mark.parametrize("content, message", [
    (b"a.wav\nb\x00.wav\n", "line 2: 'b\\x00.wav' contains a NUL byte"),
    (b"\x00" * 64, "line 1: "),
    (b"a.wav\n\n\xff\xfe.wav\n", "line 3: not valid UTF-8"),
], ids=["nul-in-a-line", "all-nul", "not-utf8"])
def test_nul_and_non_utf8_lines_are_named(tmp_path, tiny_package, content, message):
    (tmp_path / "c.txt").write_bytes(content)
    code, out = call(tmp_path / "c.txt", tmp_path / "c.txt", tmp_path / "o.txt", tiny_package)
    assert code == 2 and message in out and "Traceback" not in out, out
    assert not (tmp_path / "o.txt").exists()


def test_list_from_a_pipe_is_read_and_a_folder_is_named(tmp_path, tracks, tiny_package):
    fifo = tmp_path / "list.fifo"  # what <(cat list) and /dev/stdin are
    os.mkfifo(fifo)
    lines = "".join(f"{p}\n" for p in tracks[:2]).encode()
    writer = threading.Thread(target=lambda: fifo.write_bytes(lines), daemon=True)
    writer.start()
    code, out = call(fifo, fifo, tmp_path / "o.txt", tiny_package)
    if writer.is_alive():  # nothing read the pipe: read it here, or the writer waits forever
        fifo.read_bytes()
    writer.join()
    assert code == 0, out
    d = read_distance_matrix(tmp_path / "o.txt").distances
    assert d.shape == (2, 2) and np.all(d[[0, 1], [0, 1]] == 0)
    code, out = call(tmp_path, tmp_path, tmp_path / "o2.txt", tiny_package)
    assert code == 2 and "is a folder, not a list file" in out
