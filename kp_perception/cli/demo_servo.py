"""``kp-perception demo servo``: visual servoing closed through real ROS 2 topics and processes.

The loop (every arrow is a real topic between processes, Fast DDS LARGE_DATA):

    this process: simulated arm + camera (training/sim/reach.py), real time at --rate Hz
        │ /camera/image_raw (rgb8, sensor-data QoS) + /camera/camera_info + /joint_states, one stamp
        ▼
    pyramids_node (own process, shipped model; parameters/remaps as pyramids.launch.py)
        │ /keypoints_observation (kp_perception_msgs/PolicyObservation, fixed slots, [-1, 1])
        ▼
    servo_node (own process; Broyden IBVS, or --controller policy with an ONNX policy)
        │ /joint_velocity_command (sensor_msgs/JointState velocities, stamped with the image it answers)
        ▼
    this process: applies the newest command for one control period, renders the next frame.

The goal is given only as a goal image: before each episode the arm's goal
configuration is rendered and published on the camera topic, and pyramids_node's
observation of it becomes the goal (republished on /goal_observation, reliable,
transient local). The simulator is a robot here: it holds the newest command,
and stops by itself when the newest command is older than 0.5 s (a driver's
watchdog; the controller's own stale-observation stop comes first).

Outputs in ``OUT/``: ``servo.gif`` and ``servo.mp4`` (episode 0, upscaled, current keypoints
as dots and goal keypoints as rings in the same colour, the simulator's end-effector error
written on each frame), ``summary.json`` (per episode: success, final error; loop rate,
control latency p50/p99 from image stamp to the command's arrival at the arm), ``nodes.log``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from kp_perception.cli.processes import stop_process

IMAGE_TOPIC = "/camera/image_raw"
CAMERA_INFO_TOPIC = "/camera/camera_info"
JOINT_STATES_TOPIC = "/joint_states"
OBSERVATION_TOPIC = "/keypoints_observation"
GOAL_TOPIC = "/goal_observation"
COMMAND_TOPIC = "/joint_velocity_command"
COMMAND_TIMEOUT_S = 0.5  # the simulated driver stops the arm on older commands


def add_arguments(sub: argparse.ArgumentParser) -> None:
    """The servo demo's options (``kp-perception demo servo ...``)."""
    g = sub.add_argument_group("servo (kind = servo)")
    g.add_argument("--episodes", type=int, default=1, help="servo: episodes to run (default 1)")
    g.add_argument("--duration", type=float, default=15.0, help="servo: seconds of control per episode (default 15)")
    g.add_argument("--controller", choices=("ibvs", "policy"), default="ibvs", help="servo: servo_node's controller")
    g.add_argument("--policy", type=Path, help="servo: exported policy .onnx for --controller policy")
    g.add_argument("--slot-prefix", default="", help="servo: use only slots starting with this (e.g. level0/)")


# ---------------------------------------------------------------------------------------------
# The node processes


def node_processes(model: Path, controller: str, policy: Path | None, slot_prefix: str,
                   joint_names: list[str], lower: np.ndarray, upper: np.ndarray
                   ) -> list[tuple[str, list[str], dict[str, str]]]:
    """(name, command, env) of pyramids_node and servo_node, started as the launch files would."""
    from kp_perception.nodes.launch_args import (
        NodeLaunchConfig,
        default_params_file,
        node_command,
        node_launch_config,
    )

    perception = node_launch_config("pyramids", params_file=default_params_file("pyramids"),
                                    model=str(Path(model).resolve()), image_topic=IMAGE_TOPIC)
    perception = replace(perception, parameters={**perception.parameters, "publish_observation": True,
                                                 "threads": 1},
                         remappings=[*perception.remappings, ("keypoints_observation", OBSERVATION_TOPIC)])
    servo_params: dict[str, object] = {
        "controller": controller,
        "joint_names": ",".join(joint_names),
        "joint_lower_limits": ",".join(f"{v:.6f}" for v in lower),
        "joint_upper_limits": ",".join(f"{v:.6f}" for v in upper),
    }
    if slot_prefix:
        servo_params["slot_prefix"] = slot_prefix
    if controller == "policy":
        servo_params["policy_file_path"] = str(Path(policy).resolve())
    servo = NodeLaunchConfig(
        executable="servo_node",
        params_file=default_params_file("servo"),
        parameters=servo_params,
        remappings=[("observation", OBSERVATION_TOPIC), ("goal_observation", GOAL_TOPIC),
                    ("joint_states", JOINT_STATES_TOPIC), ("joint_velocity_command", COMMAND_TOPIC)],
    )
    return [("pyramids_node", node_command(perception), dict(perception.env)),
            ("servo_node", node_command(servo), dict(servo.env))]


# ---------------------------------------------------------------------------------------------
# The simulated robot on ROS 2


class SimulatedRobot:
    """Publishes the camera and joint states, takes joint-velocity commands; this process's ROS side."""

    def __init__(self, joint_names: list[str]) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
        from sensor_msgs.msg import CameraInfo, JointState

        from kp_perception.playback import FramePlayer
        from kp_perception_msgs.msg import PolicyObservation

        self.joint_names = list(joint_names)
        rclpy.init()
        self.node = rclpy.create_node("kp_servo_sim")
        self.player = FramePlayer(self.node, IMAGE_TOPIC, frame_id="camera", qos=qos_profile_sensor_data)
        self.info_pub = self.node.create_publisher(CameraInfo, CAMERA_INFO_TOPIC, qos_profile_sensor_data)
        self.joint_pub = self.node.create_publisher(JointState, JOINT_STATES_TOPIC, 50)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.goal_pub = self.node.create_publisher(PolicyObservation, GOAL_TOPIC, latched)
        self._lock = threading.Lock()
        self.observations: dict[int, Any] = {}  # stamp ns -> PolicyObservation
        self.command: tuple[int, np.ndarray] | None = None  # (image stamp ns, velocities)
        self.command_log: list[tuple[int, int]] = []  # (image stamp ns, receive ns)
        self.episode_start_ns = 0
        self.published_stamps: set[int] = set()
        self.obs_sub = self.node.create_subscription(PolicyObservation, OBSERVATION_TOPIC, self._on_obs, 10)
        self.cmd_sub = self.node.create_subscription(JointState, COMMAND_TOPIC, self._on_command, 10)
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self._spinner = threading.Thread(target=self.executor.spin, daemon=True)
        self._spinner.start()
        self._JointState, self._CameraInfo = JointState, CameraInfo

    def _on_obs(self, msg) -> None:
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        with self._lock:
            self.observations[stamp] = msg
            if len(self.observations) > 2000:
                self.observations.pop(min(self.observations))

    def _on_command(self, msg) -> None:
        received = time.time_ns()
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        index = {str(n): i for i, n in enumerate(msg.name)}
        if any(n not in index for n in self.joint_names) or len(msg.velocity) != len(msg.name):
            return
        qdot = np.array([msg.velocity[index[n]] for n in self.joint_names])
        with self._lock:
            if stamp < self.episode_start_ns:
                return  # an answer to an earlier episode's frame
            if self.command is None or stamp >= self.command[0]:
                self.command = (stamp, qdot)
            if stamp in self.published_stamps:  # answers a frame (watchdog stops carry "now")
                self.command_log.append((stamp, received))

    def wait_for_nodes(self, timeout: float, procs: list[subprocess.Popen], log: Path) -> None:
        from kp_perception.errors import KpPerceptionError

        deadline = time.monotonic() + timeout
        while (self.player.publisher.get_subscription_count() < 1 or self.obs_sub.get_publisher_count() < 1
               or self.cmd_sub.get_publisher_count() < 1 or self.goal_pub.get_subscription_count() < 1):
            for p in procs:
                if p.poll() is not None:
                    raise KpPerceptionError(f"a node exited at start-up (see {log})")
            if time.monotonic() > deadline:
                raise KpPerceptionError(f"the nodes did not match the demo's topics within {timeout:g} s (see {log})")
            time.sleep(0.05)
        time.sleep(0.5)

    def publish_frame(self, frame: np.ndarray, q: np.ndarray | None, info: dict) -> int:
        """Image (+ camera_info, + joint states when ``q`` is given), one stamp; returns it in ns."""
        from std_msgs.msg import Header

        sent = self.player.publish(frame)
        header = Header(stamp=self._stamp(sent.stamp_ns), frame_id="camera")
        self.info_pub.publish(self._CameraInfo(header=header, **info))
        if q is not None:
            with self._lock:
                self.published_stamps.add(sent.stamp_ns)
            self.joint_pub.publish(self._JointState(header=header, name=self.joint_names,
                                                    position=[float(v) for v in q]))
        return sent.stamp_ns

    @staticmethod
    def _stamp(ns: int):
        from builtin_interfaces.msg import Time

        return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)

    def observe_goal(self, frame: np.ndarray, info: dict, timeout: float = 10.0):
        """Publish the goal image until pyramids_node answers it; return that PolicyObservation."""
        from kp_perception.errors import KpPerceptionError

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            stamp = self.publish_frame(frame, None, info)
            until = time.monotonic() + 0.5
            while time.monotonic() < until:
                with self._lock:
                    msg = self.observations.get(stamp)
                if msg is not None:
                    return msg
                time.sleep(0.005)
        raise KpPerceptionError(f"pyramids_node did not answer the goal image within {timeout:g} s")

    def start_episode(self, goal_msg) -> None:
        with self._lock:
            self.command = None
            self.episode_start_ns = time.time_ns()
        self.goal_pub.publish(goal_msg)

    def current_command(self) -> np.ndarray:
        """The newest command, or zero when there is none or it is older than COMMAND_TIMEOUT_S."""
        with self._lock:
            cmd = self.command
        if cmd is None or time.time_ns() - cmd[0] > COMMAND_TIMEOUT_S * 1e9:
            return np.zeros(len(self.joint_names))
        return cmd[1]

    def observation_at(self, stamp_ns: int):
        with self._lock:
            return self.observations.get(stamp_ns)

    def close(self) -> None:
        import rclpy

        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        rclpy.try_shutdown()


# ---------------------------------------------------------------------------------------------
# Drawing


def draw_servo(frame: np.ndarray, obs, goal, text: str, scale: int = 4) -> np.ndarray:
    """Frame upscaled ×``scale``; slot i's current keypoint a dot, its goal a ring, same colour; a caption."""
    import cv2

    from kp_perception.drawing import palette

    h, w = frame.shape[:2]
    canvas = cv2.resize(frame, (w * scale, h * scale), interpolation=cv2.INTER_NEAREST)
    colours = palette(len(goal.valid))

    def px(v):
        return (int(round((v[0] + 1) / 2 * (w - 1) * scale + scale / 2)),
                int(round((v[1] + 1) / 2 * (h - 1) * scale + scale / 2)))

    for i in range(len(goal.valid)):
        c = tuple(int(x) for x in colours[i])
        if goal.valid[i]:
            cv2.circle(canvas, px(goal.values[i]), 6, c, 2, cv2.LINE_AA)
        if obs is not None and obs.valid[i]:
            cv2.circle(canvas, px(obs.values[i]), 3, c, -1, cv2.LINE_AA)
            if goal.valid[i]:
                cv2.line(canvas, px(obs.values[i]), px(goal.values[i]), c, 1, cv2.LINE_AA)
    cv2.putText(canvas, text, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return canvas


# ---------------------------------------------------------------------------------------------
# Episodes through ROS


def _choose_domain() -> int:
    value = os.environ.get("ROS_DOMAIN_ID", "").strip()
    return int(value) if value.isdigit() else 101 + os.getpid() % 100


def run_closed_loop(*, model: Path, episodes: list[int], seed: int, duration: float, rate: float,
                    controller: str = "ibvs", policy: Path | None = None, slot_prefix: str = "",
                    out: Path, video_episode: int | None = 0, startup_timeout: float = 60.0,
                    progress: bool = True) -> dict[str, Any]:
    """Run ``episodes`` of the reach task through pyramids_node and servo_node; per-episode results + timing."""
    from kp_perception.observation import KeypointObservation
    from kp_perception_training.control.episodes import EpisodeResult, converge_time
    from kp_perception_training.sim.bag_topics import camera_info_fields
    from kp_perception_training.sim.reach import ReachConfig, ReachScene

    config = ReachConfig(seed=seed, control_hz=rate)
    probe = ReachScene(config, episodes[0])
    joint_names, lower, upper = probe.joint_names, probe.lower, probe.upper
    camera = probe.scene.camera
    info = camera_info_fields(camera.intrinsics, camera.width, camera.height)
    probe.close()
    info = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in info.items()}

    domain = _choose_domain()
    env_extra = {"ROS_DOMAIN_ID": str(domain), "RCUTILS_COLORIZED_OUTPUT": "0",
                 "ROS_AUTOMATIC_DISCOVERY_RANGE": os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST"),
                 "FASTDDS_BUILTIN_TRANSPORTS": "LARGE_DATA", "OMP_NUM_THREADS": "1"}
    os.environ.update(env_extra)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "nodes.log"
    procs: list[subprocess.Popen] = []
    robot = None
    results: list[EpisodeResult] = []
    frames_drawn: list[np.ndarray] = []
    tick_late: list[float] = []
    published = 0
    try:
        with open(log_path, "wb") as log:
            for name, command, env in node_processes(model, controller, policy, slot_prefix, joint_names,
                                                     lower, upper):
                if progress:
                    print(f"demo servo: starting {name} (ROS domain {domain})", flush=True)
                procs.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                              env={**os.environ, **env, **env_extra}))
        robot = SimulatedRobot(joint_names)
        robot.wait_for_nodes(startup_timeout, procs, log_path)
        period = 1.0 / rate
        for episode in episodes:
            scene = ReachScene(config, episode)
            try:
                goal_msg = robot.observe_goal(scene.goal_frame(), info)
                goal = KeypointObservation.from_msg(goal_msg)
                robot.start_episode(goal_msg)
                time.sleep(0.2)  # the goal reaches servo_node (reliable) before the first frame
                initial = scene.ee_error().position
                ticks = int(round(duration * rate))
                errors, times = np.zeros(ticks), np.zeros(ticks)
                stamps = []
                due = time.monotonic()
                for t in range(ticks):
                    frame = scene.render()
                    stamp = robot.publish_frame(frame, scene.joint_positions(), info)
                    published += 1
                    stamps.append((stamp, frame if episode == video_episode else None))
                    due += period
                    delay = due - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    else:
                        tick_late.append(-delay)
                        due = time.monotonic()
                    scene.apply(robot.current_command())
                    errors[t] = scene.ee_error().position
                    times[t] = scene.time
                final = scene.ee_error()
                results.append(EpisodeResult(
                    episode=episode, success=bool(final.position <= config.success_distance),
                    final_position_error_mm=1e3 * final.position,
                    final_orientation_error_deg=float(np.degrees(final.orientation)),
                    initial_position_error_mm=1e3 * initial,
                    converge_time_s=converge_time(errors, times, config.success_distance),
                    duration_s=duration, control_ms_p50=float("nan"),
                    position_error_mm=(1e3 * errors).round(2).tolist(),
                    goal_features=np.nan_to_num(goal.values[:, :2], nan=0.0).round(4).tolist(),
                ))
                if episode == video_episode:
                    for k, (stamp, frame) in enumerate(stamps):
                        msg = robot.observation_at(stamp)
                        obs = KeypointObservation.from_msg(msg) if msg is not None else None
                        frames_drawn.append(draw_servo(frame, obs, goal,
                                                       f"ep {episode}  t {k / rate:4.1f} s  error {1e3 * errors[k]:5.0f} mm"))
                if progress:
                    r = results[-1]
                    print(f"demo servo: episode {episode}: {'reached' if r.success else 'missed'} the goal, "
                          f"final error {r.final_position_error_mm:.1f} mm (from {r.initial_position_error_mm:.0f} mm)",
                          flush=True)
            finally:
                scene.close()
            time.sleep(0.3)
        with robot._lock:
            command_log = list(robot.command_log)
    finally:
        exits = [stop_process(p) for p in procs]
        if robot is not None:
            robot.close()
    latency = np.array([(rcv - st) * 1e-6 for st, rcv in command_log if st > 0])
    answered = len({st for st, _ in command_log})
    timing = {
        "rate_hz": rate,
        "frames_published": published,
        "frames_answered_with_a_command": answered,
        "answered_fraction": round(answered / max(published, 1), 4),
        "control_latency_ms_p50": float(np.percentile(latency, 50)) if latency.size else None,
        "control_latency_ms_p99": float(np.percentile(latency, 99)) if latency.size else None,
        "sim_ticks_late": len(tick_late),
        "sim_ticks_late_fraction": round(len(tick_late) / max(published, 1), 4),
        "node_exit_codes": exits,
        "ros_domain": domain,
    }
    return {"results": results, "timing": timing, "frames": frames_drawn, "joint_names": joint_names}


def run(args: argparse.Namespace) -> int:
    """``kp-perception demo servo``."""
    from kp_perception.cli.demo import default_model
    from kp_perception.errors import ConfigError, ModelLoadError
    from kp_perception.media import AnnotatedVideoWriter

    model = Path(args.model) if args.model else default_model("pyramids")
    out = Path(args.out) if args.out else Path("out") / "demo_servo"
    if not model.is_file():
        raise ModelLoadError(f"{model}: model file not found (pass --model FILE.onnx)")
    if args.controller == "policy" and (args.policy is None or not Path(args.policy).is_file()):
        raise ConfigError("--controller policy needs --policy FILE.onnx (an exported reach policy)")
    if args.episodes < 1 or args.duration <= 0:
        raise ConfigError("--episodes must be >= 1 and --duration > 0")
    rate = 30.0 if args.rate == 10.0 else args.rate  # the image demo's default is 10 Hz; servoing runs at 30
    for stale in ("servo.gif", "servo.mp4", "summary.json", "nodes.log"):
        (out / stale).unlink(missing_ok=True)
    started = time.monotonic()
    run_out = run_closed_loop(model=model, episodes=list(range(args.episodes)), seed=args.seed,
                              duration=args.duration, rate=rate, controller=args.controller,
                              policy=args.policy, slot_prefix=args.slot_prefix, out=out)
    results = run_out["results"]
    for suffix in (".gif", ".mp4"):
        with AnnotatedVideoWriter(out / f"servo{suffix}", fps=rate / (3 if suffix == ".gif" else 1)) as writer:
            for k, frame in enumerate(run_out["frames"]):
                if suffix == ".mp4" or k % 3 == 0:
                    writer.write(frame)
    summary = {
        "model": str(model),
        "controller": args.controller,
        "policy": str(args.policy) if args.policy else None,
        "episodes": [{k: v for k, v in r.summary().items() if k not in ("goal_features", "mean_weights")}
                     for r in results],
        "success_rate": float(np.mean([r.success for r in results])),
        **run_out["timing"],
        "outputs": {"gif": str(out / "servo.gif"), "mp4": str(out / "servo.mp4"), "log": str(out / "nodes.log")},
        "wall_time_s": round(time.monotonic() - started, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"demo servo: {sum(r.success for r in results)}/{len(results)} episodes reached the goal; loop "
          f"{rate:g} Hz, control latency p50 {summary['control_latency_ms_p50'] or float('nan'):.1f} ms, p99 "
          f"{summary['control_latency_ms_p99'] or float('nan'):.1f} ms (image stamp to command at the arm); "
          f"{summary['sim_ticks_late']} late ticks; outputs in {out}", flush=True)
    return 0


def run_ros_episodes(args: argparse.Namespace, variant: str,
                     policy: Path | None = None) -> tuple[list[dict], list[str] | None, dict]:
    """``bench servo``'s ROS variants: the benchmark's episodes through the real nodes (real time).

    ``policy``: the ONNX policy (an RL actor or a visuomotor map) for ``servo_node controller:=policy``;
    None runs IBVS. The bench resolves and checks the path.
    """
    controller = "ibvs" if policy is None else "policy"
    out = Path("build") / f"bench_servo_{variant}"  # nodes.log of the run
    run_out = run_closed_loop(model=Path(args.model), episodes=list(range(args.episodes)), seed=args.seed,
                              duration=args.duration, rate=30.0, controller=controller, policy=policy,
                              out=out, video_episode=None, progress=not args.quiet)
    results = [r.summary() for r in run_out["results"]]
    return results, None, {"timing": run_out["timing"]}
