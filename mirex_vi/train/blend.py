"""Weight-space blends of two packages of one model: ``(1 - a) * source + a * other``.

A model fine-tuned from a package on new data (here: real-derived cliques, #42) gains on
that data and loses some of what it knew (the synthetic generator's versions). Both sit
in one basin of the loss, so the straight line between their weights passes through
models that keep most of the gain and most of the old skill (WiSE-FT: Wortsman et al.,
"Robust fine-tuning of zero-shot models", CVPR 2022). ``a`` is chosen by scoring a few
blends on held-out sets, never on a test set.

Every floating-point tensor is blended, BatchNorm's running statistics included; integer
buffers (``num_batches_tracked``) are the source's. ``weights recalibrate`` can measure
the blend's BatchNorm statistics anew afterwards.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..model.packaging import derive_package
from ..model.weights import WeightsError, load_package, resolve_weights


def blend_states(source: dict[str, torch.Tensor], other: dict[str, torch.Tensor],
                 weight: float) -> dict[str, torch.Tensor]:
    """``(1 - weight) * source + weight * other`` for every floating-point tensor, computed
    in float64 and cast back; other tensors are ``source``'s.

    Raises:
        WeightsError: the two hold different keys, or a tensor of a different shape.
    """
    if source.keys() != other.keys():
        missing = sorted(source.keys() ^ other.keys())
        raise WeightsError(f"the packages hold different tensors: {', '.join(missing[:4])}")
    blended = {}
    for key, a in source.items():
        b = other[key]
        if a.shape != b.shape:
            raise WeightsError(f"{key}: shape {tuple(a.shape)} against {tuple(b.shape)}")
        if a.is_floating_point():
            blended[key] = torch.lerp(a.double(), b.double(), weight).to(a.dtype)
        else:
            blended[key] = a.clone()
    return blended


def blend_package(source: str | Path, other: str | Path, folder: Path, weight: float) -> str:
    """Write ``folder``: the package ``source`` (configs, card, recipe) with its weights
    blended towards ``other``'s by ``weight`` in [0, 1] (0: ``source``'s, 1: ``other``'s);
    return the new model's sha256.

    Raises:
        ValueError: ``weight`` outside [0, 1], the packages hold different models, or as
            :func:`load_package`.
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"blend weight {weight:g} is not in [0, 1]")
    source, other = resolve_weights(source), resolve_weights(other)
    base, far = load_package(source), load_package(other)
    if base.model.cfg != far.model.cfg:
        raise WeightsError(f"{source.name} holds a {base.model.cfg}, {other.name} a "
                           f"{far.model.cfg}: only one model's weights blend")
    state = blend_states(base.model.state_dict(), far.model.state_dict(), weight)
    note = {"blend": {"from_sha256": base.sha256, "other": other.name,
                      "other_sha256": far.sha256, "weight": weight}}
    card = (f"\n## Weight-space blend\n\nMade with `mirex-vi weights blend`: "
            f"{1 - weight:g} x `{source.name}` (sha256 `{base.sha256}`) + {weight:g} x "
            f"`{other.name}` (sha256 `{far.sha256}`), every floating-point tensor.\n")
    return derive_package(source, folder, state, note, card)
