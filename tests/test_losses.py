"""Triplet mining and loss on hand-built embeddings, and the cross-batch memory."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mirex_vi.train.losses import NegativeMemory, mine_triplets, pairwise_distances, triplet_loss


def _unit(*angles_deg):
    """Points on the unit circle: (N, 2)."""
    a = torch.tensor(angles_deg, dtype=torch.float64) * math.pi / 180
    return torch.stack([a.cos(), a.sin()], dim=1).float()


def test_pairwise_distances_match_cdist_and_have_finite_gradient():
    emb = F.normalize(torch.randn(6, 5), dim=1)
    emb = torch.cat([emb, emb[:1]]).requires_grad_(True)  # a duplicate: distance 0
    d = pairwise_distances(emb)
    assert torch.allclose(d, torch.cdist(emb, emb), atol=1e-3)
    assert d[0, 6] < 1e-3 and torch.all(d.diagonal() == 0)
    d.sum().backward()
    assert torch.isfinite(emb.grad).all()


def test_hardest_negative_and_a_true_positive():
    # clique 0 at 0, 10, 40 degrees; clique 1 at 60 and 170; clique 2 at 100.
    emb = _unit(0, 10, 40, 60, 170, 100)
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    t = mine_triplets(pairwise_distances(emb), labels, generator=torch.Generator().manual_seed(0))
    assert t.valid.tolist() == [True] * 5 + [False]  # clique 2 has no positive
    assert t.negative.tolist() == [3, 3, 3, 2, 5, 3]
    for i, p in enumerate(t.positive.tolist()[:5]):
        assert p != i and labels[p] == labels[i]


def test_positives_are_drawn_at_random():
    emb = _unit(0, 10, 20, 30, 90)
    labels = torch.tensor([0, 0, 0, 0, 1])
    gen = torch.Generator().manual_seed(1)
    seen = {mine_triplets(pairwise_distances(emb), labels, generator=gen).positive[0].item()
            for _ in range(50)}
    assert seen == {1, 2, 3}


def test_repeated_version_is_a_positive_only_without_another_version():
    emb = _unit(0, 0, 30, 30, 120)
    labels = torch.tensor([0, 0, 0, 1, 2])
    versions = torch.tensor([7, 7, 8, 9, 10])  # samples 0 and 1 are the same version
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        t = mine_triplets(pairwise_distances(emb), labels, versions, gen)
        assert t.positive[0] == 2 and t.positive[1] == 2
    # A clique whose only version appears twice: its repeat is the positive.
    t = mine_triplets(pairwise_distances(emb), torch.tensor([0, 0, 1, 1, 2]),
                      torch.tensor([7, 7, 8, 8, 10]), gen)
    assert t.positive[:4].tolist() == [1, 0, 3, 2]
    assert not t.valid[4]  # sample 4 has no positive


def test_loss_value_and_active_share():
    # Anchor/positive 20 degrees apart, negative 90 degrees away: inactive at margin 0.3.
    emb = _unit(0, 20, 90, 110)
    labels = torch.tensor([0, 0, 1, 1])
    loss, stats = triplet_loss(emb, labels, margin=0.3)
    assert loss.item() == 0.0 and stats["active"].item() == 0.0
    d_pos = 2 * math.sin(math.radians(10))
    d_neg = 2 * math.sin(math.radians(35))  # 20 -> 90 is the hardest negative of sample 1
    margin = 1.5
    loss, stats = triplet_loss(emb, labels, margin=margin)
    expected = (2 * (d_pos - 2 * math.sin(math.radians(45)) + margin)
                + 2 * (d_pos - d_neg + margin)) / 4
    assert abs(loss.item() - expected) < 1e-5
    assert stats["active"].item() == 1.0


def test_loss_without_valid_anchor_is_zero_with_gradient():
    emb = torch.randn(3, 4, requires_grad=True)
    loss, _ = triplet_loss(emb, torch.tensor([0, 0, 0]), margin=0.3)
    loss.backward()
    assert loss.item() == 0.0 and torch.all(emb.grad == 0)


def test_loss_is_float32_for_half_inputs():
    emb = F.normalize(torch.randn(8, 16), dim=1).half()
    loss, _ = triplet_loss(emb, torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]), margin=0.3)
    assert loss.dtype == torch.float32


def _chord(deg):
    """Distance between two unit vectors ``deg`` degrees apart."""
    return 2 * math.sin(math.radians(deg / 2))


def test_memory_lends_a_negative_of_another_clique_beyond_the_positive():
    # Batch: clique 0 at 0 and 20 degrees, clique 1 at 90 and 110 (inactive at margin 0.3).
    emb = _unit(0, 20, 90, 110).requires_grad_(True)
    labels = torch.tensor([0, 0, 1, 1])
    memory = NegativeMemory(4, 2)
    assert triplet_loss(emb, labels, 0.3, memory=memory)[0].item() == 0.0  # empty: batch only
    memory.push(_unit(5, 100), torch.tensor([0, 1]))  # same cliques as the anchors near them
    assert triplet_loss(emb, labels, 0.3, memory=memory)[0].item() == 0.0
    memory.push(_unit(30), torch.tensor([7]))  # clique 7, 10 degrees past sample 1
    loss, stats = triplet_loss(emb, labels, 0.3, memory=memory)
    # Sample 0 meets clique 7 at 30 degrees, beyond its positive (20): semi-hard, used.
    # Sample 1 meets it at 10, nearer than its positive: left out, the batch's 70 stands.
    expected = (_chord(20) - _chord(30) + 0.3) / 4
    assert abs(loss.item() - expected) < 1e-5
    assert stats["active"].item() == 0.25
    loss.backward()
    assert torch.isfinite(emb.grad).all() and emb.grad[0].abs().sum() > 0
    assert torch.all(emb.grad[2:] == 0)  # clique 1 is inactive throughout
    assert not memory.emb.requires_grad and memory.emb.grad is None


def test_memory_keeps_the_last_rows_and_round_trips():
    memory = NegativeMemory(3, 2)
    memory.push(torch.ones(2, 2), torch.tensor([0, 1]))
    assert memory.labels.tolist() == [0, 1, -1] and memory.next_row == 2
    memory.push(torch.full((2, 2), 2.0), torch.tensor([2, 3]))  # wraps: row 0 is overwritten
    assert memory.labels.tolist() == [3, 1, 2] and memory.next_row == 1
    memory.push(torch.arange(10.0).reshape(5, 2), torch.arange(10, 15))  # more rows than it holds
    assert sorted(memory.labels.tolist()) == [12, 13, 14]
    assert memory.emb[memory.labels == 14].tolist() == [[8.0, 9.0]]
    copy = NegativeMemory(3, 2)
    copy.load_state_dict(memory.state_dict())
    assert torch.equal(copy.emb, memory.emb) and copy.next_row == memory.next_row
    try:
        NegativeMemory(4, 2).load_state_dict(memory.state_dict())
    except ValueError as err:
        assert "does not fit" in str(err)
    else:
        raise AssertionError("a memory of another size was loaded")


def test_memory_negative_beyond_a_bound_only():
    emb = _unit(0, 20).requires_grad_(True)
    memory = NegativeMemory(3, 2)
    memory.push(_unit(0, 15, 40), torch.tensor([5, 6, 7]))
    d = memory.nearest_negative(emb, torch.tensor([0, 0]), torch.tensor([0.0, _chord(10)]))
    # Sample 0: clique 5 sits on it (distance 0, not beyond 0), clique 6 at 15 degrees.
    # Sample 1: clique 6 is 5 degrees away (not beyond 10), clique 5 at 20.
    assert abs(d[0].item() - _chord(15)) < 1e-5 and abs(d[1].item() - _chord(20)) < 1e-5
    d.sum().backward()
    assert torch.isfinite(emb.grad).all()
    none = memory.nearest_negative(emb, torch.tensor([0, 0]), torch.tensor([2.0, 2.0]))
    assert torch.all(torch.isinf(none))
