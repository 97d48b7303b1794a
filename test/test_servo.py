"""Closed-loop control: the IBVS controller, the reach task and its benchmark, servo_node's safety stop, the env."""

from __future__ import annotations

import argparse
import os
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from kp_perception.control.ibvs import BroydenIBVS, IBVSConfig

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(240)


def test_ibvs_reaches_the_goal_of_a_linear_system_and_ignores_static_features():
    """s = A q for 3 moving features plus 2 that never move (like keypoints on the table)."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(6, 4))
    static = np.array([[0.3, -0.2], [-0.5, 0.4]])

    def features(q):
        return np.vstack([(a @ q).reshape(3, 2), static + rng.normal(scale=1e-4, size=(2, 2))])

    goal_q = np.array([0.2, -0.1, 0.3, 0.05])
    goal = features(goal_q)
    goal[3:] += 0.2  # the static features' goal is unreachable: they must be weighted out
    ctrl = BroydenIBVS(4, IBVSConfig(rate_hz=30.0))
    ctrl.reset(goal)
    q = np.zeros(4)
    for _ in range(600):
        q = q + ctrl.step(features(q), np.ones(5, bool), q) / 30.0
    assert np.allclose(a @ q, a @ goal_q, atol=1e-3)
    assert ctrl.weights.tolist() == [1, 1, 1, 0, 0]


def test_ibvs_commands_nothing_without_usable_features():
    ctrl = BroydenIBVS(3, IBVSConfig(explore_ticks=1))
    ctrl.reset(np.zeros((2, 2)))
    for _ in range(ctrl.exploration_ticks):
        ctrl.step(np.zeros((2, 2)), np.ones(2, bool), np.zeros(3))
    assert not np.any(ctrl.step(np.ones((2, 2)), np.zeros(2, bool), np.zeros(3)))


def test_ibvs_servos_three_dimensional_features():
    """Metric observations (X, Y, Z per keypoint): the same controller with dims=3 reaches the goal."""
    rng = np.random.default_rng(1)
    a = rng.normal(size=(9, 5))  # 3 features × (X, Y, Z), 5 joints

    def features(q):
        return np.c_[(a @ q).reshape(3, 3), np.ones(3)]  # an observation table: coordinates, then score

    goal_q = np.array([0.1, -0.2, 0.15, 0.05, -0.1])
    ctrl = BroydenIBVS(5, IBVSConfig(rate_hz=30.0), dims=3)
    ctrl.reset(features(goal_q))
    q = np.zeros(5)
    for _ in range(600):
        q = q + ctrl.step(features(q), np.ones(3, bool), q) / 30.0
    assert ctrl.jacobian.shape == (9, 5)
    assert np.allclose(a @ q, a @ goal_q, atol=1e-3)


def test_ibvs_reexplores_when_the_error_stops_falling_at_most_the_allowed_times():
    """A goal the features cannot reach: the error stalls above the floor, so J is re-estimated, twice."""
    rng = np.random.default_rng(2)
    a = rng.normal(size=(8, 3))  # 4 features, 3 joints: most goals are out of reach

    def features(q):
        return (a @ q).reshape(4, 2)

    goal = features(np.array([0.2, -0.1, 0.1])) + rng.normal(scale=0.05, size=(4, 2))
    runs = {}
    for name, config in (("default", IBVSConfig()),
                         ("reexplore", IBVSConfig(reexplore_window=0.5, reexplore_min_error=1e-3))):
        ctrl = BroydenIBVS(3, config)
        ctrl.reset(goal)
        q, explored_at = np.zeros(3), []
        for t in range(900):
            before = ctrl.reexplorations
            q = q + ctrl.step(features(q), np.ones(4, bool), q) / 30.0
            if ctrl.reexplorations > before:
                explored_at.append(t)
        runs[name] = (ctrl, q, explored_at)
    assert runs["default"][0].reexplorations == 0
    ctrl, q, explored_at = runs["reexplore"]
    assert ctrl.reexplorations == 2 and len(explored_at) == 2 and not ctrl.exploring
    # after exploring again it still ends at the least-squares solution, as without re-exploration
    assert np.allclose(q, runs["default"][1], atol=1e-2)


def test_reach_observers_give_metric_points_in_the_camera_frame():
    """Ground truth: the arm points' optical-frame positions; the model: keypoints deprojected with the depth."""
    pytest.importorskip("pybullet")
    from kp_perception_training.control.episodes import (
        GroundTruthObserver,
        ModelObserver,
        camera_model,
        capture,
        observe_with,
    )
    from kp_perception_training.sim.reach import ReachConfig, ReachScene

    scene = ReachScene(ReachConfig(seed=100), 0)
    try:
        camera = camera_model(scene)
        gt = GroundTruthObserver(64, "metric")
        table, valid = observe_with(gt, *capture(scene, gt))
        assert np.allclose(table[:, :3], scene.arm_optical_points())
        model = ModelObserver(str(REPO / "models" / "pyramids.onnx"), coordinates="metric", camera=camera)
        frame, points, depth = capture(scene, model)
        table, valid = observe_with(model, frame, points, depth)
        assert valid.sum() >= 20 and table.shape == (30, 4)
        xyz = table[valid, :3]
        assert (xyz[:, 2] > 0.2).all() and (xyz[:, 2] < np.nanmax(depth[np.isfinite(depth)]) + 1e-3).all()
        # reprojecting X/Z, Y/Z with K lands where the model put the keypoint, inside the frame
        k = camera.K
        px = np.c_[k[0, 0] * xyz[:, 0] / xyz[:, 2] + k[0, 2], k[1, 1] * xyz[:, 1] / xyz[:, 2] + k[1, 2]]
        flat, _ = ModelObserver(str(REPO / "models" / "pyramids.onnx"))(frame, points)
        expected = (flat[valid, :2] + 1.0) / 2.0 * 63.0
        assert np.abs(px - expected).max() < 0.05
    finally:
        scene.close()


def test_least_visible_move_is_zero_for_a_direction_no_feature_sees():
    from kp_perception_bench.servo_observability import least_visible_move

    je = np.eye(3) * 100.0  # 3 joints, each moves the gripper 100 mm/rad along one axis
    sees_xy = np.zeros((2, 2, 3))
    sees_xy[0, 0, 0] = sees_xy[1, 1, 1] = 50.0  # features follow joints 0 and 1 only
    low, mid = least_visible_move(sees_xy, je)
    assert low < 1e-3 and mid > 1.0
    sees_all = sees_xy.copy()
    sees_all[1, 0, 2] = 50.0
    assert least_visible_move(sees_all, je)[0] > 1.0


def test_servo_observability_measures_another_model_on_the_same_frames(tmp_path):
    """`--also NAME=PATH` puts a further model beside the shipped one: the same file gives the same figures."""
    pytest.importorskip("pybullet")
    from kp_perception.resources import share_path
    from kp_perception_bench import servo_observability

    parser = argparse.ArgumentParser()
    servo_observability.add_arguments(parser)
    shipped = str(share_path("models", "pyramids.onnx"))
    args = parser.parse_args(["--episodes", "1", "--sizes", "64", "--jitter-samples", "2",
                              "--also", f"again={shipped}", "--json", str(tmp_path / "o.json")])
    figures = servo_observability.run(args)["observations"]
    assert figures["again@64px"] == figures["pyramids@64px"]
    assert figures["again_level1@64px"] == figures["pyramids_level1@64px"]
    assert figures["again@64px"]["features_used_median"] > 0


def test_servo_observability_rejects_a_bad_extra_model(tmp_path):
    from kp_perception.errors import KpPerceptionError
    from kp_perception_bench.servo_observability import named_models

    model = tmp_path / "m.onnx"
    model.write_bytes(b"")
    assert named_models([f"m128={model}"]) == {"m128": str(model)}
    for bad, reason in ((str(model), "NAME=PATH"), (f"pyramids={model}", "already measured"),
                        ("m=m_missing.onnx", "no model file")):
        with pytest.raises(KpPerceptionError, match=reason):
            named_models([bad])


def test_bench_servo_rejects_an_unknown_controller_setting():
    from kp_perception.errors import KpPerceptionError
    from kp_perception_bench.servo import ibvs_config

    assert ibvs_config(["damping=0.003"]).damping == 0.003
    with pytest.raises(KpPerceptionError, match="KEY=VALUE"):
        ibvs_config(["dampening=0.003"])


def test_ground_truth_smoke_run_of_bench_servo_reaches_the_goal(tmp_path):
    """5 episodes of `bench servo` on the simulator's projected arm points: the controller and loop work."""
    pytest.importorskip("pybullet")
    from kp_perception_bench import servo

    parser = argparse.ArgumentParser()
    servo.add_arguments(parser)
    args = parser.parse_args(["--episodes", "5", "--variants", "ground_truth", "--quiet",
                              "--json", str(tmp_path / "servo.json")])
    figures = servo.run(args)
    gt = figures["variants"]["ground_truth"]
    assert sum(e["success"] for e in gt["per_episode"]) >= 4, gt["per_episode"]
    # the base and the out-of-frame links do not move in the image: the controller must not rely on them
    used = {s["slot"]: s["mean_weight"] for s in gt["slots_used"]}
    assert used["arm/base"] == 0.0 and used["gripper"] > 0.5


def test_demo_servo_closes_the_loop_through_the_real_nodes(tmp_path):
    """`kp-perception demo servo`: simulator, pyramids_node and servo_node as real processes over ROS 2.

    The shipped model's commands must answer the frames and move the arm towards the goal (this path
    once broke silently when a simulator helper moved: only the in-process variants were tested).
    """
    pytest.importorskip("pybullet")
    import json

    out = tmp_path / "demo"
    proc = subprocess.run(["kp-perception", "demo", "servo", "--out", str(out), "--episodes", "1", "--duration", "5"],
                          capture_output=True, text=True, timeout=200,
                          env={**os.environ, "FASTDDS_BUILTIN_TRANSPORTS": "LARGE_DATA"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames_published"] == 150 and summary["answered_fraction"] > 0.8
    (episode,) = summary["episodes"]
    assert episode["final_position_error_mm"] < episode["initial_position_error_mm"] - 20.0
    assert summary["control_latency_ms_p50"] > 0 and (out / "servo.gif").is_file()


def test_reach_env_passes_gymnasium_check_env():
    pytest.importorskip("pybullet")
    from gymnasium.utils.env_checker import check_env

    from kp_perception_training.control.reach_env import ReachKeypointEnv

    for observer in ("ground_truth", "model"):
        env = ReachKeypointEnv(model=str(REPO / "models" / "pyramids.onnx"), observer=observer, episode_steps=5)
        check_env(env, skip_render_check=True)
        obs, _ = env.reset(seed=1)
        assert env.observation_space.contains(obs)
        env.close()


# --- servo_node: a stale observation never commands motion ------------------------------------------

rclpy = pytest.importorskip("rclpy")


def _observation(stamp_ns: int, xy: np.ndarray):
    from builtin_interfaces.msg import Time

    from kp_perception_msgs.msg import PolicyObservation

    msg = PolicyObservation()
    msg.header.stamp = Time(sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9)
    msg.header.frame_id = "camera"
    msg.model_kind, msg.coordinates = "pyramids", "normalized"
    msg.slot_names = [f"level0/kp{i}" for i in range(len(xy))]
    msg.field_names = ["x", "y", "score"]
    table = np.column_stack([xy, np.ones(len(xy))]).astype(np.float32)
    msg.data = table.reshape(-1).tolist()
    msg.valid = [True] * len(xy)
    msg.image_width = msg.image_height = 64
    return msg


def test_servo_node_stops_the_arm_when_observations_go_stale():
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import JointState

    from kp_perception.nodes.launch_args import (
        LARGE_DATA_ENV,
        NodeLaunchConfig,
        default_params_file,
        node_command,
    )
    from kp_perception_msgs.msg import PolicyObservation

    ns = f"servo_test_{os.getpid()}"
    cfg = NodeLaunchConfig(executable="servo_node", params_file=default_params_file("servo"),
                           parameters={"joint_names": "j1,j2", "observation_timeout": 0.2}, remappings=[],
                           namespace=f"/{ns}")
    proc = subprocess.Popen(node_command(cfg), env={**os.environ, **LARGE_DATA_ENV}, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("servo_test_peer", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    commands: list[tuple[float, np.ndarray]] = []
    lock = threading.Lock()

    def on_command(msg: JointState) -> None:
        with lock:
            commands.append((time.monotonic(), np.array(msg.velocity)))

    node.create_subscription(JointState, f"/{ns}/joint_velocity_command", on_command, 10)
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    goal_pub = node.create_publisher(PolicyObservation, f"/{ns}/goal_observation", latched)
    obs_pub = node.create_publisher(PolicyObservation, f"/{ns}/observation", 10)
    joint_pub = node.create_publisher(JointState, f"/{ns}/joint_states", 10)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while obs_pub.get_subscription_count() < 1 or goal_pub.get_subscription_count() < 1:
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "servo_node did not subscribe"
            time.sleep(0.05)
        time.sleep(0.5)
        goal = np.array([[0.2, 0.1], [-0.3, 0.4], [0.0, -0.2]])
        goal_pub.publish(_observation(time.time_ns(), goal))
        time.sleep(0.3)

        def tick(k: int, stale: bool = False) -> None:
            now = node.get_clock().now()
            stamp = now.nanoseconds - (10**9 if stale else 0)
            q = np.array([0.01 * k, -0.01 * k])
            header = _observation(stamp, goal).header
            joint_pub.publish(JointState(header=header, name=["j1", "j2"], position=q.tolist()))
            time.sleep(0.002)
            obs_pub.publish(_observation(stamp, goal + 0.1 + 0.05 * q[0]))

        for k in range(45):  # fresh observations at 30 Hz: the controller explores, i.e. moves
            tick(k)
            time.sleep(1 / 30)
        time.sleep(0.05)
        with lock:
            moving = [c for _, c in commands if np.any(c != 0)]
        assert moving, "no motion was commanded on fresh observations"

        stopped_feeding = time.monotonic()  # observations stop; joint states keep coming
        while time.monotonic() - stopped_feeding < 1.0:
            joint_pub.publish(JointState(header=_observation(node.get_clock().now().nanoseconds, goal).header,
                                         name=["j1", "j2"], position=[0.0, 0.0]))
            time.sleep(0.02)
        with lock:
            after = [(t - stopped_feeding, c) for t, c in commands if t > stopped_feeding]
        zeros = [t for t, c in after if not np.any(c)]
        assert zeros and zeros[0] <= 0.2 + 0.25, f"no stop within the timeout: {after[:5]}"
        assert all(not np.any(c) for t, c in after if t > 0.2 + 0.1), "motion commanded while stale"

        with lock:
            n_before = len(commands)
        tick(50, stale=True)  # an observation that is already 1 s old when it arrives
        time.sleep(0.3)
        with lock:
            late = [c for _, c in commands[n_before:]]
        assert late and all(not np.any(c) for c in late)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        rclpy.try_shutdown(context=context)


def test_servo_params_file_holds_declared_parameters_of_the_right_types():
    import yaml

    from kp_perception.nodes.servo_node import PARAMETERS

    params = yaml.safe_load((REPO / "config" / "servo.yaml").read_text())["/**"]["ros__parameters"]
    declared = {p.name: p for p in PARAMETERS}
    assert set(params) <= set(declared)
    for name, value in params.items():
        assert type(value) is type(declared[name].default), name
