"""Measurements of the ``mirex_vi`` package, run as modules from the repository root.

- ``quality``: the experiments behind the published figures (packages scored on a labelled
  split, paired differences, tempo sets, subsets, pair breakdowns, baselines, feature-store
  and CQT agreement).
- ``speed``: time and memory (identify against the authors' serial recipe, FAISS search,
  the pooled store, a training step, the metrics, ``--expand``).
- ``device``: a GPU machine's checks, one JSON report each: the acceptance test (eight
  steps) and the throughput run.
- ``common``: the helpers the three share.
- ``results/``: the reports and JSON of recorded runs.

Every module is a command::

    python -m benchmarks.speed.identify --tracks 40 --seconds 180
    python -m benchmarks.quality.paired --metadata SPLIT --features-dir FEATURES \\
        --weights A --weights B
    python -m benchmarks.device.gpu_check --out gpu_check.json

``--help`` on any of them says what it measures and how. Imports: ``mirex_vi`` (installed
with ``pip install -e .``) and each other through ``benchmarks.``; nothing in ``mirex_vi``
imports them.
"""
