"""Camera geometry in the real nodes: image + camera_info + depth in, 3D keypoints out; bad camera_info.

The scene has a known depth: an aligned 16UC1 image whose every column is a
known distance (800 + 2u mm), with a band of missing returns (0). The
expected 3D point of each published keypoint is worked out here from its
pixel position, independently of the node's code: OpenCV's undistortPoints
with the K and D that were published, and the median of the valid pixels of
the 3×3 window, gathered pixel by pixel.
"""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from kp_perception.image_conversion import numpy_to_image  # noqa: E402
from kp_perception.observation import KeypointObservation, ObservationLayout  # noqa: E402
from kp_perception_msgs.msg import KeypointPyramid, PolicyObservation  # noqa: E402
from test.test_nodes import H, NodeProcess, Peer, W, make_frame, stamp_of, wait_for  # noqa: E402

pytestmark = pytest.mark.timeout(150)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from test.model_fixtures import make_model

    return {"pyramids": make_model("pyramids", tmp_path_factory.mktemp("geometry_models"), 64)}


@pytest.fixture(scope="module")
def peer():
    p = Peer()
    yield p
    p.close()

K = np.array([[150.0, 0.0, 79.5], [0.0, 148.0, 59.0], [0.0, 0.0, 1.0]])
D = [-0.2, 0.05, 0.001, -0.001, 0.01]
# Columns with no depth return. Initial-weights keypoints gather at x = 79-80 (the image centre): with the
# 3-pixel window, those at 79 keep one valid column (78) and those at 80 have none.
HOLE = (79, 82)
WINDOW = 3


def depth_mm() -> np.ndarray:
    cols = 800 + 2 * np.arange(W)
    depth = np.broadcast_to(cols, (H, W)).astype(np.uint16).copy()
    depth[:, HOLE[0]:HOLE[1]] = 0
    return depth


def camera_info(header: Header, width: int = W, height: int = H) -> CameraInfo:
    info = CameraInfo(header=header, width=width, height=height, distortion_model="plumb_bob")
    info.k = K.reshape(-1).tolist()
    info.d = list(D)
    info.p = [K[0, 0], 0.0, K[0, 2], 0.0, 0.0, K[1, 1], K[1, 2], 0.0, 0.0, 0.0, 1.0, 0.0]
    return info


def expected_point(u: float, v: float, depth: np.ndarray, window: int = WINDOW) -> np.ndarray | None:
    """The 3D point of pixel (u, v) in this scene, or None where the window holds no valid depth."""
    cu, cv_ = int(round(u)), int(round(v))
    if not (0 <= cu < W and 0 <= cv_ < H):
        return None
    r = window // 2
    values = [depth[y, x] * 1e-3 for y in range(cv_ - r, cv_ + r + 1) for x in range(cu - r, cu + r + 1)
              if 0 <= x < W and 0 <= y < H and depth[y, x] > 0]
    if not values:
        return None
    z = float(np.median(values))
    ray = cv2.undistortPoints(np.array([[[u, v]]], np.float64), K, np.array(D),
                              criteria=(cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-12)).reshape(2)
    return np.array([ray[0] * z, ray[1] * z, z])


def publish_scene(participant: Peer, pubs: dict, i: int, sent: dict, info_size: tuple[int, int] = (W, H)) -> None:
    """camera_info, depth (when a publisher is given) and image of frame i, all with one stamp."""
    header = Header(frame_id="camera_color_optical_frame", stamp=participant.node.get_clock().now().to_msg())
    pubs["info"].publish(camera_info(header, *info_size))
    if "depth" in pubs:
        pubs["depth"].publish(numpy_to_image(depth_mm(), "16UC1", header=header))
    pubs["image"].publish(numpy_to_image(make_frame(i), "rgb8", header=header))
    sent[(header.stamp.sec, header.stamp.nanosec)] = i


def test_image_camera_info_and_depth_give_the_3d_points_of_a_scene_of_known_depth(peer, models):
    ns = "pyr_3d"
    node = NodeProcess("pyramids", models["pyramids"], ns, depth_topic=f"/{ns}/camera/depth/image_raw",
                       extra={"publish_observation": "true", "observation_coordinates": "metric",
                              "depth_wait": "0.1", "depth_window": str(WINDOW)})
    try:
        pyramids = peer.collect(KeypointPyramid, f"{node.ns}/keypoints")
        observations = peer.collect(PolicyObservation, f"{node.ns}/keypoints_observation")
        pubs = {
            "image": peer.node.create_publisher(Image, node.image_topic, qos_profile_sensor_data),
            "info": peer.node.create_publisher(CameraInfo, f"/{ns}/camera/camera_info", 10),  # beside the image
            "depth": peer.node.create_publisher(Image, f"/{ns}/camera/depth/image_raw", qos_profile_sensor_data),
        }
        wait_for(lambda: all(p.get_subscription_count() > 0 for p in pubs.values()), 30,
                 "the node's image, camera_info and depth subscriptions", node)
        sent: dict = {}
        deadline = time.monotonic() + 40
        i = 0
        while sum(m.has_depth for m in list(pyramids)) < 4 or not observations:
            assert time.monotonic() < deadline, f"no 3D output\n{node.stderr()}"
            publish_scene(peer, pubs, i, sent)
            i += 1
            time.sleep(0.1)

        depth = depth_mm()
        checked = {"valid": 0, "invalid": 0}
        for msg in [m for m in list(pyramids) if m.has_depth]:
            assert stamp_of(msg) in sent and msg.header.frame_id == "camera_color_optical_frame"
            assert msg.has_camera_info
            for kp in msg.keypoints:
                ray = cv2.undistortPoints(np.array([[[kp.x, kp.y]]], np.float64), K, np.array(D)).reshape(2)
                assert np.allclose([kp.x_normalized, kp.y_normalized], ray, atol=1e-4)
                want = expected_point(kp.x, kp.y, depth)
                got = np.array([kp.position.x, kp.position.y, kp.position.z])
                if want is None:
                    assert not kp.position_valid and np.isnan(got).all()  # flagged, never 0
                    checked["invalid"] += 1
                else:
                    assert kp.position_valid
                    assert np.abs(got - want).max() < 1e-4, (kp.x, kp.y, got, want)
                    checked["valid"] += 1
        assert checked["valid"] > 0 and checked["invalid"] > 0

        # The metric observation carries the same points, slot i = keypoint i, invalid where no depth.
        layout = ObservationLayout.from_sidecar(models["pyramids"], "metric")
        by_stamp = {stamp_of(m): m for m in pyramids}
        obs_msg = next(o for o in reversed(list(observations)) if stamp_of(o) in by_stamp)
        obs = KeypointObservation.from_msg(obs_msg, expected=layout)
        kps = by_stamp[stamp_of(obs_msg)].keypoints
        assert obs.valid.tolist() == [k.position_valid for k in kps]
        for row, kp, ok in zip(obs.values, kps, obs.valid, strict=True):
            if ok:
                assert np.allclose(row, [kp.position.x, kp.position.y, kp.position.z, kp.score], atol=1e-5)
            else:
                assert np.isnan(row).all()
    finally:
        assert node.stop() == 0, node.stderr()


def test_camera_info_of_another_size_is_rejected_with_a_warning_and_a_diagnostic_and_the_node_goes_on(peer, models):
    ns = "pyr_badinfo"
    node = NodeProcess("pyramids", models["pyramids"], ns)
    try:
        pyramids = peer.collect(KeypointPyramid, f"{node.ns}/keypoints")
        diags = peer.collect(DiagnosticArray, "/diagnostics")
        pubs = {
            "image": peer.node.create_publisher(Image, node.image_topic, qos_profile_sensor_data),
            "info": peer.node.create_publisher(CameraInfo, f"/{ns}/camera/camera_info", 10),
        }
        wait_for(lambda: all(p.get_subscription_count() > 0 for p in pubs.values()), 30,
                 "the node's subscriptions", node)

        def status() -> DiagnosticStatus | None:
            for array in reversed(list(diags)):
                for s in array.status:
                    if s.name.startswith(f"{node.ns}/pyramids_node"):
                        return s
            return None

        def rejected() -> bool:
            s = status()
            return s is not None and s.level == DiagnosticStatus.WARN and "320x240" in s.message

        sent: dict = {}
        deadline = time.monotonic() + 40
        i = 0
        while not (rejected() and len(pyramids) >= 3 and "camera_info is for 320x240" in node.stderr()):
            assert time.monotonic() < deadline, f"no rejection seen\n{node.stderr()}"
            publish_scene(peer, pubs, i, sent, info_size=(2 * W, 2 * H))
            i += 1
            time.sleep(0.1)
        values = {kv.key: kv.value for kv in status().values}
        assert int(values["camera_info_rejected_frames"]) > 0 and values["camera_info"].startswith("rejected")
        assert f"frame is {W}x{H}" in node.stderr()
        assert all(not m.has_camera_info and np.isnan(m.keypoints[0].x_normalized) for m in list(pyramids))
        assert node.proc.poll() is None

        # The right camera_info arrives: geometry comes back, the diagnostic returns to OK.
        n_before = len(pyramids)
        deadline = time.monotonic() + 30
        while not (any(m.has_camera_info for m in pyramids[n_before:]) and status().level == DiagnosticStatus.OK):
            assert time.monotonic() < deadline, f"geometry did not come back\n{node.stderr()}"
            publish_scene(peer, pubs, i, sent)
            i += 1
            time.sleep(0.1)
        assert node.stderr().count("camera_info is for 320x240") < i  # throttled, not once per frame
    finally:
        assert node.stop() == 0, node.stderr()


def test_metric_observation_without_depth_is_a_clear_start_up_error(models):
    node = NodeProcess("pyramids", models["pyramids"], "pyr_metric_err",
                       extra={"publish_observation": "true", "observation_coordinates": "metric"})
    node.proc.wait(timeout=60)
    node._reader.join(timeout=5)
    lines = [ln for ln in node.lines if ln.strip()]
    assert node.proc.returncode != 0 and len(lines) == 1, node.stderr()
    assert "use_depth:=true" in lines[0] and "Traceback" not in node.stderr()


def test_launch_helper_remaps_depth_and_record_command_records_what_policy_learning_needs():
    from kp_perception.errors import ConfigError
    from kp_perception.nodes.launch_args import DEFAULT_RECORD_TOPICS, node_launch_config, record_command

    cfg = node_launch_config("pyramids", params_file="/p.yaml", depth_topic="/cam/depth/image_raw/")
    assert ("depth", "/cam/depth/image_raw") in cfg.remappings and cfg.parameters["use_depth"] is True
    assert "use_depth" not in node_launch_config("pyramids", params_file="/p.yaml").parameters

    default = record_command("bags/ep1")
    assert default[-len(DEFAULT_RECORD_TOPICS):] == list(DEFAULT_RECORD_TOPICS)
    for topic in ("/camera/camera_info", "/camera/depth/image_raw", "/joint_states", "/tf", "/tf_static"):
        assert topic in default
    cmd = record_command("bags/ep2", "/cam/image_raw /cam/camera_info", "sqlite3", extra_topics="/joint_states",
                         max_bag_size="1000000000", max_bag_duration=60, compression="zstd")
    assert cmd == ["ros2", "bag", "record", "-s", "sqlite3", "-o", "bags/ep2", "--max-bag-size", "1000000000",
                   "--max-bag-duration", "60", "--compression-mode", "file", "--compression-format", "zstd",
                   "/cam/image_raw", "/cam/camera_info", "/joint_states"]
    assert "--storage-preset-profile" in record_command("bags/ep3", compression="zstd")  # mcap: chunk compression
    with pytest.raises(ConfigError, match="compression"):
        record_command("bags/ep4", compression="lz4")
    with pytest.raises(ConfigError, match="max_bag_size"):
        record_command("bags/ep4", max_bag_size="big")


def test_the_robot_guide_policy_loop_runs_against_the_node(peer, models, tmp_path):
    """docs/robot_guide.md's example, as written, against a real node, joint states and a policy stand-in."""
    import re
    import subprocess
    import sys

    from sensor_msgs.msg import JointState
    from std_msgs.msg import Float64MultiArray

    from kp_perception.nodes.launch_args import LARGE_DATA_ENV
    from test.test_nodes import REPO

    guide = (REPO / "docs" / "robot_guide.md").read_text()
    code = next(b for b in re.findall(r"```python\n(.*?)```", guide, re.S) if "ObservationJointPairer" in b)
    stand_in = 'policy = lambda obs, q: np.full(len(JOINTS), 1.0 + obs["valid"].sum() + q[0])  # noqa: E731\n'
    code, n = re.subn(r"^policy = lambda.*\n", stand_in, code, flags=re.M)
    assert n == 1
    code = code.replace('"/models/pyramids.onnx"', repr(str(models["pyramids"])))
    script = tmp_path / "policy_loop.py"
    script.write_text(code)

    ns = "pyr_policy"
    node = NodeProcess("pyramids", models["pyramids"], ns, extra={"publish_observation": "true"})
    loop = subprocess.Popen(
        [sys.executable, str(script), "--ros-args", "-r", f"/keypoints_observation:={node.ns}/keypoints_observation",
         "-r", f"/joint_states:={node.ns}/joint_states", "-r", f"/velocity_controller/commands:={node.ns}/commands"],
        env={**__import__("os").environ, **LARGE_DATA_ENV}, stderr=subprocess.PIPE, text=True)
    try:
        commands = peer.collect(Float64MultiArray, f"{node.ns}/commands")
        image_pub = peer.node.create_publisher(Image, node.image_topic, qos_profile_sensor_data)
        joint_pub = peer.node.create_publisher(JointState, f"{node.ns}/joint_states", 50)
        wait_for(lambda: image_pub.get_subscription_count() > 0 and joint_pub.get_subscription_count() > 0, 30,
                 "the node and the policy loop", node)
        wait_for(lambda: any(all(v == 0.0 for v in c.data) for c in commands), 30, "a stop command (no input yet)")
        deadline = time.monotonic() + 40
        i = 0
        while not any(c.data[0] > 1.0 for c in list(commands)):
            assert time.monotonic() < deadline and loop.poll() is None, f"no policy command\n{node.stderr()}"
            header = Header(frame_id="camera_color_optical_frame", stamp=peer.node.get_clock().now().to_msg())
            for dt in (-0.01, 0.0, 0.01):  # joint states around the image stamp
                js = JointState(header=Header(stamp=header.stamp), name=[f"panda_joint{j}" for j in range(7, 0, -1)],
                                position=[0.5 + j for j in range(7)])
                js.header.stamp.nanosec = max(0, min(999_999_999, header.stamp.nanosec + int(dt * 1e9)))
                joint_pub.publish(js)
            image_pub.publish(numpy_to_image(make_frame(i), "rgb8", header=header))
            i += 1
            time.sleep(0.05)
        # 1 + valid slots (all of them at threshold 0) + q of panda_joint1 (listed last: 0.5 + 6).
        slots = ObservationLayout.from_sidecar(models["pyramids"]).shape[0]
        assert any(c.data[0] == pytest.approx(1.0 + slots + 6.5) for c in list(commands))
    finally:
        loop.terminate()
        loop.wait(timeout=10)
        assert node.stop() == 0, node.stderr()
