"""The consumer API: fixed-slot observations, their message round trip, the gymnasium space, stamp pairing."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from kp_perception.errors import ObservationError
from kp_perception.observation import (
    KeypointObservation,
    ObservationJointPairer,
    ObservationLayout,
    joint_vector,
    observation_space,
    observe,
)
from kp_perception.results import KeypointPyramidResult, PrototypeDetectionResult
from kp_perception.sidecar import make_sidecar, write_sidecar
from kp_perception.stamp_matching import StampBuffer

W, H = 101, 51  # (W-1)/2 = 50 and (H-1)/2 = 25: normalised values are easy to write down
TUSK_SIDECAR = make_sidecar("tusk", 64, 64, num_keypoints=4, num_prototypes=5, descriptor_dim=3)
PYRAMID_SIDECAR = make_sidecar("pyramids", 64, 64, level_sizes=(2, 4), parents=(-1, -1, 0, 0, 1, 1))


def detections(order: list[int], scores: list[float]) -> PrototypeDetectionResult:
    """Four detections (prototypes 3, 1, 3, 0) listed in ``order`` with per-detection ``scores``."""
    xy = np.array([[0, 0], [50, 25], [100, 50], [25, 0]], np.float32)
    protos = np.array([3, 1, 3, 0], np.int32)
    points = np.array([[0.1, 0.2, 1.0], [0.0, 0.0, 2.0], [np.nan] * 3, [0.3, 0.0, 1.5]], np.float32)
    valid = np.array([True, True, False, True])
    s = np.array(scores, np.float32)
    idx = np.array(order)
    return PrototypeDetectionResult(
        xy=xy[idx], scores=s[idx], prototypes=protos[idx], distances=np.zeros(4, np.float32)[idx],
        descriptors=np.zeros((4, 3), np.float32)[idx], num_prototypes=5, image_width=W, image_height=H,
        normalized_xy=None, points=points[idx], point_valid=valid[idx],
    )


def test_tusk_slots_hold_each_prototypes_best_detection_whatever_the_score_order():
    layout = ObservationLayout.from_sidecar(TUSK_SIDECAR, "normalized")
    assert layout.slot_names == tuple(f"prototype{m}" for m in range(5))
    a = observe(detections([0, 1, 2, 3], [0.9, 0.5, 0.6, 0.4]), layout, threshold=0.45)
    # Same detections, listed strongest-last, and prototype 3's two instances swap their ranking.
    b = observe(detections([3, 2, 1, 0], [0.6, 0.5, 0.9, 0.4]), layout, threshold=0.45)
    assert a.valid.tolist() == b.valid.tolist() == [False, True, False, True, False]
    assert np.allclose(a.values[1], [0.0, 0.0, 0.5]) and np.allclose(b.values[1], [0.0, 0.0, 0.5])
    assert np.allclose(a.values[3], [-1.0, -1.0, 0.9])  # detection 0 (0.9 beats 0.6)
    assert np.allclose(b.values[3], [1.0, 1.0, 0.9])  # now detection 2 is the best of prototype 3
    assert np.isnan(a.values[[0, 2, 4]]).all()  # 0 under the threshold, 2 and 4 never detected
    # Metric: prototype 3's best detection has no depth, so its slot is invalid, not 0.
    metric = observe(detections([3, 2, 1, 0], [0.6, 0.5, 0.9, 0.4]),
                     ObservationLayout.from_sidecar(TUSK_SIDECAR, "metric"), threshold=0.0)
    assert metric.layout.field_names == ("x", "y", "z", "score")
    assert metric.valid.tolist() == [True, True, False, False, False]
    assert np.allclose(metric.values[1], [0.0, 0.0, 2.0, 0.5]) and np.isnan(metric.values[3]).all()


def pyramid(scores: list[float], with_points: bool = True) -> KeypointPyramidResult:
    xy = np.array([[0, 0], [100, 50], [50, 25], [-3, 60], [75, 12.5], [25, 37.5]], np.float32)
    points = np.arange(18, dtype=np.float32).reshape(6, 3) + 1.0
    valid = np.array([True, True, True, True, False, True])
    return KeypointPyramidResult(
        xy=xy, scores=np.array(scores, np.float32), levels=np.array([0, 0, 1, 1, 1, 1], np.int32),
        parents=np.array([-1, -1, 0, 0, 1, 1], np.int32), level_sizes=(2, 4), image_width=W, image_height=H,
        points=np.where(valid[:, None], points, np.nan) if with_points else None,
        point_valid=valid if with_points else None,
    )


def test_pyramid_slots_are_the_keypoint_indices_normalised_and_clipped_to_the_image():
    layout = ObservationLayout.from_sidecar(PYRAMID_SIDECAR)
    assert layout.slot_names == ("level0/kp0", "level0/kp1", "level1/kp0", "level1/kp1", "level1/kp2", "level1/kp3")
    obs = observe(pyramid([0.9, 0.8, 0.1, 0.7, 0.6, 0.5]), layout, threshold=0.3)
    assert obs.valid.tolist() == [True, True, False, True, True, True]
    assert np.allclose(obs.values[[0, 1, 3, 4, 5], :2],
                       [[-1, -1], [1, 1], [-1, 1], [0.5, -0.5], [-0.5, 0.5]])  # (-3, 60) clipped to the corner
    metric = observe(pyramid([0.9] * 6), ObservationLayout.from_sidecar(PYRAMID_SIDECAR, "metric"))
    assert metric.valid.tolist() == [True, True, True, True, False, True]
    assert np.allclose(metric.values[5], [16, 17, 18, 0.9])
    no_depth = observe(pyramid([0.9] * 6, with_points=False), metric.layout)
    assert not no_depth.valid.any() and np.isnan(no_depth.values).all()
    with pytest.raises(ObservationError, match="6 keypoints but the layout has 1 slots"):
        observe(pyramid([0.9] * 6), ObservationLayout.from_sidecar(make_sidecar(
            "pyramids", 64, 64, level_sizes=(1,), parents=(-1,))))


@pytest.mark.parametrize("coordinates", ["normalized", "metric"])
def test_the_gymnasium_space_from_the_sidecar_contains_the_observations(tmp_path, coordinates):
    pytest.importorskip("gymnasium")
    write_sidecar(tmp_path / "tusk.json", TUSK_SIDECAR)
    write_sidecar(tmp_path / "pyramids.json", PYRAMID_SIDECAR)
    for name, sample in (("tusk", detections([0, 1, 2, 3], [0.9, 0.5, 0.6, 0.4])), ("pyramids", pyramid([0.9, 0.9, 0.1, 0.9, 0.9, 0.9]))):
        space = observation_space(tmp_path / f"{name}.onnx", coordinates)  # the model path: its sidecar is read
        layout = ObservationLayout.from_sidecar(tmp_path / f"{name}.json", coordinates)
        obs = observe(sample, layout, threshold=0.45)
        assert space["keypoints"].shape == obs.values.shape == layout.shape
        assert not obs.valid.all()  # invalid slots are in the sample too (filled)
        assert space.contains(obs.as_dict())
        assert not space.contains({"keypoints": obs.values, "valid": obs.valid.astype(np.int8)})  # NaN is not
        assert space.contains(space.sample())
    beyond = np.full(layout.shape, 0.5, np.float32)
    beyond[:, 0] = 2.0
    out_of_image = {"keypoints": beyond, "valid": np.ones(layout.shape[0], np.int8)}
    assert space.contains(out_of_image) == (coordinates == "metric")  # normalised x, y stay in [-1, 1]


def test_observation_message_round_trip_keeps_slots_nan_and_flags():
    pytest.importorskip("kp_perception_msgs.msg", reason="kp_perception_msgs is not built (run `make setup`)")
    from std_msgs.msg import Header

    from kp_perception.ros_conversion import observation_to_msg

    layout = ObservationLayout.from_sidecar(TUSK_SIDECAR, "metric")
    obs = observe(detections([3, 2, 1, 0], [0.6, 0.5, 0.9, 0.4]), layout)
    header = Header(frame_id="camera_color_optical_frame")
    header.stamp.sec, header.stamp.nanosec = 12, 345
    msg = observation_to_msg(obs, header)
    back = KeypointObservation.from_msg(msg, expected=layout)
    assert back.stamp_ns == 12_000_000_345 and back.frame_id == "camera_color_optical_frame"
    assert back.layout == layout and back.valid.tolist() == obs.valid.tolist()
    assert np.array_equal(back.values, obs.values, equal_nan=True)
    assert (back.image_width, back.image_height) == (W, H)
    with pytest.raises(ObservationError, match="differs"):
        KeypointObservation.from_msg(msg, expected=ObservationLayout.from_sidecar(TUSK_SIDECAR, "normalized"))
    msg.valid = msg.valid[:-1]
    with pytest.raises(ObservationError, match="expected 5x4"):
        KeypointObservation.from_msg(msg)


def stamped(sec: float, **fields) -> SimpleNamespace:
    ns = int(round(sec * 1e9))
    header = SimpleNamespace(stamp=SimpleNamespace(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000),
                             frame_id="cam")
    return SimpleNamespace(header=header, **fields)


def joint_state(sec: float, q: list[float]) -> SimpleNamespace:
    return stamped(sec, name=["j2", "j1"], position=q, velocity=[0.0, 0.0], effort=[])


def test_pairer_matches_the_newest_observation_with_the_nearest_joint_state_within_tolerance():
    layout = ObservationLayout.from_sidecar(PYRAMID_SIDECAR)
    obs_at = lambda t: KeypointObservation(  # noqa: E731
        stamp_ns=int(round(t * 1e9)), frame_id="cam", layout=layout,
        values=np.zeros(layout.shape, np.float32), valid=np.ones(layout.shape[0], bool))
    pairer = ObservationJointPairer(tolerance=0.005)
    assert pairer.latest() is None
    pairer.add_observation(obs_at(10.0))
    assert pairer.latest() is None  # no joint state yet
    for k in range(20):  # 100 Hz joint states from 9.95 s to 10.14 s
        pairer.add_joint_state(joint_state(9.95 + 0.01 * k, [k, -k]))
    pair = pairer.latest()
    assert pair.observation.stamp_ns == 10_000_000_000
    assert abs(pair.dt) < 1e-6 and list(pair.joint_state.position) == [5, -5]  # nearest, not the newest
    pairer.add_observation(obs_at(9.9))  # older than what we have: ignored
    assert pairer.latest().observation.stamp_ns == 10_000_000_000
    pairer.add_observation(obs_at(10.3))  # no joint state within 5 ms of it
    assert pairer.latest() is None
    assert joint_vector(pair.joint_state, ["j1", "j2"]).tolist() == [-5.0, 5.0]
    with pytest.raises(ObservationError, match="j3"):
        joint_vector(pair.joint_state, ["j1", "j3"])


def test_stamp_buffer_finds_the_nearest_stamp_regardless_of_arrival_order():
    buf: StampBuffer[str] = StampBuffer(3)
    for stamp, item in ((300, "c"), (100, "a"), (200, "b"), (400, "d")):  # "c" arrives first; capacity drops it
        buf.add(stamp, item)
    assert len(buf) == 3 and buf.newest_stamp() == 400
    assert buf.nearest(190, 20) == ("b", 10)
    assert buf.nearest(300, 50) is None  # "c" was the oldest arrival and is gone
    assert buf.nearest(260, 70) == ("b", -60)


def test_consumer_api_imports_neither_torch_nor_rclpy_nor_gymnasium():
    code = ("import json, sys\nimport kp_perception.observation\n"
            "print(json.dumps(sorted(m for m in ('torch', 'rclpy', 'gymnasium') if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
