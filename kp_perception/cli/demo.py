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
5. draws the RECEIVED messages (``kp_perception.cli.demo_summary``) on the frames they answer (matched by header
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
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from kp_perception.cli.demo_summary import (
    DEBUG_IMAGE_TYPE,
    DEMO_KINDS,
    DIAGNOSTICS_TYPE,
    MSG_TYPES,
    Received,
    message_classes,
    print_summary,
    summarise,
)
from kp_perception.cli.processes import stop_process
from kp_perception.kinds import KINDS
from kp_perception.resources import share_path

IMAGE_TOPIC = "/camera/image_raw"


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
    sub.add_argument("kind", choices=(*DEMO_KINDS, "servo"),
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
    summary = summarise(args, frames, recording, sent, received, node_exit, domain)
    summary["outputs"]["bag"] = str(bag)
    summary["outputs"]["recording"] = str(recording)
    summary["wall_time_s"] = round(time.monotonic() - started, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print_summary(summary, out)
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
    """The node's command line and environment, exactly as ``<kind>.launch.py`` builds them, and its output topic."""
    import yaml

    from kp_perception.nodes.launch_args import default_params_file, node_command, node_launch_config

    node = KINDS[args.kind].node
    cfg = node_launch_config(
        node.name,
        params_file=default_params_file(node.name),
        model=str(args.model.resolve()),
        image_topic=IMAGE_TOPIC,
        debug=args.debug_image,
    )
    params = yaml.safe_load(Path(cfg.params_file).read_text())["/**"]["ros__parameters"]
    return node_command(cfg), dict(cfg.env), "/" + str(params.get("output_topic", node.output_topic))


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

        msg_classes = message_classes()
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
        node_exit = stop_process(proc)
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        rclpy.try_shutdown()
    return received, sent, node_exit


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


def _last_line(path: Path) -> str:
    lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1] if lines else "(no output)"


def _write_bag(path: Path, received: list[Received]) -> Path:
    """Write what the node published (CDR bytes as received) into an mcap rosbag2 at ``path``."""
    from kp_perception_training.data.bag_writer import BagWriter

    with BagWriter(path, "mcap", kp_msgs=True) as bag:
        for r in sorted(received, key=lambda r: r.received_ns):
            bag.write_cdr(r.topic, r.msgtype, r.data, r.received_ns)
    return path
