"""The learned visuomotor map: it learns the configuration from what it sees, exports exactly, and reaches goals."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from kp_perception.errors import KpPerceptionError
from kp_perception_training.control.episodes import GroundTruthObserver, run_episode
from kp_perception_training.control.visuomotor_map import SampleConfig, collect, features, fit_map, main
from kp_perception_training.sim.reach import ReachConfig

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def ground_truth_map(tmp_path_factory):
    """A map fitted on the simulator's arm points (no rendering, so it is quick), exported as a policy."""
    out = tmp_path_factory.mktemp("map") / "ground_truth"
    assert main(["--observer", "ground_truth", "--scenes", "40", "--per-scene", "15", "--out", str(out),
                 "--no-progress"]) == 0
    return out


def test_the_map_predicts_joint_angles_of_unseen_scenes_far_better_than_their_mean():
    observer = GroundTruthObserver(64)
    train = collect(observer, SampleConfig(scenes=30, per_scene=15), progress=False)
    test = collect(observer, SampleConfig(seed=2001, scenes=6, per_scene=15), progress=False)
    fitted, report = fit_map(features(train.values, train.valid), train.q, train.scene)
    rmse = np.sqrt(np.mean((fitted.predict(features(test.values, test.valid)) - test.q) ** 2))
    spread = np.sqrt(np.mean((test.q - train.q.mean(axis=0)) ** 2))
    assert rmse < 0.25 * spread
    assert report["gamma"] > 0 and report["cv_folds"] == 3
    again, chosen = fit_map(features(train.values, train.valid), train.q, train.scene,
                            gammas=(report["gamma"],), alphas=(report["alpha"],))
    assert "cv_folds" not in chosen and np.allclose(again.dual, fitted.dual)  # the chosen kernel, without a search


def test_the_export_is_a_policy_that_matches_the_fit_and_reaches_the_goal(ground_truth_map):
    from kp_perception.control.policy import OnnxPolicy

    fit = json.loads((ground_truth_map / "fit.json").read_text())
    assert fit["onnx_max_abs_diff"] < 5e-3 and fit["samples"] == 600
    policy = OnnxPolicy(ground_truth_map / "policy.onnx")
    assert policy.spec.num_joints == 7 and policy.spec.keypoint_model == "ground_truth"
    config = ReachConfig(seed=100)
    for episode in (0, 1):
        result = run_episode(config, episode, GroundTruthObserver(64), OnnxPolicy(ground_truth_map / "policy.onnx"), 8.0)
        assert result.final_position_error_mm < 0.2 * result.initial_position_error_mm


def test_commands_respect_the_speed_limit_and_keep_their_direction(ground_truth_map):
    from kp_perception.control.policy import OnnxPolicy

    policy = OnnxPolicy(ground_truth_map / "policy.onnx")
    observer = GroundTruthObserver(64)
    far = collect(observer, SampleConfig(seed=2002, scenes=2, per_scene=2), progress=False)
    policy.reset(far.values[0], far.valid[0])
    fast = policy.step(far.values[2], far.valid[2], far.q[2])
    assert np.abs(fast).max() == pytest.approx(0.5, abs=1e-5)  # a large error saturates the fastest joint only
    policy.reset(far.values[2], far.valid[2])
    assert np.abs(policy.step(far.values[2], far.valid[2], far.q[2])).max() < 1e-4  # at the goal: no motion


def test_bench_servo_scores_map_variants_alone(ground_truth_map, tmp_path):
    from kp_perception_bench import servo

    parser = argparse.ArgumentParser()
    servo.add_arguments(parser)
    template = str(ground_truth_map.parent / "{obs}" / "policy.onnx")
    args = parser.parse_args(["--variants", "map_ground_truth", "--episodes", "2", "--seed", "100", "--duration",
                              "8", "--map", template, "--json", str(tmp_path / "servo.json"), "--quiet"])
    figures = servo.run(args)
    result = figures["variants"]["map_ground_truth"]
    assert result["success_rate"] == 1.0 and result["success_vs_ground_truth"] == 1.0
    assert servo.markers(figures["settings"])[0] == "<!-- Servo table (visuomotor map): begin (bench/servo.py) -->"
    mixed = parser.parse_args(["--variants", "ground_truth,map_ground_truth", "--map", template])
    with pytest.raises(KpPerceptionError, match="on their own"):
        servo.run(mixed)
    missing = parser.parse_args(["--variants", "map_pyramids", "--episodes", "1", "--map", template])
    with pytest.raises(KpPerceptionError, match="needs --map"):
        servo.run(missing)


def test_a_second_fit_reuses_the_samples_and_gives_the_same_map(ground_truth_map, tmp_path, capsys):
    import shutil

    first = json.loads((ground_truth_map / "fit.json").read_text())
    ground_truth_map = shutil.copytree(ground_truth_map, tmp_path / "ground_truth")  # the fixture stays as it was
    assert main(["--observer", "ground_truth", "--scenes", "40", "--per-scene", "15", "--out", str(ground_truth_map),
                 "--no-progress", "--gain", "1.0", "--feedback", "joints"]) == 0
    assert "reusing the samples" in capsys.readouterr().out
    second = json.loads((ground_truth_map / "fit.json").read_text())
    assert (second["gamma"], second["alpha"], second["samples"]) == (first["gamma"], first["alpha"], first["samples"])
    assert (second["gain"], second["feedback"]) == (1.0, "joints")  # exported and checked against the fit
    assert main(["--observer", "ground_truth", "--scenes", "41", "--per-scene", "15", "--out", str(ground_truth_map),
                 "--no-progress"]) == 0  # other sampling: sampled afresh
    assert "reusing" not in capsys.readouterr().out
    assert json.loads((ground_truth_map / "fit.json").read_text())["samples"] == 615


def test_the_shipped_map_drives_the_arm_through_the_real_nodes(tmp_path, monkeypatch):
    """``map_pyramids_ros``: pyramids_node and servo_node (controller:=policy on the map) as real processes."""
    from pathlib import Path

    from kp_perception_bench import servo

    monkeypatch.setenv("FASTDDS_BUILTIN_TRANSPORTS", "LARGE_DATA")
    monkeypatch.chdir(tmp_path)  # the ROS variant keeps its nodes.log under ./build
    shipped = Path(servo.ROOT) / "bench" / "results" / "servo_map" / "pyramids.onnx"
    parser = argparse.ArgumentParser()
    servo.add_arguments(parser)
    args = parser.parse_args(["--variants", "map_pyramids_ros", "--episodes", "1", "--duration", "5",
                              "--map", str(shipped.parent / "{obs}.onnx"), "--json", str(tmp_path / "s.json"),
                              "--quiet"])
    result = servo.run(args)["variants"]["map_pyramids_ros"]
    assert result["timing"]["answered_fraction"] > 0.8
    (episode,) = result["per_episode"]
    assert episode["final_position_error_mm"] < episode["initial_position_error_mm"] - 50.0
