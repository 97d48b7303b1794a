"""Closed-loop reach episodes run in-process: observer -> controller -> simulator, one control period per tick.

Why in-process: the benchmark variants that need no ROS (ground-truth points,
Pyramids all levels / level 1, Transporter-30, the RL policies) must be scored
on exactly the same episodes and controller, fast and deterministically; the
ROS variant (``kp-perception demo servo``'s loop) scores the same episodes
through the real nodes.

An observer turns what the camera sees into the controller's features (F×2 in
[-1, 1], F validity); a controller is anything with ``reset(goal, goal_valid)``
and ``step(features, valid, q) -> qdot`` (:class:`~kp_perception.control.ibvs.BroydenIBVS`,
the RL policy runner).

Scoring (fixed before any comparison was run): an episode succeeds when the
end effector is within ``success_distance`` (2 cm) of the goal pose's position
at the end of the episode (``duration_s``); its time to converge is the first
time after which the error stays within that distance to the end.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from kp_perception_training.sim.reach import ReachConfig, ReachScene


class Observer(Protocol):
    """Frame (+ depth, + the simulator's ground-truth arm points) -> (F×k observation table, F bool validity).

    ``coordinates`` is the consumer API's mode: ``"normalized"`` tables are
    (x, y in [-1, 1], score); ``"metric"`` tables are (X, Y, Z metres in the
    camera optical frame, score), which needs the aligned depth image
    (``depth``) and the arm points' optical-frame positions (third element of
    ``arm_points``).
    """

    needs_frame: bool
    coordinates: str

    def __call__(self, frame: np.ndarray | None, arm_points: tuple[np.ndarray, ...],
                 depth: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]: ...


class Controller(Protocol):
    def reset(self, goal: np.ndarray, goal_valid: np.ndarray | None = None) -> None: ...

    def step(self, features: np.ndarray, valid: np.ndarray, q: np.ndarray) -> np.ndarray: ...


def pixels_to_normalized(xy: np.ndarray, width: int, height: int) -> np.ndarray:
    """N×2 pixels (pixel centres at integers) -> [-1, 1] with ±1 the outer pixel centres (align_corners)."""
    xy = np.asarray(xy, dtype=np.float64)
    return np.stack([2.0 * xy[:, 0] / (width - 1) - 1.0, 2.0 * xy[:, 1] / (height - 1) - 1.0], axis=1)


class GroundTruthObserver:
    """The arm's annotated points projected by the simulator: the upper bound of what keypoints can give.

    Returns the observation table the consumer API gives (x, y in [-1, 1],
    score = 1; or with ``coordinates="metric"`` the exact X, Y, Z in the
    optical frame, score = 1). A point is valid when it projects inside the
    frame (a camera sees nothing else); occlusion is ignored.
    """

    needs_frame = False

    def __init__(self, size: int, coordinates: str = "normalized") -> None:
        self.size = size
        self.coordinates = _check_coordinates(coordinates)

    def __call__(self, frame, arm_points, depth=None):
        xy, inside = arm_points[0], arm_points[1]
        if self.coordinates == "metric":
            table = np.ones((len(xy), 4))
            table[:, :3] = arm_points[2]
        else:
            table = np.ones((len(xy), 3))
            table[:, :2] = pixels_to_normalized(xy, self.size, self.size)
        return table, inside.copy()


class ModelObserver:
    """A keypoint model run in-process (ONNX Runtime) and turned into the node's observation.

    The same two calls the node makes for every frame: ``backend.infer`` and
    the consumer API's :func:`~kp_perception.observation.observe` (fixed slots,
    [-1, 1] coordinates, validity at ``threshold``), so the controller sees
    here exactly what it sees on the ``PolicyObservation`` topic.
    ``slot_prefix`` keeps only the slots whose name starts with it
    (``"level0/"``: the coarsest Pyramids level). With ``coordinates="metric"``
    each keypoint is located in 3D as the node does with camera_info + depth
    (:func:`~kp_perception.camera_geometry.locate_keypoints`, median depth of a
    ``depth_window`` square; ``camera`` is the frame's
    :class:`~kp_perception.camera_geometry.CameraModel`).
    """

    needs_frame = True

    def __init__(self, model: str, slot_prefix: str = "", threshold: float = 0.0, threads: int = 1,
                 coordinates: str = "normalized", camera=None, depth_window: int = 5) -> None:
        from kp_perception.backends import load_backend
        from kp_perception.observation import ObservationLayout

        self.coordinates = _check_coordinates(coordinates)
        if self.coordinates == "metric" and camera is None:
            raise ValueError("metric coordinates need the camera model (camera=CameraModel)")
        self.camera, self.depth_window = camera, depth_window
        self.backend = load_backend(model, threads=threads)
        self.layout = ObservationLayout.from_sidecar(self.backend.sidecar, coordinates=self.coordinates)
        self.threshold = threshold
        self.slots = np.array([i for i, name in enumerate(self.layout.slot_names) if name.startswith(slot_prefix)])
        if len(self.slots) == 0:
            raise ValueError(f"no slot of {model} starts with {slot_prefix!r}")
        self.slot_names = [self.layout.slot_names[i] for i in self.slots]

    def __call__(self, frame, arm_points, depth=None):
        from kp_perception.camera_geometry import locate_keypoints
        from kp_perception.observation import observe

        result = self.backend.infer(frame)
        if self.coordinates == "metric":
            if depth is None:
                raise ValueError("metric coordinates need the depth image")
            result = locate_keypoints(result, self.camera, depth, window=self.depth_window)
        obs = observe(result, self.layout, threshold=self.threshold)
        return obs.values[self.slots], obs.valid[self.slots]


def _check_coordinates(coordinates: str) -> str:
    if coordinates not in ("normalized", "metric"):
        raise ValueError(f"coordinates must be 'normalized' or 'metric', got {coordinates!r}")
    return coordinates


def camera_model(scene: ReachScene):
    """The reach scene camera's :class:`~kp_perception.camera_geometry.CameraModel` (pinhole, no distortion)."""
    from kp_perception.camera_geometry import CameraModel

    size = scene.config.size
    return CameraModel(width=size, height=size, K=np.asarray(scene.scene.camera.intrinsics, np.float64),
                       D=np.zeros(0))


def capture(scene: ReachScene, observer: Observer, goal: bool = False) -> tuple:
    """What the camera (and the simulator's ground truth) gives ``observer`` now, or for the goal:
    ``(frame, arm_points, depth)``; ``observe(observer, *capture(...))`` turns it into features."""
    metric = getattr(observer, "coordinates", "normalized") == "metric"
    frame = depth = None
    if observer.needs_frame:
        if metric:
            frame, depth = scene.goal_frame(depth=True) if goal else scene.render_rgbd()
        else:
            frame = scene.goal_frame() if goal else scene.render()
    if goal:
        points = (*scene.goal_points, scene.goal_optical_points)
    else:
        points = (*scene.arm_image_points(), scene.arm_optical_points()) if metric else scene.arm_image_points()
    return frame, points, depth


def observe_with(observer: Observer, frame, points, depth) -> tuple[np.ndarray, np.ndarray]:
    """The observer's (table, valid) for one :func:`capture`."""
    return observer(frame, points, depth) if depth is not None or len(points) > 2 else observer(frame, points)


@dataclass
class EpisodeResult:
    """One episode's outcome; errors are the end effector's against the goal configuration's."""

    episode: int
    success: bool
    final_position_error_mm: float
    final_orientation_error_deg: float
    initial_position_error_mm: float
    converge_time_s: float | None
    duration_s: float
    control_ms_p50: float  # observer + controller time per tick (in-process, wall clock)
    position_error_mm: list[float] = field(default_factory=list)  # per tick, after the command
    mean_weights: list[float] = field(default_factory=list)  # per feature: how often the controller used it
    goal_features: list[list[float]] = field(default_factory=list)  # where the features sat in the goal image

    def summary(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("position_error_mm",)}


def converge_time(errors_m: np.ndarray, times: np.ndarray, threshold: float) -> float | None:
    """First time after which every error is within ``threshold``; None if the last one is not."""
    outside = np.flatnonzero(errors_m > threshold)
    if len(outside) == len(errors_m):
        return None
    if len(outside) == 0:
        return float(times[0])
    last = outside[-1]
    return None if last == len(errors_m) - 1 else float(times[last + 1])


def run_episode(
    config: ReachConfig,
    episode: int,
    observer: Observer,
    controller: Controller,
    duration_s: float,
    on_tick: Callable[[ReachScene, np.ndarray | None, np.ndarray, np.ndarray, np.ndarray], None] | None = None,
) -> EpisodeResult:
    """Run one episode: goal features from the goal image, then ``duration_s`` of closed-loop control.

    ``on_tick(scene, frame, features, valid, qdot)`` is called each tick (for videos).
    """
    scene = ReachScene(config, episode)
    try:
        goal, goal_valid = observe_with(observer, *capture(scene, observer, goal=True))
        controller.reset(goal, goal_valid)
        initial = scene.ee_error().position
        ticks = int(round(duration_s * config.control_hz))
        errors, times, compute = np.zeros(ticks), np.zeros(ticks), np.zeros(ticks)
        weight_sum = np.zeros(len(goal))
        weighted = False  # controllers without per-feature weights (policies, maps) report none
        for t in range(ticks):
            frame, points, depth = capture(scene, observer)
            q = scene.joint_positions()
            started = time.perf_counter()
            features, valid = observe_with(observer, frame, points, depth)
            qdot = controller.step(features, valid, q)
            compute[t] = time.perf_counter() - started
            weights = getattr(controller, "weights", None)
            if weights is not None:
                weight_sum += weights
                weighted = True
            if on_tick is not None:
                on_tick(scene, frame, features, valid, qdot)
            scene.apply(qdot)
            errors[t] = scene.ee_error().position
            times[t] = scene.time
        final = scene.ee_error()
        return EpisodeResult(
            episode=episode,
            success=bool(final.position <= config.success_distance),
            final_position_error_mm=1e3 * final.position,
            final_orientation_error_deg=float(np.degrees(final.orientation)),
            initial_position_error_mm=1e3 * initial,
            converge_time_s=converge_time(errors, times, config.success_distance),
            duration_s=duration_s,
            control_ms_p50=float(np.median(compute) * 1e3),
            position_error_mm=(1e3 * errors).round(2).tolist(),
            mean_weights=(weight_sum / max(ticks, 1)).round(3).tolist() if weighted else [],
            goal_features=np.asarray(goal).round(4).tolist(),
        )
    finally:
        scene.close()
