"""``kp-perception demo {pyramids,tusk}``: the whole pipeline in a minute, on the real node.

What it does, in order (each step is the real thing, not a mock):

1. simulates one short tabletop episode (``kp_perception_training.sim.tabletop``, pybullet)
   into ``OUT/recording/`` (rosbag2 + ground-truth ``annotations.csv``);
2. starts the real ``pyramids_node`` / ``tusk_node`` as a subprocess with the
   shipped model (``models/<kind>.onnx``), with the same parameter file and
   remaps as ``<kind>.launch.py`` (``kp_perception.nodes.launch_args``) and
   ``FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA``;
3. plays the recording into it over ROS 2 (``kp_perception.playback``: rgb8
   images on ``/camera/image_raw``, sensor-data QoS, stamped at send time)
   once both sides have matched;
4. records what the node publishes (the exact CDR bytes, plus ``/diagnostics``
   and, with ``--debug-image``, the debug image) into ``OUT/node_output/``
   (mcap, readable offline with rosbags);
5. draws the RECEIVED messages on the frames they answer (matched by header
   stamp) into ``OUT/keypoints.gif``, ``.mp4`` and one ``.png``, and writes
   ``OUT/summary.json``: frames sent/received, output rate, end-to-end
   latency p50/p99 (receive time - image stamp, same host clock), and how far
   keypoints moved between consecutive frames next to how far the simulator's
   ground-truth points moved (their correlation says the keypoints follow
   the scene).

The demo runs in its own ROS domain (``ROS_DOMAIN_ID`` if set, else one
derived from its process id) so two demos, or a demo and a robot, never see
each other's topics. torch is not needed here; ``training`` (the simulator) is
imported inside :func:`run`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kp_perception.resources import share_path

IMAGE_TOPIC = "/camera/image_raw"
MSG_TYPES = {
    "pyramids": "kp_perception_msgs/msg/KeypointPyramid",
    "tusk": "kp_perception_msgs/msg/PrototypeDetectionArray",
}
DIAGNOSTICS_TYPE = "diagnostic_msgs/msg/DiagnosticArray"
DEBUG_IMAGE_TYPE = "sensor_msgs/msg/Image"


def add_parser(subparsers) -> None:
    sub = subparsers.add_parser(
        "demo",
        help="simulate a tabletop clip, run the real node with a shipped model on it, write a GIF/MP4 + summary",
        description=(
            "Simulate a short tabletop recording, start the real pyramids_node/tusk_node (as its launch file "
            "does) with the shipped model, play the recording into it over ROS 2 topics, record what it "
            "publishes into an mcap bag, and draw the received keypoints over the frames (GIF, MP4, PNG) "
            "with a summary of rate, latency and keypoint motion (summary.json)."
        ),
    )
    sub.add_argument("kind", choices=(*MSG_TYPES, "servo"),
                     help="which node and shipped model to run; servo: closed-loop visual servoing "
                     "(kp_perception.cli.demo_servo)")
    sub.add_argument("--out", type=Path, help="output folder (default: out/demo_<kind>); earlier demo outputs "
                     "in it are replaced")
    sub.add_argument("--model", type=Path, help="exported model (.onnx + .json sidecar; default: models/<kind>.onnx)")
    sub.add_argument("--frames", type=int, default=80, help="frames to simulate and play (default 80)")
    sub.add_argument("--rate", type=float, default=10.0, help="playback rate in Hz (default 10, the simulator's)")
    sub.add_argument("--size", type=int, default=256, help="square frame size in pixels (default 256)")
    sub.add_argument("--seed", type=int, default=3, help="simulation seed (default 3)")
    sub.add_argument("--debug-image", action="store_true", help="also record the node's debug image topic")
    sub.add_argument("--startup-timeout", type=float, default=60.0,
                     help="seconds to wait for the node to load its model and match topics (default 60)")
    from kp_perception.cli.demo_servo import add_arguments as add_servo_arguments

    add_servo_arguments(sub)
    sub.set_defaults(func=run)


# ---------------------------------------------------------------------------------------------
# What the demo collected


@dataclass(frozen=True)
class Received:
    """One message from the node: its topic, CDR bytes and receive time (ns, system clock)."""

    topic: str
    msgtype: str
    data: bytes
    received_ns: int


def default_model(kind: str) -> Path:
    """``models/<kind>.onnx`` of this checkout (what ``make models`` writes and git ships)."""
    return share_path("models", f"{kind}.onnx")


def _check_args(args: argparse.Namespace) -> None:
    from kp_perception.errors import ConfigError, ModelLoadError
    from kp_perception.sidecar import read_sidecar, sidecar_path

    if args.frames < 2:
        raise ConfigError(f"--frames {args.frames}: expected at least 2 (motion needs two frames)")
    if not 0.1 <= args.rate <= 200.0:
        raise ConfigError(f"--rate {args.rate}: expected 0.1 to 200 Hz")
    if not 32 <= args.size <= 1024:
        raise ConfigError(f"--size {args.size}: expected 32 to 1024 pixels")
    if not args.model.is_file():
        raise ModelLoadError(
            f"{args.model}: model file not found (run `make models` to train the shipped models, "
            "or pass --model FILE.onnx)"
        )
    # The node checks this too, but a wrong model should fail here in one line, before any simulation.
    read_sidecar(sidecar_path(args.model), expected_kind=args.kind)


def run(args: argparse.Namespace) -> int:
    if args.kind == "servo":
        from kp_perception.cli.demo_servo import run as run_servo

        return run_servo(args)
    args.model = Path(args.model) if args.model else default_model(args.kind)
    args.out = Path(args.out) if args.out else Path("out") / f"demo_{args.kind}"
    _check_args(args)
    started = time.monotonic()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("node_output", "keypoints.gif", "keypoints.mp4", "keypoints.png", "summary.json", "node.log"):
        path = out / stale
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)

    frames, recording = _simulate(args)
    domain = _choose_domain()
    received, sent, node_exit = _run_node_and_play(args, frames, domain)
    bag = _write_bag(out / "node_output", received)
    summary = _summarise(args, frames, recording, sent, received, node_exit, domain)
    summary["outputs"]["bag"] = str(bag)
    summary["outputs"]["recording"] = str(recording)
    summary["wall_time_s"] = round(time.monotonic() - started, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _print_summary(summary, out)
    return 0


# ---------------------------------------------------------------------------------------------
# 1. simulate


def _simulate(args: argparse.Namespace) -> tuple[list[np.ndarray], Path]:
    from kp_perception.sequences import open_sequences
    from kp_perception_training.sim.tabletop import TabletopConfig, generate_tabletop

    recording = args.out / "recording"
    print(f"demo: simulating {args.frames} frames of {args.size}x{args.size} tabletop (seed {args.seed})", flush=True)
    config = TabletopConfig(frames=args.frames, size=args.size, seed=args.seed, fps=args.rate)
    generate_tabletop(recording, 1, config, overwrite=True, workers=1)
    (sequence,) = open_sequences(recording / "episode_000")
    return list(sequence.iter_frames()), recording


# ---------------------------------------------------------------------------------------------
# 2-4. node, playback, recording


def _choose_domain() -> int:
    """ROS_DOMAIN_ID if the user set one, else a private domain in 101-200 (from the process id)."""
    value = os.environ.get("ROS_DOMAIN_ID", "").strip()
    return int(value) if value.isdigit() else 101 + os.getpid() % 100


def _node_command(args: argparse.Namespace) -> tuple[list[str], dict[str, str], str]:
    """The node's command line and environment, exactly as ``<kind>.launch.py`` builds them."""
    import yaml

    from kp_perception.nodes.launch_args import default_params_file, node_launch_config

    cfg = node_launch_config(
        args.kind,
        params_file=default_params_file(args.kind),
        model=str(args.model.resolve()),
        image_topic=IMAGE_TOPIC,
        debug=args.debug_image,
    )
    exe = shutil.which(cfg.executable, path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    command = [exe] if exe else [sys.executable, "-m", f"kp_perception.nodes.{cfg.executable}"]
    params = yaml.safe_load(Path(cfg.params_file).read_text())["/**"]["ros__parameters"]
    output_topic = "/" + str(params.get("output_topic", "keypoints" if args.kind == "pyramids" else "detections"))
    return [*command, *cfg.ros_arguments()], dict(cfg.env), output_topic


def _run_node_and_play(
    args: argparse.Namespace, frames: list[np.ndarray], domain: int
) -> tuple[list[Received], list[Any], int | None]:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    from kp_perception.errors import KpPerceptionError
    from kp_perception.playback import FramePlayer

    command, node_env, output_topic = _node_command(args)
    env = {**os.environ, **node_env, "ROS_DOMAIN_ID": str(domain), "RCUTILS_COLORIZED_OUTPUT": "0"}
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    # This process talks to the node, so it needs the same transport and domain.
    os.environ.update({k: env[k] for k in (*node_env, "ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE")})

    log_path = args.out / "node.log"
    print(f"demo: starting {Path(command[0]).name} (ROS domain {domain}, log {log_path})", flush=True)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    received: list[Received] = []
    lock = threading.Lock()
    rclpy.init()
    node = rclpy.create_node("kp_demo_player")
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    try:
        def keep(topic: str, msgtype: str):
            def callback(data: bytes) -> None:
                with lock:
                    received.append(Received(topic, msgtype, bytes(data), time.time_ns()))
            return callback

        msg_classes = _message_classes()
        reliable = QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE)
        outputs = [(output_topic, MSG_TYPES[args.kind]), ("/diagnostics", DIAGNOSTICS_TYPE)]
        if args.debug_image:
            outputs.append(("/debug_image", DEBUG_IMAGE_TYPE))
        subs = [node.create_subscription(msg_classes[t], topic, keep(topic, t), reliable, raw=True)
                for topic, t in outputs]
        player = FramePlayer(node, IMAGE_TOPIC)
        spinner.start()

        deadline = time.monotonic() + args.startup_timeout
        while player.publisher.get_subscription_count() < 1 or subs[0].get_publisher_count() < 1:
            if proc.poll() is not None:
                raise KpPerceptionError(f"{Path(command[0]).name} exited at start-up: {_last_line(log_path)}")
            if time.monotonic() > deadline:
                raise KpPerceptionError(
                    f"{Path(command[0]).name} did not subscribe to {IMAGE_TOPIC} and publish {output_topic} within "
                    f"{args.startup_timeout:g} s (see {log_path}; docs/troubleshooting.md)"
                )
            time.sleep(0.05)
        time.sleep(0.5)  # both ends of each match are announced independently; let the node's side settle

        print(f"demo: playing {len(frames)} frames at {args.rate:g} Hz into {IMAGE_TOPIC}", flush=True)
        sent = player.play(frames, args.rate, progress=True, total=len(frames))
        _wait_for_outputs(received, lock, output_topic, len(sent), quiet_s=max(2.0, 3.0 / args.rate))
    finally:
        node_exit = _stop(proc)
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        rclpy.try_shutdown()
    return received, sent, node_exit


def _message_classes() -> dict[str, type]:
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import Image

    from kp_perception_msgs.msg import KeypointPyramid, PrototypeDetectionArray

    return {
        MSG_TYPES["pyramids"]: KeypointPyramid,
        MSG_TYPES["tusk"]: PrototypeDetectionArray,
        DIAGNOSTICS_TYPE: DiagnosticArray,
        DEBUG_IMAGE_TYPE: Image,
    }


def _wait_for_outputs(received: list[Received], lock: threading.Lock, topic: str, expected: int,
                      quiet_s: float) -> None:
    """Wait until every frame was answered, or no answer came for ``quiet_s`` (the node drops stale frames)."""
    last_count, last_change = -1, time.monotonic()
    while True:
        with lock:
            count = sum(1 for r in received if r.topic == topic)
        if count >= expected:
            return
        if count != last_count:
            last_count, last_change = count, time.monotonic()
        elif time.monotonic() - last_change > quiet_s:
            return
        time.sleep(0.05)


def _stop(proc: subprocess.Popen, timeout: float = 10.0) -> int | None:
    """SIGINT (the node shuts down cleanly), then SIGKILL after ``timeout`` s; returns the exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5.0)
    return proc.returncode


def _last_line(path: Path) -> str:
    lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1] if lines else "(no output)"


def kp_typestore():
    """The rosbags typestore (ROS 2 Kilted) with the kp_perception_msgs types registered from their .msg files."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    from kp_perception.errors import KpPerceptionError

    candidates = [Path(p) / "share" / "kp_perception_msgs" / "msg"
                  for p in [sys.prefix, *os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep)] if p]
    candidates.append(share_path("kp_perception_msgs", "msg"))
    msg_dir = next((d for d in candidates if any(d.glob("*.msg"))), None)
    if msg_dir is None:
        raise KpPerceptionError("kp_perception_msgs/msg/*.msg not found (run `make setup`)")
    store = get_typestore(Stores.ROS2_KILTED)
    types: dict[str, Any] = {}
    for path in sorted(msg_dir.glob("*.msg")):
        types.update(get_types_from_msg(path.read_text(), f"kp_perception_msgs/msg/{path.stem}"))
    store.register(types)
    return store


def _write_bag(path: Path, received: list[Received]) -> Path:
    """Write what the node published (CDR bytes as received) into an mcap rosbag2 at ``path``."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    store = kp_typestore()
    writer = Writer(path, version=Writer.VERSION_LATEST, storage_plugin=StoragePlugin.MCAP)
    connections: dict[str, Any] = {}
    with writer:
        for r in sorted(received, key=lambda r: r.received_ns):
            if r.topic not in connections:
                connections[r.topic] = writer.add_connection(r.topic, r.msgtype, typestore=store)
            writer.write(connections[r.topic], r.received_ns, r.data)
    return path


# ---------------------------------------------------------------------------------------------
# 5. drawing and summary


def result_from_message(msg: Any, kind: str):
    """A decoded KeypointPyramid / PrototypeDetectionArray -> the result type the drawing takes."""
    from kp_perception.results import KeypointPyramidResult, PrototypeDetectionResult

    if kind == "pyramids":
        kps = msg.keypoints
        return KeypointPyramidResult(
            xy=np.array([[k.x, k.y] for k in kps], dtype=np.float32).reshape(-1, 2),
            scores=np.array([k.score for k in kps], dtype=np.float32),
            levels=np.array([k.level for k in kps], dtype=np.int32),
            parents=np.array([k.parent for k in kps], dtype=np.int32),
            level_sizes=tuple(int(s) for s in msg.level_sizes),
            image_width=int(msg.image_width),
            image_height=int(msg.image_height),
        )
    dets = msg.detections
    dim = len(dets[0].descriptor) if dets else 0
    return PrototypeDetectionResult(
        xy=np.array([[d.x, d.y] for d in dets], dtype=np.float32).reshape(-1, 2),
        scores=np.array([d.score for d in dets], dtype=np.float32),
        prototypes=np.array([d.prototype for d in dets], dtype=np.int32),
        distances=np.array([d.distance for d in dets], dtype=np.float32),
        descriptors=np.array([list(d.descriptor) for d in dets], dtype=np.float32).reshape(-1, dim),
        num_prototypes=int(msg.num_prototypes),
        image_width=int(msg.image_width),
        image_height=int(msg.image_height),
    )


def keypoint_displacement(prev, curr, kind: str) -> float:
    """Mean pixel distance keypoints moved between two results (NaN when one is empty).

    Pyramids: keypoint i is the same keypoint in every frame, so index to index.
    TUSK: detections are unordered, so each current detection to the nearest
    previous one.
    """
    a, b = np.asarray(prev.xy, dtype=np.float64), np.asarray(curr.xy, dtype=np.float64)
    if len(a) == 0 or len(b) == 0:
        return float("nan")
    if kind == "pyramids" and a.shape == b.shape:
        return float(np.linalg.norm(b - a, axis=1).mean())
    return float(np.linalg.norm(b[:, None, :] - a[None, :, :], axis=2).min(axis=1).mean())


def ground_truth_motion(annotations_csv: Path, frames: int) -> np.ndarray:
    """Mean pixel motion of the simulator's visible ground-truth points from frame i-1 to i (index 0 = NaN)."""
    from kp_perception_training.sim.annotations import group_by_frame, read_annotations

    grouped = group_by_frame(read_annotations(annotations_csv))
    motion = np.full(frames, np.nan)
    for i in range(1, frames):
        prev, curr = grouped.get(("episode_000", i - 1), {}), grouped.get(("episode_000", i), {})
        moved = [np.hypot(curr[n].x - prev[n].x, curr[n].y - prev[n].y)
                 for n in curr if n in prev and curr[n].visible and prev[n].visible]
        if moved:
            motion[i] = float(np.mean(moved))
    return motion


def _percentile_ms(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if values else None


def _summarise(args, frames, recording, sent, received, node_exit, domain) -> dict[str, Any]:
    from rclpy.serialization import deserialize_message
    from tqdm import tqdm

    from kp_perception.drawing import draw_detections, draw_pyramid
    from kp_perception.media import AnnotatedVideoWriter

    kind = args.kind
    msg_class = _message_classes()[MSG_TYPES[kind]]
    by_stamp = {s.stamp_ns: s for s in sent}
    outputs = [r for r in received if r.msgtype == MSG_TYPES[kind]]
    results: dict[int, Any] = {}
    latencies_ms: list[float] = []
    receive_times: list[int] = []
    unmatched = 0
    for r in outputs:
        msg = deserialize_message(r.data, msg_class)
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        frame = by_stamp.get(stamp)
        if frame is None:
            unmatched += 1
            continue
        results[frame.index] = result_from_message(msg, kind)
        latencies_ms.append((r.received_ns - stamp) * 1e-6)
        receive_times.append(r.received_ns)

    # Motion: consecutive frames the node answered both of, next to the ground truth's motion.
    gt = ground_truth_motion(recording / "annotations.csv", len(frames))
    pairs = [(i, keypoint_displacement(results[i - 1], results[i], kind), gt[i])
             for i in sorted(results) if i - 1 in results]
    pairs = [(i, d, g) for i, d, g in pairs if np.isfinite(d)]
    disp = np.array([d for _, d, _ in pairs])
    gts = np.array([g for _, _, g in pairs])
    both = np.isfinite(gts)
    correlation = None
    if both.sum() >= 3 and disp[both].std() > 0 and gts[both].std() > 0:
        correlation = round(float(np.corrcoef(disp[both], gts[both])[0, 1]), 3)

    out = args.out
    draw = draw_pyramid if kind == "pyramids" else draw_detections
    gif, mp4, png = out / "keypoints.gif", out / "keypoints.mp4", out / "keypoints.png"
    shown = sorted(results)
    if shown:
        with AnnotatedVideoWriter(gif, fps=args.rate) as g, AnnotatedVideoWriter(mp4, fps=args.rate) as m:
            for i in tqdm(shown, desc="drawing", unit="frame"):
                canvas = _caption(draw(frames[i], results[i]), f"{kind}_node  frame {i}")
                g.write(canvas)
                m.write(canvas)
                if i == shown[len(shown) // 2]:
                    import imageio.v3 as iio

                    iio.imwrite(png, canvas)

    span_s = (max(receive_times) - min(receive_times)) * 1e-9 if len(receive_times) > 1 else 0.0
    sent_span = sent[-1].sent_monotonic - sent[0].sent_monotonic if len(sent) > 1 else 0.0
    diagnostics = _last_diagnostics(received)
    counts = [len(r.scores) for r in results.values()]
    return {
        "kind": kind,
        "model": str(args.model),
        "node": f"{kind}_node",
        "ros_domain_id": domain,
        "frame_size": [args.size, args.size],
        "frames_sent": len(sent),
        "frames_received": len(results),
        "frames_unanswered": len(sent) - len(results),
        "answered_frames": shown,
        "unmatched_messages": unmatched,
        "input_rate_hz": round((len(sent) - 1) / sent_span, 2) if sent_span else None,
        "output_rate_hz": round((len(receive_times) - 1) / span_s, 2) if span_s else None,
        "latency_ms": {
            "p50": _percentile_ms(latencies_ms, 50),
            "p99": _percentile_ms(latencies_ms, 99),
            "max": round(max(latencies_ms), 2) if latencies_ms else None,
        },
        "keypoints_per_frame": round(float(np.mean(counts)), 2) if counts else 0,
        "motion": {
            "pairs": len(pairs),
            "mean_displacement_px": round(float(disp.mean()), 3) if len(disp) else None,
            "std_displacement_px": round(float(disp.std()), 3) if len(disp) else None,
            "ground_truth_mean_displacement_px": round(float(np.nanmean(gts)), 3) if both.any() else None,
            "correlation_with_ground_truth": correlation,
            "per_pair": [{"frame": i, "keypoints_px": round(d, 3), "ground_truth_px": None if not np.isfinite(g)
                          else round(float(g), 3)} for i, d, g in pairs],
        },
        "node_diagnostics": diagnostics,
        "node_exit_code": node_exit,
        "outputs": {
            "gif": str(gif) if shown else None,
            "mp4": str(mp4) if shown else None,
            "png": str(png) if shown else None,
            "png_frame": shown[len(shown) // 2] if shown else None,
            "summary": str(out / "summary.json"),
            "node_log": str(out / "node.log"),
        },
    }


def _caption(canvas: np.ndarray, text: str) -> np.ndarray:
    """White text on a dark strip along the top edge, scaled to the frame width."""
    import cv2

    scale = max(canvas.shape[1] / 640.0, 0.3)
    (_, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    strip = h + base + 4
    canvas[:strip] = (canvas[:strip].astype(np.uint16) * 2 // 5).astype(np.uint8)
    cv2.putText(canvas, text, (3, h + 2), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return canvas


def _last_diagnostics(received: list[Received]) -> dict[str, str]:
    """The key/values of the node's last /diagnostics status (its own rate, latency, drops)."""
    from rclpy.serialization import deserialize_message

    diags = [r for r in received if r.msgtype == DIAGNOSTICS_TYPE]
    if not diags:
        return {}
    msg = deserialize_message(diags[-1].data, _message_classes()[DIAGNOSTICS_TYPE])
    return {kv.key: kv.value for status in msg.status for kv in status.values}


def _print_summary(summary: dict[str, Any], out: Path) -> None:
    lat = summary["latency_ms"]
    motion = summary["motion"]
    lines = [
        f"demo {summary['kind']}: {summary['frames_received']}/{summary['frames_sent']} frames answered by "
        f"{summary['node']}, output {summary['output_rate_hz']} Hz (input {summary['input_rate_hz']} Hz)",
        f"  end-to-end latency p50 {lat['p50']} ms, p99 {lat['p99']} ms (shared CPU: indicative only)",
        f"  keypoints moved {motion['mean_displacement_px']} px/frame on average (ground-truth points: "
        f"{motion['ground_truth_mean_displacement_px']} px/frame, correlation {motion['correlation_with_ground_truth']})",
        f"outputs in {out}/:",
    ]
    for key, path in summary["outputs"].items():
        if isinstance(path, str):
            lines.append(f"  {key:10s} {path}")
    print("\n".join(lines), flush=True)
