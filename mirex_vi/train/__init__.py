"""Training CQT-Net (docs/REFERENCE.md §3) and the packages derived from a trained one.

A batch goes: ``inputs`` (the configured stores, checked) -> ``data`` (clique-balanced
sampler, random crops, ``augment``) -> ``loop`` (the model under AMP) -> ``losses`` (online
triplet: random positive, hardest negative; ``heads`` for an optional BNNeck classifier) ->
optimizer.
``checkpoint`` keeps the run folder resumable; ``distributed`` runs it under ``torchrun``.
``whiten`` (WCCN), ``recalibrate`` (precise BN) and ``blend`` (two packages' weights on the
line between them) derive a new package from trained ones.

Imports: ``eval`` (validation figures) and everything below it.
"""
