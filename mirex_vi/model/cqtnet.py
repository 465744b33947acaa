"""CQT-Net as used by Discogs-VINet-MIREX (docs/REFERENCE.md §2).

The module and parameter names follow the authors' state dict (``front_end.<i>``,
``proj.lin``) so that their checkpoint loads with ``strict=True``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import MODEL_SIZES, ModelConfig


# (out-channel multiple of c, kernel (freq, time), padding, time dilation, pool after)
_CONV_PLAN = (
    (1, (12, 3), (6, 0), 1, False),
    (2, (13, 3), (0, 0), 2, True),
    (2, (13, 3), (0, 0), 1, False),
    (2, (3, 3), (0, 0), 2, True),
    (4, (3, 3), (0, 0), 1, False),
    (4, (3, 3), (0, 0), 2, True),
    (8, (3, 3), (0, 0), 1, False),
    (8, (3, 3), (0, 0), 2, True),
    (16, (3, 3), (0, 0), 1, False),
    (16, (3, 3), (0, 0), 2, False),
)


def _time_frames_out(t_in: int) -> int:
    """Frames left on the time axis after the convolutions and pools of ``_CONV_PLAN``
    (0 once a layer has nothing left to convolve)."""
    t = t_in
    for _, (_, k_time), (_, pad_time), dilation, pool in _CONV_PLAN:
        t += 2 * pad_time - (k_time - 1) * dilation
        if t < 1:
            return 0
        if pool:  # MaxPool2d((1, 2), stride (1, 2), padding (0, 1))
            t = t // 2 + 1
    return t


def _min_time_frames() -> int:
    """The shortest input length ``T'`` that leaves one frame after the last convolution."""
    t = 1
    while _time_frames_out(t) < 1:
        t += 1
    return t


class _Projection(nn.Module):
    """Holds the final linear layer under the authors' name ``proj.lin``."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.lin = nn.Linear(in_features, out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


class CQTNet(nn.Module):
    """Maps a preprocessed CQT to an L2-normalised embedding.

    Input ``(B, 1, 84, T')`` float, ``T' >= min_pooled_frames`` (172; the 4000-frame pad
    guarantees it);
    output ``(B, embedding_dim)`` with unit norm. Frequency is never pooled; the global
    max-pool accepts any length, so whole tracks go through unchanged.
    """

    min_pooled_frames = _min_time_frames()  # shortest T' (pooled frames) the model accepts
    # Pooled frames between neighbouring columns of the last feature map (one per time pool).
    column_stride = 2 ** sum(pool for *_, pool in _CONV_PLAN)

    def __init__(self, cfg: ModelConfig = ModelConfig()):
        super().__init__()
        self.cfg = cfg
        layers: list[nn.Module] = []
        in_ch = 1
        for mult, kernel, padding, dilation, pool in _CONV_PLAN:
            out_ch = mult * cfg.channels
            layers += [
                nn.Conv2d(in_ch, out_ch, kernel, padding=padding, dilation=(1, dilation), bias=False),
                nn.BatchNorm2d(out_ch),
                nn.ReLU(inplace=True),
            ]
            if pool:
                layers.append(nn.MaxPool2d((1, 2), stride=(1, 2), padding=(0, 1)))
            in_ch = out_ch
        self.front_end = nn.Sequential(*layers)
        self.pool = nn.AdaptiveMaxPool2d((1, 1))
        self.proj = _Projection(in_ch, cfg.embedding_dim)
        # NHWC convolutions: oneDNN's fast path on CPU, tensor cores on CUDA; outputs agree
        # with NCHW to ~1e-7. ``.to(device)`` and ``load_state_dict`` keep the layout.
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.front_end(x)  # (B, 16c, F'', T'')
        return self.head(self.pool(x).flatten(1))  # (B, 16c) -> (B, D)

    def head(self, pooled: torch.Tensor) -> torch.Tensor:
        """``(B, 16c)`` max-pooled features -> ``(B, D)`` unit embeddings (the last layer,
        L2-normalised in fp32)."""
        return F.normalize(self.proj(pooled).float(), p=2, dim=1, eps=1e-12)

    def embed_and_map(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward`'s ``(B, D)`` embeddings (equal to it: a max is exact in any order)
        and the ``(B, 16c, T'')`` last feature map, max-pooled over frequency, that they
        come from. Column ``j`` of the map sees about 200 input frames, from ``s j - 15`` to
        ``s j + 186`` (``s = column_stride``, 16)."""
        fmap = self.front_end(x).amax(dim=2)  # (B, 16c, T'')
        return self.head(fmap.amax(dim=2)), fmap

    @staticmethod
    def map_columns(n_frames: int) -> int:
        """Columns of the last feature map whose input frames all lie in the first
        ``n_frames`` (0 below ``min_pooled_frames``)."""
        return _time_frames_out(n_frames)


def build_model(size: str | ModelConfig = "mirex") -> CQTNet:
    """A fresh model from a registered size name or a ``ModelConfig``."""
    if isinstance(size, str):
        if size not in MODEL_SIZES:
            raise ValueError(f"unknown model size {size!r}; known: {', '.join(MODEL_SIZES)}")
        size = MODEL_SIZES[size]
    return CQTNet(size)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
