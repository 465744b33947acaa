"""First contact with a device: does the torch CQT path agree with the exact CPU path?

Before a collection is embedded with the torch CQT on CUDA, a short built-in signal goes
through the configured path (``TorchFrontEnd`` on the device, the model under the run's AMP
setting) and through the exact CPU path (librosa's CQT, the model in fp32 on the CPU). The
CQT relative error and the embeddings' cosine are compared with ``runtime.tolerance``; on
disagreement (or an error on the device) a warning says so and the run computes its CQTs
with librosa in the workers instead, the model staying on the device.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import numpy as np
import torch

from ..core.runtime import Tolerance, tolerance
from ..features.frontend import PackedAudio, TorchFrontEnd, compute_cqt, librosa_cqt, preprocess
from ..io.audio import AudioError
from ..model.weights import LoadedWeights
from ..synth import piano_like
from .embed import embed_inputs

log = logging.getLogger(__name__)


CHECK_SECONDS = 12.0  # long enough for every octave's filters; the check costs ~1 s
CHECK_PEAK = 0.5


@dataclass(frozen=True)
class PathAgreement:
    """The configured path against the exact one on the built-in signal."""

    cqt_rel_error: float  # ||C_device - C_librosa|| / ||C_librosa||, float32 CQTs
    cosine: float  # between the two embeddings

    def problem(self, tol: Tolerance) -> str | None:
        """Why the two disagree beyond ``tol`` (NaN counts as disagreement), or None."""
        min_cosine = 1.0 - tol.backend / 2  # d² = 2 - 2 cos
        if not self.cqt_rel_error <= tol.cqt:
            return f"CQT relative error {self.cqt_rel_error:.2e} > {tol.cqt:.0e}"
        if not self.cosine >= min_cosine:
            return f"embedding cosine {self.cosine:.6f} < {min_cosine:.6f}"
        return None


def measure_agreement(weights: LoadedWeights, device: torch.device, amp: bool,
                      front_end: TorchFrontEnd | None = None) -> PathAgreement:
    """Run the built-in signal through both paths (``front_end``: the configured one's,
    a ``TorchFrontEnd`` on ``device`` unless given). Moves ``weights.model`` to ``device``."""
    cfg = weights.features
    audio = (CHECK_PEAK * piano_like(CHECK_SECONDS, cfg.sample_rate)).astype(np.float32)  # (N,)
    front_end = front_end or TorchFrontEnd(cfg, device)
    with torch.inference_mode():
        ours = front_end.cqt(torch.from_numpy(audio)[None].to(device))[0].cpu().numpy()
    ref = librosa_cqt(audio, cfg)  # (n_bins, T)
    cqt_rel_error = float(np.linalg.norm(ours - ref) / np.linalg.norm(ref))
    cpu = torch.device("cpu")
    exact = embed_inputs(copy.deepcopy(weights.model).to(cpu).eval(),
                         [preprocess(compute_cqt(audio, cfg), cfg)], cpu, amp=False,
                         tempo_scales=cfg.tempo_scales)[0]
    model = weights.model.to(device).eval()
    configured = embed_inputs(model, [front_end(PackedAudio.pack(audio))], device, amp,
                              tempo_scales=cfg.tempo_scales)[0]
    return PathAgreement(cqt_rel_error, float(exact @ configured))


def torch_cqt_agrees(weights: LoadedWeights, device: torch.device, amp: bool,
                     front_end: TorchFrontEnd | None = None) -> bool:
    """Whether the torch CQT may be used on ``device``: True when the two paths agree
    within ``tolerance(device.type, amp)``; otherwise one warning, and False."""
    try:
        agreement = measure_agreement(weights, device, amp, front_end)
        problem = agreement.problem(tolerance(device.type, amp))
    except (RuntimeError, AudioError) as err:  # a cuFFT/CUDA failure, a non-finite CQT
        agreement, problem = None, f"the device path failed: {err}"
    if problem is None:
        log.info("self-check on %s: CQT relative error %.1e, embedding cosine %.6f", device,
                 agreement.cqt_rel_error, agreement.cosine)
        return True
    log.warning("self-check on %s: the torch CQT path disagrees with the exact CPU path (%s); "
                "computing CQTs with librosa in the workers instead, the model stays on %s",
                device, problem, device)
    return False
