"""How tracks are embedded, besides the weights: device, AMP, batch size, workers, CQT backend.

``identify``, ``evaluate --labels`` and the catalogue index resolve these once
(:meth:`EmbedSettings.resolve`) and hand the one value down to
:func:`~mirex_vi.inference.tracks.embed_tracks`; :meth:`EmbedSettings.cache_key` is the part
of it that changes an embedding, and so keys the embedding cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..core.runtime import amp_enabled, resolve_device
from ..features.workers import default_workers


@dataclass(frozen=True)
class EmbedSettings:
    """Resolved embedding settings (build them with :meth:`resolve`).

    Attributes:
        device: where the model (and a torch CQT) runs.
        amp: fp16 autocast in effect (on CUDA only).
        batch_size: tracks of equal length per forward pass on CUDA; the CPU takes one at
            a time whatever this says (``embed.embed_inputs``).
        workers: decoding (and librosa CQT) processes.
        cqt_backend: ``librosa`` in the workers, ``torch`` on ``device``, or ``auto``
            (``torch`` on CUDA, ``librosa`` on the CPU).
    """

    device: torch.device
    amp: bool
    batch_size: int
    workers: int
    cqt_backend: str

    @classmethod
    def resolve(cls, device: str | torch.device = "auto", amp: bool = True,
                batch_size: int | None = None, workers: int | None = None,
                cqt_backend: str = "auto") -> EmbedSettings:
        """The settings of a run; ``None`` takes the default: a batch of 16 on CUDA and 1 on
        the CPU, one worker per usable core (``workers.default_workers``). AMP is kept on
        CUDA only.

        Raises:
            ValueError: ``device`` is a spec of an unavailable or malformed device.
        """
        if not isinstance(device, torch.device):
            device = resolve_device(device)
        return cls(device, amp_enabled(device, amp),
                   batch_size or (16 if device.type == "cuda" else 1),
                   workers or default_workers(), cqt_backend)

    @property
    def torch_cqt(self) -> bool:
        """The CQT is computed on ``device`` (``TorchFrontEnd``): ``torch``, or ``auto`` on CUDA."""
        return self.cqt_backend == "torch" or (self.cqt_backend == "auto"
                                               and self.device.type == "cuda")

    def cache_key(self) -> dict[str, Any]:
        """What of these settings changes an embedding: where the CQT is computed (``auto``
        resolved), AMP in effect, device type. Batch size and workers do not."""
        return {"cqt": "torch" if self.torch_cqt else "librosa",
                "amp": amp_enabled(self.device, self.amp), "device": self.device.type}
