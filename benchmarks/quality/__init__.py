"""The experiments behind the published figures (docs/results.md, the model card).

- ``split_embedding``: what the scripts that score packages on a labelled split share:
  the split's options, and one package's embeddings of every version (as ``mirex-vi
  evaluate --device cpu --no-amp`` makes them).
- ``paired``: package B against package A, the MAP difference with a clique bootstrap.
- ``tempo_sweep``: a package's figures for several sets of tempo scales.
- ``test_subsets``: figures on a grown corpus's split and the subsets of its earlier sizes.
- ``pair_breakdown``: the version pairs a package fails on, grouped by how they differ.
- ``baselines``: a package beside chance, random weights and chroma + Qmax alignment.
- ``rerank``: segment matching and the chroma re-rank of a shortlist against plain scoring,
  with their costs.
- ``compare_stores``: two pooled stores, version by version (re-extraction against a kept one).
- ``cqt_accuracy``: ``TorchCQT`` against ``librosa.cqt``, error and time.

Run as ``python -m benchmarks.quality.NAME --help`` from the repository root.
"""
