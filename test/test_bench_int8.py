"""The int8 parts of the benchmarks: clear errors without calibration data, the profiler, the goal summary."""

from __future__ import annotations

import numpy as np
import pytest

from kp_perception_bench.latency import op_profile
from kp_perception_bench.pyramids_quality import _int8_summary
from test.model_fixtures import make_model

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize(("bench", "args", "message"), [
    ("latency", ["--int8", "--kinds", "pyramids"], "--int8 needs --calibration DATA and --held-out DATA"),
    ("latency", ["--checkpoint", "pyramids"], "expected KIND=PATH"),
    ("node", ["--int8", "--model", "MODEL"], "--int8 needs --calibration DATA"),
])
def test_int8_benches_without_calibration_data_stop_with_one_line(tmp_path, capsys, bench, args, message):
    from kp_perception.cli.main import main

    model = make_model("pyramids", tmp_path)
    args = [str(model) if a == "MODEL" else a for a in args]
    assert main(["bench", bench, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_op_profile_attributes_the_kernel_time_to_op_types(tmp_path):
    model = make_model("pyramids", tmp_path)
    batch = np.zeros((1, 64, 64, 3), np.uint8)
    profile = op_profile(model, batch, threads=1, runs=5)
    by_op = profile["ms_per_run_by_op"]
    assert "Conv" in by_op or "FusedConv" in by_op
    assert all(ms >= 0 for ms in by_op.values()) and list(by_op.values()) == sorted(by_op.values(), reverse=True)
    assert profile["kernel_ms_per_run"] == pytest.approx(sum(by_op.values()), abs=1e-3)
    assert 0 < profile["kernel_ms_per_run"] <= profile["wall_ms_per_run_while_profiling"] * 1.5


def _run(ratio: float, median: float) -> dict:
    return {"int8": {"int8_over_fp32": {"flattened": ratio}, "keypoint_deviation_from_fp32_model_px": {"median": median}}}


def test_int8_goal_summary_needs_every_run_within_3_percent_and_1_px():
    assert _int8_summary([{"method": "keynet10"}]) is None
    ok = _int8_summary([_run(1.02, 0.1), _run(0.99, 0.4)])
    assert ok["goal_rmse_within_3pct"] and ok["goal_median_deviation_le_1px"]
    assert ok["flattened_rmse_int8_over_fp32"]["max"] == pytest.approx(1.02)
    worse = _int8_summary([_run(1.02, 0.1), _run(1.04, 1.2)])
    assert not worse["goal_rmse_within_3pct"] and not worse["goal_median_deviation_le_1px"]
