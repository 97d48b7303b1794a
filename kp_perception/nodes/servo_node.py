"""``servo_node``: keypoint observations + joint states in, joint velocities out (IBVS or a trained policy).

Why a node of its own: the perception node publishes what it sees
(``kp_perception_msgs/PolicyObservation``, stamped, fixed slots); turning that
into motion is the robot's business and must be swappable (a Broyden IBVS
controller, an RL policy) without touching perception.

Topics (all remappable):

- in ``observation`` (PolicyObservation, e.g. ``pyramids_node``'s ``keypoints_observation``);
- in ``goal_observation`` (PolicyObservation, reliable + transient local: the goal,
  e.g. the perception node's observation of a goal image; a new goal restarts
  the controller, including the IBVS exploration);
- in ``joint_states`` (sensor_msgs/JointState): paired with each observation by
  stamp (``kp_perception.observation.ObservationJointPairer``);
- out ``joint_velocity_command``: rad/s for ``joint_names``, as
  ``sensor_msgs/JointState`` (``name`` + ``velocity``; ``header.stamp`` = the
  stamp of the image the command answers, so a driver can refuse old commands
  and the latency image → command can be measured), or, with
  ``command_type:=float64_multi_array``, ``std_msgs/Float64MultiArray`` in
  ``joint_names`` order: the message of ros2_control's
  ``velocity_controllers/JointGroupVelocityController`` (remap to
  ``/<controller>/commands``).

Safety: a stale observation never commands motion. An observation older than
``observation_timeout`` (image stamp to now) when it arrives is answered with
zero velocities; when no fresh observation has arrived for
``observation_timeout``, a watchdog publishes zero velocities (then again
every ``stop_repeat_period`` while it stays stale, because velocity
controllers hold the last command). No goal, no joint state within the
pairing tolerance, or too few usable keypoints: zero as well.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray, Header, MultiArrayDimension

from kp_perception.control.ibvs import BroydenIBVS, IBVSConfig
from kp_perception.errors import ConfigError, KpPerceptionError
from kp_perception.nodes.base import ParamSpec
from kp_perception.observation import KeypointObservation, ObservationJointPairer, joint_vector
from kp_perception_msgs.msg import PolicyObservation

_IBVS_HELP = {
    "rate_hz": "Expected observation rate (Hz); sets the exploration velocity.",
    "gain": "IBVS gain lambda (1/s).",
    "damping": "Damped least squares: mu relative to the largest singular value of the weighted Jacobian.",
    "max_joint_velocity": "Largest commanded joint velocity (rad/s); the vector is scaled to respect it.",
    "explore_amplitude": "Exploratory motion per joint (rad) that initialises the Jacobian.",
    "explore_ticks": "Observations per half exploratory motion.",
    "broyden_rate": "Broyden update rate alpha.",
    "broyden_min_step": "Joint steps (rad) smaller than this do not update the Jacobian.",
    "motion_threshold": "Keypoints whose Jacobian rows are below this fraction of the largest are ignored.",
    "min_features": "Fewer usable keypoints than this: zero command.",
    "limit_margin": "A joint this close (rad) to a limit is not driven further into it.",
    "ramp_speed": "Reference ramp along the straight image path to the goal (feature units/s); 0 = off.",
    "ramp_tolerance": "The ramp waits while the RMS tracking error exceeds this.",
    "weight_power": "0: used keypoints weigh 1; p > 0: weight (Jacobian row norm / largest)^p.",
    "reexplore_window": "Re-explore (estimate the Jacobian again) when the error fell less than "
                        "reexplore_progress over this many seconds; 0 = never.",
    "reexplore_progress": "The error must fall below this fraction of its value a window ago.",
    "reexplore_min_error": "No re-exploration below this image error (observation units).",
    "max_reexplorations": "Re-explorations allowed per goal.",
}

PARAMETERS: tuple[ParamSpec, ...] = (
    ParamSpec("controller", "ibvs", "ibvs (uncalibrated Broyden IBVS) or policy (an exported ONNX policy).",
              choices=("ibvs", "policy")),
    ParamSpec("policy_file_path", "", "controller:=policy: the policy .onnx (its .json sidecar beside it)."),
    ParamSpec("joint_names", "", "Comma-separated joints to command, in order; empty = the joints of the "
              "first /joint_states message."),
    ParamSpec("joint_lower_limits", "", "Comma-separated lower limits (rad) of joint_names; empty = none."),
    ParamSpec("joint_upper_limits", "", "Comma-separated upper limits (rad) of joint_names; empty = none."),
    ParamSpec("slot_prefix", "", "Use only observation slots whose name starts with this (e.g. 'level0/')."),
    ParamSpec("command_type", "joint_state", "joint_state (sensor_msgs/JointState velocities, stamped) or "
              "float64_multi_array (std_msgs/Float64MultiArray, ros2_control's velocity controller).",
              choices=("joint_state", "float64_multi_array")),
    ParamSpec("observation_timeout", 0.2, "Seconds (image stamp to now) after which an observation is stale "
              "and the arm is stopped.", float_range=(0.01, 10.0)),
    ParamSpec("stop_repeat_period", 0.5, "While stale, repeat the zero command this often (s).",
              float_range=(0.01, 10.0)),
    ParamSpec("pairing_tolerance", 0.01, "Largest |joint state stamp - image stamp| (s) to pair them.",
              float_range=(0.0, 1.0)),
    ParamSpec("diagnostics_period", 1.0, "Seconds between /diagnostics messages.", float_range=(0.05, 60.0)),
    *(ParamSpec(f"ibvs.{f.name}", f.default, _IBVS_HELP[f.name]) for f in fields(IBVSConfig)),
)


def _floats(text: str, what: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"parameter '{what}': expected comma-separated numbers, got {text!r}") from None


class ServoNode(Node):
    """Keypoint observations -> joint velocity commands, with a stale-observation stop."""

    node_name = "servo_node"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(self.node_name, **kwargs)
        self.params = self._declare_parameters()
        p = self.params
        self.joint_names = [n.strip() for n in p["joint_names"].split(",") if n.strip()]
        self._lower = _floats(p["joint_lower_limits"], "joint_lower_limits")
        self._upper = _floats(p["joint_upper_limits"], "joint_upper_limits")
        self.timeout_ns = int(p["observation_timeout"] * 1e9)
        self.pairer = ObservationJointPairer(tolerance=p["pairing_tolerance"])
        self.controller: Any = None
        self._policy = None
        if p["controller"] == "policy":
            if not p["policy_file_path"]:
                raise ConfigError("controller:=policy needs policy_file_path:=/path/policy.onnx")
            from kp_perception.control.policy import OnnxPolicy

            self._policy = OnnxPolicy(p["policy_file_path"])
            if not self.joint_names and self._policy.spec.joint_names:
                self.joint_names = list(self._policy.spec.joint_names)
        self._lock = threading.Lock()
        self._goal: KeypointObservation | None = None
        self._slots: np.ndarray | None = None
        self._last_used_stamp = -1
        self._newest_stamp_ns: int | None = None
        self._stopped_at: float | None = None  # monotonic time of the last zero command while stale
        self._latencies: list[float] = []
        self.counts = {"commands": 0, "stale_stops": 0, "stale_observations": 0, "unpaired": 0, "goals": 0}

        if p["command_type"] == "joint_state":
            self._cmd_pub = self.create_publisher(JointState, "joint_velocity_command", 10)
        else:
            self._cmd_pub = self.create_publisher(Float64MultiArray, "joint_velocity_command", 10)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.create_subscription(PolicyObservation, "goal_observation", self._on_goal, latched)
        self.create_subscription(JointState, "joint_states", self._on_joint_state, 50)
        self.create_subscription(PolicyObservation, "observation", self._on_observation, 10)
        self.create_timer(0.02, self._watchdog)
        self.create_timer(p["diagnostics_period"], self._publish_diagnostics)
        self.get_logger().info(
            f"controller {p['controller']}; observation {self.resolve_topic_name('observation')}, goal "
            f"{self.resolve_topic_name('goal_observation')}, joints {self.resolve_topic_name('joint_states')}; "
            f"command {self._cmd_pub.topic_name} ({p['command_type']}); stale after {p['observation_timeout']} s"
        )

    def _declare_parameters(self) -> dict[str, Any]:
        values = {}
        for spec in PARAMETERS:
            try:
                param = self.declare_parameter(spec.name, spec.default, spec.descriptor())
            except (rclpy.exceptions.ParameterException, rclpy.exceptions.InvalidParameterValueException) as exc:
                raise ConfigError(f"parameter '{spec.name}': {exc}") from None
            if spec.choices and param.value not in spec.choices:
                raise ConfigError(f"parameter '{spec.name}' is {param.value!r}; expected one of "
                                  + ", ".join(repr(c) for c in spec.choices))
            values[spec.name] = param.value
        return values

    def _make_controller(self, num_joints: int) -> Any:
        if self._policy is not None:
            if self._policy.spec.num_joints != num_joints:
                raise ConfigError(f"the policy commands {self._policy.spec.num_joints} joints, "
                                  f"joint_names has {num_joints}")
            return self._policy
        config = IBVSConfig(**{f.name: type(f.default)(self.params[f"ibvs.{f.name}"]) for f in fields(IBVSConfig)})
        lower = np.array(self._lower) if len(self._lower) == num_joints else None
        upper = np.array(self._upper) if len(self._upper) == num_joints else None
        dims = len(self._goal.layout.field_names) - 1  # the coordinates: x, y (normalized) or X, Y, Z (metric)
        return BroydenIBVS(num_joints, config, lower=lower, upper=upper, dims=dims)

    # -- inputs -------------------------------------------------------------------------
    def _on_goal(self, msg: PolicyObservation) -> None:
        try:
            goal = KeypointObservation.from_msg(msg)
        except KpPerceptionError as exc:
            self.get_logger().error(f"goal rejected: {exc}", throttle_duration_sec=5.0)
            return
        prefix = self.params["slot_prefix"]
        slots = np.array([i for i, n in enumerate(goal.layout.slot_names) if n.startswith(prefix)], dtype=np.int64)
        if len(slots) == 0:
            self.get_logger().error(f"goal has no slot starting with {prefix!r}", throttle_duration_sec=5.0)
            return
        with self._lock:
            self.pairer.expected = goal.layout
            self._goal, self._slots = goal, slots
            self.controller = None  # built at the first paired observation (joint count known then)
            self._last_used_stamp = max(self._last_used_stamp, goal.stamp_ns)
            self.counts["goals"] += 1
        self.get_logger().info(f"new goal ({len(slots)} slots, {int(goal.valid[slots].sum())} valid)")

    def _on_joint_state(self, msg: JointState) -> None:
        if not self.joint_names and len(msg.name):
            self.joint_names = [str(n) for n in msg.name]
        self.pairer.add_joint_state(msg)

    def _now_ns(self) -> int:
        return self.get_clock().now().nanoseconds

    def _on_observation(self, msg: PolicyObservation) -> None:
        try:
            obs = self.pairer.add_observation(msg)
        except KpPerceptionError as exc:
            self.get_logger().warning(f"observation rejected: {exc}", throttle_duration_sec=5.0)
            return
        with self._lock:
            self._newest_stamp_ns = max(self._newest_stamp_ns or 0, obs.stamp_ns)
            if self._goal is None or obs.stamp_ns <= self._last_used_stamp:
                return
            header = Header(stamp=msg.header.stamp, frame_id=msg.header.frame_id)
            if self._now_ns() - obs.stamp_ns > self.timeout_ns:
                self.counts["stale_observations"] += 1
                self._publish(np.zeros(len(self.joint_names)), header)
                return
            paired = self.pairer.latest()
            if paired is None or paired.observation.stamp_ns != obs.stamp_ns or not self.joint_names:
                self.counts["unpaired"] += 1
                return
            q = joint_vector(paired.joint_state, self.joint_names)
            if self.controller is None:
                self.controller = self._make_controller(len(q))
                self.controller.reset(self._goal.values[self._slots], self._goal.valid[self._slots])
            qdot = self.controller.step(obs.values[self._slots], obs.valid[self._slots], q)
            self._last_used_stamp = obs.stamp_ns
            self._stopped_at = None
            self._publish(qdot, header)
            self._latencies.append((self._now_ns() - obs.stamp_ns) * 1e-9)
            self._latencies = self._latencies[-512:]

    def _publish(self, qdot: np.ndarray, header: Header) -> None:
        self.counts["commands"] += 1
        if isinstance(self._cmd_pub.msg_type(), JointState):
            self._cmd_pub.publish(JointState(header=header, name=list(self.joint_names),
                                             velocity=[float(v) for v in qdot]))
        else:
            msg = Float64MultiArray(data=[float(v) for v in qdot])
            msg.layout.dim = [MultiArrayDimension(label="joints", size=len(qdot), stride=len(qdot))]
            self._cmd_pub.publish(msg)

    # -- safety -------------------------------------------------------------------------
    def _watchdog(self) -> None:
        with self._lock:
            if self._goal is None or not self.joint_names:
                return
            newest = self._newest_stamp_ns
            if newest is not None and self._now_ns() - newest <= self.timeout_ns:
                return
            now = time.monotonic()
            if self._stopped_at is not None and now - self._stopped_at < self.params["stop_repeat_period"]:
                return
            if self._stopped_at is None:
                self.counts["stale_stops"] += 1
                self.get_logger().warning("observations are stale: stopping the arm", throttle_duration_sec=5.0)
            self._stopped_at = now
            self._publish(np.zeros(len(self.joint_names)), Header(stamp=self.get_clock().now().to_msg()))

    def _publish_diagnostics(self) -> None:
        with self._lock:
            lat = np.asarray(self._latencies) * 1e3
            stale = self._stopped_at is not None
            exploring = bool(getattr(self.controller, "exploring", False))
            values = {**{k: str(v) for k, v in self.counts.items()},
                      "latency_p50_ms": f"{np.percentile(lat, 50):.2f}" if lat.size else "nan",
                      "latency_p99_ms": f"{np.percentile(lat, 99):.2f}" if lat.size else "nan",
                      "phase": "no goal" if self._goal is None else "stale" if stale else
                      "exploring" if exploring else "servoing",
                      "image_error": f"{getattr(self.controller, 'last_error', float('nan')):.4f}"}
        status = DiagnosticStatus(
            level=DiagnosticStatus.WARN if stale else DiagnosticStatus.OK,
            name=f"{self.get_fully_qualified_name()}: servo", message=values["phase"],
            hardware_id=Path(self.params["policy_file_path"]).name or "ibvs",
            values=[KeyValue(key=k, value=v) for k, v in values.items()])
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(array)


def main(args: list[str] | None = None) -> int:
    name = ServoNode.node_name
    try:
        rclpy.init(args=args)
    except Exception as exc:
        print(f"[FATAL] [{name}]: cannot start: {exc}".splitlines()[0], file=sys.stderr)
        return 1
    try:
        node = ServoNode()
    except KpPerceptionError as exc:
        rclpy.logging.get_logger(name).fatal(str(exc))
        rclpy.try_shutdown()
        return 1
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
