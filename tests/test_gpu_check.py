"""benchmarks.device.gpu_check, the prepared device check, runs end to end at smoke sizes."""

from __future__ import annotations

import pytest
from conftest import run_device_smoke

STEPS = ["1_versions", "2_cqt_accuracy", "3_distinct_lengths", "4_precision_and_batching",
         "5_identify", "6_amp_training", "7_resume_from_cpu", "8_ddp_one_rank"]


@pytest.mark.slow
def test_smoke_run_completes_every_step_on_the_cpu(tmp_path):
    report = run_device_smoke("gpu_check", tmp_path, STEPS)
    steps = report["steps"]
    assert report["smoke"] and report["device"] == "cpu"
    assert steps["2_cqt_accuracy"]["target_rel_error_1e-5"]
    assert steps["4_precision_and_batching"]["self_check"]["problem"] is None
    assert steps["5_identify"]["top10_overlap"] == 1.0
    assert steps["7_resume_from_cpu"]["epochs"] == [1, 2]
    assert steps["8_ddp_one_rank"]["unwrapped_state_dict"]
