"""The acceptance test of a GPU machine: the device paths checked end to end in one run.

- ``gpu_check``: the sizes, steps 1-5 (versions, CQT accuracy, distinct lengths,
  precision and batching, ``identify``) and the JSON report.
- ``gpu_check_training``: steps 6-8 (AMP training, a CPU checkpoint resumed on the
  device, one-rank DDP).
- ``throughput``: ``identify`` on 1,000 synthetic 3.5-min WAVs (issue #44): tracks/s of the
  shipped package and of a plain one-pass copy, the steady rate, each stage alone,
  agreement with the CPU path, the speed-up over the authors' recipe.
- ``harness``: what these runs share: their options, the device check, the JSON report
  written after each step, and a smoke run's inputs.

    python -m benchmarks.device.gpu_check --out gpu_check.json
    python -m benchmarks.device.gpu_check --smoke --device cpu --out smoke.json

    python -m benchmarks.device.throughput --out throughput.json

The smoke runs (``--smoke --device cpu``) are part of the test suite
(tests/test_gpu_check.py, tests/test_throughput_smoke.py).
"""
