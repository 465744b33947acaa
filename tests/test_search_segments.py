"""Segments in a catalogue index (#43): built, added and merged with their tracks, searched
with the scores of ``identify``'s matrix, and an index without them searched as before."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("faiss")

from conftest import run_cli, write_list

from mirex_vi.config import FeatureConfig, ScoringConfig
from mirex_vi.io.matrix import read_distance_matrix
from mirex_vi.model.packaging import write_package
from mirex_vi.model.weights import load_package
from mirex_vi.search import faiss_index
from mirex_vi.search import folder as index_folder
from mirex_vi.synth import random_melody, write_audio

SEGMENTS = ["--segments", "8,4", "--segment-rule", "diag2", "--segment-weight", "0.5"]
POOLED_HOP = 512 * 20  # samples per pooled frame


def _quiet(*args) -> tuple[int, str]:
    return run_cli(*args, "--workers", "1", "--quiet")


def _build(source: Path, folder: Path, package: Path, *extra) -> str:
    code, out = _quiet("index", "build", source, folder, "--weights", package, *extra)
    assert code == 0, out
    return out


def _search(folder: Path, queries: Path, *extra) -> list[list[str]]:
    code, out = _quiet("search", folder, queries, *extra)
    assert code == 0, out
    return [line.split("\t") for line in out.splitlines()]


@pytest.fixture()
def songs(tmp_path) -> list[Path]:
    """Random melodies of 20, 12, 7, 3 and 3.5 s: 10, 6, 3, 1 and 1 windows of 8 frames
    every 4 (the last two a pair of one-window tracks)."""
    return [write_audio(tmp_path / "songs" / f"s{i}.wav", random_melody(i, seconds))
            for i, seconds in enumerate((20.0, 12.0, 7.0, 3.0, 3.5))]


def _with_recipe(tmp_path: Path, package: Path, name: str, **scoring) -> Path:
    """``package``'s weights in a new package whose recipe is ``scoring``."""
    tiny = load_package(package)
    write_package(tmp_path / name, tiny.model.state_dict(), tiny.model.cfg,
                  FeatureConfig(scoring=ScoringConfig(**scoring)), {}, f"# {name}\n")
    return tmp_path / name


def test_an_excerpt_finds_its_track_first_by_its_segments(tmp_path, tiny_package):
    full = [random_melody(i, 20.0) for i in range(6)]
    paths = [write_audio(tmp_path / "cat" / f"t{i}.wav", x) for i, x in enumerate(full)]
    # Track 3 from its 9th pooled frame on, for one window and a little more.
    excerpt = write_audio(tmp_path / "excerpt.wav", full[3][8 * POOLED_HOP : 16 * POOLED_HOP + 2000])
    catalogue = write_list(tmp_path / "c.txt", [str(p) for p in paths])
    out = _build(catalogue, tmp_path / "seg", tiny_package, "--segments", "8,4",
                 "--segment-rule", "max", "--segment-weight", "0.75")
    assert "in 60 segments" in out, out
    assert _search(tmp_path / "seg", excerpt)[0][2] == str(paths[3])
    # The excerpt's embedding alone is nearer to other tracks: the segments found it.
    _build(catalogue, tmp_path / "plain", tiny_package)
    assert _search(tmp_path / "plain", excerpt)[0][2] != str(paths[3])


def test_search_scores_equal_identify_s_blended_matrix(tmp_path, songs, tiny_package, caplog):
    package = _with_recipe(tmp_path, tiny_package, "recipe", segment_length=8, segment_hop=4,
                           segment_rule="diag", segment_k=2, segment_weight=0.5, rerank=2)
    collection = write_list(tmp_path / "c.txt", [str(p) for p in songs])
    code, out = _quiet("identify", collection, collection, tmp_path / "m.txt", "--weights",
                       package, "--rerank", "0", "--workdir", tmp_path / "w")
    assert code == 0, out
    matrix = read_distance_matrix(tmp_path / "m.txt")
    caplog.set_level(logging.INFO, logger="mirex_vi")
    _build(collection, tmp_path / "index", package)  # the package's recipe: no segment options
    rows = _search(tmp_path / "index", collection, "--top-k", "5")
    ignored = ("the package's recipe re-ranks the best 2 by alignment; index and search do "
               "not (they blend segments only)")
    assert [r.getMessage() for r in caplog.records].count(ignored) == 2  # once each
    for q, distances in zip(matrix.query_indices, matrix.distances):
        hits = [r for r in rows if r[0] == matrix.paths[q]]
        assert [h[2] for h in hits] == [matrix.paths[i] for i in np.argsort(distances, kind="stable")]
        np.testing.assert_allclose(np.array([float(h[3]) for h in hits]) ** 2,
                                   np.sort(distances) ** 2, atol=1e-5)
    # Plain scores are other: the segments count.
    _build(collection, tmp_path / "plain", tiny_package)
    plain = _search(tmp_path / "plain", collection, "--top-k", "5")
    assert max(abs(float(a[3]) - float(b[3])) for a, b in zip(sorted(rows), sorted(plain))) > 0.01


def test_evaluate_through_a_segment_index_equals_the_exact_map(tmp_path, songs, tiny_package):
    labels = write_list(tmp_path / "labels.tsv", [f"{p}\tC{i // 2}" for i, p in enumerate(songs)])
    code, exact = _quiet("evaluate", "--labels", labels, "--weights", tiny_package, *SEGMENTS)
    assert code == 0, exact
    _build(write_list(tmp_path / "c.txt", [str(p) for p in songs]), tmp_path / "index",
           tiny_package, *SEGMENTS)
    code, out = _quiet("evaluate", "--index", tmp_path / "index", "--labels", labels,
                       "--top-k", "5", "--json", tmp_path / "f.json")
    assert code == 0, out
    exact_map = float(next(line for line in exact.splitlines() if "MAP" in line).split(":")[1])
    assert abs(json.loads((tmp_path / "f.json").read_text())["map_at_k"] - exact_map) < 1e-4


def test_an_index_without_segments_is_searched_as_before(tmp_path, songs, tiny_package):
    collection = write_list(tmp_path / "c.txt", [str(p) for p in songs])
    recipe = _with_recipe(tmp_path, tiny_package, "recipe", segment_length=8, segment_hop=4)
    _build(collection, tmp_path / "plain", tiny_package)
    _build(collection, tmp_path / "off", recipe, "--segments", "off")
    for folder in ("plain", "off"):
        manifest = json.loads((tmp_path / folder / "index.json").read_text())
        assert manifest["format"] == "mirex-vi-index/1" and "segments" not in manifest
        assert not list((tmp_path / folder).glob("segments.*"))
    outputs = {(folder, weights): _quiet("search", tmp_path / folder, collection, "--top-k", "3",
                                         "--weights", weights)[1]
               for folder in ("plain", "off") for weights in (tiny_package, recipe)}
    assert len(set(outputs.values())) == 1  # a package's recipe does not change a plain index
    assert len(outputs["plain", tiny_package].splitlines()) == 15


def _segments_of(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    opened = index_folder.open_index(folder)
    return np.asarray(opened.segments.owners), faiss_index.vectors_of(opened.segments.index)


def test_add_and_merge_keep_each_track_s_segments_and_refuse_other_recipes(tmp_path, songs,
                                                                           tiny_package):
    every = write_list(tmp_path / "all.txt", [str(p) for p in songs])
    _build(every, tmp_path / "whole", tiny_package, *SEGMENTS)
    owners, vectors = _segments_of(tmp_path / "whole")
    assert list(np.bincount(owners)) == [10, 6, 3, 1, 1]
    _build(write_list(tmp_path / "3.txt", [str(p) for p in songs[:3]]), tmp_path / "grown",
           tiny_package, *SEGMENTS)
    code, out = _quiet("index", "add", tmp_path / "grown", every)  # the index's recipe
    assert code == 0 and "5 tracks" in out and "in 21 segments" in out, out
    for shard in ("1/2", "2/2"):
        _build(every, tmp_path / f"shard{shard[0]}", tiny_package, *SEGMENTS, "--shard", shard)
    code, out = run_cli("index", "merge", tmp_path / "merged", tmp_path / "shard2",
                        tmp_path / "shard1")
    assert code == 0 and "in 21 segments" in out, out
    for folder in ("grown", "merged"):
        got_owners, got_vectors = _segments_of(tmp_path / folder)
        np.testing.assert_array_equal(got_owners, owners)
        np.testing.assert_allclose(got_vectors, vectors, atol=1e-6)
        assert _search(tmp_path / folder, every) == _search(tmp_path / "whole", every)

    code, out = _quiet("index", "add", tmp_path / "grown", every, *SEGMENTS)  # the build's: fine
    assert code == 0 and "0 added" in out, out
    code, out = _quiet("index", "add", tmp_path / "grown", every, "--segments", "12,6")
    assert code == 2 and ("the index keeps segments 8,4 diag2 w=0.5 at tempi 1; segments 12,6 "
                          "diag2 w=0.5 at tempi 1 would not be comparable") in out, out
    _build(every, tmp_path / "plain", tiny_package)
    code, out = _quiet("index", "add", tmp_path / "plain", every, "--segments", "8,4")
    assert code == 2 and "the index keeps no segments; segments 8,4" in out, out
    code, out = run_cli("index", "merge", tmp_path / "m2", tmp_path / "whole", tmp_path / "plain")
    assert code == 2 and "keeps no segments" in out and "same segment recipe" in out, out
    code, out = run_cli("index", "merge", tmp_path / "m3", tmp_path / "shard1",
                        tmp_path / "shard2", "--kind", "ivfpq")
    assert code == 2 and "an index with segments is flat" in out, out
    assert not (tmp_path / "m2").exists() and not (tmp_path / "m3" / "index.json").exists()
    assert list(np.bincount(_segments_of(tmp_path / "grown")[0])) == [10, 6, 3, 1, 1]


@pytest.mark.parametrize("options, message", [
    (["--segments", "5,1"], "segment_length must be 0 (off) or in [8, 2000]"),
    (["--segments", "8,9"], "segment_hop must be in [1, segment_length=8]"),
    (["--segments", "8"], "give LENGTH,HOP in pooled frames, or off"),
    (["--segments", "8,4", "--segment-rule", "mean"], "segment_rule must be one of max, topk, diag"),
    (["--segments", "8,4", "--segment-weight", "1.5"], "1.5 is not in the range 0<=x<=1"),
    (["--segments", "8,4", "--segment-tempo-scales", "9"], "segment_tempo_scales must be one"),
    (["--segment-rule", "diag2"], "the segment options need segments: give --segments"),
    (["--segments", "8,4", "--kind", "ivfpq"], "an index with segments is flat"),
    (["--segments", "8,4", "--rerank", "5"], "No such option '--rerank'"),
])
def test_bad_segment_options_are_refused_before_any_work(tmp_path, tracks, tiny_package,
                                                          options, message):
    collection = write_list(tmp_path / "c.txt", [str(p) for p in tracks])
    code, out = _quiet("index", "build", collection, tmp_path / "index", "--weights",
                       tiny_package, *options)
    assert code == 2 and message in out, out
    assert not (tmp_path / "index" / "index.json").exists()
    assert not list(tmp_path.glob("index/embeddings/*/*.npy"))
