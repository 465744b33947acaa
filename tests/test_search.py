"""Catalogue search on FAISS: index build/add/shard/merge, refusals, atomic writes, search
results against the exact path, and evaluation through the index."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

pytest.importorskip("faiss")

from conftest import kill_midway, melody, noise_tracks, write_audio  # noqa: E402
from mirex_vi.cli import main
from mirex_vi.config import MODEL_SIZES, FeatureConfig
from mirex_vi.inference.scoring import distance_rows
from mirex_vi.io.matrix import read_distance_matrix
from mirex_vi.model.cqtnet import CQTNet
from mirex_vi.model.packaging import write_package
from mirex_vi.search import build as index_build
from mirex_vi.search import folder as index_folder
from mirex_vi.search import faiss_index


def run_cli(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output + (result.stderr if result.stderr_bytes else "")


def write_list(path: Path, paths) -> Path:
    path.write_text("".join(f"{p}\n" for p in paths), encoding="utf-8")
    return path


def build(source, folder, package, *extra):
    return run_cli("index", "build", source, folder, "--weights", package, "--workers", "1",
                   "--quiet", *extra)


def search_tsv(folder, queries, *extra) -> list[list[str]]:
    code, out = run_cli("search", folder, queries, "--workers", "1", "--quiet", *extra)
    assert code == 0, out
    return [line.split("\t") for line in out.splitlines()]


def unit_rows(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def cliques(n_cliques: int, versions: int, dim: int, spread: float, seed: int = 0) -> np.ndarray:
    """``(n_cliques * versions, dim)`` unit vectors, each clique around its own centre."""
    rng = np.random.default_rng(seed)
    centres = unit_rows(rng.standard_normal((n_cliques, dim)))
    noise = unit_rows(rng.standard_normal((n_cliques * versions, dim)))
    return unit_rows(np.repeat(centres, versions, axis=0) + spread * noise)


def test_build_search_exclude_self_json_add_and_info(tmp_path, tracks, tiny_package):
    index = tmp_path / "index"
    code, out = build(write_list(tmp_path / "c.txt", [*tracks[:3], tracks[1]]), index, tiny_package)
    assert code == 0 and "3 tracks, flat" in out and "3 added (0 embeddings from cache)" in out, out
    queries = write_list(tmp_path / "q.txt", [tracks[1], tracks[3]])  # one inside, one outside
    rows = search_tsv(index, queries, "--top-k", "2")
    assert [r[:2] for r in rows] == [[str(tracks[1]), "1"], [str(tracks[1]), "2"],
                                     [str(tracks[3]), "1"], [str(tracks[3]), "2"]]
    assert rows[0][2:] == [str(tracks[1]), "0.000000"]  # itself, at distance 0 as in the matrix
    assert all(0 < float(r[3]) <= 2 for r in rows[1:]) and all(len(r) == 4 for r in rows)
    excluded = search_tsv(index, queries, "--top-k", "5", "--exclude-self")
    inside = [r[2] for r in excluded if r[0] == str(tracks[1])]
    assert sorted(inside) == sorted([str(tracks[0]), str(tracks[2])])
    assert len(excluded) == 2 + 3  # the inside query has 2 others, the outside one all 3
    code, out = run_cli("search", index, tracks[3], "--format", "json", "--workers", "1", "--quiet")
    assert code == 0, out
    result = json.loads(out)
    assert result[0]["query"] == str(tracks[3]) and [h["rank"] for h in result[0]["results"]] == [1, 2, 3]
    assert set(result[0]["results"][0]) == {"rank", "path", "distance"}

    code, out = run_cli("index", "add", index, write_list(tmp_path / "all.txt", tracks),
                        "--workers", "1", "--quiet")
    # The outside query was embedded into the index's cache when it was searched.
    assert code == 0 and "4 tracks" in out and "1 added (1 embeddings from cache)" in out, out
    code, out = run_cli("index", "add", index, tmp_path / "all.txt", "--workers", "1", "--quiet")
    assert code == 0 and "4 tracks" in out and "0 added" in out, out
    assert sorted(p.name for p in index.glob("*.faiss")) == ["index.3.faiss"]  # old generations go
    code, out = run_cli("index", "info", index)
    assert code == 0 and "tracks: 4" in out and "tiny-test" in out and "generation 3" in out
    table = (index / "tracks.3.tsv").read_text(encoding="utf-8").splitlines()
    assert table[0] == "path\tid\tduration" and [r.split("\t")[0] for r in table[1:]] == list(map(str, tracks))
    assert abs(float(table[1].split("\t")[2]) - 4.0) < 0.01  # 16 notes of 0.25 s


def test_search_order_and_distances_equal_the_identify_matrix(tmp_path, tracks, tiny_package):
    collection = write_list(tmp_path / "c.txt", tracks)
    code, out = run_cli("identify", collection, collection, tmp_path / "out.txt", "--weights",
                        tiny_package, "--workers", "1", "--quiet", "--workdir", tmp_path / "w")
    assert code == 0, out
    matrix = read_distance_matrix(tmp_path / "out.txt")
    assert build(collection, tmp_path / "index", tiny_package)[0] == 0
    rows = search_tsv(tmp_path / "index", collection, "--top-k", "4")
    for q, distances in zip(matrix.query_indices, matrix.distances):
        hits = [r for r in rows if r[0] == matrix.paths[q]]
        assert [h[2] for h in hits] == [matrix.paths[i] for i in np.argsort(distances, kind="stable")]
        # Compare d^2 = 2 - 2 s: d itself amplifies float noise near 0 (dd = ds / d).
        np.testing.assert_allclose(np.array([float(h[3]) for h in hits]) ** 2,
                                   np.sort(distances) ** 2, atol=2e-6)


def test_top_k_equals_the_exact_rows_on_a_synthetic_collection():
    x = cliques(40, 5, 32, spread=0.8)
    exact = np.stack(list(distance_rows(x, list(range(len(x))), np.ones(len(x), dtype=bool))))
    flat = faiss_index.build("flat", x)
    for k in (1, 3, 10):
        distances, ids = faiss_index.top_k(flat, x, k)
        np.testing.assert_array_equal(ids, np.argsort(exact, axis=1, kind="stable")[:, :k])
        np.testing.assert_allclose(distances[:, 1:] ** 2, np.sort(exact, axis=1)[:, 1:k] ** 2, atol=2e-6)


def test_ties_are_broken_by_collection_order_as_in_the_exact_rows():
    # Unit vectors with dyadic components, so that norms and inner products are exact in any
    # summation order: rows 0 and 3 are e0 (distance 0 to e0), rows 1, 2 and 5 (inner
    # product 1/2 with e0) tie at distance 1, row 4 is orthogonal.
    e = np.eye(8, dtype=np.float32)
    x = np.stack([e[0], 0.5 * (e[0] + e[1] + e[2] + e[3]), 0.5 * (e[0] + e[4] + e[5] + e[6]),
                  e[0], e[3], 0.5 * (e[0] + e[1] + e[4] + e[7])])
    exact = next(distance_rows(x, [0], np.ones(len(x), dtype=bool)))
    expected = [0, 3, 1, 2, 5, 4]
    assert list(np.argsort(exact, kind="stable")) == expected
    flat = faiss_index.build("flat", x)
    for k in range(1, 7):
        distances, ids = faiss_index.top_k(flat, x[:1], k)
        assert list(ids[0]) == expected[:k]
        np.testing.assert_array_equal(distances[0], exact[expected[:k]])
    assert list(faiss_index.top_k(flat, x[:1], 8)[1][0]) == [*expected, -1, -1]


def test_ivfpq_finds_the_cliques_and_states_its_size(tmp_path):
    x = cliques(300, 10, 64, spread=0.6)
    params = faiss_index.ivfpq_params(len(x), 64)
    assert params.m == 8 and params.nbits == 6 and params.nlist * faiss_index.POINTS_PER_CELL <= len(x)
    index = faiss_index.build("ivfpq", x, params)
    _, exact = faiss_index.top_k(faiss_index.build("flat", x), x, 10)
    _, approx = faiss_index.top_k(index, x, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, approx)])
    assert recall > 0.9, recall
    with open(tmp_path / "i.faiss", "wb") as f:
        faiss_index.write(index, f)
    code_bytes = params.m * params.nbits / 8
    assert (tmp_path / "i.faiss").stat().st_size < len(x) * (code_bytes + 8) + 200_000
    mapped = faiss_index.read(tmp_path / "i.faiss", mmap=True)
    assert np.array_equal(faiss_index.top_k(mapped, x[:20], 10)[1], approx[:20])
    with pytest.raises(ValueError, match="at least 2,496"):
        faiss_index.resolve_kind("ivfpq", 2495)
    assert faiss_index.resolve_kind("auto", 999_999) == "flat"
    assert faiss_index.resolve_kind("auto", 1_000_000) == "ivfpq"


def test_flat_shards_merge_into_an_ivfpq_index(tmp_path):
    x = cliques(300, 10, 64, spread=0.6)
    tracks = [index_folder.Track(f"/catalogue/{i:04d}.wav") for i in range(len(x))]
    for number, rows in ((1, range(0, 1400)), (2, range(1400, 3000))):
        manifest = index_folder.Manifest("flat", 0, 64, "w", "0" * 64, "", {"n_bins": 84},
                                         shard=index_folder.Shard(number, 2, "list"))
        with index_folder.writing(tmp_path / f"s{number}"):
            index_folder.save(tmp_path / f"s{number}", manifest, faiss_index.build("flat", x[rows]),
                              tracks[rows.start : rows.stop])
    index_build.merge_indexes(tmp_path / "merged", [tmp_path / "s2", tmp_path / "s1"], "ivfpq", 3)
    merged = index_folder.open_index(tmp_path / "merged")
    assert merged.manifest.kind == "ivfpq" and merged.manifest.params["nprobe"] == 3
    assert [t.path for t in merged.tracks] == [t.path for t in tracks]  # shard order
    assert merged.manifest.shard is None
    _, exact = faiss_index.top_k(faiss_index.build("flat", x), x[:100], 10)
    _, approx = faiss_index.top_k(merged.index, x[:100], 10)
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, approx)]) > 0.9
    with pytest.raises(index_folder.IndexFolderError, match="no exact vectors"):
        index_build.merge_indexes(tmp_path / "again", [tmp_path / "merged"])


def test_shards_merge_into_the_index_of_the_whole_list(tmp_path, tracks, tiny_package):
    collection = write_list(tmp_path / "c.txt", tracks)
    cache = ("--cache", tmp_path / "cache")
    assert build(collection, tmp_path / "whole", tiny_package, *cache)[0] == 0
    for i in (1, 2):
        code, out = build(collection, tmp_path / f"shard{i}", tiny_package, "--shard", f"{i}/2", *cache)
        assert code == 0 and "2 tracks, flat" in out, out
    code, out = run_cli("index", "merge", tmp_path / "merged", tmp_path / "shard2", tmp_path / "shard1")
    assert code == 0 and "4 tracks" in out, out
    whole = index_folder.open_index(tmp_path / "whole")
    merged = index_folder.open_index(tmp_path / "merged")
    assert list(merged.tracks) == list(whole.tracks) and merged.manifest.shard is None
    np.testing.assert_array_equal(faiss_index.vectors_of(merged.index), faiss_index.vectors_of(whole.index))
    code, out = run_cli("index", "merge", tmp_path / "m2", tmp_path / "shard1")
    assert code == 2 and "every shard 1..n" in out
    code, out = run_cli("index", "merge", tmp_path / "m3", tmp_path / "whole", tmp_path / "merged")
    assert code == 2 and "more than one input" in out
    code, out = run_cli("index", "merge", tmp_path / "merged", tmp_path / "shard1", tmp_path / "shard2")
    assert code == 2 and "already holds an index" in out
    code, out = build(collection, tmp_path / "s", tiny_package, "--shard", "3/2")
    assert code == 2 and "1 <= i <= n" in out
    code, out = build(collection, tmp_path / "s", tiny_package, "--shard", "1/2", "--kind", "ivfpq")
    assert code == 2 and "always flat" in out


def test_metadata_source_fills_the_ids(tmp_path, tiny_package):
    root = tmp_path / "root"
    meta = {"C-1": [{"version_id": "V-1", "youtube_id": "aaaaaaaaaa1"},
                    {"version_id": "V-2", "youtube_id": "bbbbbbbbbb1"}]}
    for n, yid in enumerate(("aaaaaaaaaa1", "bbbbbbbbbb1")):
        write_audio(root / "audio" / yid[:2] / f"{yid}.flac", melody([60 + n + k % 4 for k in range(12)]))
    (tmp_path / "set.json").write_text(json.dumps(meta))
    code, out = build(tmp_path / "set.json", tmp_path / "index", tiny_package)
    assert code == 2 and "--audio-root" in out
    code, out = build(tmp_path / "set.json", tmp_path / "index", tiny_package, "--audio-root", root)
    assert code == 0, out
    table = index_folder.open_index(tmp_path / "index").tracks
    assert [t.track_id for t in table] == ["aaaaaaaaaa1", "bbbbbbbbbb1"]
    assert table[1].path == str(root / "audio" / "bb" / "bbbbbbbbbb1.flac")


def test_refuses_other_weights_and_another_feature_config(tmp_path, tracks, tiny_package):
    collection = write_list(tmp_path / "c.txt", tracks[:2])
    assert build(collection, tmp_path / "index", tiny_package)[0] == 0
    torch.manual_seed(1)
    other = CQTNet(MODEL_SIZES["tiny"])
    write_package(tmp_path / "w" / "other", other.state_dict(), other.cfg, FeatureConfig(), {}, "#\n")
    torch.manual_seed(0)  # the tiny package's weights, with other features
    same = CQTNet(MODEL_SIZES["tiny"])
    write_package(tmp_path / "w" / "refeatured", same.state_dict(), same.cfg,
                  FeatureConfig(downsample_factor=10), {}, "#\n")
    for package, reason in (("other", "weights other"), ("refeatured", "downsample_factor")):
        for command in (["index", "add", tmp_path / "index", collection],
                        ["search", tmp_path / "index", collection]):
            code, out = run_cli(*command, "--weights", tmp_path / "w" / package, "--workers", "1")
            assert code == 2 and reason in out, (command, out)
    code, out = build(collection, tmp_path / "index", tiny_package)
    assert code == 2 and "already holds an index" in out
    code, out = run_cli("search", tmp_path / "nothing", collection)
    assert code == 2


def test_a_failed_write_leaves_the_previous_index_whole(tmp_path, tracks, tiny_package, monkeypatch):
    index = tmp_path / "index"
    assert build(write_list(tmp_path / "c.txt", tracks[:2]), index, tiny_package)[0] == 0
    before = {p.name: p.read_bytes() for p in index.iterdir() if p.is_file()}

    def fail(path, rows):
        raise OSError("disk full")

    monkeypatch.setattr(index_folder, "_write_table", fail)
    code, out = run_cli("index", "add", index, write_list(tmp_path / "all.txt", tracks),
                        "--workers", "1", "--quiet")
    assert code == 3 and f"{index}: cannot write the index (disk full); the index is unchanged" in out
    monkeypatch.undo()
    after = {p.name: p.read_bytes() for p in index.iterdir() if p.is_file() and p.name != "errors.tsv"}
    assert after == {k: v for k, v in before.items() if k != "errors.tsv"}  # index.2.faiss removed
    assert index_folder.open_index(index).manifest.count == 2
    code, out = run_cli("index", "add", index, tmp_path / "all.txt", "--workers", "1", "--quiet")
    assert code == 0 and "4 tracks" in out and "(2 embeddings from cache)" in out, out
    assert sorted(p.name for p in index.glob("*.faiss")) == ["index.2.faiss"]
    assert not list(index.glob(".*.tmp"))


def test_killed_build_resumes_from_the_cache(tmp_path, tiny_package):
    collection = write_list(tmp_path / "c.txt", noise_tracks(tmp_path / "a"))
    index = tmp_path / "index"
    cmd = [sys.executable, "-m", "mirex_vi", "index", "build", str(collection), str(index),
           "--weights", str(tiny_package), "--workers", "1", "--quiet"]
    done_before = kill_midway(cmd, index / "embeddings")
    assert 3 <= done_before < 12, "the build finished before it could be killed"
    assert not (index / "index.json").exists() and not list(index.glob("*.faiss"))
    resumed = subprocess.run(cmd, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"12 added ({done_before} embeddings from cache)" in resumed.stderr
    clean = subprocess.run([*cmd[:6], str(tmp_path / "clean"), *cmd[7:]], capture_output=True)
    assert clean.returncode == 0
    a, b = index_folder.open_index(index), index_folder.open_index(tmp_path / "clean")
    assert list(a.tracks) == list(b.tracks)
    np.testing.assert_array_equal(faiss_index.vectors_of(a.index), faiss_index.vectors_of(b.index))


def test_evaluate_through_a_flat_index_equals_the_exact_map(tmp_path, tracks, tiny_package):
    labels = tmp_path / "labels.tsv"
    labels.write_text("".join(f"{p}\tC{i // 2}\n" for i, p in enumerate(tracks)), encoding="utf-8")
    code, exact = run_cli("evaluate", "--labels", labels, "--weights", tiny_package,
                          "--workers", "1", "--quiet")
    assert code == 0, exact
    assert build(write_list(tmp_path / "c.txt", tracks), tmp_path / "index", tiny_package)[0] == 0
    code, out = run_cli("evaluate", "--index", tmp_path / "index", "--labels", labels,
                        "--top-k", "4", "--json", tmp_path / "f.json", "--workers", "1", "--quiet")
    assert code == 0, out
    figures = json.loads((tmp_path / "f.json").read_text())
    exact_map = float(next(line for line in exact.splitlines() if "MAP" in line).split(":")[1])
    assert abs(figures["map_at_k"] - exact_map) < 1e-4 and figures["recall_at_k"] == 1.0
    assert figures["n_queries"] == 4 and "MAP@4" in out
    code, out = run_cli("evaluate", "--index", tmp_path / "index")
    assert code == 2 and "--labels" in out


def test_without_faiss_search_says_how_to_install_it(tmp_path, monkeypatch):
    import mirex_vi.search

    for name in ("faiss_index", "folder", "build", "query"):  # forget them: import afresh
        monkeypatch.delitem(sys.modules, f"mirex_vi.search.{name}", raising=False)
        monkeypatch.delattr(mirex_vi.search, name, raising=False)
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` fail
    (tmp_path / "q.txt").write_text("a.wav\n")
    code, out = run_cli("search", tmp_path, tmp_path / "q.txt")
    assert code == 2 and "pip install 'mirex-vi[search]'" in out
    code, out = run_cli("index", "build", tmp_path / "q.txt", tmp_path / "i")
    assert code == 2 and "mirex-vi[search]" in out


def test_a_search_where_no_query_can_be_read_exits_2(tmp_path, tracks, tiny_package):
    index = tmp_path / "index"
    assert build(write_list(tmp_path / "c.txt", tracks[:2]), index, tiny_package)[0] == 0
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF not really")
    code, out = run_cli("search", index, broken, "--workers", "1", "--quiet")
    assert code == 2 and f"skipped query {broken}" in out, out
    assert "none of the 1 queries could be searched" in out and "Traceback" not in out
    queries = write_list(tmp_path / "q.txt", [broken, tracks[0]])  # one good query: it is answered
    code, out = run_cli("search", index, queries, "--workers", "1", "--quiet")
    assert code == 0 and f"{tracks[0]}\t1\t{tracks[0]}" in out, out
