"""Retrieval metrics against hand-computed cases and a brute-force reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mirex_vi.eval import metrics
from mirex_vi.eval.metrics import (MetricAccumulator, RetrievalResult, metrics_from_distances,
                                   metrics_from_embeddings)

# Hand example: 6 items, labels a a b a b c.
#   query 0 (a; relevant 1, 3). Ranking without itself: 2 (.9), 5 (.8), 3 (.5), 1 (.2), 4 (.1)
#       hits at ranks 3 and 4: AP = (1/3 + 2/4) / 2 = 5/12, rank1 = 3, top10 = 2
#   query 2 (b; relevant 4 only). Ranking: 3 (.7), then the ties at .3 in index order
#       0, 1, 4, then 5: hit at rank 4: AP = 1/4, rank1 = 4, top10 = 1
#   query 3 (a; relevant 0, 1). Ranking: 4 (.9), 0 (.6), 1 (.4), 2 (.2), 5 (0)
#       hits at ranks 2 and 3: AP = (1/2 + 2/3) / 2 = 7/12, rank1 = 2, top10 = 2
#   query 5 (c): no other item labelled c, so it is skipped.
# Each query's own score is the highest of its row: counting it would shift every rank.
# MAP = (5/12 + 3/12 + 7/12) / 3 = 5/12; MR1 = (3 + 4 + 2) / 3 = 3;
# MRR = (1/3 + 1/4 + 1/2) / 3 = 13/36; Top-1 = 0; Top-10 = 5; P@10 = (5/3) / 10 = 1/6.
HAND_LABELS = ["a", "a", "b", "a", "b", "c"]
HAND_QUERIES = [0, 2, 3, 5]
HAND_SCORES = np.array([
    [9.0, 0.2, 0.9, 0.5, 0.1, 0.8],
    [0.3, 0.3, 1.0, 0.7, 0.3, 0.1],
    [0.6, 0.4, 0.2, 5.0, 0.9, 0.0],
    [0.1, 0.2, 0.3, 0.4, 0.5, 1.0],
])


def _hand_result() -> RetrievalResult:
    acc = MetricAccumulator(HAND_LABELS)
    acc.add(HAND_SCORES, HAND_QUERIES)
    return acc.result()


def test_hand_example_per_query():
    res = _hand_result()
    np.testing.assert_array_equal(res.query_index, [0, 2, 3])
    np.testing.assert_allclose(res.ap, [5 / 12, 1 / 4, 7 / 12])
    np.testing.assert_array_equal(res.rank1, [3, 4, 2])
    np.testing.assert_array_equal(res.top10, [2, 1, 2])
    assert res.n_skipped == 1


def test_hand_example_summary():
    summary = _hand_result().summary()
    assert set(summary) == {"map", "mr1", "mrr", "top1_rate", "top10_count", "p_at_10",
                            "n_queries"}
    assert summary["map"] == pytest.approx(5 / 12)
    assert summary["mr1"] == pytest.approx(3.0)
    assert summary["mrr"] == pytest.approx(13 / 36)
    assert summary["top1_rate"] == 0.0
    assert summary["top10_count"] == 5 and isinstance(summary["top10_count"], int)
    assert summary["p_at_10"] == pytest.approx(1 / 6)
    assert summary["n_queries"] == 3 and isinstance(summary["n_queries"], int)
    assert all(isinstance(v, (int, float)) for v in summary.values())


def test_ap_per_clique():
    per_clique = _hand_result().ap_per_clique(HAND_LABELS)
    assert per_clique == pytest.approx({"a": (5 / 12 + 7 / 12) / 2, "b": 1 / 4})


def test_of_queries_keeps_those_queries_and_their_rankings():
    res = _hand_result().of_queries([3, 5, 2])
    np.testing.assert_array_equal(res.query_index, [2, 3])
    np.testing.assert_allclose(res.ap, [1 / 4, 7 / 12])
    np.testing.assert_array_equal(res.rank1, [4, 2])
    assert res.summary()["map"] == pytest.approx((1 / 4 + 7 / 12) / 2)
    assert _hand_result().of_queries([]).n_queries == 0


def test_a_subset_of_distance_rows_scores_as_those_queries_of_the_whole():
    emb, labels = _tied_embeddings(48, 16, seed=3)
    dist = 2.0 - 2.0 * (emb.double() @ emb.double().T).numpy()
    queries = [1, 7, 20, 33]
    some = metrics_from_distances(((i, dist[i]) for i in queries), labels)
    _assert_same(some, metrics_from_embeddings(emb, labels).of_queries(queries))


def test_add_leaves_scores_untouched():
    scores = HAND_SCORES.copy()
    MetricAccumulator(HAND_LABELS).add(scores, HAND_QUERIES)
    np.testing.assert_array_equal(scores, HAND_SCORES)


def test_ties_follow_candidate_index():
    # All candidates tie: the ranking is 0, 1, 2, ... without the query.
    labels = ["x", "y", "y", "x", "y"]
    acc = MetricAccumulator(labels)
    acc.add(np.zeros((2, 5)), [0, 4])
    res = acc.result()
    # query 0: ranking 1 2 3 4, relevant 3 at rank 3. query 4: ranking 0 1 2 3, hits at 2 and 3.
    np.testing.assert_allclose(res.ap, [1 / 3, (1 / 2 + 2 / 3) / 2])
    np.testing.assert_array_equal(res.rank1, [3, 2])


def test_single_relevant_item_at_top():
    acc = MetricAccumulator([0, 1, 2, 0])
    acc.add(np.array([[0.0, 0.5, 0.4, 0.9]]), [0])
    res = acc.result()
    assert res.ap.tolist() == [1.0] and res.rank1.tolist() == [1]
    assert res.summary()["top1_rate"] == 1.0


def test_self_is_excluded_even_among_minus_inf():
    # Other candidates at -inf with a higher index than the query: the query must not take
    # a rank among them. Ranking of query 1: 0, then 2 3 (both -inf). Relevant 3 at rank 3.
    acc = MetricAccumulator(["a", "a", "b", "a"])
    acc.add(np.array([[0.5, 7.0, -np.inf, -np.inf]]), [1])
    res = acc.result()
    np.testing.assert_allclose(res.ap, [(1 / 1 + 2 / 3) / 2])


def test_full_ranking_not_map_at_10():
    # 20 items; query 0 has relevant items at ranks 1 and 15: AP = (1 + 2/15) / 2.
    # MAP@10 would give 0.5, and a query with its only hit at rank 15 would get 0.
    n = 20
    labels = ["q"] + ["other"] * (n - 1)
    labels[1] = labels[15] = "q"
    scores = -np.arange(n, dtype=np.float64)[None, :]  # rank k holds item k (query first)
    acc = MetricAccumulator(labels)
    acc.add(scores, [0])
    res = acc.result()
    assert res.ap[0] == pytest.approx((1 + 2 / 15) / 2)
    assert res.top10[0] == 1

    only_far = ["q"] + ["other"] * (n - 1)
    only_far[15] = "q"
    acc = MetricAccumulator(only_far)
    acc.add(scores, [0])
    assert acc.result().ap[0] == pytest.approx(1 / 15)


def test_no_relevant_query_is_skipped():
    acc = MetricAccumulator(["a", "b", "c"])
    acc.add(np.eye(3), [0, 1, 2])
    res = acc.result()
    assert res.n_queries == 0 and res.n_skipped == 3
    summary = res.summary()
    assert math.isnan(summary["map"]) and summary["n_queries"] == 0


def test_invalid_input_is_rejected():
    acc = MetricAccumulator(["a", "a", "b"])
    with pytest.raises(ValueError, match="NaN"):
        acc.add(np.array([[0.0, np.nan, 1.0]]), [0])
    with pytest.raises(ValueError, match="scores must be"):
        acc.add(np.zeros((1, 4)), [0])
    with pytest.raises(ValueError, match="query indices"):
        acc.add(np.zeros((2, 3)), [0])
    with pytest.raises(ValueError, match="out of range"):
        acc.add(np.zeros((1, 3)), [3])


def _brute_force(scores: np.ndarray, queries: list[int], labels: list) -> dict:
    """Plain-loop reference: rank by (-score, index), drop the query, walk the list."""
    out = {"ap": [], "rank1": [], "top10": [], "query_index": []}
    for row, q in zip(scores, queries):
        ranking = sorted((j for j in range(len(labels)) if j != q), key=lambda j: (-row[j], j))
        hits, precisions, first, top10 = 0, [], None, 0
        for k, j in enumerate(ranking, start=1):
            if labels[j] == labels[q]:
                hits += 1
                precisions.append(hits / k)
                first = k if first is None else first
                top10 += k <= 10
        if hits:
            out["ap"].append(sum(precisions) / hits)
            out["rank1"].append(first)
            out["top10"].append(top10)
            out["query_index"].append(q)
    return out


@pytest.mark.parametrize("ranking", ["counting", "sorting"])
@pytest.mark.parametrize("seed", range(4))
def test_matches_brute_force_with_ties(seed, ranking, monkeypatch):
    # Both ways of ranking relevant items (see metrics._rank_relevant) must agree.
    monkeypatch.setattr(metrics, "_COUNTING_MAX_RELEVANT", 10**9 if ranking == "counting" else -1)
    monkeypatch.setattr(metrics, "_COUNTING_BLOCK", 97)  # several counting steps per block
    rng = np.random.default_rng(seed)
    n = 40
    labels = rng.integers(0, 9, size=n).tolist()
    queries = rng.permutation(n)[: 30].tolist()
    scores = rng.integers(0, 4, size=(len(queries), n)).astype(np.float64)  # many ties
    scores[rng.random(scores.shape) < 0.05] = -np.inf
    acc = MetricAccumulator(labels)
    for start in range(0, len(queries), 7):  # uneven blocks
        acc.add(torch.from_numpy(scores[start:start + 7]), queries[start:start + 7])
    res = acc.result()
    ref = _brute_force(scores, queries, labels)
    np.testing.assert_array_equal(res.query_index, ref["query_index"])
    np.testing.assert_allclose(res.ap, ref["ap"], rtol=1e-12)
    np.testing.assert_array_equal(res.rank1, ref["rank1"])
    np.testing.assert_array_equal(res.top10, ref["top10"])
    assert res.n_skipped == len(queries) - len(ref["ap"])


def _tied_embeddings(n: int, dim: int, seed: int) -> tuple[torch.Tensor, list[int]]:
    """Unit vectors with entries +-1/sqrt(dim): all inner products are exact, many tie."""
    rng = np.random.default_rng(seed)
    emb = rng.choice([-1.0, 1.0], size=(n, dim)) / math.sqrt(dim)
    labels = rng.integers(0, n // 4, size=n).tolist()
    return torch.from_numpy(emb.astype(np.float32)), labels


def _assert_same(a: RetrievalResult, b: RetrievalResult) -> None:
    for name in ("ap", "rank1", "top10", "query_index"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert a.n_skipped == b.n_skipped


def test_chunk_size_does_not_change_results():
    emb, labels = _tied_embeddings(60, 16, seed=1)
    _assert_same(metrics_from_embeddings(emb, labels, chunk_size=1),
                 metrics_from_embeddings(emb, labels, chunk_size=1000))


def test_chunk_size_invariance_on_continuous_embeddings():
    rng = np.random.default_rng(3)
    emb = torch.nn.functional.normalize(torch.from_numpy(rng.normal(size=(50, 8))).float(), dim=1)
    labels = rng.integers(0, 10, size=50).tolist()
    small = metrics_from_embeddings(emb, labels, chunk_size=3)
    large = metrics_from_embeddings(emb, labels, chunk_size=1000)
    np.testing.assert_allclose(small.ap, large.ap)
    np.testing.assert_array_equal(small.rank1, large.rank1)


def test_embeddings_path_equals_distances_path():
    emb, labels = _tied_embeddings(48, 16, seed=2)
    sims = emb.double() @ emb.double().T  # exact: entries are multiples of 1/16
    dist = np.sqrt(np.maximum(0.0, 2.0 - 2.0 * sims.numpy()))
    np.fill_diagonal(dist, 0.0)
    from_dist = metrics_from_distances(((i, dist[i]) for i in range(len(labels))), labels,
                                       batch_size=5)
    from_emb = metrics_from_embeddings(emb, labels, chunk_size=7)
    _assert_same(from_emb, from_dist)
    assert from_emb.n_queries > 0


def test_write_plots(tmp_path):
    pytest.importorskip("matplotlib")
    from mirex_vi.eval.plots import write_plots

    res = _hand_result()
    paths = write_plots(res, HAND_LABELS, tmp_path / "plots")
    assert [p.name for p in paths] == ["rank1_histogram.png", "ap_per_clique.png"]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(p.name for p in paths)


@pytest.mark.parametrize("as_array", [np.array, torch.tensor])
def test_array_labels_compare_by_value(as_array):
    labels = as_array([5, 5, 6, 5, 6, 7])
    acc = MetricAccumulator(labels)
    acc.add(HAND_SCORES, HAND_QUERIES)
    res = acc.result()
    np.testing.assert_allclose(res.ap, _hand_result().ap)
    assert res.ap_per_clique(labels) == pytest.approx({5: 0.5, 6: 0.25})
