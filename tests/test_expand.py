"""Database-side augmentation (``--expand K``): each embedding plus those of its K nearest
neighbours that have it among their K nearest too, weighted by similarity, before scoring."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import patterned_split, run_cli, run_test_subsets, write_list
from mirex_vi.eval.evaluate import evaluate_features, score_embeddings
from mirex_vi.inference.scoring import expand_by_neighbours
from mirex_vi.io.matrix import read_distance_matrix


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _expected_gram(gram: np.ndarray, k: int) -> np.ndarray:
    """Cosines after expansion, from the cosines before it alone: expanded track i is
    ``c_i @ E`` up to scale, with ``c_i`` 1 at i and the clipped cosine at each j among its
    k nearest others that has i among its own k nearest."""
    n = len(gram)
    nearest = [np.argsort(-np.where(np.arange(n) == i, -np.inf, gram[i]), kind="stable")[:k]
               for i in range(n)]
    coef = np.eye(n)
    for i in range(n):
        for j in nearest[i]:
            if i in nearest[j]:
                coef[i, j] = max(0.0, gram[i, j])
    inner = coef @ gram @ coef.T
    norms = np.sqrt(np.diag(inner))
    return inner / np.outer(norms, norms)


def test_expansion_follows_its_definition_in_chunks_and_skips_invalid_rows():
    x = _unit(np.random.default_rng(0).standard_normal((40, 6)))
    valid = np.ones(40, bool)
    valid[[5, 17]] = False
    got = expand_by_neighbours(x, valid, 3, chunk_size=7)
    assert np.array_equal(got[~valid], x[~valid])  # left as they were
    keep = np.flatnonzero(valid)
    expected = _expected_gram(x[keep] @ x[keep].T, 3)
    np.testing.assert_allclose(got[keep] @ got[keep].T, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got[keep], axis=1), 1, atol=1e-6)
    np.testing.assert_allclose(got, expand_by_neighbours(x, valid, 3), atol=1e-6)


def test_zero_or_no_possible_neighbour_leaves_the_embeddings_as_they_are():
    x = _unit(np.random.default_rng(1).standard_normal((3, 4)))
    np.testing.assert_array_equal(expand_by_neighbours(x, np.ones(3, bool), 0), x)
    lone = np.array([True, False, False])
    np.testing.assert_array_equal(expand_by_neighbours(x, lone, 2), x)


def test_a_neighbour_that_is_not_mutual_adds_nothing():
    """b's nearest is a, but a's nearest is c: a and c move towards each other, b stays."""
    angles = np.radians([0, 20, -30])  # a, c, b
    x = np.stack([np.cos(angles), np.sin(angles)], 1).astype(np.float32)
    got = expand_by_neighbours(x, np.ones(3, bool), 1)
    np.testing.assert_array_equal(got[2], x[2])
    assert got[0] @ got[1] > x[0] @ x[1]


def test_a_neighbour_pointing_away_adds_nothing():
    x = np.array([[1, 0], [-0.6, 0.8]], dtype=np.float32)  # cosine -0.6
    np.testing.assert_array_equal(expand_by_neighbours(x, np.ones(2, bool), 1), x)


def test_versions_linked_through_a_third_are_found_first():
    """On a circle, a1 (0 deg) and a2 (70 deg) are far apart but both near a3 (34 deg), and b
    (-50 deg) is nearer to a1 than a2 is: plainly a1 finds b before a2. Expanded by one
    mutual neighbour, a1 and a3 move towards each other, and a1 finds a2 before b."""
    angles = np.radians([0, 70, 34, -50])
    x = np.stack([np.cos(angles), np.sin(angles)], 1).astype(np.float32)
    labels = ["a", "a", "a", "b"]
    cpu = torch.device("cpu")
    plain = score_embeddings(torch.from_numpy(x), labels, cpu).summary()
    expanded = score_embeddings(torch.from_numpy(x), labels, cpu, expand=1).summary()
    assert plain["map"] == pytest.approx((1 + 1 + (1 + 2 / 3) / 2) / 3)
    assert expanded["map"] == 1.0


def test_identify_expand_scores_the_expanded_embeddings(tmp_path, tracks, tiny_package):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"")
    collection = write_list(tmp_path / "c.txt", [str(p) for p in tracks] + [str(bad)])
    common = ["--weights", tiny_package, "--workers", "1", "--quiet", "--workdir", tmp_path / "w"]
    assert run_cli("identify", collection, collection, tmp_path / "plain.txt", *common)[0] == 0
    code, out = run_cli("identify", collection, collection, tmp_path / "k1.txt", *common,
                        "--expand", "1")
    assert code == 0, out
    plain = read_distance_matrix(tmp_path / "plain.txt")
    expanded = read_distance_matrix(tmp_path / "k1.txt")
    assert expanded.name.endswith("expanded by 1 neighbours") and "expanded" not in plain.name
    expected = _expected_gram(1 - plain.distances[:4, :4] ** 2 / 2, 1)
    np.testing.assert_allclose(1 - expanded.distances[:4, :4] ** 2 / 2, expected, atol=2e-5)
    assert np.all(expanded.distances[4, :4] == 2.0) and np.all(expanded.distances[:4, 4] == 2.0)
    assert not np.allclose(expanded.distances, plain.distances, atol=1e-4)


def test_evaluate_and_test_subsets_expand_alike_and_matrix_refuses_it(tmp_path, tiny_package):
    meta, store = patterned_split(tmp_path, n_cliques=5)
    code, text = run_cli("evaluate", "--metadata", meta, "--features-dir", store, "--weights",
                         tiny_package, "--device", "cpu", "--expand", "2", "--json",
                         tmp_path / "e.json", "--quiet")
    assert code == 0, text
    from_cli = json.loads((tmp_path / "e.json").read_text())
    expected = evaluate_features(meta, store, str(tiny_package), "cpu", amp=False,
                                 progress=False, expand=2)[0].summary()
    plain = evaluate_features(meta, store, str(tiny_package), "cpu", amp=False,
                              progress=False)[0].summary()
    assert from_cli["map"] == pytest.approx(expected["map"]) and expected != plain
    figures = run_test_subsets(meta, store, tiny_package, tmp_path / "subsets.json",
                               "--bounds", "", "--expand", "2")
    assert figures["all"]["map"] == expected["map"]
    code, text = run_cli("evaluate", "--matrix", meta, "--labels", meta, "--expand", "1")
    assert code == 2 and "--expand" in text
