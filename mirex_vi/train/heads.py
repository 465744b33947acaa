"""Training-only heads beside the triplet loss: a BNNeck classifier over the training cliques.

As in ByteCover (Du et al., 2021): the triplet loss sees CQT-Net's embedding, the
classification loss sees the same embedding after a BatchNorm1d ("BNNeck"), whose bias is
frozen at 0, and a bias-free linear layer to one logit per training clique. The head is a
separate module, never part of ``CQTNet``: the exported package keeps exactly the authors'
state dict, and inference never runs the head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ClassificationHead(nn.Module):
    """BNNeck + bias-free classifier: ``(B, embedding_dim)`` -> ``(B, n_classes)`` logits."""

    def __init__(self, embedding_dim: int, n_classes: int):
        super().__init__()
        self.neck = nn.BatchNorm1d(embedding_dim)
        self.neck.bias.requires_grad_(False)  # BNNeck: scale only, the shift stays 0
        self.classifier = nn.Linear(embedding_dim, n_classes, bias=False)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        """``emb`` ``(B, D)`` (CQT-Net's L2-normalised output) -> ``(B, n_classes)`` logits."""
        return self.classifier(self.neck(emb))


def classification_loss(logits: torch.Tensor, labels: torch.Tensor,
                        label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean softmax cross-entropy with label smoothing, in float32.

    Args:
        logits: ``(B, n_classes)``.
        labels: ``(B,)`` int64 clique indices in ``[0, n_classes)``.
    """
    return F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)
