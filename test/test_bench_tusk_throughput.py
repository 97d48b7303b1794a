"""bench tusk_throughput runs both schedules (ours and the reference's) on the same batch and model."""

import argparse
import math

import pytest

import kp_perception_bench.tusk_throughput as tt


@pytest.mark.timeout(300)
def test_both_schedules_run_side_by_side_and_the_ratio_is_theirs():
    parser = argparse.ArgumentParser()
    tt.add_arguments(parser)
    args = parser.parse_args(["--image-size", "32", "--batch", "2", "--prototype-steps", "2", "--steps", "1",
                              "--repeats", "1", "--threads", "1", "--precision", "fp32"])
    result = tt.run(args)
    ours, ref = result["ours_images_per_s"], result["reference_schedule_images_per_s"]
    assert math.isfinite(ours) and math.isfinite(ref) and ours > 0 and ref > 0
    assert result["ratio_ours_vs_reference_schedule"] == pytest.approx(ours / ref, rel=0.02)
    assert result["precision"] == "fp32" and result["prototype_steps"] == 2 and result["image_size"] == 32
