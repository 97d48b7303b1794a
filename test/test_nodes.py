"""pyramids_node and tusk_node as real processes on real topics.

Each node is started as the launch files start it: the parameter file from
config/ and the remaps/overrides from kp_perception.nodes.launch_args (the
launch files call the same helper; test_launch_files.py runs the launch files
themselves where launch/launch_ros are at hand). The test process is a second, real rclpy participant that
publishes frames and listens to the outputs. Models are real initial-weights
encoders exported to ONNX (test/model_fixtures.py), run by onnxruntime.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.parameter_client import AsyncParameterClient  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from kp_perception.drawing import draw_pyramid  # noqa: E402
from kp_perception.image_conversion import image_to_rgb8, numpy_to_compressed, numpy_to_image  # noqa: E402
from kp_perception.nodes.launch_args import (  # noqa: E402
    default_params_file,
    node_command,
    node_launch_config,
    record_command,
)
from kp_perception.observation import KeypointObservation, ObservationLayout  # noqa: E402
from kp_perception.results import KeypointPyramidResult, threshold_pyramid  # noqa: E402
from kp_perception.sidecar import read_sidecar  # noqa: E402
from kp_perception_msgs.msg import KeypointPyramid, PolicyObservation, PrototypeDetectionArray  # noqa: E402

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[1]
W, H = 160, 120  # frames are not the model's 64x64, so the coordinate mapping is exercised


# --- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    from test.model_fixtures import make_model

    out = tmp_path_factory.mktemp("node_models")
    return {kind: make_model(kind, out, 64) for kind in ("pyramids", "tusk")}


class Peer:
    """The test's own rclpy participant: publishers and collecting subscribers, spun in a thread."""

    def __init__(self) -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("node_test_peer", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except Exception:  # context shut down at teardown
            pass

    def collect(self, msg_type, topic: str, qos=10) -> list:
        received: list = []

        def on_msg(msg) -> None:
            with self.lock:
                received.append(msg)

        self.node.create_subscription(msg_type, topic, on_msg, qos)
        return received

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


@pytest.fixture(scope="module")
def peer():
    p = Peer()
    yield p
    p.close()


class NodeProcess:
    """A node started exactly as the launch file starts it; stderr collected line by line."""

    def __init__(self, kind: str, model: Path | str, namespace: str, *, params_file: str | None = None,
                 compressed: bool = False, debug: bool = False, extra: dict[str, str] | None = None,
                 depth_topic: str = "") -> None:
        cfg = node_launch_config(
            kind,
            params_file=params_file or default_params_file(kind),
            model=str(model),
            image_topic=f"/{namespace}/camera/image_raw",
            compressed=compressed,
            namespace=namespace,
            debug=debug,
            depth_topic=depth_topic,
        )
        cmd = node_command(cfg)
        for key, value in (extra or {}).items():
            cmd += ["-p", f"{key}:={value}"]
        self.image_topic = f"/{namespace}/camera/image_raw"
        self.ns = f"/{namespace}"
        env = {**os.environ, **cfg.env, "PYTHONUNBUFFERED": "1", "RCUTILS_LOGGING_BUFFERED_STREAM": "0"}
        self.proc = subprocess.Popen(
            cmd,
            env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def stderr(self) -> str:
        return "\n".join(self.lines)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(2)  # SIGINT, as Ctrl-C / ros2 launch
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._reader.join(timeout=5)
        return self.proc.returncode


def wait_for(condition, timeout: float, what: str, proc: NodeProcess | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if proc is not None and proc.proc.poll() is not None:
            pytest.fail(f"node exited ({proc.proc.returncode}) while waiting for {what}:\n{proc.stderr()}")
        time.sleep(0.02)
    detail = f"\nnode stderr:\n{proc.stderr()}" if proc is not None else ""
    pytest.fail(f"timed out after {timeout} s waiting for {what}{detail}")


def make_frame(i: int) -> np.ndarray:
    """A textured RGB frame that changes over time (a bright square moving over a gradient)."""
    yy, xx = np.mgrid[0:H, 0:W]
    frame = np.stack([xx * 255 // W, yy * 255 // H, np.full_like(xx, 60)], axis=-1).astype(np.uint8)
    x0 = 10 + (i * 7) % (W - 40)
    frame[40:70, x0 : x0 + 30] = (250, 250, 20)
    return frame


def stamp_of(msg) -> tuple[int, int]:
    return msg.header.stamp.sec, msg.header.stamp.nanosec


def publish_until(peer: Peer, pub, make_msg, done, proc: NodeProcess, timeout: float = 30.0,
                  period: float = 0.05) -> dict[tuple[int, int], int]:
    """Publish fresh frames every ``period`` s until ``done()``; returns stamp -> frame index sent."""
    sent: dict[tuple[int, int], int] = {}
    deadline = time.monotonic() + timeout
    i = 0
    while not done():
        if time.monotonic() > deadline:
            pytest.fail(f"no expected output within {timeout} s\nnode stderr:\n{proc.stderr()}")
        if proc.proc.poll() is not None:
            pytest.fail(f"node exited ({proc.proc.returncode}):\n{proc.stderr()}")
        header = Header(frame_id="camera_optical", stamp=peer.node.get_clock().now().to_msg())
        pub.publish(make_msg(i, header))
        sent[(header.stamp.sec, header.stamp.nanosec)] = i
        i += 1
        time.sleep(period)
    return sent


def raw_msg(i: int, header: Header) -> Image:
    return numpy_to_image(make_frame(i), "rgb8", header=header)


def compressed_msg(i: int, header: Header) -> CompressedImage:
    return numpy_to_compressed(make_frame(i), "jpeg", header=header)


def check_pyramid(msg: KeypointPyramid) -> None:
    """Sane hierarchy: inside the image, level sizes consistent, every parent one level up."""
    n = len(msg.keypoints)
    assert n > 0 and sum(msg.level_sizes) == n
    assert (msg.image_width, msg.image_height) == (W, H)
    expected_levels = np.repeat(np.arange(len(msg.level_sizes)), msg.level_sizes)
    for i, kp in enumerate(msg.keypoints):
        assert -0.5 <= kp.x <= W - 0.5 and -0.5 <= kp.y <= H - 0.5, (kp.x, kp.y)
        assert 0.0 <= kp.score <= 1.0
        assert kp.level == expected_levels[i]
        if kp.level == 0:
            assert kp.parent == -1
        else:
            assert 0 <= kp.parent < n and msg.keypoints[kp.parent].level == kp.level - 1


# --- nodes on real topics -------------------------------------------------------------------------


def test_pyramids_node_publishes_stamped_hierarchies_observations_and_debug_image(peer, models):
    node = NodeProcess("pyramids", models["pyramids"], "pyr_raw", debug=True, extra={"publish_observation": "true"})
    try:
        pyramids = peer.collect(KeypointPyramid, f"{node.ns}/keypoints")
        observations = peer.collect(PolicyObservation, f"{node.ns}/keypoints_observation")
        debug = peer.collect(Image, f"{node.ns}/debug_image")
        pub = peer.node.create_publisher(Image, node.image_topic, qos_profile_sensor_data)
        wait_for(lambda: pub.get_subscription_count() > 0, 30, "the node's image subscription", node)
        sent = publish_until(peer, pub, raw_msg, lambda: len(pyramids) >= 3 and observations and debug, node)

        for msg in list(pyramids):
            assert stamp_of(msg) in sent  # header copied from the image it was computed on
            assert msg.header.frame_id == "camera_optical"
            check_pyramid(msg)
            # No camera_info was published: the geometry is absent and says so, never 0.
            assert not msg.has_camera_info and not msg.has_depth
            assert all(np.isnan(k.x_normalized) and not k.position_valid for k in msg.keypoints)

        # The observation is stamped like the hierarchy of the same frame and holds its keypoints, in order.
        layout = ObservationLayout.from_sidecar(models["pyramids"])
        by_stamp = {stamp_of(m): m for m in pyramids}
        matched = [o for o in observations if stamp_of(o) in by_stamp]
        assert matched, "no observation with the stamp of a published hierarchy"
        obs_msg = matched[-1]
        obs = KeypointObservation.from_msg(obs_msg, expected=layout)
        assert obs.frame_id == "camera_optical" and obs.valid.all()  # threshold 0: every slot
        kps = by_stamp[stamp_of(obs_msg)].keypoints
        expected = np.array([[2 * k.x / (W - 1) - 1, 2 * k.y / (H - 1) - 1, k.score] for k in kps])
        assert np.allclose(obs.values, np.clip(expected, -1, 1), atol=1e-5)

        img = debug[-1]
        assert stamp_of(img) in sent and img.header.frame_id == "camera_optical"  # header copied, not empty
        assert (img.width, img.height, img.encoding) == (W, H, "rgb8")
        drawn = image_to_rgb8(img).astype(int)
        changed = np.abs(drawn - make_frame(sent[stamp_of(img)])).max(axis=-1) > 0
        assert 0 < changed.mean() < 0.5  # keypoints drawn on the very frame, which stays visible
    finally:
        assert node.stop() == 0, node.stderr()


def test_tusk_node_compressed_input_debug_observation_frame_id_override_and_runtime_threshold(peer, models):
    node = NodeProcess(
        "tusk", models["tusk"], "tusk_cmp", compressed=True, debug=True,
        extra={"publish_observation": "true", "score_threshold": "0.0", "frame_id": "tool0"},
    )
    try:
        dets = peer.collect(PrototypeDetectionArray, f"{node.ns}/detections")
        observations = peer.collect(PolicyObservation, f"{node.ns}/detections_observation")
        debug = peer.collect(Image, f"{node.ns}/debug_image")
        pub = peer.node.create_publisher(CompressedImage, f"{node.image_topic}/compressed", qos_profile_sensor_data)
        wait_for(lambda: pub.get_subscription_count() > 0, 30, "the node's compressed subscription", node)
        sent = publish_until(peer, pub, compressed_msg, lambda: len(dets) >= 3 and observations and debug, node)

        img = debug[-1]
        assert stamp_of(img) in sent and img.header.frame_id == "tool0"
        assert (img.width, img.height) == (W, H)
        # Detections are drawn on the very frame (beyond JPEG error), which stays visible.
        changed = np.abs(image_to_rgb8(img).astype(int) - make_frame(sent[stamp_of(img)])).max(axis=-1) > 60
        assert 0 < changed.mean() < 0.5
        obs = KeypointObservation.from_msg(observations[-1], expected=ObservationLayout.from_sidecar(models["tusk"]))
        assert stamp_of(observations[-1]) in sent and obs.frame_id == "tool0"
        assert obs.layout.slot_names == tuple(f"prototype{m}" for m in range(dets[0].num_prototypes))
        top_k = read_sidecar(models["tusk"].with_suffix(".json")).output("keypoints").shape[1]
        assert 1 <= obs.valid.sum() <= top_k  # one slot per prototype that has a detection
        scores = []
        for msg in list(dets):
            assert stamp_of(msg) in sent and msg.header.frame_id == "tool0"
            assert (msg.image_width, msg.image_height) == (W, H)
            assert len(msg.detections) == top_k  # threshold 0: every top-K detection
            s = [d.score for d in msg.detections]
            assert s == sorted(s, reverse=True)
            for d in msg.detections:
                assert -0.5 <= d.x <= W - 0.5 and -0.5 <= d.y <= H - 0.5
                assert 0 <= d.prototype < msg.num_prototypes
                assert d.distance >= 0.0
                assert np.linalg.norm(d.descriptor) == pytest.approx(1.0, abs=1e-3)
            scores += s

        # Raise the threshold at run time: later messages carry only detections above it.
        threshold = float(np.median(scores)) + 1e-6
        client = AsyncParameterClient(peer.node, f"{node.ns}/tusk_node")
        assert client.wait_for_services(timeout_sec=10.0)
        bad = client.set_parameters([Parameter("score_threshold", value=1.5)])
        wait_for(bad.done, 10, "set_parameters reply")
        assert not bad.result().results[0].successful  # outside the declared [0, 1] range
        ok = client.set_parameters([Parameter("score_threshold", value=threshold)])
        wait_for(ok.done, 10, "set_parameters reply")
        assert ok.result().results[0].successful
        n_before = len(dets)
        publish_until(peer, pub, compressed_msg, lambda: len(dets) >= n_before + 5, node)
        later = dets[n_before + 2:]  # skip frames that may have been in flight during the change
        assert all(d.score >= threshold - 1e-6 for msg in later for d in msg.detections)
        assert sum(len(msg.detections) for msg in later) < top_k * len(later)
    finally:
        assert node.stop() == 0, node.stderr()


def bad_frames() -> list[tuple[str, Image]]:
    def image(width, height, encoding, step, nbytes) -> Image:
        msg = Image(width=width, height=height, encoding=encoding, step=step)
        msg.data = bytes(nbytes)
        return msg

    return [
        ("unknown encoding", image(8, 8, "weird16", 16, 128)),
        ("step smaller than a row", image(10, 10, "rgb8", 20, 200)),
        ("truncated data", image(10, 10, "rgb8", 30, 150)),
        ("zero-sized", image(0, 0, "rgb8", 0, 0)),
    ]


def test_bad_frames_are_counted_in_diagnostics_and_output_resumes(peer, models):
    node = NodeProcess("pyramids", models["pyramids"], "pyr_bad", extra={"image_reliability": "reliable"})
    try:
        pyramids = peer.collect(KeypointPyramid, f"{node.ns}/keypoints")
        diags = peer.collect(DiagnosticArray, "/diagnostics")
        pub = peer.node.create_publisher(Image, node.image_topic, QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
        wait_for(lambda: pub.get_subscription_count() > 0, 30, "the node's image subscription", node)
        time.sleep(0.3)  # reliable: matched both ways before the burst
        for _, msg in bad_frames():
            msg.header.stamp = peer.node.get_clock().now().to_msg()
            pub.publish(msg)
            time.sleep(0.2)  # one at a time, so none is dropped as "not the newest"
        sent = publish_until(peer, pub, raw_msg, lambda: len(pyramids) >= 2, node)
        assert all(stamp_of(m) in sent for m in pyramids)  # outputs are for the good frames only
        assert node.proc.poll() is None

        def values() -> dict[str, str] | None:
            for array in reversed(list(diags)):
                for status in array.status:
                    if status.name.startswith(f"{node.ns}/pyramids_node"):
                        return {kv.key: kv.value for kv in status.values}
            return None

        wait_for(lambda: (v := values()) is not None and int(v["frames_published"]) >= 2, 10,
                 "diagnostics after the good frames", node)
        v = values()
        assert int(v["bad_frames"]) == len(bad_frames())
        assert int(v["dropped_frames"]) == 0 and int(v["lost_before_node"]) == 0  # reliable, one at a time
        assert v["backend"] == "onnxruntime"
        assert float(v["latency_p50_ms"]) > 0.0
        assert "skipping bad frame" in node.stderr()

        # A burst faster than inference: the node drops instead of queueing, and the newest frame is answered.
        n_before = len(pyramids)
        burst = [raw_msg(i, Header(frame_id="camera_optical", stamp=peer.node.get_clock().now().to_msg()))
                 for i in range(60)]
        for msg in burst:
            msg.header.stamp = peer.node.get_clock().now().to_msg()
            pub.publish(msg)
        last = stamp_of(burst[-1])
        wait_for(lambda: any(stamp_of(m) == last for m in pyramids[n_before:]), 20, "the newest frame's output", node)
        assert len(pyramids) - n_before < len(burst)
        # Skipped in the worker's slot (dropped) or overwritten in the depth-1 input queue (lost).
        wait_for(lambda: int(values()["dropped_frames"]) + int(values()["lost_before_node"]) > 0, 10,
                 "skipped frames in diagnostics", node)
    finally:
        assert node.stop() == 0, node.stderr()


def test_qos_mismatch_is_reported_instead_of_silence(peer, models):
    node = NodeProcess("pyramids", models["pyramids"], "pyr_qos",
                       extra={"image_reliability": "reliable", "no_image_warning_after": "1.0"})
    try:
        pub = peer.node.create_publisher(Image, node.image_topic, qos_profile_sensor_data)  # best effort
        wait_for(lambda: "incompatible QoS (policy RELIABILITY)" in node.stderr()
                 and "no image received" in node.stderr(), 30,
                 "the incompatible-QoS error and the no-image warning", node)
        assert "image_reliability:=best_effort" in node.stderr()  # the error says how to fix it
        assert pub.get_subscription_count() == 0  # really never matched
    finally:
        assert node.stop() == 0, node.stderr()


# --- start-up errors: one line, non-zero exit -----------------------------------------------------


def _bad_params_file(tmp_path: Path) -> str:
    text = (REPO / "config" / "pyramids.yaml").read_text().replace("score_threshold: 0.0", 'score_threshold: "high"')
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    ("kind", "case", "expected"),
    [
        ("pyramids", "missing model", "does not exist"),
        ("tusk", "pyramids model in tusk_node", "expected 'tusk'"),
        ("pyramids", "wrong parameter type", "score_threshold"),
        # rcl would keep the params file's double beside the string and use the double, silently.
        ("pyramids", "-p value of the wrong type after the params file", "-p score_threshold:=abc is a string"),
        ("tusk", "-p integer for a double parameter", "-p score_threshold:=1 is an integer"),
    ],
)
def test_startup_error_exits_nonzero_with_one_clear_line(models, tmp_path, kind, case, expected):
    model = {"missing model": tmp_path / "nope.onnx", "-p integer for a double parameter": models["tusk"]}.get(
        case, models["pyramids"])
    params = _bad_params_file(tmp_path) if case == "wrong parameter type" else None
    extra = {"score_threshold": "abc" if "wrong type" in case else "1"} if case.startswith("-p") else None
    node = NodeProcess(kind, model, "startup_err", params_file=params, extra=extra)
    node.proc.wait(timeout=60)
    node._reader.join(timeout=5)
    assert node.proc.returncode != 0
    lines = [ln for ln in node.lines if ln.strip()]
    assert len(lines) == 1, node.stderr()
    assert expected in lines[0] and "Traceback" not in node.stderr()
    if case == "missing model":
        assert str(model) in lines[0]


# --- launch arguments, conversion, drawing (pure) -------------------------------------------------


def test_launch_helper_gives_the_params_file_overrides_and_remaps():
    cfg = node_launch_config("tusk", params_file="/p/tusk.yaml", model="/m/t.onnx", image_topic="/cam/img/",
                             compressed="true", namespace="robot1", debug="false")
    args = cfg.ros_arguments()
    assert args[:5] == ["--ros-args", "-r", "__ns:=/robot1", "--params-file", "/p/tusk.yaml"]
    assert "model_file_path:=/m/t.onnx" in args and "compressed_input:=true" in args
    assert "publish_debug_image:=false" in args
    assert "image:=/cam/img" in args and "image/compressed:=/cam/img/compressed" in args
    assert cfg.executable == "tusk_node" and cfg.env["FASTDDS_BUILTIN_TRANSPORTS"] == "LARGE_DATA"
    assert record_command("bags/ep1", "/camera/image_raw,/camera/camera_info") == [
        "ros2", "bag", "record", "-s", "mcap", "-o", "bags/ep1", "/camera/image_raw", "/camera/camera_info"]


def test_p_values_are_typed_by_rcls_rule_and_a_wrong_type_is_refused_whatever_the_params_file():
    from kp_perception.errors import ConfigError
    from kp_perception.nodes.command_line import (
        check_parameter_arguments,
        parameter_arguments,
        rcl_value_type,
    )

    assert [rcl_value_type(v) for v in ("abc", "1", "0x1f", "0.5", "1e-3", ".inf", "true", "on", "'1'", "[1]")] == [
        str, int, int, float, float, float, bool, bool, str, list]
    argv = ["pyramids_node", "--ros-args", "--params-file", "p.yaml", "-p", "score_threshold:=abc",
            "--param", "other_node:threads:=x", "--", "-p", "not_ros:=1"]
    assert parameter_arguments(argv) == [("", "score_threshold", "abc"), ("other_node", "threads", "x")]
    declared = {"score_threshold": float, "threads": int, "frame_id": str}
    with pytest.raises(ConfigError, match="-p score_threshold:=abc is a string, but 'score_threshold' is a double"):
        check_parameter_arguments(argv, declared, ("pyramids_node", "/pyramids_node"))
    # Right types pass; a -p aimed at another node, or outside --ros-args, is not this node's business.
    check_parameter_arguments(["x", "--ros-args", "-p", "score_threshold:=0.4", "-p", "frame_id:=tool0",
                               "-p", "other_node:threads:=x", "-p", "qos_overrides./a.subscription.depth:=2"],
                              declared, ("pyramids_node", "/pyramids_node"))


def test_launch_files_compile_and_params_files_hold_exactly_the_declared_parameters():
    import yaml

    from kp_perception.nodes.base import PARAMETERS
    from kp_perception.nodes.engine_params import ENGINE_PARAMETERS

    for name in ("pyramids", "tusk", "record"):
        path = REPO / "launch" / f"{name}.launch.py"
        compile(path.read_text(), str(path), "exec")  # runs where launch is installed; here: at least valid
    for node in ("pyramids", "tusk"):
        params = yaml.safe_load((REPO / "config" / f"{node}.yaml").read_text())["/**"]["ros__parameters"]
        assert set(params) == {p.name for p in PARAMETERS + ENGINE_PARAMETERS}
        for spec in PARAMETERS + ENGINE_PARAMETERS:  # same types as declared, or the node would refuse to start
            assert type(params[spec.name]) is type(spec.default), spec.name


def test_launch_files_build_descriptions():
    pytest.importorskip("launch_ros", reason="launch/launch_ros are on no registry reachable here (docs/robot_guide.md)")
    import runpy

    for name in ("pyramids", "tusk", "record"):
        module = runpy.run_path(str(REPO / "launch" / f"{name}.launch.py"))
        assert module["generate_launch_description"]().entities


def _pyramid(scores: list[float]) -> KeypointPyramidResult:
    n1, m = 2, 2
    parents = np.array([-1] * n1 + [k // m for k in range(n1 * m)], np.int32)
    xy = np.array([[10, 10], [40, 30], [5, 12], [14, 8], [44, 28], [36, 34]], np.float32)
    return KeypointPyramidResult(xy=xy, scores=np.array(scores, np.float32), levels=np.array([0, 0, 1, 1, 1, 1], np.int32),
                                 parents=parents, level_sizes=(2, 4), image_width=50, image_height=40)


def test_threshold_keeps_ancestors_so_parents_stay_valid():
    # Root 0 is weak but its child 3 is strong: root 0 must be kept; root 1's family is dropped.
    out = threshold_pyramid(_pyramid([0.1, 0.2, 0.1, 0.9, 0.1, 0.1]), 0.5)
    assert out.level_sizes == (1, 1)
    assert out.parents.tolist() == [-1, 0]
    assert np.allclose(out.xy, [[10, 10], [14, 8]])


def test_drawing_colours_each_family_alike_and_links_children():
    frame = np.zeros((40, 50, 3), np.uint8)
    drawn = draw_pyramid(frame, _pyramid([1.0] * 6))
    colour = lambda x, y: tuple(drawn[y, x])  # noqa: E731
    assert colour(10, 10) == colour(5, 12) == colour(14, 8)  # root 0 and its children
    assert colour(40, 30) == colour(44, 28) and colour(40, 30) != colour(10, 10)
    assert drawn[9:12, 6:9].any()  # the link between child (5, 12) and parent (10, 10)
    assert not frame.any()  # input untouched
