"""`kp-perception demo pyramids` end to end: real simulator, real pyramids_node process, real topics, shipped model.

One small demo run (24 frames of 128×128) is shared by the tests of this
module; each test checks one promise of the demo's outputs. The model is the
shipped ``models/pyramids.onnx`` (trained by ``make models``).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import cv2
import imageio.v3 as iio
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "models" / "pyramids.onnx"
FRAMES = 24

pytestmark = pytest.mark.timeout(300)


def _demo(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(["kp-perception", "demo", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    if not MODEL.is_file():
        pytest.skip(f"{MODEL.relative_to(REPO)} is not in this checkout yet (make models writes it)")
    out = tmp_path_factory.mktemp("demo") / "out"
    proc = _demo("pyramids", "--out", str(out), "--frames", str(FRAMES), "--size", "128", "--rate", "10")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    return out, summary, proc.stdout


def test_demo_prints_where_the_outputs_are(demo_run):
    out, summary, stdout = demo_run
    assert f"outputs in {out}/" in stdout
    for key in ("gif", "mp4", "png", "summary", "bag"):
        assert summary["outputs"][key] in stdout
        assert Path(summary["outputs"][key]).exists()


def test_node_answered_frames_and_shut_down_cleanly(demo_run):
    _, summary, _ = demo_run
    assert summary["frames_sent"] == FRAMES
    # best-effort input and a newest-frame node may drop a frame under load, never most of them
    assert summary["frames_received"] >= FRAMES * 0.75
    assert summary["unmatched_messages"] == 0
    assert summary["node_exit_code"] == 0
    assert summary["output_rate_hz"] > 0
    lat = summary["latency_ms"]
    assert 0 < lat["p50"] <= lat["p99"] <= lat["max"] < 5000
    assert summary["node_diagnostics"]["backend"] == "onnxruntime"


def test_gif_and_mp4_have_one_frame_per_answered_frame(demo_run):
    out, summary, _ = demo_run
    gif = iio.imread(out / "keypoints.gif", index=None)
    assert gif.shape[0] == summary["frames_received"]
    assert gif.shape[1:3] == (128, 128)
    cap = cv2.VideoCapture(str(out / "keypoints.mp4"))
    count = 0
    while cap.read()[0]:
        count += 1
    cap.release()
    assert count == summary["frames_received"]


def test_drawing_comes_from_the_received_messages(demo_run):
    """The PNG is the raw frame plus what the node sent: it differs from the frame at the received keypoints."""
    from rclpy.serialization import deserialize_message
    from rosbags.rosbag2 import Reader

    from kp_perception.sequences import open_sequences
    from kp_perception_msgs.msg import KeypointPyramid

    out, summary, _ = demo_run
    index = summary["outputs"]["png_frame"]
    (sequence,) = open_sequences(out / "recording" / "episode_000")
    raw = sequence.read_frame(index)
    drawn = iio.imread(out / "keypoints.png")
    with Reader(out / "node_output") as reader:
        conns = [c for c in reader.connections if c.topic == "/keypoints"]
        msgs = [deserialize_message(data, KeypointPyramid) for _, _, data in reader.messages(connections=conns)]
    assert len(msgs) == len(summary["answered_frames"]) == summary["frames_received"]
    # stamps grow with the frame index, so the k-th message by stamp answers the k-th answered frame
    msgs.sort(key=lambda m: (m.header.stamp.sec, m.header.stamp.nanosec))
    msg = msgs[summary["answered_frames"].index(index)]
    changed = np.abs(drawn.astype(int) - raw.astype(int)).sum(axis=2) > 30
    caption = 14  # the caption strip darkens the top rows
    hits = [changed[round(k.y), round(k.x)] for k in msg.keypoints if caption < round(k.y) < 128 and 0 <= round(k.x) < 128]
    assert hits and np.mean(hits) > 0.9
    assert changed[caption:].mean() < 0.5  # drawn on the frame, not a different image


def test_output_bag_decodes_offline_with_rosbags(demo_run):
    from rosbags.rosbag2 import Reader

    from kp_perception.sidecar import read_sidecar, sidecar_path
    from kp_perception_training.data.bag_writer import kp_typestore

    out, summary, _ = demo_run
    store = kp_typestore()
    sidecar = read_sidecar(sidecar_path(MODEL))
    with Reader(out / "node_output") as reader:
        topics = {c.topic: c.msgtype for c in reader.connections}
        assert topics["/keypoints"] == "kp_perception_msgs/msg/KeypointPyramid"
        assert topics["/diagnostics"] == "diagnostic_msgs/msg/DiagnosticArray"
        conns = [c for c in reader.connections if c.topic == "/keypoints"]
        msgs = [store.deserialize_cdr(data, c.msgtype) for c, _, data in reader.messages(connections=conns)]
    assert len(msgs) == summary["frames_received"]
    for msg in msgs:
        assert (msg.image_width, msg.image_height) == (128, 128)
        assert tuple(msg.level_sizes) == sidecar.level_sizes
        xy = np.array([[k.x, k.y] for k in msg.keypoints])
        assert np.all((xy >= -0.5) & (xy <= 127.5))


def test_keypoints_move_with_the_scene(demo_run):
    """Keypoints move between frames, by an amount that changes from frame to frame as the scene's motion does."""
    _, summary, _ = demo_run
    motion = summary["motion"]
    assert motion["pairs"] >= FRAMES // 2
    assert motion["mean_displacement_px"] > 0.05
    assert motion["std_displacement_px"] > 0
    assert motion["ground_truth_mean_displacement_px"] > 0
    assert motion["correlation_with_ground_truth"] is not None
    assert motion["correlation_with_ground_truth"] > 0.2


def test_missing_model_says_run_make_models(tmp_path):
    proc = _demo("pyramids", "--model", str(tmp_path / "nope.onnx"), "--out", str(tmp_path / "o"), timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "nope.onnx" in lines[0] and "make models" in lines[0]


def test_model_of_the_other_kind_is_one_clear_line(tmp_path):
    if not MODEL.is_file():
        pytest.skip(f"{MODEL.relative_to(REPO)} is not in this checkout yet (make models writes it)")
    proc = _demo("tusk", "--model", str(MODEL), "--out", str(tmp_path / "o"), timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "'pyramids'" in lines[0] and "'tusk'" in lines[0]


def test_tusk_demo_publishes_prototype_detections(tmp_path):
    from rosbags.rosbag2 import Reader

    from kp_perception.sidecar import read_sidecar, sidecar_path
    from kp_perception_training.data.bag_writer import kp_typestore

    model = REPO / "models" / "tusk.onnx"
    if not model.is_file():
        pytest.skip("models/tusk.onnx is not in this checkout yet (make models writes it)")
    out = tmp_path / "tusk"
    proc = _demo("tusk", "--out", str(out), "--frames", "12", "--size", "128")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames_received"] >= 9 and summary["node_exit_code"] == 0
    assert iio.imread(out / "keypoints.gif", index=None).shape[0] == summary["frames_received"]
    protos = summary["prototypes"]  # how the prototypes name the clip's object types (it carries ground truth)
    assert 1 <= protos["fired"] and protos["matched_to_objects"] <= protos["fired"]
    assert protos["purity"] is None or 0.0 < protos["purity"] <= 1.0
    assert "prototypes:" in proc.stdout and "fired" in proc.stdout
    sidecar = read_sidecar(sidecar_path(model))
    store = kp_typestore()
    with Reader(out / "node_output") as reader:
        conns = [c for c in reader.connections if c.topic == "/detections"]
        msgs = [store.deserialize_cdr(data, c.msgtype) for c, _, data in reader.messages(connections=conns)]
    assert len(msgs) == summary["frames_received"]
    for msg in msgs:
        assert msg.num_prototypes == sidecar.num_prototypes
        assert all(0 <= d.prototype < sidecar.num_prototypes and len(d.descriptor) == sidecar.descriptor_dim
                   for d in msg.detections)
