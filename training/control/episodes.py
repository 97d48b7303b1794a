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
    """Frame (and the simulator's ground-truth arm points) -> (F×2 features in [-1, 1], F bool validity)."""

    needs_frame: bool

    def __call__(self, frame: np.ndarray | None, arm_points: tuple[np.ndarray, np.ndarray]
                 ) -> tuple[np.ndarray, np.ndarray]: ...


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
    score = 1). A point is valid when it projects inside the frame (a camera
    sees nothing else); occlusion is ignored.
    """

    needs_frame = False

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, frame, arm_points):
        xy, inside = arm_points
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
    (``"level0/"``: the coarsest Pyramids level).
    """

    needs_frame = True

    def __init__(self, model: str, slot_prefix: str = "", threshold: float = 0.0, threads: int = 1) -> None:
        from kp_perception.backends import load_backend
        from kp_perception.observation import ObservationLayout

        self.backend = load_backend(model, threads=threads)
        self.layout = ObservationLayout.from_sidecar(self.backend.sidecar)
        self.threshold = threshold
        self.slots = np.array([i for i, name in enumerate(self.layout.slot_names) if name.startswith(slot_prefix)])
        if len(self.slots) == 0:
            raise ValueError(f"no slot of {model} starts with {slot_prefix!r}")
        self.slot_names = [self.layout.slot_names[i] for i in self.slots]

    def __call__(self, frame, arm_points):
        from kp_perception.observation import observe

        obs = observe(self.backend.infer(frame), self.layout, threshold=self.threshold)
        return obs.values[self.slots], obs.valid[self.slots]


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
        goal_frame = scene.goal_frame() if observer.needs_frame else None
        goal, goal_valid = observer(goal_frame, scene.goal_points)
        controller.reset(goal, goal_valid)
        initial = scene.ee_error().position
        ticks = int(round(duration_s * config.control_hz))
        errors, times, compute = np.zeros(ticks), np.zeros(ticks), np.zeros(ticks)
        weight_sum = np.zeros(len(goal))
        for t in range(ticks):
            frame = scene.render() if observer.needs_frame else None
            q = scene.joint_positions()
            started = time.perf_counter()
            features, valid = observer(frame, scene.arm_image_points())
            qdot = controller.step(features, valid, q)
            compute[t] = time.perf_counter() - started
            weights = getattr(controller, "weights", None)
            if weights is not None:
                weight_sum += weights
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
            mean_weights=(weight_sum / max(ticks, 1)).round(3).tolist(),
            goal_features=np.asarray(goal).round(4).tolist(),
        )
    finally:
        scene.close()
