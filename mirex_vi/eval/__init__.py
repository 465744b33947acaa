"""Retrieval figures: metrics, evaluation of a model or a matrix, and plots.

- ``metrics``: MAP (full ranking), MR1, MRR, Top-1, Top-10, P@10, with query self-exclusion.
- ``evaluate``: a model on stored features or labelled audio, or a MIREX matrix -> figures.
- ``plots``: rank-of-first-version histogram and AP per clique (matplotlib).

Imports: ``inference`` and everything below it.
"""
