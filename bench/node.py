"""End-to-end latency of pyramids_node over real ROS 2 topics, beside its two floors.

What runs, all in one invocation and one after the other (so the figures are
comparable and do not compete for the CPU):

1. **pure inference**: ``load_backend(model).infer(frame)`` on a 640×480 rgb8
   frame in this process (resize + onnxruntime + mapping), no ROS.
2. **pass-through**: a separate process subscribes to the camera topic and
   publishes a std_msgs/Header with the image stamp: what rclpy transport of
   a 640×480 frame costs here.
3. **node**: ``pyramids_node`` started as the launch file starts it
   (config/pyramids.yaml + launch_args), at 30 Hz and at 60 Hz: image only.
4. **node_3d** (issue 16), right after 3 at the same rate: the same node with
   camera geometry on. The publisher also sends a camera_info (plumb_bob, K and
   D of a 640×480 camera) and an aligned 32FC1 depth image (640×480, 1.2 MB)
   with the image's stamp, right AFTER the image (the node may have to wait for
   the depth: the conservative order); the node is started with
   ``depth_topic`` set and publishes the metric PolicyObservation as well.
   So node_3d - node is the whole added cost: two more subscriptions (1.2 MB
   of depth per frame through rclpy), stamp matching, depth conversion,
   undistortion, window medians, the 3D fields and the observation message.

For 2 and 3 a separate publisher process sends 640×480 rgb8 frames (sensor
QoS, FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA) stamped at publish time; this
process receives the outputs and takes latency = arrival - header stamp.
Drops are frames sent but never answered. Node CPU (% of one core) and RSS
come from /proc/<pid>. ``--soak-minutes M`` adds an M-minute 30 Hz run with
RSS sampled every 10 s (memory flat check).

``--int8`` (issue 18): the model is also quantized to int8 (``kp-perception
export --int8``'s code, calibrated on ``--calibration`` frames), and the pure
inference and the node runs are repeated with it right after the float32
ones (``inference_int8``, ``node_int8``), so the two are side by side in one
run; ``int8_over_fp32`` holds the p50 ratios. Issue 18's goal: the paper-size
encoder int8 at p50 <= 15 ms and p99 <= 30 ms at 30 Hz.

Goals (issue 7; 2-core CPU, onnxruntime, 128×128 Keypoint Pyramids model):
node p50 <= 15 ms and p99 <= 30 ms at 30 Hz; p50(node) <= p50(pass-through)
+ p50(inference) + 2 ms; 60 Hz p99 <= 2 × 30 Hz p99, with drops and no
growing latency; RSS flat over the soak. Issue 16: node_3d p50 <= 15 ms and
p99 <= 30 ms at 30 Hz, 640×480, with the CPU model.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

WIDTH, HEIGHT = 640, 480
NAMESPACE = "bench_node"
IMAGE_TOPIC = f"/{NAMESPACE}/camera/image_raw"
PASS_TOPIC = f"/{NAMESPACE}/passthrough"
CAMERA_INFO_TOPIC = f"/{NAMESPACE}/camera/camera_info"  # beside the image topic (image_transport's rule)
DEPTH_TOPIC = f"/{NAMESPACE}/camera/depth/image_raw"
FRAME_ID = "camera_optical_frame"
# A 640x480 camera with mild plumb_bob distortion (what a calibrated RGB-D camera publishes).
K = (525.0, 0.0, 319.5, 0.0, 525.0, 239.5, 0.0, 0.0, 1.0)
D = (0.05, -0.12, 0.001, -0.0005, 0.03)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="exported Keypoint Pyramids .onnx (default: build an initial-weights "
                        "model of --architecture at --image-size; weights do not change the cost)")
    parser.add_argument("--image-size", type=int, default=128, help="model input size when building one")
    parser.add_argument("--architecture", choices=["cpu", "paper"], default="cpu",
                        help="widths when building a model: 'cpu' = the CPU preset the quality bench and the "
                        "shipped model use (FPN width 16, 32 channels), 'paper' = the paper's widths (training/pyramids/config.py)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds discarded at the start of each run")
    parser.add_argument("--rates", type=float, nargs="+", default=[30.0, 60.0], help="input rates (Hz)")
    parser.add_argument("--inference-iterations", type=int, default=200)
    parser.add_argument("--node-threads", type=int, default=1,
                        help="the node's 'threads' parameter (inference threads; default 1 as in "
                        "config/pyramids.yaml; 0 = library default)")
    parser.add_argument("--soak-minutes", type=float, default=0.0, help="also run a 30 Hz soak this long")
    parser.add_argument("--no-geometry", action="store_true",
                        help="skip the node_3d runs (camera_info + depth + metric observation)")
    parser.add_argument("--int8", action="store_true",
                        help="also measure the int8 model (static QDQ, calibrated on --calibration) side by side")
    parser.add_argument("--calibration", nargs="+", metavar="DATA",
                        help="frames for --int8 calibration: bags, videos or image folders (e.g. the training data)")
    parser.add_argument("--calibration-frames", type=int, default=32)
    parser.add_argument("--role", default="bench", choices=["bench", "publisher", "passthrough"],
                        help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, default=30.0, help=argparse.SUPPRESS)
    parser.add_argument("--with-geometry", action="store_true", help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> dict:
    from kp_perception.errors import KpPerceptionError

    # Every participant, this one included, needs LARGE_DATA for 640x480 frames (docs/troubleshooting.md).
    os.environ["FASTDDS_BUILTIN_TRANSPORTS"] = "LARGE_DATA"
    if args.role == "publisher":
        return _publisher(args.rate, args.warmup + args.seconds, args.with_geometry)
    if args.role == "passthrough":
        return _passthrough()
    with tempfile.TemporaryDirectory(prefix="bench_node_") as tmp:
        model = Path(args.model) if args.model else _build_model(Path(tmp), args.image_size, args.architecture)
        if not model.exists():
            raise KpPerceptionError(f"model file {model} does not exist")
        int8_model = None
        if args.int8:
            if not args.calibration:
                raise KpPerceptionError("--int8 needs --calibration DATA (frames to calibrate the int8 model on)")
            from kp_perception_training.quantization import quantize_int8

            int8_model = quantize_int8(model, args.calibration, Path(tmp) / f"{model.stem}.int8.onnx",
                                       frames=args.calibration_frames).onnx_path
        return _bench(args, model, int8_model)


# --- the orchestrating run ------------------------------------------------------------------------


def _bench(args: argparse.Namespace, model: Path, int8_model: Path | None = None) -> dict:
    from tqdm import tqdm

    from kp_perception.backends import load_backend

    per_rate = (2 if args.no_geometry else 3) + (1 if int8_model else 0)
    steps = 1 + per_rate * len(args.rates) + (1 if args.soak_minutes > 0 else 0)
    bar = tqdm(total=steps, desc="bench node", file=sys.stderr)
    backend = load_backend(model, expected_kind="pyramids", threads=args.node_threads)
    out: dict = {
        "model": str(model) if args.model else f"initial weights, {args.architecture} architecture",
        "model_input": [backend.sidecar.input_width, backend.sidecar.input_height],
        "frame": [WIDTH, HEIGHT],
        "node_threads": args.node_threads,
        "cpu_count": os.cpu_count(),
        "load_average_at_start": list(os.getloadavg()),
        "note": "measured on a CPU shared with other work unless load_average_at_start is ~0",
    }
    out["inference"] = _inference(backend, args.inference_iterations)
    del backend
    if int8_model is not None:
        backend = load_backend(int8_model, expected_kind="pyramids", threads=args.node_threads)
        out["int8_model"] = {"precision": backend.sidecar.precision,
                             "quantization": backend.sidecar.extra.get("quantization", {})}
        out["inference_int8"] = _inference(backend, args.inference_iterations)
        del backend
    bar.update()

    peer = _Receiver()
    try:
        out["passthrough"], out["node"] = {}, {}
        if int8_model is not None:
            out["node_int8"] = {}
        if not args.no_geometry:
            out["node_3d"] = {}
        for rate in args.rates:
            key = f"{rate:g}hz"
            out["passthrough"][key] = _measure(peer, "passthrough", model, rate, args.seconds, args.warmup)
            bar.update()
            out["node"][key] = _measure(peer, "node", model, rate, args.seconds, args.warmup,
                                        threads=args.node_threads)
            bar.update()
            if int8_model is not None:
                out["node_int8"][key] = _measure(peer, "node", int8_model, rate, args.seconds, args.warmup,
                                                 threads=args.node_threads)
                bar.update()
            if not args.no_geometry:
                out["node_3d"][key] = _measure(peer, "node_3d", model, rate, args.seconds, args.warmup,
                                               threads=args.node_threads)
                bar.update()
        if args.soak_minutes > 0:
            out["soak"] = _measure(peer, "node", model, 30.0, 60.0 * args.soak_minutes, args.warmup,
                                   rss_every=10.0, threads=args.node_threads)
            bar.update()
    finally:
        peer.close()
        bar.close()
    out["load_average_at_end"] = list(os.getloadavg())
    out["goals"] = _goals(out, args.rates)
    return out


def _goals(out: dict, rates: list[float]) -> dict:
    goals: dict = {}
    node, passthrough, inference = out["node"], out["passthrough"], out["inference"]
    if "30hz" in node:
        n30 = node["30hz"]["latency_ms"]
        goals["p50_le_15ms_at_30hz"] = n30["p50"] <= 15.0
        goals["p99_le_30ms_at_30hz"] = n30["p99"] <= 30.0
        floor = passthrough["30hz"]["latency_ms"]["p50"] + inference["latency_ms"]["p50"] + 2.0
        goals["node_overhead_p50_le_floor_plus_2ms"] = n30["p50"] <= floor
        goals["floor_p50_ms"] = floor
        if "60hz" in node:
            n60 = node["60hz"]
            goals["p99_60hz_le_2x_p99_30hz"] = n60["latency_ms"]["p99"] <= 2.0 * n30["p99"]
            goals["60hz_latency_not_growing"] = n60["latency_trend_ms"] <= 5.0
    if "inference_int8" in out:
        ratios = {"inference_p50": out["inference_int8"]["latency_ms"]["p50"] / inference["latency_ms"]["p50"]}
        for key, run in out.get("node_int8", {}).items():
            ratios[f"node_p50_{key}"] = run["latency_ms"]["p50"] / node[key]["latency_ms"]["p50"]
        out["int8_over_fp32"] = ratios
    if "30hz" in out.get("node_int8", {}):
        i30 = out["node_int8"]["30hz"]["latency_ms"]
        goals["int8_p50_le_15ms_at_30hz"] = i30["p50"] <= 15.0
        goals["int8_p99_le_30ms_at_30hz"] = i30["p99"] <= 30.0
    if "30hz" in out.get("node_3d", {}):
        g30 = out["node_3d"]["30hz"]["latency_ms"]
        goals["p50_le_15ms_at_30hz_with_camera_info_and_depth"] = g30["p50"] <= 15.0
        goals["p99_le_30ms_at_30hz_with_camera_info_and_depth"] = g30["p99"] <= 30.0
        if "30hz" in node:
            goals["added_p50_ms_camera_info_and_depth"] = g30["p50"] - node["30hz"]["latency_ms"]["p50"]
            goals["added_p99_ms_camera_info_and_depth"] = g30["p99"] - node["30hz"]["latency_ms"]["p99"]
    if "soak" in out:
        soak = out["soak"]
        goals["rss_flat_over_soak"] = soak["rss_mb_end"] <= soak["rss_mb_start"] * 1.05 + 5.0
    return goals


def _inference(backend, iterations: int) -> dict:
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8) for _ in range(4)]
    for i in range(10):
        backend.infer(frames[i % 4])
    from std_msgs.msg import Header

    from kp_perception.camera_geometry import CameraModel, locate_keypoints
    from kp_perception.image_conversion import depth_view, image_to_rgb8, numpy_to_image
    from kp_perception.observation import ObservationLayout, observe
    from kp_perception.results import threshold_pyramid
    from kp_perception.ros_conversion import observation_to_msg, pyramid_to_msg

    msgs = [numpy_to_image(f, "rgb8") for f in frames]
    depth_msg = numpy_to_image(_depth_image(), "32FC1")
    camera = CameraModel.from_camera_info(_camera_info(Header()))
    layout = ObservationLayout.from_sidecar(backend.sidecar, "metric")
    times, path, path_3d = [], [], []
    for i in range(iterations):
        t0 = time.perf_counter()
        backend.infer(frames[i % 4])
        t1 = time.perf_counter()
        # What the node's worker does per frame besides publishing: convert, infer, threshold, build.
        result = backend.infer(image_to_rgb8(msgs[i % 4]))
        pyramid_to_msg(threshold_pyramid(result, 0.0), Header())
        t2 = time.perf_counter()
        # The same with camera geometry: depth conversion, undistortion, medians, 3D fields, observation.
        result = backend.infer(image_to_rgb8(msgs[i % 4]))
        camera.check_size(result.image_width, result.image_height)
        depth, scale = depth_view(depth_msg)
        result = locate_keypoints(result, camera, depth, 5, scale)
        pyramid_to_msg(threshold_pyramid(result, 0.0), Header())
        observation_to_msg(observe(result, layout), Header())
        t3 = time.perf_counter()
        times.append((t1 - t0) * 1e3)
        path.append((t2 - t1) * 1e3)
        path_3d.append((t3 - t2) * 1e3)
    return {"backend": backend.name, "iterations": iterations, "latency_ms": _percentiles(times),
            "node_worker_path_ms": _percentiles(path),
            "node_worker_path_with_camera_info_and_depth_ms": _percentiles(path_3d)}


def _measure(peer: _Receiver, what: str, model: Path, rate: float, seconds: float, warmup: float,
             rss_every: float = 0.0, threads: int = 0) -> dict:
    """One run: start the system under test and a publisher, keep what arrives after the warm-up."""

    env = {**os.environ, "FASTDDS_BUILTIN_TRANSPORTS": "LARGE_DATA", "PYTHONUNBUFFERED": "1"}
    geometry = what == "node_3d"
    if what in ("node", "node_3d"):
        from kp_perception.nodes.launch_args import default_params_file, node_command, node_launch_config

        cfg = node_launch_config("pyramids", params_file=default_params_file("pyramids"), model=str(model),
                                 image_topic=IMAGE_TOPIC, namespace=NAMESPACE,
                                 depth_topic=DEPTH_TOPIC if geometry else "")
        cmd = [*node_command(cfg), "-p", f"threads:={threads}"]
        if geometry:
            cmd += ["-p", "publish_observation:=true", "-p", "observation_coordinates:=metric"]
        env.update(cfg.env)
        topic = f"/{NAMESPACE}/keypoints"
    else:
        cmd = [sys.executable, "-m", "kp_perception_bench.node", "--role", "passthrough"]
        topic = PASS_TOPIC
    peer.listen(topic, what)
    log = tempfile.TemporaryFile(mode="w+")  # a pipe nobody reads could fill up during a soak
    sut = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log, text=True)
    publisher = None
    try:
        inputs = [IMAGE_TOPIC, CAMERA_INFO_TOPIC, DEPTH_TOPIC] if geometry else [IMAGE_TOPIC]
        _wait(lambda: all(peer.node.count_subscribers(i) > 0 for i in inputs) and peer.publishers(topic) > 0, 60,
              f"{what} to come up", sut, log)
        publisher = subprocess.Popen(
            [sys.executable, "-m", "kp_perception_bench.node", "--role", "publisher", "--rate", str(rate),
             "--seconds", str(seconds + warmup + 60.0), *(["--with-geometry"] if geometry else [])],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        stamps: list[int] = []
        reader = threading.Thread(target=lambda: stamps.extend(int(x) for x in publisher.stdout), daemon=True)
        reader.start()
        # Wait for the first answer (TCP channels of LARGE_DATA can take a moment), then warm up.
        _wait(lambda: peer.count(what) > 0, 30, f"the first {what} output", sut, log)
        time.sleep(warmup)
        keep_from = peer.now_ns()
        cpu0, rss0 = _cpu_seconds(sut.pid), _rss_mb(sut.pid)
        rss_samples = [rss0]
        t0 = time.monotonic()
        while (busy := time.monotonic() - t0) < seconds:
            time.sleep(min(0.2, seconds - busy))
            if rss_every and busy >= rss_every * len(rss_samples):
                rss_samples.append(_rss_mb(sut.pid))
        cpu1, rss1 = _cpu_seconds(sut.pid), _rss_mb(sut.pid)
        keep_to = peer.now_ns()
        busy = time.monotonic() - t0
        time.sleep(0.5)  # let the last outputs arrive
    finally:
        if publisher is not None:
            publisher.kill()
            publisher.wait(timeout=10)
        sut.send_signal(2)
        try:
            sut.wait(timeout=10)
        except subprocess.TimeoutExpired:
            sut.kill()
        log.close()
    reader.join(timeout=5)
    arrivals = peer.take(what)
    sent = [s for s in stamps if keep_from <= s < keep_to]
    sent_set = set(sent)
    kept = [(s, a) for s, a, *_ in arrivals if s in sent_set]
    with_depth = [d for s, _a, d in arrivals if s in sent_set]
    latencies = [(a - s) * 1e-6 for s, a in sorted(kept)]
    third = max(len(latencies) // 3, 1)
    result = {
        "rate_hz": rate,
        "frames_sent": len(sent),
        "outputs": len(kept),
        "dropped": len(sent) - len(kept),
        "output_rate_hz": len(kept) / max(busy, 1e-6),
        "latency_ms": _percentiles(latencies),
        # Queueing shows as latency growing through the run; dropping keeps it flat.
        "latency_trend_ms": float(np.median(latencies[-third:]) - np.median(latencies[:third])) if latencies else
        float("nan"),
        "cpu_percent_of_one_core": 100.0 * (cpu1 - cpu0) / max(busy, 1e-6),
        "rss_mb_start": rss0,
        "rss_mb_end": rss1,
    }
    if geometry:  # proof that the 3D path ran: outputs with a matched depth frame, and valid points
        result["outputs_with_depth"] = int(sum(d[0] for d in with_depth))
        result["valid_points_per_output"] = float(np.mean([d[1] for d in with_depth])) if with_depth else 0.0
    if rss_every:
        result["rss_mb_samples"] = rss_samples
    return result


class _Receiver:
    """This process's rclpy participant: takes (stamp, arrival) of every output, spun in a thread."""

    def __init__(self) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self._rclpy = rclpy
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("bench_node_receiver", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._lock = threading.Lock()
        self._arrivals: dict[str, list[tuple[int, int]]] = {}
        self._subs: dict[str, object] = {}
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except Exception:
            pass

    def now_ns(self) -> int:
        return self.node.get_clock().now().nanoseconds

    def publishers(self, topic: str) -> int:
        return self.node.count_publishers(topic)

    def listen(self, topic: str, key: str) -> None:
        from std_msgs.msg import Header

        from kp_perception_msgs.msg import KeypointPyramid

        with self._lock:
            self._arrivals[key] = []
        if key in self._subs:
            return
        is_node = key.startswith("node")
        msg_type = KeypointPyramid if is_node else Header

        def on_msg(msg) -> None:
            arrival = self.now_ns()
            header = msg.header if is_node else msg
            stamp = header.stamp.sec * 1_000_000_000 + header.stamp.nanosec
            depth = (bool(msg.has_depth), sum(k.position_valid for k in msg.keypoints)) if is_node else (False, 0)
            with self._lock:
                self._arrivals[key].append((stamp, arrival, depth))

        self._subs[key] = self.node.create_subscription(msg_type, topic, on_msg, 50)

    def count(self, key: str) -> int:
        with self._lock:
            return len(self._arrivals[key])

    def take(self, key: str) -> list[tuple[int, int, tuple[bool, int]]]:
        with self._lock:
            out, self._arrivals[key] = self._arrivals[key], []
        return out

    def close(self) -> None:
        # Shut the context first: it wakes the spinning thread, which must end before the node goes.
        self._rclpy.try_shutdown(context=self.context)
        self._thread.join(timeout=5)
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()


# --- helper processes -----------------------------------------------------------------------------


def _publisher(rate: float, seconds: float, with_geometry: bool = False) -> dict:
    """Publish 640×480 rgb8 frames at ``rate`` until killed (at most ``seconds``); print each stamp sent.

    With geometry, each image is followed by a camera_info and a 32FC1 depth image with its stamp.
    """
    import itertools

    import rclpy
    from builtin_interfaces.msg import Time
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CameraInfo, Image
    from std_msgs.msg import Header

    from kp_perception.image_conversion import numpy_to_image
    from kp_perception.playback import FramePlayer

    rclpy.init()
    node = rclpy.create_node("bench_node_publisher")
    player = FramePlayer(node, IMAGE_TOPIC, frame_id=FRAME_ID)
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8) for _ in range(8)]
    extra = None
    if with_geometry:
        info_pub = node.create_publisher(CameraInfo, CAMERA_INFO_TOPIC, 10)
        depth_pub = node.create_publisher(Image, DEPTH_TOPIC, qos_profile_sensor_data)
        depth_msg = numpy_to_image(_depth_image(), "32FC1")
        info_msg = _camera_info(Header())

        def extra(sent) -> None:
            stamp = Time(sec=sent.stamp_ns // 1_000_000_000, nanosec=sent.stamp_ns % 1_000_000_000)
            header = Header(stamp=stamp, frame_id=FRAME_ID)
            info_msg.header = header
            depth_msg.header = header
            info_pub.publish(info_msg)
            depth_pub.publish(depth_msg)

    player.wait_for_subscribers(timeout=30.0)

    def on_sent(sent) -> None:
        if extra is not None:
            extra(sent)
        print(sent.stamp_ns, flush=True)

    player.play(itertools.islice(itertools.cycle(frames), int(seconds * rate)), rate, on_sent=on_sent)
    node.destroy_node()
    rclpy.try_shutdown()
    return {}


def _depth_image() -> np.ndarray:
    """640×480 float32 metres: a table plane seen obliquely (0.6 m at the bottom, 1.4 m at the top), with holes."""
    rows = np.linspace(1.4, 0.6, HEIGHT, dtype=np.float32)[:, None]
    depth = np.repeat(rows, WIDTH, axis=1)
    depth[::17, ::13] = np.nan  # scattered missing returns, as a real sensor has
    return depth


def _camera_info(header):
    from sensor_msgs.msg import CameraInfo

    info = CameraInfo(header=header, width=WIDTH, height=HEIGHT, distortion_model="plumb_bob")
    info.k = list(K)
    info.d = list(D)
    info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    info.p = [K[0], 0.0, K[2], 0.0, 0.0, K[4], K[5], 0.0, 0.0, 0.0, 1.0, 0.0]
    return info


def _passthrough() -> dict:
    """Subscribe to the camera topic, publish the image's Header: the rclpy transport floor."""
    import rclpy
    from rclpy.executors import ExternalShutdownException
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    rclpy.init()
    node = rclpy.create_node("bench_node_passthrough")
    pub = node.create_publisher(Header, PASS_TOPIC, 10)
    node.create_subscription(Image, IMAGE_TOPIC, lambda msg: pub.publish(msg.header), qos_profile_sensor_data)
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return {}


# --- small helpers --------------------------------------------------------------------------------


def _build_model(out_dir: Path, image_size: int, architecture: str) -> Path:
    """Initial-weights Keypoint Pyramids (10 + 20 keypoints) exported to ONNX at image_size."""
    import torch

    from kp_perception.checkpoint import save_checkpoint
    from kp_perception.models import build_encoder
    from kp_perception_bench.pyramids_quality import CPU_PRESET
    from kp_perception_training.export import export_checkpoint

    model_cfg: dict = {}
    if architecture == "cpu":
        model_cfg = {k.split(".")[1]: int(v) for k, v in (i.split("=") for i in CPU_PRESET) if k.startswith("model.")}
    torch.manual_seed(0)
    encoder = build_encoder("pyramids", model_cfg)
    checkpoint = out_dir / "pyramids.pt"
    save_checkpoint(checkpoint, {"kind": "pyramids", "config": {"model": model_cfg, "data": {"image_size": image_size}},
                                 "encoder": encoder.state_dict(), "training": {}})
    return export_checkpoint(checkpoint, out_dir / "pyramids.onnx").onnx_path


def _percentiles(values_ms: list[float]) -> dict:
    if not values_ms:
        return {"p50": float("nan"), "p95": float("nan"), "p99": float("nan"), "max": float("nan"), "n": 0}
    v = np.asarray(values_ms, dtype=np.float64)
    return {
        "p50": float(np.percentile(v, 50)),
        "p95": float(np.percentile(v, 95)),
        "p99": float(np.percentile(v, 99)),
        "max": float(v.max()),
        "n": int(v.size),
    }


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/<pid>/stat (no psutil needed)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def _wait(condition, timeout: float, what: str, proc: subprocess.Popen, log) -> None:
    from kp_perception.errors import KpPerceptionError

    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            log.seek(0)
            raise KpPerceptionError(f"{what}: process exited: {log.read().strip()[-500:]}")
        if time.monotonic() > deadline:
            raise KpPerceptionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kp_perception_bench.node", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    from kp_perception.errors import KpPerceptionError

    try:
        figures = run(args)
    except KpPerceptionError as exc:
        print(f"bench node: error: {exc}", file=sys.stderr)
        return 2
    if args.role == "bench":
        print(json.dumps(figures, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
