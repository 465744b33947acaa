"""The benchmarks that score packages on a labelled split (benchmarks.quality.split_embedding
and its users): their figures are ``mirex-vi evaluate``'s on the same cliques."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import patterned_split, run_benchmark, run_cli, run_test_subsets

from benchmarks.quality.pair_breakdown import ranks_of_pairs
from benchmarks.quality.paired import clique_bootstrap
from mirex_vi.eval.evaluate import embed_cliques, evaluate_features
from mirex_vi.eval.metrics import metrics_from_embeddings
from mirex_vi.io.metadata import read_metadata
from mirex_vi.model.weights import load_weights


def test_test_subsets_scores_each_subset_as_evaluate_does(tmp_path, tiny_package):
    meta, store = patterned_split(tmp_path)
    figures = run_test_subsets(meta, store, tiny_package, tmp_path / "figures.json",
                               "--bounds", "2")
    assert set(figures) == {"all", "< 2", ">= 2"}
    first_two = tmp_path / "first-two.json"
    first_two.write_text(json.dumps({c: v for c, v in json.loads(meta.read_text()).items()
                                     if c < "C-0000002"}))
    for name, subset in (("all", meta), ("< 2", first_two)):
        expected = evaluate_features(subset, store, str(tiny_package), "cpu", amp=False,
                                     progress=False)[0].summary()
        assert figures[name]["n_queries"] == expected["n_queries"]
        assert figures[name]["map"] == expected["map"]


def test_distractors_join_every_gallery_and_are_never_queries(tmp_path, tiny_package):
    meta, store = patterned_split(tmp_path)
    plain = run_test_subsets(meta, store, tiny_package, tmp_path / "plain.json", "--bounds", "2")
    figures = run_test_subsets(meta, store, tiny_package, tmp_path / "figures.json",
                               "--bounds", "2", "--distractors", meta)
    # The same split's first versions again, each a clique of its own: copies that tie with
    # a true version and rank just after it, so MAP must fall while the queries stay.
    cliques = json.loads(meta.read_text())
    with_singletons = tmp_path / "with-singletons.json"
    with_singletons.write_text(json.dumps(
        {**cliques, **{f"distractor {c}": versions[:1] for c, versions in cliques.items()}}))
    loaded = load_weights(str(tiny_package))
    emb, labels = embed_cliques(loaded.model, loaded.features, read_metadata(with_singletons),
                                store, torch.device("cpu"), amp=False, progress=False)
    expected = metrics_from_embeddings(emb, labels).summary()
    assert figures["all"]["n_queries"] == plain["all"]["n_queries"] == expected["n_queries"]
    assert figures["all"]["map"] == expected["map"] < plain["all"]["map"]
    assert figures["< 2"]["n_queries"] == plain["< 2"]["n_queries"]
    assert figures["< 2"]["map"] < plain["< 2"]["map"]


def test_pair_ranks_count_only_other_works_above():
    # Two works of two versions each, on the unit circle.
    emb = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.8, 0.6], [0.0, 1.0]])
    pairs = ranks_of_pairs(emb, ["a", "a", "b", "b"])
    ranks = {(q, r): rank for q, r, rank in pairs}
    assert ranks[(0, 1)] == 2  # 0.6 < 0.8 (version 2, work b)
    assert ranks[(1, 0)] == 3  # 0.6 < 0.96 and 0.8
    assert ranks[(2, 3)] == 3  # 0.6 < 0.8 and 0.96
    assert ranks[(3, 2)] == 2  # 0.6 < 0.8 (version 1, work a)
    assert len(pairs) == 4


def test_the_paired_interval_resamples_cliques_not_queries():
    # Two cliques of 50 queries: B gains 1 on every query of one, loses 1 on every query of
    # the other. Resampling single queries would put the mean within ~0.2 of 0; cliques
    # drawn whole give {a, a} = +1, {a, b} = 0, {b, b} = -1.
    diff = np.array([1.0] * 50 + [-1.0] * 50)
    assert clique_bootstrap(diff, ["a"] * 50 + ["b"] * 50) == (-1.0, 1.0)
    assert clique_bootstrap(np.full(6, 0.25), list("aabbcc")) == (0.25, 0.25)


def test_paired_compares_a_package_with_itself_as_equal(tmp_path, tiny_package):
    meta, store = patterned_split(tmp_path)
    proc = run_benchmark("quality.paired", "--metadata", meta, "--features-dir", store,
                         "--weights", tiny_package, "--weights", tiny_package,
                         "--resamples", "200", "--json", tmp_path / "p.json")
    assert proc.returncode == 0, proc.stderr
    figures = json.loads((tmp_path / "p.json").read_text())
    expected = evaluate_features(meta, store, str(tiny_package), "cpu", amp=False,
                                 progress=False)[0].summary()
    assert figures["map_a"] == figures["map_b"] == expected["map"]
    assert figures["difference"] == 0 and figures["interval_95"] == [0, 0]
    assert figures["queries"] == {"better": 0, "worse": 0, "equal": expected["n_queries"]}
    assert figures["cliques"]["total"] == 4


def test_tempo_sweep_scores_each_set_as_a_package_at_those_tempi_does(tmp_path, tiny_package):
    meta, store = patterned_split(tmp_path)
    proc = run_benchmark("quality.tempo_sweep", "--metadata", meta, "--features-dir", store,
                         "--weights", tiny_package, "--sets", "1", "0.7,1,1.4",
                         "--json", tmp_path / "t.json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads((tmp_path / "t.json").read_text())["sets"]
    assert [row["tempo_scales"] for row in rows] == [[1.0], [0.7, 1.0, 1.4]]
    copy = tmp_path / "w" / "tta"
    assert run_cli("weights", "copy", tiny_package, "tta", "--root", tmp_path / "w",
                   "--tempo-scales", "0.7,1,1.4")[0] == 0
    for row, package in zip(rows, (tiny_package, copy)):
        expected = evaluate_features(meta, store, str(package), "cpu", amp=False,
                                     progress=False)[0].summary()
        assert row["n_queries"] == expected["n_queries"]
        assert abs(row["map"] - expected["map"]) < 1e-9
    assert rows[0]["map"] != rows[1]["map"]


def test_realdev_scores_each_package_by_its_recipe_against_the_first(tmp_path, tiny_package):
    meta, store = patterned_split(tmp_path, n_cliques=5)
    (store / "split-light.json").write_text(meta.read_text())  # --realdev: one folder
    recipe = tmp_path / "w" / "recipe"
    code, text = run_cli("weights", "copy", tiny_package, "recipe", "--root", tmp_path / "w",
                         "--segments", "32,16", "--rerank", "4", "--fusion-weight", "0.5")
    assert code == 0, text
    rows = {}
    for flag in ("--recipe", None):
        out = tmp_path / f"{flag}.json"
        proc = run_benchmark("quality.realdev", "--weights", tiny_package, "--weights", recipe,
                             "--weights", tiny_package, "--realdev", store, "--resamples", "100",
                             "--json", out, *([flag] if flag else []))
        assert proc.returncode == 0, proc.stderr
        rows[flag] = json.loads(out.read_text())["rows"][0]
    plain, by_recipe = (evaluate_features(meta, store, str(p), "cpu", amp=False,
                                          progress=False)[0].summary()["map"]
                        for p in (tiny_package, recipe))
    assert by_recipe != plain
    assert [f["map"] for f in rows["--recipe"]["figures"]] == [plain, by_recipe, plain]
    assert [f["map"] for f in rows[None]["figures"]] == [plain] * 3  # the same weights, plain
    differences = [p["difference"] for p in rows["--recipe"]["paired"]]  # B - A, C - A
    assert differences == [pytest.approx(by_recipe - plain), 0]
