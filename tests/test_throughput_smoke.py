"""benchmarks.device.throughput, the prepared GPU throughput run, end to end at smoke sizes."""

from __future__ import annotations

import pytest
from conftest import run_device_smoke

STEPS = ["1_versions", "2_synthesis", "3_identify_shipped", "3_identify_one_pass",
         "4_steady_rate", "5_stage_limits", "6_agreement", "7_authors_recipe"]


@pytest.mark.slow
def test_smoke_run_completes_every_step_on_the_cpu(tmp_path):
    steps = run_device_smoke("throughput", tmp_path, STEPS)["steps"]
    assert steps["2_synthesis"]["tracks"] == 3
    assert steps["4_steady_rate"]["errors"] == 0
    limits = steps["5_stage_limits"]
    assert min(limits[k] for k in limits if k.endswith("tracks_per_s")) > 0
    # the CPU against itself: equal but for the matrix's six decimals
    assert steps["6_agreement"]["within_tolerance"]
    assert steps["6_agreement"]["max_d2_change"] < 1e-5
    assert steps["7_authors_recipe"]["speedup_of_identify"] >= 0  # a figure, not a test of speed
