"""Online triplet loss: every sample an anchor, random positive, hardest negative.

Distances are non-squared Euclidean between L2-normalised embeddings, always computed in
float32 (docs/REFERENCE.md §3). Positives: another sample of the anchor's clique, drawn
uniformly among the samples of a *different version*; a repeat of the anchor's own version
(the sampler repeats versions of cliques smaller than K) is used only when the batch holds
no other version of the clique. An anchor with no positive or no negative adds nothing.

A ``NegativeMemory`` (not in the report) widens the search for negatives from the batch to
the last N training embeddings: a cross-batch memory (Wang et al., 2020, "Cross-Batch
Memory for Embedding Learning"). Small batches hold few cliques, so their hardest negative
is an easy one; the memory lends a small batch the negatives of a large one, at the cost of
one ``(B, N)`` product and no extra forward pass. From the memory the negative is
semi-hard (Schroff et al., 2015, FaceNet): the nearest one *farther than the positive*.
The hardest of a large pool tends to be nearer than the positive itself, and may well be a
false negative (distinct works on one tune: chorale harmonisations of a hymn, variants of a
folk tune); on the synthetic corpus it made almost every anchor active and cost 0.056
validation MAP in one epoch.

Distillation (not in the report): a frozen teacher's embedding of the same crop at several
tempi (``inference.embed.embed_batch``, the three-tempo package as it runs at inference) is
a target for the student's one pass, ``mean(1 - cos)`` between the two, so one pass may
carry what the tempi add.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..inference.embed import embed_batch


@dataclass
class Triplets:
    """Mined triplets for a batch of B anchors.

    Attributes:
        positive: ``(B,)`` int64 index of each anchor's positive.
        negative: ``(B,)`` int64 index of each anchor's hardest negative.
        valid: ``(B,)`` bool, the anchor has both a positive and a negative.
    """

    positive: torch.Tensor
    negative: torch.Tensor
    valid: torch.Tensor


def pairwise_distances(emb: torch.Tensor) -> torch.Tensor:
    """``(B, D)`` -> ``(B, B)`` Euclidean distances in float32, with a finite gradient at 0.

    Computed from the Gram matrix (float32 cancellation leaves ~1e-4 on near-duplicates);
    the diagonal is exactly 0. sqrt has an infinite derivative at 0: zero entries are
    computed from 1 and then zeroed, so their gradient is 0.
    """
    x = emb.float()
    sq = (x * x).sum(dim=1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)).clamp_min(0.0)  # (B, B)
    eye = torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
    zero = eye | (d2 <= 1e-12)
    d = torch.sqrt(d2.masked_fill(zero, 1.0))
    return d.masked_fill(zero, 0.0)


def mine_triplets(dist: torch.Tensor, labels: torch.Tensor, versions: torch.Tensor | None = None,
                  generator: torch.Generator | None = None) -> Triplets:
    """Random positive and hardest negative for every anchor.

    Args:
        dist: ``(B, B)`` distances.
        labels: ``(B,)`` clique of each sample.
        versions: ``(B,)`` version id of each sample (None: all samples distinct).
        generator: for the random choice of positives.
    """
    b = dist.shape[0]
    device = dist.device
    same = labels[:, None] == labels[None, :]  # (B, B)
    not_self = ~torch.eye(b, dtype=torch.bool, device=device)
    pos_any = same & not_self
    if versions is not None:
        pos_other = pos_any & (versions[:, None] != versions[None, :])
        has_other = pos_other.any(dim=1, keepdim=True)
        pos_mask = torch.where(has_other, pos_other, pos_any)
    else:
        pos_mask = pos_any
    # Uniform choice among candidates: argmax of uniform noise over the allowed entries.
    noise_device = generator.device if generator is not None else device
    noise = torch.rand(b, b, device=noise_device, generator=generator).to(device)
    positive = noise.masked_fill(~pos_mask, -1.0).argmax(dim=1)
    neg_mask = ~same
    negative = dist.detach().masked_fill(~neg_mask, float("inf")).argmin(dim=1)
    valid = pos_mask.any(dim=1) & neg_mask.any(dim=1)
    return Triplets(positive, negative, valid)


class NegativeMemory:
    """The last ``size`` training embeddings (detached, float32) and their cliques, oldest
    overwritten first: extra negatives for :func:`triplet_loss`.

    Attributes:
        emb: ``(size, D)`` unit vectors; rows never written are 0.
        labels: ``(size,)`` int64 clique indices, -1 for rows never written.
        next_row: the row the next push starts at.
    """

    def __init__(self, size: int, dim: int, device: torch.device | str = "cpu"):
        if size < 1:
            raise ValueError(f"memory size must be >= 1, got {size}")
        self.emb = torch.zeros(size, dim, device=device)
        self.labels = torch.full((size,), -1, dtype=torch.int64, device=device)
        self.next_row = 0

    def push(self, emb: torch.Tensor, labels: torch.Tensor) -> None:
        """Store ``emb`` ``(B, D)`` and ``labels`` ``(B,)``, keeping the last ``size`` rows."""
        size = self.labels.shape[0]
        emb, labels = emb[-size:], labels[-size:]
        rows = (self.next_row + torch.arange(labels.shape[0], device=self.labels.device)) % size
        self.emb[rows] = emb.detach().float()
        self.labels[rows] = labels
        self.next_row = (self.next_row + labels.shape[0]) % size

    def nearest_negative(self, emb: torch.Tensor, labels: torch.Tensor,
                         beyond: torch.Tensor) -> torch.Tensor:
        """``(B,)`` distance from each of ``emb`` ``(B, D)`` (unit vectors) to its nearest
        stored embedding of another clique that is farther than ``beyond`` ``(B,)`` (``inf``
        where there is none); the gradient flows into ``emb`` only."""
        d2 = (2.0 - 2.0 * (emb.float() @ self.emb.T)).clamp_min(0.0)  # (B, size), unit vectors
        other = (self.labels[None, :] >= 0) & (self.labels[None, :] != labels[:, None])
        allowed = other & (d2 > beyond.detach().float()[:, None] ** 2)
        nearest = d2.masked_fill(~allowed, float("inf")).min(dim=1).values  # (B,)
        # sqrt has an infinite derivative at 0: a zero distance is taken from 1, then zeroed.
        zero = nearest <= 1e-12
        return torch.sqrt(nearest.masked_fill(zero, 1.0)).masked_fill(zero, 0.0)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(emb=self.emb, labels=self.labels, next_row=torch.tensor(self.next_row))

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state["emb"].shape != self.emb.shape:
            raise ValueError(f"memory of shape {tuple(state['emb'].shape)} does not fit "
                             f"one of {tuple(self.emb.shape)}")
        self.emb.copy_(state["emb"])
        self.labels.copy_(state["labels"])
        self.next_row = int(state["next_row"])


def triplet_loss(
    emb: torch.Tensor, labels: torch.Tensor, margin: float, versions: torch.Tensor | None = None,
    generator: torch.Generator | None = None, memory: NegativeMemory | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean ``relu(d(a, p) - d(a, n) + margin)`` over valid anchors.

    Args:
        emb: ``(B, D)`` embeddings (re-normalised and cast to float32 here).
        labels: ``(B,)`` clique indices; versions: ``(B,)`` version indices or None.
        memory: the negative is the nearer of the batch's hardest and the memory's nearest
            beyond the positive (the memory is read, not written: the caller pushes the
            batch after the step).

    Returns:
        The scalar loss (0 with a zero gradient if no anchor is valid) and a detached 0-dim
        tensor (no device sync): ``active``, the share of valid anchors with a positive loss.
    """
    unit = F.normalize(emb.float(), dim=1)
    dist = pairwise_distances(unit)
    t = mine_triplets(dist, labels, versions, generator)
    rows = torch.arange(dist.shape[0], device=dist.device)[t.valid]
    if rows.numel() == 0:
        return emb.sum() * 0.0, dict(active=emb.new_zeros((), dtype=torch.float32))
    d_pos = dist[rows, t.positive[t.valid]]  # (V,) over the V valid anchors
    d_neg = dist[rows, t.negative[t.valid]]
    if memory is not None:
        d_neg = torch.minimum(d_neg, memory.nearest_negative(unit[rows], labels[rows], d_pos))
    per_anchor = F.relu(d_pos - d_neg + margin)
    return per_anchor.mean(), dict(active=(per_anchor.detach() > 0).float().mean())


@torch.no_grad()
def teacher_embeddings(teacher: nn.Module, x: torch.Tensor,
                       tempo_scales: tuple[float, ...]) -> torch.Tensor:
    """``(B, D)`` unit-norm targets: ``teacher`` (frozen, in eval mode) on ``(B, 1, F, T')``
    crops at each of ``tempo_scales``, summed and normalised (:func:`embed_batch`); no
    gradient flows into the teacher."""
    return F.normalize(embed_batch(teacher, x, tempo_scales).float(), dim=1)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean ``1 - cos`` between the rows of ``(B, D)`` ``student`` and ``teacher``
    embeddings, in float32: 0 when every student row points where its teacher's does."""
    return (1.0 - F.cosine_similarity(student.float(), teacher.float(), dim=1)).mean()
