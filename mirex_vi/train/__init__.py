"""Training CQT-Net (docs/REFERENCE.md §3) and the packages derived from a trained one.

A batch goes: ``data`` (clique-balanced sampler, random crops from a feature store,
``augment``) -> ``loop`` (the model under AMP) -> ``losses`` (online triplet: random
positive, hardest negative; ``heads`` for an optional BNNeck classifier) -> optimizer.
``checkpoint`` keeps the run folder resumable; ``distributed`` runs it under ``torchrun``.
``whiten`` (WCCN) and ``recalibrate`` (precise BN) derive a new package from a trained one.

Imports: ``eval`` (validation figures) and everything below it.
"""
