"""Chroma alignment and the re-rank of a shortlist (inference.align)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mirex_vi.config import ScoringConfig
from mirex_vi.inference.align import (alignment_score, chroma, cross_recurrence, fuse, qmax,
                                      reorder, rerank, shortlists, transposition, zscore)


@pytest.mark.parametrize("kwargs, match", [
    (dict(rerank=-1), "rerank"), (dict(rerank=10_001), "rerank"),
    (dict(rerank=2.0), "rerank: expected int"), (dict(fusion_weight=1.1), "fusion_weight"),
    (dict(fusion_weight=float("nan")), "fusion_weight"), (dict(chroma_stack=0), "chroma_stack"),
    (dict(chroma_stack=33), "chroma_stack"), (dict(chroma_kappa=0.0), "chroma_kappa"),
    (dict(chroma_kappa=1.5), "chroma_kappa"), (dict(chroma_key="best"), "chroma_key"),
])
def test_rerank_settings_are_refused_out_of_range(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ScoringConfig(**kwargs)


def _tune(n: int = 60, seed: int = 0) -> np.ndarray:
    """``(n, 84)`` CQT magnitudes of a random sequence of notes (one note a frame, held for
    a few frames, with its octave and fifth), above the bins that chroma leaves out."""
    rng = np.random.default_rng(seed)
    cqt = np.full((n, 84), 1e-3, dtype=np.float32)
    notes = np.repeat(rng.integers(36, 60, n // 3 + 1), 3)[:n]
    for t, note in enumerate(notes):
        cqt[t, [note, note + 12, note + 7]] = [1.0, 0.5, 0.3]
    return cqt


def test_chroma_folds_pitch_classes_and_follows_a_transposition():
    cqt = _tune()
    c = chroma(cqt)
    assert c.shape == (60, 12)
    np.testing.assert_allclose(c.max(axis=1), 1.0)
    notes = cqt[:, :60].argmax(axis=1)
    assert np.array_equal(c.argmax(axis=1), notes % 12)
    up3 = np.roll(cqt, 3, axis=1)  # three semitones up
    np.testing.assert_allclose(chroma(up3), np.roll(c, 3, axis=1), atol=1e-6)


def test_chroma_leaves_out_the_bass_and_pools_frames():
    cqt = np.zeros((8, 84), dtype=np.float32)
    cqt[:, 5] = 1.0  # 44 Hz: below CHROMA_MIN_HZ
    cqt[:, 24 + 2] = 0.5  # D3
    c = chroma(cqt, factor=4)
    assert c.shape == (2, 12)
    assert np.array_equal(c, np.tile(np.eye(12)[2], (2, 1)).astype(np.float32))


def test_transposition_finds_the_shift_of_a_transposed_copy():
    c = chroma(_tune())
    for k in range(12):
        assert transposition(c, np.roll(c, -k, axis=1)) == k


def test_qmax_of_hand_made_plots():
    plot = np.zeros((10, 10), dtype=bool)
    assert qmax(plot) == 0.0
    np.fill_diagonal(plot, True)
    assert qmax(plot) == 10.0
    plot[5, 5] = False  # one gap: the run goes on at the cost of one onset penalty
    assert qmax(plot) == pytest.approx(9.0 - 0.5)
    slow = np.zeros((10, 20), dtype=bool)
    slow[np.arange(10), 2 * np.arange(10)] = True  # a version half as fast: steps of (1, 2)
    assert qmax(slow) == 10.0


def test_cross_recurrence_keeps_mutual_nearest_neighbours():
    c = chroma(_tune())
    plot = cross_recurrence(c, c, stack=3, kappa=0.1)
    assert plot.shape == (58, 58)
    assert plot.diagonal().all()
    assert plot.mean() < 0.2


@pytest.mark.parametrize("key", ["oti", "all"])
def test_the_alignment_of_a_transposed_copy_finds_the_transposition(key):
    c, other = chroma(_tune(seed=0)), chroma(_tune(seed=1))
    cfg = ScoringConfig(chroma_key=key)
    itself = alignment_score(c, c, cfg)
    for k in (1, 5, 11):
        assert alignment_score(c, np.roll(c, k, axis=1), cfg) == pytest.approx(itself)
    assert alignment_score(c, other, cfg) < itself / 2


def test_zscore_and_fuse():
    x = torch.tensor([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]])
    z = zscore(x)
    assert torch.allclose(z[0], torch.tensor([-1.2247, 0.0, 1.2247]), atol=1e-4)
    assert torch.equal(z[1], torch.zeros(3))
    model, aligned = torch.tensor([[3.0, 2.0, 1.0]]), torch.tensor([[1.0, 2.0, 3.0]])
    assert torch.allclose(fuse(model, aligned, 1.0), zscore(model))
    assert torch.allclose(fuse(model, aligned, 0.0), zscore(aligned))


def test_shortlists_leave_out_the_query_and_invalid_tracks():
    scores = torch.tensor([[1.0, 0.9, 0.8, 0.7], [0.9, 1.0, 0.95, 0.1]])
    valid = torch.tensor([True, True, False, True])
    short = shortlists(scores, [0, 1], 5, valid)
    assert short.tolist() == [[1, 3], [0, 3]]


def test_the_rerank_reorders_only_the_top_k():
    rng = np.random.default_rng(3)
    n, k = 12, 4
    chromas = [chroma(_tune(seed=s)) for s in range(n)]
    chromas[7] = np.roll(chromas[0], 2, axis=1)  # a transposed copy of the query
    scores = torch.from_numpy(rng.uniform(-1, 1, (1, n)).astype(np.float32))
    scores[0, 0] = 1.0
    top = scores[0, 1:].topk(k).indices + 1
    scores[0, 7] = scores[0, top[-1]] + 1e-3  # last but one in the shortlist
    out = rerank(scores, [0], chromas, ScoringConfig(rerank=k, fusion_weight=0.0))
    short = set(scores[0].argsort(descending=True)[1 : k + 1].tolist())
    rest = [i for i in range(n) if i not in short]
    assert torch.equal(out[0, rest], scores[0, rest])
    assert sorted(out[0, sorted(short)].tolist()) == sorted(scores[0, sorted(short)].tolist())
    assert int(out[0, 1:].argmax()) + 1 == 7  # the copy, found by alignment alone, comes first


def test_reorder_keeps_each_row_s_values():
    scores = torch.tensor([[0.9, 0.5, 0.8, 0.1, 0.7]])
    short = torch.tensor([[0, 2, 4]])
    out = reorder(scores, short, torch.tensor([[0.0, 1.0, 2.0]]))  # reverse their order
    assert out[0].tolist() == pytest.approx([0.7, 0.5, 0.8, 0.1, 0.9])


def test_the_rerank_is_the_same_on_one_thread_and_on_several():
    rng = np.random.default_rng(3)
    chromas = [rng.random((40 + 7 * i, 12)).astype(np.float32) for i in range(12)]
    scores, queries, cfg = torch.rand(12, 12), list(range(12)), ScoringConfig(rerank=5)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = rerank(scores, queries, chromas, cfg)
        torch.set_num_threads(3)
        several = rerank(scores, queries, chromas, cfg)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(alone, several)
    assert not torch.equal(alone, scores)  # the re-rank moved something


@pytest.mark.parametrize("block", [1, 5, 64])
def test_the_rerank_in_blocks_of_queries_aligns_each_pair_as_alignment_score_does(
        monkeypatch, block):
    from mirex_vi.inference import align

    rng = np.random.default_rng(4)
    chromas = [rng.random((30 + 5 * i, 12)).astype(np.float32) for i in range(12)]
    scores, queries, cfg = torch.rand(12, 12), list(range(12)), ScoringConfig(rerank=4)
    short = shortlists(scores, queries, cfg.rerank)
    aligned = torch.tensor([[alignment_score(chromas[q], chromas[c], cfg) for c in row]
                            for q, row in zip(queries, short.tolist())])
    expected = reorder(scores, short, fuse(scores.gather(1, short), aligned, cfg.fusion_weight))
    monkeypatch.setattr(align, "RERANK_BLOCK", block)
    assert torch.equal(rerank(scores, queries, chromas, cfg), expected)
