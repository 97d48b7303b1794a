"""Shared machinery of ``pyramids_node`` and ``tusk_node``: parameters, QoS, newest-frame worker, diagnostics.

Why one base: both nodes do the same thing around a different model and
message, and the hard parts (bounded latency, bad frames, QoS mismatches,
clear start-up errors) must be solved once.

Data flow::

    image / image/compressed ──(executor thread: store newest, count drop)──► pending slot
    camera_info ──(executor thread: validate, keep newest)──► camera model
    depth ──(executor thread: keep the newest few by stamp)──► depth buffer
    worker thread: convert ─► backend.infer ─► camera geometry (normalised coordinates; 3D from the
        depth frame matched by stamp) ─► threshold ─► publish message (+ observation, + debug image)
    1 Hz timer: /diagnostics (rates, latency p50/p95/p99, drops, bad frames, camera_info, depth)
        + "no image" warning

Camera geometry is optional: without a camera_info the node publishes what it
always did (NaN normalised coordinates, ``has_camera_info`` false). A
camera_info for another image size is never rescaled: the frame is published
without geometry, a throttled warning names both sizes, and /diagnostics goes
to WARN. The depth frame is looked up after inference (it has usually arrived
by then); if it has not, the worker waits at most ``depth_wait`` seconds, and
only while a depth stream is alive.

Only the newest frame is processed: the subscription callback just replaces
the pending message (counting the replaced one as dropped) and wakes the
worker, so a slow model drops frames instead of building a backlog.

Parameters are declared once from :data:`PARAMETERS` (with descriptors) in the
constructor and read into :class:`NodeSettings` at the lifecycle ``configure``
transition; the score threshold and frame id can be changed at run time
(``ros2 param set``), everything else only while the node is unconfigured.
The nodes are lifecycle (managed) nodes: see :class:`KeypointNode` for what
each transition does, and :func:`run_node` for ``autostart``.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import rclpy
import rclpy.exceptions
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    ParameterType,
    SetParametersResult,
)
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.qos_overriding_options import QoSOverridingOptions
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header

from kp_perception.camera_geometry import CameraModel, locate_keypoints
from kp_perception.errors import CameraInfoError, ConfigError, KpPerceptionError, ModelLoadError
from kp_perception.image_conversion import compressed_to_rgb8, depth_view, image_to_rgb8, numpy_to_image
from kp_perception.nodes.command_line import check_parameter_arguments
from kp_perception.observation import COORDINATES, ObservationLayout, observe
from kp_perception.ros_conversion import observation_to_msg
from kp_perception.stamp_matching import StampBuffer, stamp_to_ns
from kp_perception_msgs.msg import PolicyObservation


@dataclass(frozen=True)
class ParamSpec:
    """One node parameter: name, default (its type is the parameter's type), description, constraints."""

    name: str
    default: Any
    description: str
    read_only: bool = True
    float_range: tuple[float, float] | None = None
    int_range: tuple[int, int] | None = None
    choices: tuple[str, ...] | None = None

    def descriptor(self, read_only: bool | None = None) -> ParameterDescriptor:
        """The ROS descriptor; ``read_only`` overrides the spec's (lifecycle nodes enforce it per state)."""
        type_ = {
            bool: ParameterType.PARAMETER_BOOL,
            int: ParameterType.PARAMETER_INTEGER,
            float: ParameterType.PARAMETER_DOUBLE,
            str: ParameterType.PARAMETER_STRING,
        }[type(self.default)]
        desc = ParameterDescriptor(
            name=self.name, type=type_, description=self.description,
            read_only=self.read_only if read_only is None else read_only,
        )
        if self.choices:
            desc.additional_constraints = "one of: " + ", ".join(self.choices)
        if self.float_range:
            desc.floating_point_range = [
                FloatingPointRange(from_value=self.float_range[0], to_value=self.float_range[1], step=0.0)
            ]
        if self.int_range:
            desc.integer_range = [
                IntegerRange(from_value=self.int_range[0], to_value=self.int_range[1], step=0)
            ]
        return desc


# The one table of parameters. Topic defaults marked "{out}" take the node's output name.
PARAMETERS: tuple[ParamSpec, ...] = (
    ParamSpec("autostart", True, "Configure and activate at start (ros2 run / ros2 launch just work). false = "
              "stay unconfigured until a lifecycle manager (or `ros2 lifecycle set`) configures and activates."),
    ParamSpec("warmup_inferences", 3, "Inferences run on a grey frame at configure, so the first camera frame "
              "does not pay first-call costs (allocations, TensorRT/CUDA set-up).", int_range=(0, 1000)),
    ParamSpec("model_file_path", "", "Exported model: .onnx (onnxruntime), .engine/.plan (tensorrt) or .pt "
              "(torch checkpoint); its sidecar .json must sit beside it."),
    ParamSpec("backend", "", "Inference backend; empty = chosen by the model file's extension.",
              choices=("", "onnxruntime", "tensorrt", "torch")),
    ParamSpec("providers", "", "onnxruntime execution providers, comma-separated in priority order "
              "(e.g. 'CUDAExecutionProvider,CPUExecutionProvider'); empty = the backend's default."),
    ParamSpec("threads", 0, "CPU threads for onnxruntime/torch inference; 0 = the library default (all "
              "cores). Lower it when the node shares a small CPU with the camera driver and the policy.",
              int_range=(0, 256)),
    ParamSpec("score_threshold", 0.0, "Keypoints/detections scoring below this are not published "
              "(structured message and debug image); in the observation they are invalid slots. Settable at run time.",
              read_only=False, float_range=(0.0, 1.0)),
    ParamSpec("image_topic", "image", "Input image topic (remap it or set it). With compressed_input the "
              "node subscribes to '<image_topic>/compressed'."),
    ParamSpec("compressed_input", False, "Subscribe to sensor_msgs/CompressedImage on "
              "'<image_topic>/compressed' instead of sensor_msgs/Image on '<image_topic>'."),
    ParamSpec("image_reliability", "best_effort", "Input QoS reliability. best_effort (sensor data) "
              "matches every camera driver; reliable matches only reliable publishers.",
              choices=("best_effort", "reliable")),
    ParamSpec("image_qos_depth", 1, "Input QoS history depth; the node processes only the newest frame "
              "anyway.", int_range=(1, 100)),
    ParamSpec("use_camera_info", True, "Subscribe to sensor_msgs/CameraInfo; with it every keypoint also "
              "carries undistorted normalised coordinates (and 3D with depth). Without one arriving, the "
              "node behaves as if this were false."),
    ParamSpec("camera_info_topic", "", "CameraInfo topic; empty = image_transport's convention: "
              "'camera_info' beside the resolved image topic (/camera/image_raw -> /camera/camera_info)."),
    ParamSpec("use_depth", False, "Subscribe to an aligned depth image (16UC1 mm or 32FC1 m, the colour "
              "image's size and geometry) on 'depth_topic'; with camera_info, keypoints get 3D points."),
    ParamSpec("depth_topic", "depth", "Aligned depth image topic (remap 'depth' or set it)."),
    ParamSpec("depth_stamp_tolerance", 0.01, "Largest |depth stamp - image stamp| (s) for a depth frame to "
              "be used with an image.", float_range=(0.0, 1.0)),
    ParamSpec("depth_wait", 0.01, "Longest the worker waits (s) after inference for the matching depth "
              "frame while a depth stream is alive; 0 = never wait.", float_range=(0.0, 1.0)),
    ParamSpec("depth_window", 5, "Side (odd, pixels) of the square whose valid depth pixels' median is "
              "a keypoint's depth.", int_range=(1, 51)),
    ParamSpec("output_topic", "{out}", "Topic of the structured result message."),
    ParamSpec("publish_observation", False, "Also publish kp_perception_msgs/PolicyObservation: a stamped, "
              "fixed-slot float32 table with a validity flag per slot (for RL / servoing policies)."),
    ParamSpec("observation_topic", "{out}_observation", "Topic of the PolicyObservation output."),
    ParamSpec("observation_coordinates", "normalized", "PolicyObservation fields: 'normalized' = x, y in "
              "[-1, 1] of the image + score; 'metric' = x, y, z metres in the camera optical frame + score "
              "(needs use_depth and camera_info).", choices=tuple(COORDINATES)),
    ParamSpec("publish_debug_image", False, "Also publish an rgb8 image with the results drawn "
              "(only while someone subscribes)."),
    ParamSpec("debug_image_topic", "debug_image", "Topic of the debug image."),
    ParamSpec("frame_id", "", "If set, replaces the image header's frame_id in every output. "
              "Settable at run time.", read_only=False),
    ParamSpec("diagnostics_period", 1.0, "Seconds between /diagnostics messages.",
              float_range=(0.05, 60.0)),
    ParamSpec("no_image_warning_after", 5.0, "Warn when no image has arrived for this many seconds "
              "(wrong topic or QoS mismatch).", float_range=(0.1, 3600.0)),
)


@dataclass(frozen=True)
class NodeSettings:
    """The parameter values, typed, read once at start-up (see :data:`PARAMETERS`)."""

    autostart: bool
    warmup_inferences: int
    model_file_path: str
    backend: str
    providers: str
    threads: int
    score_threshold: float
    image_topic: str
    compressed_input: bool
    image_reliability: str
    image_qos_depth: int
    use_camera_info: bool
    camera_info_topic: str
    use_depth: bool
    depth_topic: str
    depth_stamp_tolerance: float
    depth_wait: float
    depth_window: int
    output_topic: str
    publish_observation: bool
    observation_topic: str
    observation_coordinates: str
    publish_debug_image: bool
    debug_image_topic: str
    frame_id: str
    diagnostics_period: float
    no_image_warning_after: float

    @property
    def provider_list(self) -> list[str] | None:
        names = [p.strip() for p in self.providers.split(",") if p.strip()]
        return names or None


assert {f.name for f in fields(NodeSettings)} == {p.name for p in PARAMETERS}


class NodeStats:
    """Thread-safe counters and a latency window, summarised for /diagnostics."""

    def __init__(self, window: int = 512) -> None:
        self._lock = threading.Lock()
        self.received = 0
        self.published = 0
        self.dropped = 0
        self.lost = 0
        self.bad = 0
        self.camera_info_rejected = 0
        self.depth_matched = 0
        self.depth_missing = 0
        self.depth_rejected = 0
        self.last_bad_reason = ""
        self._latencies: deque[float] = deque(maxlen=window)
        self._last_summary = (time.monotonic(), 0, 0)

    def count(self, name: str, reason: str = "") -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)
            if reason:
                self.last_bad_reason = reason

    def add_lost(self, n: int) -> None:
        with self._lock:
            self.lost += n

    def add_latency(self, seconds: float) -> None:
        with self._lock:
            self.published += 1
            if seconds >= 0.0:
                self._latencies.append(seconds)

    def summary(self) -> dict[str, float]:
        """Rates since the previous summary; latency percentiles over the recent window (ms)."""
        with self._lock:
            now = time.monotonic()
            t0, received0, published0 = self._last_summary
            dt = max(now - t0, 1e-6)
            lat = np.asarray(self._latencies, dtype=np.float64) * 1e3
            out = {
                "input_rate_hz": (self.received - received0) / dt,
                "output_rate_hz": (self.published - published0) / dt,
                "frames_received": self.received,
                "frames_published": self.published,
                "dropped_frames": self.dropped,
                "lost_before_node": self.lost,
                "bad_frames": self.bad,
                "camera_info_rejected_frames": self.camera_info_rejected,
                "depth_matched_frames": self.depth_matched,
                "depth_missing_frames": self.depth_missing,
                "depth_rejected_frames": self.depth_rejected,
            }
            for q in (50, 95, 99):
                out[f"latency_p{q}_ms"] = float(np.percentile(lat, q)) if lat.size else float("nan")
            self._last_summary = (now, self.received, self.published)
            return out


class KeypointNode(LifecycleNode):
    """Base of the perception nodes (managed: ``rclpy.lifecycle``); subclasses say which kind, message, drawing.

    Lifecycle, as yolo_ros and Isaac ROS users expect it:

    - constructor (``unconfigured``): declares the parameters (a value of the
      wrong type, from a file or ``-p``, stops the node here);
    - ``configure`` (-> ``inactive``): reads and validates the parameters,
      loads the model, runs ``warmup_inferences`` inferences, creates the
      (lifecycle) publishers;
    - ``activate`` (-> ``active``): enables the publishers, subscribes, starts
      the worker thread and the diagnostics timer; only now do frames flow;
    - ``deactivate`` (-> ``inactive``): unsubscribes, stops the worker and the
      timer, disables the publishers; the model stays loaded;
    - ``cleanup`` (-> ``unconfigured``) / ``shutdown``: also drop the
      publishers and the model. Configure-time parameters (all but
      ``score_threshold`` and ``frame_id``) can be changed only while
      unconfigured, and take effect at the next ``configure``.

    With ``autostart`` (default true) :func:`run_node` configures and
    activates at start, so ``ros2 run``/``ros2 launch`` just work.
    """

    node_name: ClassVar[str]
    expected_kind: ClassVar[str]  # "pyramids" (any hierarchy kind) or "tusk"
    message_type: ClassVar[type]
    default_output_topic: ClassVar[str]

    # --- what a subclass provides -------------------------------------------------------------
    def threshold_result(self, result: Any, threshold: float) -> Any:
        raise NotImplementedError

    def to_message(self, result: Any, header: Header) -> Any:
        raise NotImplementedError

    def draw(self, frame_rgb: np.ndarray, result: Any) -> np.ndarray:
        raise NotImplementedError

    # --- construction: parameters only ----------------------------------------------------------
    def __init__(self, *, command_line: list[str] | None = None, **kwargs: Any) -> None:
        super().__init__(self.node_name, **kwargs)
        self._declare_parameters(sys.argv if command_line is None else command_line)
        from kp_perception.nodes.engine_params import declare_engine_parameters  # imports this module
        self.engine_settings = declare_engine_parameters(self)  # read-only: an engine changes with a restart
        self._warn_unknown_parameters()
        self.autostart = bool(self.get_parameter("autostart").value)
        self._threshold = float(self.get_parameter("score_threshold").value)
        self._frame_id = str(self.get_parameter("frame_id").value)
        self.stats = NodeStats()
        self.settings: NodeSettings | None = None  # read at configure
        self.backend = None
        self.startup_timing: dict[str, float] = {}

        # Worker state exists before the subscription that feeds it.
        self._last_sequence: dict[bytes, int] = {}  # per publisher, to count frames that never reached us
        self._cond = threading.Condition()
        self._pending: Image | CompressedImage | None = None
        self._stop = False
        self._worker: threading.Thread | None = None
        self._started = time.monotonic()
        self._last_arrival: float | None = None
        self._camera: CameraModel | None = None
        self._camera_problem = ""  # why the newest camera_info or frame got no geometry; "" when fine
        self._depth = StampBuffer[Image](8)
        self._depth_cond = threading.Condition()
        self._last_depth_arrival: float | None = None
        self._image_qos: QoSProfile | None = None
        self._image_sub = self._info_sub = self._depth_sub = None
        self._pub = self._obs_pub = self._debug_pub = self._diag_pub = None
        self._diag_timer = None

        self.add_on_set_parameters_callback(self._validate_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)

    # --- lifecycle transitions (each: one clear log line on failure, never an exception) --------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        t0 = time.monotonic()
        try:
            self.settings = self._read_settings()
            self.backend = self._load_model()
            t_loaded = time.monotonic()
            warmup_ms = self._warm_up(self.settings.warmup_inferences)
            self._layout = ObservationLayout.from_sidecar(self.backend.sidecar, self.settings.observation_coordinates)
            self._create_publishers()
        except Exception as exc:  # noqa: BLE001 - every failure becomes one line and FAILURE
            self._release_publishers()
            self.backend = None
            self._log_failure("configure", exc)
            return TransitionCallbackReturn.FAILURE
        s, b = self.settings, self.backend
        self.startup_timing = {"model_load_s": t_loaded - t0, "warmup_s": time.monotonic() - t_loaded,
                               "configure_s": time.monotonic() - t0}
        self.get_logger().info(
            f"configured: model {s.model_file_path} ({b.name}, {b.sidecar.kind}, {b.sidecar.input_width}x"
            f"{b.sidecar.input_height}) loaded in {self.startup_timing['model_load_s']:.3f} s; "
            f"{s.warmup_inferences} warm-up inference(s) in {self.startup_timing['warmup_s']:.3f} s"
            + (f" (last {warmup_ms[-1]:.1f} ms)" if warmup_ms else "")
        )
        return super().on_configure(state)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._create_subscriptions()
        except Exception as exc:  # noqa: BLE001 - e.g. a bad qos_overrides value
            self._release_subscriptions()
            self._log_failure("activate", exc)
            return TransitionCallbackReturn.FAILURE
        with self._cond:
            self._stop = False
            self._pending = None
        self._started = time.monotonic()
        self._last_arrival = None
        self._worker = threading.Thread(target=self._work, name=f"{self.node_name}_worker", daemon=True)
        self._worker.start()
        self._diag_timer = self.create_timer(self.settings.diagnostics_period, self._publish_diagnostics)
        result = super().on_activate(state)  # enables the lifecycle publishers
        s = self.settings
        self.get_logger().info(
            f"active: input {self._image_sub.topic_name} ({self._image_qos.reliability.name.lower()}, depth "
            f"{self._image_qos.depth}); camera_info {self._info_sub.topic_name if self._info_sub else 'off'}; "
            f"depth {self._depth_sub.topic_name if self._depth_sub else 'off'}; output {self._pub.topic_name}"
            + (f", {self._obs_pub.topic_name} ({s.observation_coordinates})" if self._obs_pub else "")
        )
        return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_activity()
        self.get_logger().info("inactive: unsubscribed; the model stays loaded")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release_publishers()
        self.backend = None
        self.settings = None
        self.get_logger().info("unconfigured: model and publishers released")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.close()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.close()
        return TransitionCallbackReturn.SUCCESS  # back to unconfigured, ready to be configured again

    @property
    def lifecycle_state(self) -> str:
        """The current state's label: 'unconfigured', 'inactive', 'active', 'finalized', ..."""
        return self._state_machine.current_state[1]

    def close(self) -> None:
        """Release everything, whatever the state (before destroy_node and on shutdown)."""
        self._stop_activity()
        self._release_publishers()
        self.backend = None

    def _log_failure(self, transition: str, exc: Exception) -> None:
        text = str(exc) if isinstance(exc, KpPerceptionError) else f"{type(exc).__name__}: {exc}"
        text = text.splitlines()[0] if text else f"{transition} failed"
        if "QoS override" in text:  # rclpy's words for a bad qos_overrides.* value
            text += (" (qos_overrides.<topic>.{subscription,publisher}.reliability: reliable or best_effort; "
                     "history: keep_last or keep_all; depth: an integer)")
        self.get_logger().error(text)

    # --- what configure and activate create, and what deactivate and cleanup release -------------
    def _warm_up(self, count: int) -> list[float]:
        """Run ``count`` inferences on a mid-grey frame of the model's input size (first-call costs paid now)."""
        sidecar = self.backend.sidecar
        frame = np.full((sidecar.input_height, sidecar.input_width, 3), 127, np.uint8)
        times = []
        for _ in range(count):
            t = time.perf_counter()
            self.backend.infer(frame)
            times.append((time.perf_counter() - t) * 1e3)
        return times

    def _create_publishers(self) -> None:
        """Lifecycle publishers (enabled only while active); QoS overridable from parameters."""
        s = self.settings
        overridable = QoSOverridingOptions.with_default_policies()
        self._pub = self.create_lifecycle_publisher(self.message_type, s.output_topic, 10,
                                                    qos_overriding_options=overridable)
        self._obs_pub = (
            self.create_lifecycle_publisher(PolicyObservation, s.observation_topic, 10,
                                            qos_overriding_options=overridable)
            if s.publish_observation else None
        )
        self._debug_pub = (
            self.create_lifecycle_publisher(Image, s.debug_image_topic, 1, qos_overriding_options=overridable)
            if s.publish_debug_image else None
        )
        self._diag_pub = self.create_lifecycle_publisher(DiagnosticArray, "/diagnostics", 10)

    def _release_publishers(self) -> None:
        for name in ("_pub", "_obs_pub", "_debug_pub", "_diag_pub"):
            pub = getattr(self, name)
            if pub is not None:
                self.destroy_lifecycle_publisher(pub)
                setattr(self, name, None)

    def _create_subscriptions(self) -> None:
        """Image (+ camera_info, + depth) subscriptions; the image QoS from parameters, then qos_overrides."""
        s = self.settings
        reliability = (
            ReliabilityPolicy.RELIABLE if s.image_reliability == "reliable" else ReliabilityPolicy.BEST_EFFORT
        )
        qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=s.image_qos_depth,
            reliability=reliability,
            durability=DurabilityPolicy.VOLATILE,
        )
        topic = f"{s.image_topic}/compressed" if s.compressed_input else s.image_topic
        self._image_sub = self.create_subscription(
            CompressedImage if s.compressed_input else Image,
            topic,
            self._on_image,
            qos,  # qos_overrides.<topic>.subscription.{reliability,depth,history} replace these in place
            event_callbacks=SubscriptionEventCallbacks(incompatible_qos=self._on_incompatible_qos),
            qos_overriding_options=QoSOverridingOptions.with_default_policies(),
        )
        self._image_qos = qos
        # camera_info: best effort matches reliable and best-effort drivers alike; only the newest matters.
        info_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
        self._info_sub = (
            self.create_subscription(CameraInfo, self._camera_info_topic(), self._on_camera_info, info_qos,
                                     qos_overriding_options=QoSOverridingOptions.with_default_policies())
            if s.use_camera_info else None
        )
        depth_qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST, depth=max(2, s.image_qos_depth), reliability=reliability,
            durability=DurabilityPolicy.VOLATILE,
        )
        self._depth_sub = (
            self.create_subscription(Image, s.depth_topic, self._on_depth, depth_qos,
                                     qos_overriding_options=QoSOverridingOptions.with_default_policies())
            if s.use_depth else None
        )
        self._warn_unmatched_qos_overrides()

    def _release_subscriptions(self) -> None:
        for name in ("_image_sub", "_info_sub", "_depth_sub"):
            sub = getattr(self, name)
            if sub is not None:
                self.destroy_subscription(sub)
                setattr(self, name, None)

    def _stop_activity(self) -> None:
        """Stop the worker (after its current frame) and the diagnostics timer, then unsubscribe."""
        with self._cond:
            self._stop = True
            self._pending = None
            self._cond.notify_all()
        if self._worker is not None:
            self._worker.join(timeout=5.0)
            self._worker = None
        if self._diag_timer is not None:
            self.destroy_timer(self._diag_timer)
            self._diag_timer = None
        self._release_subscriptions()

    def _warn_unmatched_qos_overrides(self) -> None:
        """A qos_overrides.* parameter for a topic this node does not have would otherwise do nothing, silently."""
        overrides = getattr(self, "_parameter_overrides", {}) or {}
        unmatched = sorted(n for n in overrides if n.startswith("qos_overrides.") and not self.has_parameter(n))
        if unmatched:
            self.get_logger().warning(
                f"{', '.join(unmatched)}: no topic of this node has that name, so it does nothing. "
                "Overrides name the resolved topic, e.g. qos_overrides./camera/image_raw.subscription.reliability")

    # --- parameters -----------------------------------------------------------------------------
    def _parameter_defaults(self) -> dict[str, ParamSpec]:
        """The declared parameters: :data:`PARAMETERS` (declare more here, in this one place)."""
        return {spec.name: spec for spec in PARAMETERS}

    def _declare_parameters(self, command_line: list[str]) -> None:
        """Declare every parameter with its type; a value of the wrong type (file or -p) is a ConfigError."""
        specs = self._parameter_defaults()
        from kp_perception.nodes.engine_params import ENGINE_PARAMETERS  # imports this module

        typed = {spec.name: type(spec.default) for spec in (*specs.values(), *ENGINE_PARAMETERS)}
        check_parameter_arguments(
            command_line, typed,
            (self.get_name(), self.get_fully_qualified_name()),
        )
        for spec in specs.values():
            default = spec.default
            if isinstance(default, str):
                default = default.replace("{out}", self.default_output_topic)
            try:
                # Not read-only: configure-time parameters may change while unconfigured (_validate_parameters).
                self.declare_parameter(spec.name, default, spec.descriptor(read_only=False))
            except (rclpy.exceptions.ParameterException, rclpy.exceptions.InvalidParameterValueException) as exc:
                raise ConfigError(f"parameter '{spec.name}': {exc}") from None

    def _read_settings(self) -> NodeSettings:
        """The current values, typed and validated (at configure)."""
        specs = self._parameter_defaults()
        values = {name: self.get_parameter(name).value for name in specs}
        for name, spec in specs.items():
            if spec.choices and values[name] not in spec.choices:
                allowed = ", ".join(repr(c) for c in spec.choices)
                raise ConfigError(f"parameter '{name}' is {values[name]!r}; expected one of {allowed}")
        s = NodeSettings(**{f.name: values[f.name] for f in fields(NodeSettings)})
        if s.depth_window % 2 == 0:
            raise ConfigError(f"parameter 'depth_window' is {s.depth_window}; it must be odd (a window centred "
                              "on the keypoint)")
        if s.publish_observation and s.observation_coordinates == "metric" and not (s.use_depth and s.use_camera_info):
            raise ConfigError("parameter 'observation_coordinates' is 'metric', which needs use_depth:=true and "
                              "use_camera_info:=true (3D points come from camera_info and the depth image)")
        return s

    def _camera_info_topic(self) -> str:
        """image_transport's rule: camera_info sits beside the resolved (remapped) image topic."""
        if self.settings.camera_info_topic:
            return self.settings.camera_info_topic
        image = self.resolve_topic_name(self.settings.image_topic)
        parent = image.rsplit("/", 1)[0]
        return f"{parent}/camera_info"

    def _warn_unknown_parameters(self) -> None:
        known = set(self._parameter_defaults()) | {"use_sim_time", "start_type_description_service"}
        overrides = getattr(self, "_parameter_overrides", {}) or {}
        for name in sorted(set(overrides) - known):
            if not name.startswith("qos_overrides.") and not self.has_parameter(name):
                self.get_logger().warning(f"unknown parameter '{name}' is ignored (typo?)")

    def _validate_parameters(self, params: list[Parameter]) -> SetParametersResult:
        specs = self._parameter_defaults()
        for p in params:
            spec = specs.get(p.name)
            if spec is not None and spec.read_only and self.lifecycle_state != "unconfigured":
                return SetParametersResult(
                    successful=False,
                    reason=f"{p.name} is read at configure: change it while the node is unconfigured "
                    "(lifecycle transitions deactivate, cleanup; then configure, activate)")
            if p.name == "score_threshold" and not (
                isinstance(p.value, float | int) and 0.0 <= float(p.value) <= 1.0
            ):
                return SetParametersResult(successful=False, reason="score_threshold must be a number in [0, 1]")
        return SetParametersResult(successful=True)

    def _apply_parameters(self, params: list[Parameter]) -> None:
        for p in params:
            if p.name == "score_threshold":
                self._threshold = float(p.value)
                self.get_logger().info(f"score_threshold set to {self._threshold}")
            elif p.name == "frame_id":
                self._frame_id = str(p.value)

    def _load_model(self):
        s = self.settings
        if not s.model_file_path:
            raise ConfigError(
                "parameter 'model_file_path' is empty: pass -p model_file_path:=/path/model.onnx "
                "(or the launch argument model:=...)"
            )
        if not Path(s.model_file_path).exists():
            raise ModelLoadError(f"model file {s.model_file_path} does not exist (parameter 'model_file_path')")
        from kp_perception.backends import load_backend  # here: tensorrt/torch load only when chosen

        return load_backend(
            s.model_file_path,
            backend=s.backend or None,
            providers=s.provider_list,
            expected_kind=self.expected_kind,
            threads=s.threads,
            engine=self.engine_settings,
        )

    # input
    def _on_image(self, msg: Image | CompressedImage, info: dict) -> None:
        # Two parameters, no default: rclpy then passes the MessageInfo (sequence numbers).
        self._count_lost(info)
        with self._cond:
            if self._pending is not None:
                self.stats.count("dropped")
            self._pending = msg
            self._last_arrival = time.monotonic()
            self.stats.count("received")
            self._cond.notify()

    def _on_camera_info(self, msg: CameraInfo) -> None:
        try:
            camera = CameraModel.from_camera_info(msg)
        except CameraInfoError as exc:
            self._camera = None
            self._camera_problem = f"camera_info rejected: {exc}"
            self.get_logger().warning(self._camera_problem, throttle_duration_sec=5.0)
            return
        previous, self._camera = self._camera, camera
        if previous is None or previous.width != camera.width or previous.height != camera.height:
            self.get_logger().info(f"camera_info {camera.width}x{camera.height} "
                                   f"({camera.distortion_model or 'no distortion'}) on {self._info_sub.topic_name}")

    def _on_depth(self, msg: Image) -> None:
        with self._depth_cond:
            self._depth.add(stamp_to_ns(msg.header), msg)
            self._last_depth_arrival = time.monotonic()
            self._depth_cond.notify_all()

    def _count_lost(self, info: dict | None) -> None:
        """Gaps in a publisher's sequence numbers: frames lost in transport or overwritten in the input queue."""
        if not info:
            return
        seq = info.get("publication_sequence_number")
        gid = (info.get("publisher_gid") or {}).get("data")
        if seq is None or gid is None:
            return  # this RMW does not report them
        gid = bytes(gid)
        last = self._last_sequence.get(gid)
        if last is not None and seq > last + 1:
            self.stats.add_lost(seq - last - 1)
        self._last_sequence[gid] = seq

    def _on_incompatible_qos(self, info) -> None:
        policy = getattr(info.last_policy_kind, "name", str(info.last_policy_kind)).replace("RMW_QOS_POLICY_", "")
        self.get_logger().error(
            f"a publisher on {self._image_sub.topic_name} has incompatible QoS "
            f"(policy {policy}); this node requests {self._image_qos.reliability.name.lower()}. "
            "Set image_reliability:=best_effort (matches any publisher).",
            throttle_duration_sec=10.0,
        )

    # worker
    def _work(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                msg, self._pending = self._pending, None
            try:
                self._process(msg)
            except Exception as exc:  # one bad frame never kills the node
                self._bad_frame(f"{type(exc).__name__}: {exc}")

    def _process(self, msg: Image | CompressedImage) -> None:
        try:
            if self.settings.compressed_input:
                frame = compressed_to_rgb8(msg)
            else:
                frame = image_to_rgb8(msg)
            result = self.backend.infer(frame)
        except KpPerceptionError as exc:
            self._bad_frame(str(exc))
            return
        if not (np.isfinite(result.xy).all() and np.isfinite(result.scores).all()):
            self._bad_frame("model output contains NaN or Inf")
            return

        result = self._add_geometry(result, msg)

        header = msg.header
        if self._frame_id:
            header = Header(stamp=msg.header.stamp, frame_id=self._frame_id)
        threshold = self._threshold
        shown = self.threshold_result(result, threshold)
        self._pub.publish(self.to_message(shown, header))
        self.stats.add_latency(self._age(header))
        if self._obs_pub is not None:
            obs = observe(result, self._layout, threshold=threshold)
            self._obs_pub.publish(observation_to_msg(obs, header))
        if self._debug_pub is not None and self._debug_pub.get_subscription_count() > 0:
            drawn = self.draw(frame, shown)
            self._debug_pub.publish(numpy_to_image(drawn, "rgb8", header=header))

    def _add_geometry(self, result: Any, msg: Image | CompressedImage) -> Any:
        """Normalised coordinates (camera_info of the frame's size) and 3D points (matched depth frame)."""
        camera = self._camera
        if camera is None:
            if self._depth_sub is not None and self._last_depth_arrival is not None:
                self.get_logger().warning(
                    f"depth frames arrive but no usable camera_info on {self._camera_info_topic()}: "
                    "no 3D points (deprojection needs K)", throttle_duration_sec=10.0)
            return result
        try:
            camera.check_size(result.image_width, result.image_height)
        except CameraInfoError as exc:
            self.stats.count("camera_info_rejected")
            self._camera_problem = str(exc)
            self.get_logger().warning(str(exc), throttle_duration_sec=5.0)
            return result
        self._camera_problem = ""
        depth_m, depth_scale = None, 1.0
        if self._depth_sub is not None:
            depth_msg = self._match_depth(stamp_to_ns(msg.header))
            if depth_msg is None:
                self.stats.count("depth_missing")
            else:
                try:
                    depth_m, depth_scale = depth_view(depth_msg)
                    if depth_m.shape != (result.image_height, result.image_width):
                        raise CameraInfoError(
                            f"depth image is {depth_m.shape[1]}x{depth_m.shape[0]}, the colour image "
                            f"{result.image_width}x{result.image_height}: not aligned, ignored (never rescaled)")
                    self.stats.count("depth_matched")
                except KpPerceptionError as exc:
                    depth_m = None
                    self.stats.count("depth_rejected")
                    self.get_logger().warning(f"skipping depth frame: {exc}", throttle_duration_sec=5.0)
        return locate_keypoints(result, camera, depth_m, self.settings.depth_window, depth_scale)

    def _match_depth(self, stamp_ns: int) -> Image | None:
        """The buffered depth frame nearest the image stamp within tolerance, waiting briefly while one may come."""
        s = self.settings
        tolerance = int(round(s.depth_stamp_tolerance * 1e9))
        deadline = time.monotonic() + s.depth_wait
        with self._depth_cond:
            while True:
                found = self._depth.nearest(stamp_ns, tolerance)
                if found is not None:
                    return found[0]
                newest = self._depth.newest_stamp()
                alive = self._last_depth_arrival is not None and time.monotonic() - self._last_depth_arrival < 1.0
                remaining = deadline - time.monotonic()
                if not alive or remaining <= 0 or (newest is not None and newest > stamp_ns + tolerance):
                    return None
                self._depth_cond.wait(remaining)

    def _age(self, header: Header) -> float:
        """Seconds from the image stamp to now; -1 for unstamped images (not counted in latency)."""
        stamp_ns = header.stamp.sec * 1_000_000_000 + header.stamp.nanosec
        if stamp_ns == 0:
            return -1.0
        return (self.get_clock().now().nanoseconds - stamp_ns) * 1e-9

    def _bad_frame(self, reason: str) -> None:
        self.stats.count("bad", reason)
        self.get_logger().warning(f"skipping bad frame: {reason}", throttle_duration_sec=2.0)

    # diagnostics
    def _publish_diagnostics(self) -> None:
        try:
            self._publish_diagnostics_once()
        except Exception as exc:  # diagnostics must never take the node down
            self.get_logger().error(f"diagnostics failed: {type(exc).__name__}: {exc}", throttle_duration_sec=10.0)

    def _publish_diagnostics_once(self) -> None:
        s = self.settings
        summary = self.stats.summary()
        now = time.monotonic()
        since = now - (self._last_arrival if self._last_arrival is not None else self._started)
        level, message = DiagnosticStatus.OK, "running"
        if since > s.no_image_warning_after:
            level, message = DiagnosticStatus.WARN, f"no image for {since:.0f} s"
            self._warn_no_image(since)
        elif self._camera_problem:
            level, message = DiagnosticStatus.WARN, self._camera_problem
        elif summary["bad_frames"] and self.stats.last_bad_reason:
            message = f"running; last bad frame: {self.stats.last_bad_reason}"
        values = {
            **{k: f"{v:.2f}" if isinstance(v, float) else str(v) for k, v in summary.items()},
            "backend": self.backend.name,
            "model": s.model_file_path,
            "input_topic": self._image_sub.topic_name,
            "score_threshold": f"{self._threshold:g}",
            "seconds_since_last_image": f"{since:.1f}",
            "camera_info": self._camera_state(),
            "depth_topic": self._depth_sub.topic_name if self._depth_sub else "off",
        }
        status = DiagnosticStatus(
            level=level,
            name=f"{self.get_fully_qualified_name()}: keypoint inference",
            message=message,
            hardware_id=Path(s.model_file_path).name,
            values=[KeyValue(key=k, value=v) for k, v in values.items()],
        )
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(array)

    def _camera_state(self) -> str:
        if self._info_sub is None:
            return "off"
        if self._camera_problem:
            return f"rejected: {self._camera_problem}"
        camera = self._camera
        if camera is None:
            return f"none received on {self._info_sub.topic_name}"
        return f"{camera.width}x{camera.height} {camera.distortion_model or 'no distortion'}"

    def _warn_no_image(self, since: float) -> None:
        topic = self._image_sub.topic_name
        infos = self.get_publishers_info_by_topic(topic)
        if not infos:
            hint = "no publisher on that topic: check the remap (image:=/your/camera/topic) or image_topic"
        else:
            offered = sorted({str(i.qos_profile.reliability.name).lower() for i in infos})
            hint = (
                f"{len(infos)} publisher(s) offering {', '.join(offered)}; this node requests "
                f"{self._image_qos.reliability.name.lower()}. A reliable subscriber never matches a best-effort "
                "camera: set image_reliability:=best_effort. For large images between processes set "
                "FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA in both"
            )
        self.get_logger().warning(
            f"no image received on {topic} for {since:.0f} s: {hint}", throttle_duration_sec=10.0
        )


def run_node(node_class: type[KeypointNode], args: list[str] | None = None) -> int:
    """Start a node, configure and activate it (``autostart``), spin until shutdown.

    Start-up errors (a bad parameter, a missing or incompatible model, a bad
    QoS override) are one line on stderr and exit status 1, no traceback.
    With ``autostart:=false`` the node waits, unconfigured, for a lifecycle
    manager; a failed transition then leaves it running in its previous state.
    """
    name = node_class.node_name
    try:
        rclpy.init(args=args)
    except Exception as exc:  # bad --ros-args (e.g. a missing params file)
        print(f"[FATAL] [{name}]: cannot start: {exc}".splitlines()[0], file=sys.stderr)
        return 1
    try:
        node = node_class(command_line=sys.argv if args is None else list(args))
    except KpPerceptionError as exc:
        rclpy.logging.get_logger(name).fatal(str(exc))
        rclpy.try_shutdown()
        return 1
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        if node.autostart:
            for transition in (node.trigger_configure, node.trigger_activate):
                if transition() != TransitionCallbackReturn.SUCCESS:
                    return 1  # the transition logged why, in one line
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.close()
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        rclpy.try_shutdown()
    return 0
