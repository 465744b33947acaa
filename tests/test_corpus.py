"""Tests of mirex_vi.corpus: the synthetic cover corpus and the demo collection.

Rendering tests need fluidsynth, ffmpeg and the training soundfonts (``tools/setup.sh``
installs them) and ``pip install mirex-vi[corpus]`` (music21); without them they are skipped
with that reason. The version-2 features have their own tests in test_corpus_features.py.
"""
from __future__ import annotations

import importlib.util
import json
import os
import hashlib
import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from mirex_vi.cli import main as cli_main
from mirex_vi.corpus.arrangement import KICK, bar_chords, quarters_to_seconds
from mirex_vi.corpus.catalogue import corpus_root, list_candidates, youtube_id
from mirex_vi.corpus.driver import (CorpusSpec, build_corpus, check_generator_version,
                                    split_cliques, write_json)
from mirex_vi.corpus.midi import midi_bytes
from mirex_vi.corpus.scores import part_notes
from mirex_vi.corpus.versions import GENERATOR_VERSION
from render_support import needs_music21, needs_render

REPO = Path(__file__).resolve().parents[1]

TINY = CorpusSpec(n_works=3, versions_per_work=2, seconds=4.0, seed=5, jobs=1, quiet=True,
            collections=("essenFolksong", "bach"))
NAME = "Synth-VI-YT"
YID = re.compile(r"^[A-Za-z0-9_-]{11}$")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpus")
    build_corpus(out, TINY)
    return out


def _light(out: Path, suffix: str = "") -> dict:
    return json.loads((out / f"{NAME}-light.json{suffix}").read_text())


def test_youtube_ids_are_deterministic_and_well_formed():
    a = youtube_id(27, "bach/bwv66.6.mxl", 0)
    assert YID.match(a)
    assert a == youtube_id(27, "bach/bwv66.6.mxl", 0)
    assert len({a, youtube_id(28, "bach/bwv66.6.mxl", 0), youtube_id(27, "bach/bwv66.6.mxl", 1)}) == 3


@pytest.mark.parametrize("n", [1, 2, 3, 10, 101])
def test_split_is_a_partition_of_cliques(n):
    ids = [f"C-{i:07d}" for i in range(n)]
    splits = split_cliques(ids, (0.8, 0.1, 0.1), seed=3)
    parts = [set(p) for p in splits.values()]
    assert sum(len(p) for p in parts) == n and set().union(*parts) == set(ids)
    if n >= 3:
        assert all(splits[name] for name in ("train", "val", "test"))
    assert splits == split_cliques(ids, (0.8, 0.1, 0.1), seed=3)


def test_kept_cliques_stay_in_their_split():
    ids = [f"C-{i:07d}" for i in range(1, 41)]
    kept = {"C-0000001": "test", "C-0000002": "val", "C-0000003": "train", "C-0000099": "test"}
    splits = split_cliques(ids, (0.8, 0.1, 0.1), seed=3, kept=kept)
    assert "C-0000001" in splits["test"] and "C-0000002" in splits["val"]
    assert "C-0000003" in splits["train"]
    assert sorted(sum(splits.values(), [])) == ids  # a kept id that is gone is not added
    assert (len(splits["val"]), len(splits["test"])) == (1 + 4, 1 + 4)  # 37 new cliques cut 80/10/10


def test_midi_file_layout():
    events = np.array([[0.0, 0.5, 60, 0], [0.5, 0.5, 64, 1], [0.25, 0.1, KICK, -1]])
    data = midi_bytes(events, [0, 40], [80, 70], [64, 64], duration_s=2.0)
    assert data[:4] == b"MThd" and data[14:18] == b"MTrk"
    assert int.from_bytes(data[18:22], "big") == len(data) - 22
    assert data.endswith(b"\xff\x2f\x00")
    assert bytes([0x99, KICK]) in data  # drums on channel 10
    assert bytes([0x91, 64]) in data  # part 1 on channel 2


def test_transposition_and_tempo_time_map():
    q = np.array([0.0, 1.0, 4.0])
    assert np.allclose(quarters_to_seconds(q, 120.0, 0.0, 4.0), [0.0, 0.5, 2.0])
    faster = quarters_to_seconds(q, 120.0, 0.2, 4.0)  # speeds up: ends earlier
    assert faster[-1] < 2.0 and np.all(np.diff(faster) > 0)


def test_bar_chords_find_triads():
    notes = np.array([[0, 1, 60, 0], [1, 1, 64, 0], [2, 2, 67, 0],  # bar 1: C major
                      [4, 2, 57, 0], [6, 1, 60, 0], [7, 1, 64, 0]])  # bar 2: A minor
    assert bar_chords(notes, np.array([0.0, 4.0]), 8.0) == [(0, "maj"), (9, "min")]


@needs_music21
def test_ties_merge_only_equal_pitches():
    from music21 import note, stream, tie

    part = stream.Part()
    for name, ql, kind in [("C4", 1.0, "start"), ("C4", 0.5, "stop"),
                           ("D4", 1.0, "start"), ("E4", 0.5, "stop")]:
        n = note.Note(name, quarterLength=ql)
        n.tie = tie.Tie(kind)
        part.append(n)
    rows = part_notes(part, 0)
    assert rows == [[0.0, 1.5, 60, 0], [1.5, 1.0, 62, 0], [2.5, 0.5, 64, 0]]  # ABC slurs parse as ties


@needs_music21
def test_pools_are_disjoint_and_never_use_ryans_mammoth():
    root = corpus_root()
    train = {r.key for r in list_candidates(root, "train")}
    demo = {r.key for r in list_candidates(root, "demo")}
    assert train and demo and not train & demo
    assert not any("ryansMammoth" in k for k in train | demo)


@needs_render
def test_corpus_format(tiny):
    light = _light(tiny)
    assert sorted(light) == ["C-0000001", "C-0000002", "C-0000003"]
    version_ids = [v["version_id"] for vs in light.values() for v in vs]
    assert len(set(version_ids)) == len(version_ids) == 6
    for versions in light.values():
        assert len(versions) == 2
        for v in versions:
            assert YID.match(v["youtube_id"]) and v["track_title"]
            path = tiny / "audio" / v["youtube_id"][:2] / f"{v['youtube_id']}.flac"
            assert path.exists() and v["audio_path"] == path.relative_to(tiny).as_posix()
            audio, sr = sf.read(path, always_2d=True)
            assert sr == v["sample_rate"] and audio.shape[1] == v["channels"]
            assert abs(len(audio) / sr - v["duration_s"]) < 0.01
            assert np.sqrt(np.mean(audio**2)) > 1e-3  # not silent
    lines = [json.loads(x) for x in (tiny / f"{NAME}.jsonl").read_text().splitlines()]
    assert [row["clique_id"] for row in lines] == sorted(light)
    assert all(row["versions"][0]["youtube_video"][0]["url"] for row in lines)


@needs_render
def test_splits_cover_all_cliques_disjointly(tiny):
    light = _light(tiny)
    parts = [_light(tiny, f".{s}") for s in ("train", "val", "test")]
    assert sum(len(p) for p in parts) == len(light)
    assert set().union(*map(set, parts)) == set(light)
    for part in parts:
        assert all(part[c] == light[c] for c in part)


@needs_render
def test_versions_of_a_work_differ(tiny):
    for versions in _light(tiny).values():
        a, b = versions
        assert a["source"] == b["source"]
        choices = [(v["transpose"], v["tempo_factor"], v["programs"]) for v in (a, b)]
        assert choices[0] != choices[1]
        wave_a, _ = sf.read(tiny / a["audio_path"])
        wave_b, _ = sf.read(tiny / b["audio_path"])
        assert wave_a.shape != wave_b.shape


@needs_render
def test_same_seed_same_corpus_whatever_the_jobs(tiny, tmp_path):
    build_corpus(tmp_path, replace(TINY, jobs=2))
    assert _light(tmp_path) == _light(tiny)
    for versions in _light(tiny).values():
        for v in versions:
            again, first = (sf.read(d / v["audio_path"])[0] for d in (tmp_path, tiny))
            np.testing.assert_array_equal(again, first)


@needs_render
def test_growing_a_corpus_keeps_its_cliques_splits_and_audio(tiny, tmp_path):
    grown = tmp_path / "grown"
    shutil.copytree(tiny, grown)
    before = {p: p.stat().st_mtime_ns for p in grown.rglob("*.flac")}
    build_corpus(grown, replace(TINY, n_works=5))
    light = _light(grown)
    assert len(light) == 5 and all(light[c] == v for c, v in _light(tiny).items())
    for split in ("train", "val", "test"):
        old, new = _light(tiny, f".{split}"), _light(grown, f".{split}")
        assert old.keys() <= new.keys()
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())  # not rendered again


@needs_render
def test_growing_with_other_options_is_refused_before_rendering(tiny, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(tiny, other)
    n_files = len(list(other.rglob("*.flac")))
    with pytest.raises(ValueError, match="other options"):
        build_corpus(other, replace(TINY, seed=6))
    assert len(list(other.rglob("*.flac"))) == n_files and _light(other) == _light(tiny)


@needs_render
def test_demo_lists(tmp_path):
    cliques = build_corpus(tmp_path, replace(TINY, n_works=2, seed=9, demo=True))
    root = corpus_root()
    demo_keys = {r.key for r in list_candidates(root, "demo")}
    assert all(v["source"].removeprefix("music21:") in demo_keys for vs in cliques.values() for v in vs)
    collection = (tmp_path / "collection.txt").read_text().splitlines()
    assert collection == (tmp_path / "queries.txt").read_text().splitlines()
    labels = dict(line.split("\t") for line in (tmp_path / "labels.tsv").read_text().splitlines())
    assert sorted(labels) == sorted(collection) and len(collection) == 4
    assert set(labels.values()) == set(cliques)
    for rel in collection:
        assert not Path(rel).is_absolute() and (tmp_path / rel).exists()
        assert sf.info(tmp_path / rel).samplerate == 22050 and sf.info(tmp_path / rel).channels == 1


def test_records_without_a_generator_version_count_as_version_1(tmp_path):
    write_json(tmp_path / f"{NAME}-light.json", {"C-0000001": [{"version_id": "V-0000001"}]})
    assert GENERATOR_VERSION == 2
    with pytest.raises(ValueError, match="generator version 1, this is version 2; grow it with "
                                         "commit 0eedd9a"):
        check_generator_version(tmp_path, NAME)


@needs_render
def test_growing_a_folder_of_another_generator_version_is_refused_before_rendering(tiny, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(tiny, other)
    light = _light(other)
    assert {v["generator_version"] for vs in light.values() for v in vs} == {GENERATOR_VERSION}
    for versions in light.values():
        for v in versions:
            v["generator_version"] = GENERATOR_VERSION + 1
    write_json(other / f"{NAME}-light.json", light)
    n_files = len(list(other.rglob("*.flac")))
    with pytest.raises(ValueError, match=f"generator version {GENERATOR_VERSION + 1}, this is "
                                         f"version {GENERATOR_VERSION}"):
        build_corpus(other, replace(TINY, n_works=5))
    assert len(list(other.rglob("*.flac"))) == n_files and _light(other) == light


def test_write_json_leaves_no_temporary_on_failure(tmp_path):
    target = tmp_path / "x.json"
    with pytest.raises(TypeError):
        write_json(target, {"bad": object()})
    assert list(tmp_path.iterdir()) == []


@needs_render
def test_a_run_leaves_no_temporaries_and_sweeps_stale_ones(tiny, tmp_path):
    assert not list(tiny.rglob("*.tmp"))
    again = tmp_path / "again"
    shutil.copytree(tiny, again)
    flac = next(again.rglob("*.flac"))
    stale = flac.with_name(f".{flac.name}.x1y2z3.tmp")  # what a SIGKILLed atomic_open leaves
    stale.write_bytes(b"partial")
    os.utime(stale, (stale.stat().st_atime - 7200, stale.stat().st_mtime - 7200))
    build_corpus(again, TINY)
    assert not list(again.rglob("*.tmp")) and _light(again) == _light(tiny)


@needs_render
def test_cli_command_renders_what_build_corpus_renders(tiny, tmp_path):
    out = tmp_path / "cli"
    result = CliRunner().invoke(cli_main, [
        "corpus", str(out), "--works", "3", "--versions-per-work", "2", "--seconds", "4",
        "--seed", "5", "--jobs", "1", "--quiet", "--collections", "essenFolksong,bach"])
    assert result.exit_code == 0, result.output
    assert _light(out) == _light(tiny)


def test_cli_refuses_demo_and_ood_together(tmp_path):
    result = CliRunner().invoke(cli_main, ["corpus", str(tmp_path / "out"), "--demo", "--ood"])
    assert result.exit_code == 2 and "choose one" in result.output


def test_cli_without_music21_says_how_to_install_it(tmp_path, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "music21" else real_find_spec(name, *a))
    result = CliRunner().invoke(cli_main, ["corpus", str(tmp_path / "out")])
    assert result.exit_code == 2 and "pip install mirex-vi[corpus]" in result.output
    assert not (tmp_path / "out").exists()


@needs_music21
def test_cli_out_dir_under_a_file_is_one_error_line(tmp_path):
    (tmp_path / "file").write_text("x")  # mkdir's NotADirectoryError was a traceback
    result = CliRunner().invoke(cli_main, ["corpus", str(tmp_path / "file" / "out"), "--works",
                                           "1", "--jobs", "1", "--quiet"])
    assert result.exit_code == 2 and "cannot write the corpus (Not a directory" in result.output
    assert isinstance(result.exception, SystemExit)


@pytest.mark.parametrize("split", ["0.8,0.2", "0.5,0.3,0.3", "a,b,c"])
def test_cli_rejects_a_bad_split(tmp_path, split):
    result = CliRunner().invoke(cli_main, ["corpus", str(tmp_path / "out"), "--split", split])
    assert result.exit_code == 2 and "three fractions" in result.output


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@needs_render
def test_demo_renders_as_generator_version_1_did(tmp_path):
    """The bundled demo (rendered by version 1) is what --demo renders today, byte for byte."""
    demo = REPO / "examples" / "demo"
    cliques = build_corpus(tmp_path, CorpusSpec(n_works=2, versions_per_work=3, seconds=20.0,
                                                seed=2024, quiet=True, demo=True, name="demo"))
    bundled = json.loads((demo / "demo-light.json").read_text())
    assert [c for c in bundled][:2] == list(cliques)
    for clique, versions in cliques.items():
        assert [v["youtube_id"] for v in versions] == [v["youtube_id"] for v in bundled[clique]]
        for v in versions:
            assert _sha256(tmp_path / v["audio_path"]) == _sha256(demo / v["audio_path"])


@needs_render
def test_a_corpus_whose_renders_all_fail_writes_no_metadata(tmp_path, monkeypatch):
    import mirex_vi.corpus.driver as driver

    monkeypatch.setattr(driver, "render_version", lambda task: None)
    with pytest.raises(RuntimeError, match="no work kept two rendered versions"):
        build_corpus(tmp_path, TINY)
    assert not list(tmp_path.glob(f"{NAME}*"))


@needs_music21
@pytest.mark.parametrize("args, message", [
    (["--versions-per-work", "1"], "1 is not in the range x>=2"),
    (["--seconds", "0"], "0.0 is not in the range x>=1"),
    (["--collections", "bach,nosuch"], "collections nosuch: not among the generator's"),
    (["--collections", "oneills1850"], "oneills1850 is held out of training corpora"),
])
def test_cli_refuses_options_that_would_render_an_empty_corpus(tmp_path, args, message):
    result = CliRunner().invoke(cli_main, ["corpus", str(tmp_path / "out"), "--works", "2", *args])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "out").exists()
