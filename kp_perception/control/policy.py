"""A trained reach policy exported to ONNX, run with onnxruntime: the same interface as the IBVS controller.

Two kinds are exported this way: the SAC actor of ``kp_perception_training.control.rl``
and the fitted visuomotor map of ``kp_perception_training.control.visuomotor_map``
(keypoints -> joint angles, with its control law in the graph). The robot runs both alike.

Why ONNX and not stable-baselines3 on the robot: the robot side never
imports torch (docs/architecture.md). The policy is trained in
``kp_perception_training.control.rl`` on the gymnasium reach environment and
exported with named inputs, one per key of the environment's observation
(:data:`POLICY_INPUTS`): the current observation table and validity (from the
consumer API, ``KeypointObservation.as_dict``), the goal's, and the joint
positions. Its output ``action`` is in [-1, 1] per joint and scaled by the
sidecar's ``max_joint_velocity`` to rad/s.

Sidecar ``<policy>.json``: ``{"format": "kp_perception.policy", "inputs":
[...], "num_slots": S, "num_fields": F, "num_joints": n, "max_joint_velocity":
v, "keypoint_model": "...", "joint_names": [...]}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kp_perception.errors import ModelLoadError

POLICY_INPUTS = ("keypoints", "valid", "goal_keypoints", "goal_valid", "joint_positions")
POLICY_FORMAT = "kp_perception.policy"


@dataclass(frozen=True)
class PolicySpec:
    """What a policy file expects: observation shape, joints, and the action scale."""

    num_slots: int
    num_fields: int
    num_joints: int
    max_joint_velocity: float
    keypoint_model: str = ""
    joint_names: tuple[str, ...] = ()

    def to_json(self) -> dict:
        return {"format": POLICY_FORMAT, "inputs": list(POLICY_INPUTS), "num_slots": self.num_slots,
                "num_fields": self.num_fields, "num_joints": self.num_joints,
                "max_joint_velocity": self.max_joint_velocity, "keypoint_model": self.keypoint_model,
                "joint_names": list(self.joint_names)}


def read_policy_spec(path: str | Path) -> PolicySpec:
    path = Path(path).with_suffix(".json")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path}: cannot read the policy sidecar ({exc})") from None
    if data.get("format") != POLICY_FORMAT:
        raise ModelLoadError(f"{path}: not a policy sidecar (format {data.get('format')!r}, expected {POLICY_FORMAT})")
    try:
        return PolicySpec(int(data["num_slots"]), int(data["num_fields"]), int(data["num_joints"]),
                          float(data["max_joint_velocity"]), str(data.get("keypoint_model", "")),
                          tuple(data.get("joint_names", ())))
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"{path}: policy sidecar field missing or wrong ({exc})") from None


def policy_inputs(values: np.ndarray, valid: np.ndarray, goal: np.ndarray, goal_valid: np.ndarray,
                  q: np.ndarray) -> dict[str, np.ndarray]:
    """The policy's named inputs (batch 1) from observation tables S×F (NaN where invalid) and joints.

    Invalid slots are filled with 0 (as ``KeypointObservation.as_dict`` does) and values
    clipped to [-1, 1], as the reach environment does, so the network sees the same numbers.
    """
    def filled(table: np.ndarray, ok: np.ndarray) -> np.ndarray:
        out = np.array(table, dtype=np.float32, copy=True)
        out[~np.asarray(ok, bool)] = 0.0
        out[~np.isfinite(out)] = 0.0
        return np.clip(out, -1.0, 1.0)

    return {
        "keypoints": filled(values, valid)[None],
        "valid": np.asarray(valid, np.float32)[None],
        "goal_keypoints": filled(goal, goal_valid)[None],
        "goal_valid": np.asarray(goal_valid, np.float32)[None],
        "joint_positions": np.asarray(q, np.float32).reshape(1, -1),
    }


class OnnxPolicy:
    """Runs an exported reach policy; ``reset(goal)`` then ``step(values, valid, q) -> qdot`` (rad/s)."""

    def __init__(self, path: str | Path, threads: int = 1) -> None:
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise ModelLoadError(f"{path}: policy file not found")
        self.spec = read_policy_spec(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads)
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ModelLoadError(f"{path}: not a loadable ONNX policy ({str(exc).splitlines()[0]})") from None
        names = tuple(i.name for i in self.session.get_inputs())
        if set(names) != set(POLICY_INPUTS):
            raise ModelLoadError(f"{path}: policy inputs {names}, expected {POLICY_INPUTS}")
        self.goal: np.ndarray | None = None
        self.goal_valid: np.ndarray | None = None
        self.weights = None

    def reset(self, goal: np.ndarray, goal_valid: np.ndarray | None = None) -> None:
        self.goal = np.asarray(goal, dtype=np.float32)
        self.goal_valid = np.ones(len(goal), bool) if goal_valid is None else np.asarray(goal_valid, bool)

    def step(self, values: np.ndarray, valid: np.ndarray, q: np.ndarray) -> np.ndarray:
        if self.goal is None:
            raise RuntimeError("OnnxPolicy.step before reset(goal)")
        values = np.asarray(values, dtype=np.float32)
        if values.shape != (self.spec.num_slots, self.spec.num_fields):
            raise ValueError(f"policy expects {self.spec.num_slots}x{self.spec.num_fields} observations, "
                             f"got {values.shape}")
        inputs = policy_inputs(values, valid, self.goal, self.goal_valid, q)
        (action,) = self.session.run(["action"], inputs)
        return np.clip(action[0].astype(np.float64), -1.0, 1.0) * self.spec.max_joint_velocity
