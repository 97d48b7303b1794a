"""kp_perception_msgs cross a real process boundary (rclpy + Fast DDS) with every field intact.

A subprocess (test/ros_helpers/publish_kp_msgs.py) builds a KeypointPyramid,
a PrototypeDetectionArray and a PolicyObservation from a JSON spec and
publishes them (NaN included: missing geometry is NaN, and must stay NaN); this
process subscribes in its own rclpy context and compares every field with
the spec. A second test checks that rclpy's CDR bytes of the same messages
decode with rosbags (how recorded bags are read offline, with no ROS install).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
HELPER = Path(__file__).resolve().parent / "ros_helpers" / "publish_kp_msgs.py"
MSG_DIR = REPO / "kp_perception_msgs" / "msg"

pytest.importorskip("kp_perception_msgs.msg", reason="kp_perception_msgs is not built (run `make setup`)")


def f32(value: float) -> float:
    """The value as float32 would store it, so expectations compare exactly."""
    return float(np.float32(value))


def geometry(rng: np.random.Generator, valid: bool) -> dict:
    """Camera-geometry fields of one keypoint/detection; an invalid position is NaN, as the nodes publish it."""
    position = [float(v) for v in rng.normal(size=3)] if valid else [float("nan")] * 3
    return {"x_normalized": f32(rng.normal()), "y_normalized": f32(rng.normal()), "position": position,
            "position_valid": valid}


def same(a, b) -> bool:
    """Equality that treats NaN as equal to NaN."""
    return bool(np.array_equal(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64), equal_nan=True))


def make_spec(seed: int = 0) -> dict:
    """Deterministic message contents, with edge values in every integer field."""
    rng = np.random.default_rng(seed)
    level_sizes = [4, 16, 64]
    keypoints = []
    offset = 0
    for level, size in enumerate(level_sizes):
        for m in range(size):
            parent = -1 if level == 0 else offset - level_sizes[level - 1] + m // 4
            keypoints.append({
                "x": f32(rng.uniform(-0.5, 639.5)), "y": f32(rng.uniform(-0.5, 479.5)),
                "score": f32(rng.uniform(0, 1)), "level": level, "parent": parent,
                **geometry(rng, valid=m % 3 != 0),
            })
        offset += size
    keypoints[-1]["level"] = 255  # uint8 extreme
    header = {"sec": 1_700_000_123, "nanosec": 999_999_999, "frame_id": "camera_optical_frame/ü"}
    detections = [
        {"x": f32(rng.uniform(0, 640)), "y": f32(rng.uniform(0, 480)), "score": f32(rng.uniform(0, 1)),
         "prototype": int(rng.integers(0, 8)), "distance": f32(rng.uniform(0, 2)),
         "descriptor": [f32(v) for v in rng.normal(size=64)], **geometry(rng, valid=i % 2 == 0)}
        for i in range(10)
    ]
    detections[0]["descriptor"] = []  # empty array
    detections[1]["prototype"] = -(2**31)  # int32 extreme
    detections[2]["distance"] = f32(3.4e38)
    observation = {
        "header": header, "image_width": 640, "image_height": 480, "model_kind": "tusk",
        "coordinates": "metric", "slot_names": [f"prototype{m}" for m in range(8)],
        "field_names": ["x", "y", "z", "score"],
        "data": [f32(v) for v in rng.normal(size=32)], "valid": [bool(v) for v in rng.integers(0, 2, 8)],
    }
    observation["data"][4:8] = [float("nan")] * 4
    observation["valid"][1] = False
    return {
        "pyramid": {"header": header, "image_width": 640, "image_height": 480, "has_camera_info": True,
                    "has_depth": False, "level_sizes": level_sizes, "keypoints": keypoints},
        "detections": {"header": header, "image_width": 2**32 - 1, "image_height": 1, "has_camera_info": False,
                       "has_depth": True, "num_prototypes": 8, "detections": detections},
        "observation": observation,
    }


def assert_header(msg, spec: dict) -> None:
    assert msg.header.stamp.sec == spec["header"]["sec"]
    assert msg.header.stamp.nanosec == spec["header"]["nanosec"]
    assert msg.header.frame_id == spec["header"]["frame_id"]
    assert msg.image_width == spec["image_width"]
    assert msg.image_height == spec["image_height"]
    if "has_depth" in spec:
        assert (msg.has_camera_info, msg.has_depth) == (spec["has_camera_info"], spec["has_depth"])


def assert_geometry(got, want: dict, what: str) -> None:
    assert same([got.x_normalized, got.y_normalized], [want["x_normalized"], want["y_normalized"]]), what
    assert same([got.position.x, got.position.y, got.position.z], want["position"]), what
    assert got.position_valid == want["position_valid"], what


def assert_pyramid_equal(msg, spec: dict) -> None:
    """Every field of a received KeypointPyramid (rclpy or rosbags) equals the spec."""
    assert_header(msg, spec)
    assert list(msg.level_sizes) == spec["level_sizes"]
    assert len(msg.keypoints) == len(spec["keypoints"]) == sum(spec["level_sizes"])
    for i, (got, want) in enumerate(zip(msg.keypoints, spec["keypoints"], strict=True)):
        assert (got.x, got.y, got.score, got.level, got.parent) == (
            want["x"], want["y"], want["score"], want["level"], want["parent"]
        ), f"keypoint {i}"
        assert_geometry(got, want, f"keypoint {i}")


def assert_detections_equal(msg, spec: dict) -> None:
    """Every field of a received PrototypeDetectionArray, descriptors included, equals the spec."""
    assert_header(msg, spec)
    assert msg.num_prototypes == spec["num_prototypes"]
    assert len(msg.detections) == len(spec["detections"])
    for i, (got, want) in enumerate(zip(msg.detections, spec["detections"], strict=True)):
        assert (got.x, got.y, got.score, got.prototype, got.distance) == (
            want["x"], want["y"], want["score"], want["prototype"], want["distance"]
        ), f"detection {i}"
        assert_geometry(got, want, f"detection {i}")
        descriptor = np.asarray(got.descriptor, dtype=np.float32)
        assert descriptor.shape == (len(want["descriptor"]),), f"detection {i} descriptor length"
        np.testing.assert_array_equal(descriptor, np.asarray(want["descriptor"], dtype=np.float32))


def assert_observation_equal(msg, spec: dict) -> None:
    """Every field of a received PolicyObservation equals the spec (NaN stays NaN)."""
    assert_header(msg, spec)
    assert (msg.model_kind, msg.coordinates) == (spec["model_kind"], spec["coordinates"])
    assert list(msg.slot_names) == spec["slot_names"] and list(msg.field_names) == spec["field_names"]
    assert same(np.asarray(msg.data, dtype=np.float32), np.asarray(spec["data"], dtype=np.float32))
    assert [bool(v) for v in msg.valid] == spec["valid"]


@pytest.mark.timeout(90)
def test_pyramid_and_detections_cross_processes_with_every_field(tmp_path):
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    from kp_perception_msgs.msg import KeypointPyramid, PolicyObservation, PrototypeDetectionArray

    spec = make_spec()
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec))
    prefix = f"/kp_roundtrip_{os.getpid()}"
    qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5,
                     reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)

    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("kp_roundtrip_receiver", context=context)
    received: dict[str, object] = {}
    node.create_subscription(KeypointPyramid, f"{prefix}/pyramid",
                             lambda m: received.setdefault("pyramid", m), qos)
    node.create_subscription(PrototypeDetectionArray, f"{prefix}/detections",
                             lambda m: received.setdefault("detections", m), qos)
    node.create_subscription(PolicyObservation, f"{prefix}/observation",
                             lambda m: received.setdefault("observation", m), qos)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)

    proc = subprocess.Popen(
        [sys.executable, str(HELPER), str(spec_path), "--prefix", prefix, "--timeout", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy(),
    )
    try:
        # Discovery takes 0.05-2 s here; the publisher repeats until we have both messages.
        deadline = time.monotonic() + 45
        while len(received) < 3 and time.monotonic() < deadline and proc.poll() is None:
            executor.spin_once(timeout_sec=0.1)
        assert len(received) == 3, (
            f"received only {sorted(received)} within the deadline; publisher exit={proc.poll()}"
        )
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=context)
        try:
            out, err = proc.communicate(timeout=15)  # it leaves once we have gone
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, f"publisher failed ({proc.returncode}): {err}"
    assert "matched" in out
    assert_pyramid_equal(received["pyramid"], spec["pyramid"])
    assert_detections_equal(received["detections"], spec["detections"])
    assert_observation_equal(received["observation"], spec["observation"])


def test_rclpy_cdr_decodes_with_rosbags_for_offline_bags():
    """Bags recorded from the nodes are read offline with rosbags; its CDR must match rclpy's."""
    from rclpy.serialization import serialize_message
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    sys.path.insert(0, str(HELPER.parent))
    try:
        from publish_kp_msgs import build_detections, build_observation, build_pyramid
    finally:
        sys.path.remove(str(HELPER.parent))

    store = get_typestore(Stores.ROS2_KILTED)
    types = {}
    for path in sorted(MSG_DIR.glob("*.msg")):
        types.update(get_types_from_msg(path.read_text(), f"kp_perception_msgs/msg/{path.stem}"))
    store.register(types)

    spec = make_spec(seed=1)
    pyramid = store.deserialize_cdr(serialize_message(build_pyramid(spec["pyramid"])),
                                    "kp_perception_msgs/msg/KeypointPyramid")
    assert_pyramid_equal(pyramid, spec["pyramid"])
    detections = store.deserialize_cdr(serialize_message(build_detections(spec["detections"])),
                                       "kp_perception_msgs/msg/PrototypeDetectionArray")
    assert_detections_equal(detections, spec["detections"])
    observation = store.deserialize_cdr(serialize_message(build_observation(spec["observation"])),
                                        "kp_perception_msgs/msg/PolicyObservation")
    assert_observation_equal(observation, spec["observation"])
