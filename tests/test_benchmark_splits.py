"""The benchmarks that score packages on a labelled split (benchmarks/split_embedding.py and
its users): their figures are ``mirex-vi evaluate``'s on the same cliques."""

from __future__ import annotations

import json
import sys

import torch
from conftest import BENCHMARKS, patterned_split, run_test_subsets

from mirex_vi.evaluate import evaluate_features

sys.path.insert(0, str(BENCHMARKS))
from pair_breakdown import ranks_of_pairs  # noqa: E402


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
