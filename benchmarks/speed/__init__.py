"""Time and memory of the package's paths, on synthetic data unless told otherwise.

- ``identify``: ``mirex-vi identify`` (three tempi and one) against the authors' serial
  recipe, stage by stage, each against the bound of the cores it has.
- ``search``: FAISS ``flat`` and ``ivfpq`` indexes: build, size, queries/s, recall.
- ``pooled_store``: the pooled store against the authors' layout: size, crop reads, error.
- ``train_step``: seconds per training step of CQT-Net on random inputs.
- ``evaluate_memory``: peak memory and time of the chunked metrics.
- ``expand_cost``: ``--expand K`` beside the scoring it precedes.
- ``recipe_cost``: a scoring recipe (segments, chroma re-rank) beside plain ``identify``,
  CPU seconds per track, part by part.

Run as ``python -m benchmarks.speed.NAME --help`` from the repository root; use small
sizes on a small machine.
"""
