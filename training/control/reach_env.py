"""A gymnasium environment of the reach task, observed through keypoints computed in-process (no ROS).

Why in ``training/``: it needs the pybullet simulator (``kp_perception_training.sim``),
and its job is learning (stable-baselines3); a robot needs only the trained policy
(exported to ONNX, run by ``kp_perception.control.policy.OnnxPolicy`` in ``servo_node``).

Observation (a ``gymnasium.spaces.Dict``), built from the consumer API so a
policy trained here runs unchanged on the ROS topic:

- ``keypoints`` / ``valid``: the current observation, exactly the
  ``{"keypoints", "valid"}`` of :func:`kp_perception.observation.observation_space`
  for the model (slots × (x, y, score), x and y in [-1, 1]; invalid slots 0), computed
  per step by the same ``backend.infer`` + ``observe`` the node runs;
- ``goal_keypoints`` / ``goal_valid``: the same for the goal image, fixed per episode;
- ``joint_positions``: the arm's joint angles (rad), what ``/joint_states`` gives.

With ``observer="ground_truth"`` the keypoints are the simulator's projected arm
points (same fields), for the upper-bound policy.

Action: joint velocities in [-1, 1] per joint, scaled by ``max_joint_velocity``
(rad/s), held for one control period (``control_hz``, 10 Hz by default: fewer,
longer decisions than the 30 Hz servo loop make the credit assignment easier; the
action is a velocity, so the policy runs at 30 Hz on the robot unchanged).

Reward: ``-distance / 0.1 m`` of the end effector to the goal position each step
(privileged, used for training only; the policy never sees it), plus 1 while
within the 2 cm success distance. Episodes are truncated after ``episode_steps``.
Start/goal pairs come from ``ReachScene(ReachConfig(seed), episode)`` with the
episode index drawn from the environment's RNG, so training seeds (default
1000) never produce the benchmark's episodes (seed 0).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from kp_perception_training.control.episodes import GroundTruthObserver, ModelObserver
from kp_perception_training.sim.reach import ReachConfig, ReachScene

NUM_JOINTS = 7


class ReachKeypointEnv(gym.Env):
    """Reach a goal arm configuration given the goal image's keypoints (see the module docstring)."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, model: str = "", observer: str = "model", seed: int = 1000, control_hz: float = 10.0,
                 episode_steps: int = 100, max_joint_velocity: float = 0.5, episode_pool: int = 100_000,
                 render_mode: str | None = None) -> None:
        from kp_perception.observation import ObservationLayout, observation_space

        self.config = ReachConfig(seed=seed, control_hz=control_hz)
        self.episode_steps = episode_steps
        self.max_joint_velocity = max_joint_velocity
        self.episode_pool = episode_pool
        self.render_mode = render_mode
        if observer == "model":
            self.observer = ModelObserver(model)
            base = observation_space(self.observer.layout)
        elif observer == "ground_truth":
            self.observer = GroundTruthObserver(self.config.size)
            probe = ReachScene(self.config, 0)
            names = tuple(probe.arm_point_names)
            probe.close()
            layout = ObservationLayout(kind="ground_truth", coordinates="normalized", slot_names=names,
                                       field_names=("x", "y", "score"))
            base = observation_space(layout)
        else:
            raise ValueError(f"observer must be 'model' or 'ground_truth', got {observer!r}")
        self.observation_space = spaces.Dict({
            "keypoints": base["keypoints"],
            "valid": base["valid"],
            "goal_keypoints": base["keypoints"],
            "goal_valid": base["valid"],
            "joint_positions": spaces.Box(-2 * np.pi, 2 * np.pi, shape=(NUM_JOINTS,), dtype=np.float32),
        })
        self.action_space = spaces.Box(-1.0, 1.0, shape=(NUM_JOINTS,), dtype=np.float32)
        self.scene: ReachScene | None = None
        self._goal: tuple[np.ndarray, np.ndarray] | None = None
        self._frame: np.ndarray | None = None
        self._steps = 0

    # -- gymnasium API ----------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if self.scene is not None:
            self.scene.close()
        episode = int(options["episode"]) if options and "episode" in options else \
            int(self.np_random.integers(self.episode_pool))
        self.scene = ReachScene(self.config, episode)
        goal_frame = self.scene.goal_frame() if self.observer.needs_frame else None
        self._goal = self.observer(goal_frame, self.scene.goal_points)
        self._steps = 0
        return self._observe(), {"episode": episode}

    def step(self, action):
        action = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        self.scene.apply(action * self.max_joint_velocity)
        self._steps += 1
        distance = self.scene.ee_error().position
        success = distance <= self.config.success_distance
        reward = -distance / 0.1 + (1.0 if success else 0.0)
        obs = self._observe()
        return obs, float(reward), False, self._steps >= self.episode_steps, {
            "distance_m": distance, "is_success": bool(success)}

    def render(self):
        return self._frame

    def close(self) -> None:
        if self.scene is not None:
            self.scene.close()
            self.scene = None

    # -- helpers ----------------------------------------------------------------------------
    def _observe(self) -> dict[str, np.ndarray]:
        frame = self.scene.render() if self.observer.needs_frame or self.render_mode else None
        self._frame = frame
        values, valid = self.observer(frame, self.scene.arm_image_points())
        goal_values, goal_valid = self._goal
        return {
            "keypoints": _filled(values, valid),
            "valid": np.asarray(valid, np.int8),
            "goal_keypoints": _filled(goal_values, goal_valid),
            "goal_valid": np.asarray(goal_valid, np.int8),
            "joint_positions": self.scene.joint_positions().astype(np.float32),
        }


def _filled(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Invalid slots to 0, x/y clipped into the space (as ``KeypointObservation.as_dict`` fills them)."""
    out = np.array(values, dtype=np.float32, copy=True)
    out[~np.asarray(valid, bool)] = 0.0
    out[~np.isfinite(out)] = 0.0
    return np.clip(out, -1.0, 1.0)
