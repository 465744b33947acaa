"""Tests of the real-audio pool (mirex_vi.corpus.pool) and its store of pseudo-cover cliques
(mirex_vi.corpus.real): provenance and licences, the refusal of planetblupi music, splits by
recording, the store against its light JSON, and reruns.

Tiny synthetic recordings stand in for the music packages: a fake ``dpkg -S`` names each
file's package by its folder (``pkgs/<package>/...``), fake copyright files sit under a
temporary doc root, and fake makers of versions (gain changes, a sine rendering) replace
the audio effects and basic-pitch, so a whole build takes seconds.
"""
from __future__ import annotations

import json
import shutil
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from mirex_vi.corpus.pool import (dpkg_packages, group_recordings, licence_of, scan,
                                  segment_bounds, split_of)
from mirex_vi.corpus.real import RealSpec, build_real_store
from mirex_vi.corpus.real_audio import decode
from mirex_vi.corpus.real_cliques import Tools
from mirex_vi.features.pooled import PooledStore
from mirex_vi.io.metadata import read_metadata
from mirex_vi.synth import random_melody, write_audio
from conftest import run_cli

SR = 22050
DEP5 = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/

Files: *
Copyright: 2020 Someone
License: GPL-2+

Files: debian/*
Copyright: 2021 A Packager
License: GPL-3+

Files:
 base/music/special.ogg
 */loud*.wav
Copyright: 2019 A Composer
License: CC-BY-SA-3.0
"""
TEXT_COPYRIGHT = """This package was debianized by A Packager.

The songs are licenced under the terms of the Creative Commons Attribution ShareAlike
licence 3.0: http://creativecommons.org/licenses/by-sa/3.0

The Debian packaging is licensed under the GPL.
"""


def fake_lookup(paths):
    """``dpkg -S`` for files under a ``pkgs/<package>/`` folder; others have no package."""
    return {p: Path(p).parts[Path(p).parts.index("pkgs") + 1] for p in paths
            if "pkgs" in Path(p).parts}


def fake_real_versions(y, sr, rng, other=None, n=3):
    versions = []
    for g in rng.uniform(0.3, 0.9, n):
        audio = y * g + (0.05 * other if other is not None else 0.0)
        versions.append((f"gain {g:.3f}", audio.astype(np.float32)))
    return versions


class FakeTranscriber:
    def notes(self, audio, sr):
        return np.array([[0.5 * i, 0.5 * i + 0.4, 60 + i % 7, 90] for i in range(10)], float)


def fake_load_transcriber():
    return FakeTranscriber()


def fake_render(notes, rng, sample_rate=22050):
    t = np.arange(int(notes[-1, 1] * sample_rate)) / sample_rate
    out = []
    for shift in rng.integers(-3, 4, 2):
        y = sum(np.sin(2 * np.pi * 440 * 2 ** ((k + shift - 69) / 12) * t) * ((t >= a) & (t < b))
                for a, b, k, _ in notes)
        out.append((f"sine, key {shift:+d}", (0.2 * y).astype(np.float32)))
    return out


FAKE_TOOLS = Tools(fake_real_versions, fake_load_transcriber, fake_render)
SPEC = RealSpec(segment_seconds=(2.0, 4.0), fractions=(0.34, 0.33, 0.33), quiet=True)


def _doc_root(tmp_path: Path, packages: dict[str, str]) -> Path:
    for package, text in packages.items():
        (tmp_path / "doc" / package).mkdir(parents=True, exist_ok=True)
        (tmp_path / "doc" / package / "copyright").write_text(text, encoding="utf-8")
    return tmp_path / "doc"


def _song(path: Path, seed: int, seconds: float) -> Path:
    return write_audio(path, random_melody(seed, seconds))


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> tuple[Path, Path]:
    """``(folder, doc root)``: eight recordings of three packages (one a Frets on Fire song
    folder with two stems), a short file, a text file and a file of no package."""
    folder = tmp_path_factory.mktemp("pool")
    root = folder / "pkgs"
    for i in range(5):
        _song(root / "game-music" / f"track{i}.wav", i, 4.0 + 0.5 * i)
    _song(root / "game-music" / "loud theme.wav", 10, 5.0)
    _song(root / "other-music" / "a.wav", 11, 4.0)
    song = root / "fof-songs" / "songs" / "Some song"
    _song(song / "song.ogg", 12, 6.0)
    _song(song / "guitar.ogg", 13, 6.0)
    (song / "notes.mid").write_bytes(b"MThd")
    _song(root / "other-music" / "jingle.wav", 14, 1.0)
    (root / "other-music" / "readme.txt").write_text("not audio")
    _song(folder / "loose" / "mine.wav", 15, 6.0)
    doc = _doc_root(folder, {"game-music": DEP5, "other-music": TEXT_COPYRIGHT,
                             "fof-songs": TEXT_COPYRIGHT})
    return folder, doc


def test_pool_records_a_source_and_a_licence_for_every_file(pool):
    folder, doc = pool
    files, skipped = scan([folder / "pkgs", folder / "loose"], 2.0, fake_lookup, doc)
    assert len(files) == 9
    for f in files:
        assert f.package and f.licence and Path(f.copyright).is_file()
        assert len(f.sha256) == 64 and f.duration_s >= 2.0
    licences = {Path(f.path).name: f.licence for f in files}
    assert licences["track0.wav"] == "GPL-2+"  # Files: *
    assert licences["loud theme.wav"] == "CC-BY-SA-3.0"  # the last matching stanza wins
    assert licences["a.wav"] == "CC-BY-SA-3.0 (from the text)"
    reasons = {Path(p).name: why for p, why in skipped}
    assert "shorter than a segment" in reasons["jingle.wav"]
    assert reasons["readme.txt"].startswith("not audio")
    assert reasons["notes.mid"].startswith("not audio")
    assert reasons["mine.wav"].startswith("not from a Debian package")


def test_planetblupi_music_is_refused(pool, tmp_path):
    folder, doc = pool
    _song(tmp_path / "pkgs" / "planetblupi-music-ogg" / "music.wav", 20, 3.0)
    with pytest.raises(ValueError, match="reserved for independent evaluation"):
        scan([folder / "pkgs", tmp_path / "pkgs"], 2.0, fake_lookup, doc)
    with pytest.raises(ValueError, match="planetblupi"):  # whatever its package says
        scan([tmp_path / "pkgs"], 2.0, lambda paths: dict.fromkeys(paths, "game-music"), doc)


def test_the_command_refuses_planetblupi_music_before_any_work(tmp_path):
    _song(tmp_path / "music" / "planetblupi-music-ogg" / "x.wav", 1, 3.0)
    code, output = run_cli("corpus-real", tmp_path / "out", "--real-audio", tmp_path / "music")
    assert code == 2 and "error:" in output and "reserved for independent evaluation" in output
    assert not (tmp_path / "out").exists()


def test_the_command_says_when_no_file_is_from_a_package(tmp_path):
    _song(tmp_path / "music" / "x.wav", 1, 40.0)
    code, output = run_cli("corpus-real", tmp_path / "out", "--real-audio", tmp_path / "music",
                           "--renders", "0")
    assert code == 2 and "error: no recordings of at least 30 s from a Debian package" in output


def test_dep5_licence_of_an_archive_member_is_matched_beside_its_archive(tmp_path):
    doc = _doc_root(tmp_path, {"game-music": DEP5})
    member = "/usr/share/games/x/base/0music.pk3!music/special.ogg"
    assert licence_of("game-music", member, doc)[0] == "CC-BY-SA-3.0"
    assert licence_of("game-music", "/usr/share/games/x/base/other.ogg", doc)[0] == "GPL-2+"
    with pytest.raises(ValueError, match="no readable"):
        licence_of("missing-package", member, doc)


def test_archive_members_are_files_of_the_pool(tmp_path):
    wav = _song(tmp_path / "src" / "inside.wav", 3, 4.0)
    archive = tmp_path / "pkgs" / "game-music" / "0music.pk3"
    archive.parent.mkdir(parents=True)
    with zipfile.ZipFile(archive, "w") as z:
        z.write(wav, "music/inside.wav")
        z.writestr("maps/readme.txt", "no audio")
    doc = _doc_root(tmp_path, {"game-music": DEP5})
    files, _ = scan([tmp_path / "pkgs"], 2.0, fake_lookup, doc)
    assert [f.path for f in files] == [f"{archive}!music/inside.wav"]
    np.testing.assert_allclose(decode(files[0].path, SR), decode(str(wav), SR))


def test_raw_unsigned_8_bit_stereo_decodes_to_mono(tmp_path):
    raw = tmp_path / "song.raw"
    np.array([[128, 128], [255, 1], [0, 0]], np.uint8).tofile(raw)
    np.testing.assert_allclose(decode(str(raw), SR, (SR, 2)), [0.0, 0.0, -1.0], atol=1e-6)


@pytest.mark.parametrize("n_seconds", [1.9, 2.0, 3.5, 4.5, 13.0, 60.0])
def test_segments_are_consecutive_and_within_their_lengths(n_seconds):
    n = int(n_seconds * SR)
    bounds = segment_bounds(n, SR, (2.0, 4.0), np.random.default_rng(1))
    assert all(b - a <= 4 * SR + 1 and b - a >= 2 * SR for a, b in bounds)
    assert all(b0 == a1 for (_, b0), (a1, _) in zip(bounds, bounds[1:]))
    assert (bounds[0][0] if bounds else 0) == 0
    assert n - (bounds[-1][1] if bounds else 0) < 2 * SR  # only a short tail is dropped


@pytest.fixture(scope="module")
def built(pool, tmp_path_factory) -> tuple[Path, dict]:
    folder, doc = pool
    out = tmp_path_factory.mktemp("built") / "store"
    return out, build_real_store(out, [folder / "pkgs"], SPEC, FAKE_TOOLS, fake_lookup, doc)


def test_a_song_folder_is_one_recording_and_gives_a_mix_without_its_guitar(pool, built):
    folder, doc = pool
    files, _ = scan([folder / "pkgs"], 2.0, fake_lookup, doc)
    recordings, duplicates = group_recordings(files)
    assert len(recordings) == 8 and not duplicates
    song = next(r for r in recordings if len(r.files) > 1)
    assert {f.stem for f in song.files} == {"song", "guitar"} and song.has_guitar_stem
    song_cliques = [vs for vs in built[1].values() if vs[0]["recording"] == song.key]
    assert song_cliques and all(vs[-1]["kind"] == "mix without the guitar stem"
                                for vs in song_cliques)
    assert all(len(vs) == 7 for vs in song_cliques)  # real, 3 fx, 2 renders, backing


def _splits(out: Path) -> dict[str, dict]:
    return {s: json.loads((out / f"Real-VI-YT-light.json.{s}").read_text())
            for s in ("train", "val", "test")}


def test_no_clique_and_no_recording_straddles_two_splits(built):
    out, cliques = built
    splits = _splits(out)
    where: dict[str, list[str]] = {}
    for split, part in splits.items():
        for clique in part:
            where.setdefault(clique, []).append(split)
    assert sorted(where) == sorted(cliques) and all(len(s) == 1 for s in where.values())
    by_recording: dict[str, set[str]] = {}
    for clique, versions in cliques.items():
        for v in versions:
            by_recording.setdefault(v["recording"], set()).add(where[clique][0])
            assert v["split"] == where[clique][0] == split_of(v["recording"], SPEC.fractions)
    assert all(len(s) == 1 for s in by_recording.values())
    assert sum(bool(part) for part in splits.values()) >= 2  # the test can fail


def test_the_store_matches_its_light_json(built):
    out, cliques = built
    store = PooledStore.open(out)
    ids = [v["youtube_id"] for vs in cliques.values() for v in vs]
    assert len(ids) == len(set(ids)) and set(store.entries) == set(ids)
    for yid in ids:
        assert store.pooled(yid).shape[1] == 84 and store.pooled(yid).shape[0] >= 1
    assert read_metadata(out / "Real-VI-YT-light.json").keys() == cliques.keys()
    for versions in cliques.values():
        assert versions[0]["kind"] == "real" and len(versions) >= 2
        assert {"source", "licence", "file", "recording", "segment"} <= versions[0].keys()
    assert len(cliques) >= 8


def test_the_manifest_has_a_row_per_file(built):
    out, cliques = built
    lines = (out / "Real-VI-YT-pool.tsv").read_text().splitlines()
    header, rows = lines[0].split("\t"), [line.split("\t") for line in lines[1:]]
    assert header[:6] == ["file", "package", "licence", "duration_s", "sha256", "segments"]
    assert len(rows) == 9  # eight recordings, one with two stems
    assert sum(int(r[5]) for r in rows if not r[0].endswith("guitar.ogg")) == len(cliques)
    assert all(r[1] and r[2] for r in rows)
    skipped = (out / "Real-VI-YT-skipped.tsv").read_text()
    assert "jingle.wav" in skipped and "readme.txt" in skipped


def _contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def test_a_rerun_gives_identical_output_and_resumes(built, pool, tmp_path):
    out, cliques = built
    folder, doc = pool
    first = _contents(out)
    again = tmp_path / "again"
    assert build_real_store(again, [folder / "pkgs"], replace(SPEC, jobs=2), FAKE_TOOLS,
                            fake_lookup, doc) == cliques
    assert _contents(again) == first
    assert build_real_store(out, [folder / "pkgs"], SPEC, FAKE_TOOLS, fake_lookup, doc) == cliques
    assert _contents(out) == first  # a finished build is left as it is
    # interrupted: the store not written yet, one recording's part missing
    for name in ("pooled.u8.npy", "pooled.index.tsv"):
        (again / name).unlink()
    sorted((again / "parts").iterdir())[0].unlink()
    build_real_store(again, [folder / "pkgs"], SPEC, FAKE_TOOLS, fake_lookup, doc)
    assert _contents(again) == first
    with pytest.raises(ValueError, match="remove its pooled.u8.npy"):  # more recordings
        build_real_store(out, [folder / "pkgs"], replace(SPEC, max_recordings=2), FAKE_TOOLS,
                         fake_lookup, doc)
    with pytest.raises(ValueError, match="built from other recordings or options"):
        build_real_store(out, [folder / "pkgs"], replace(SPEC, seed=2), FAKE_TOOLS, fake_lookup,
                         doc)


def test_near_silent_segments_are_dropped(tmp_path):
    loud = random_melody(1, 4.0)
    quiet = np.random.default_rng(0).normal(0, 1e-4, 4 * SR).astype(np.float32)
    write_audio(tmp_path / "pkgs" / "game-music" / "a.wav", np.concatenate([loud, quiet]))
    doc = _doc_root(tmp_path, {"game-music": DEP5})
    spec = replace(SPEC, segment_seconds=(4.0, 4.0), renders=0, fx_versions=1)
    cliques = build_real_store(tmp_path / "out", [tmp_path / "pkgs"], spec, FAKE_TOOLS,
                               fake_lookup, doc)
    assert [vs[0]["segment"] for vs in cliques.values()] == [1]


def test_max_recordings_and_max_segments_limit_the_store(pool, built, tmp_path):
    folder, doc = pool
    spec = replace(SPEC, max_recordings=2, max_segments=1, renders=0)
    cliques = build_real_store(tmp_path / "out", [folder / "pkgs"], spec, FAKE_TOOLS,
                               fake_lookup, doc)
    assert len(cliques) == 2 and len({vs[0]["recording"] for vs in cliques.values()}) == 2
    # the segment and 3 real versions (and a song's mix without its guitar): no renders
    assert all(len(vs) - (vs[-1]["kind"] == "mix without the guitar stem") == 4
               for vs in cliques.values())
    # a subset's parts are those of the whole pool's build: a first store can be cut from it
    build_real_store(tmp_path / "subset", [folder / "pkgs"], replace(SPEC, max_recordings=3),
                     FAKE_TOOLS, fake_lookup, doc)
    subset = {p.name for p in (tmp_path / "subset" / "parts").iterdir()}
    assert len(subset) == 3 and subset <= {p.name for p in (built[0] / "parts").iterdir()}


@pytest.mark.skipif(shutil.which("dpkg") is None
                    or not Path("/usr/share/doc/dpkg/copyright").is_file(),
                    reason="needs dpkg and its package database (a Debian system)")
def test_dpkg_names_the_package_and_its_copyright_file_the_licence():
    path = str(Path(shutil.which("dpkg")).resolve())
    owners = dpkg_packages([path, "/nonexistent/file.ogg"])
    assert owners == {path: "dpkg"}
    licence, copyright = licence_of("dpkg", path)
    assert licence.startswith("GPL") and copyright == "/usr/share/doc/dpkg/copyright"


def broken_real_versions(y, sr, rng, other=None, n=3):
    raise RuntimeError("rubberband crashed")


def test_failed_recordings_are_reported_and_their_parts_not_written(pool, tmp_path):
    folder, doc = pool
    with pytest.raises(ValueError, match="8 recordings failed, e.g. RuntimeError: rubberband"):
        build_real_store(tmp_path / "out", [folder / "pkgs"], replace(SPEC, renders=0),
                         Tools(broken_real_versions), fake_lookup, doc)
    assert not list((tmp_path / "out" / "parts").iterdir())
    assert not (tmp_path / "out" / "pooled.u8.npy").exists()
