"""Train a small SAC policy on the reach environment (CPU, a time budget) and export it to ONNX.

    python -m kp_perception_training.control.rl --observer model --minutes 30 --out build/rl/pyramids
    python -m kp_perception_training.control.rl --observer ground_truth --steps N --out build/rl/ground_truth

Why SAC: off-policy, so every (slow: render + ONNX inference) environment step
is reused many times; stable-baselines3's ``MultiInputPolicy`` takes the
environment's Dict observation as it is (each key flattened and concatenated).

The export (``OUT/policy.onnx`` + ``OUT/policy.json``) is the deterministic actor
(tanh of the mean) with one named input per observation key
(``kp_perception.control.policy.POLICY_INPUTS``), so the robot runs it with
onnxruntime and no torch. ``OUT/train.json`` records steps, episodes, wall time
and the budget.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from kp_perception.atomic import atomic_write_text
from kp_perception.control.policy import POLICY_INPUTS, PolicySpec


class RandomController:
    """Uniformly random joint velocities in [-v, v]: the floor of the benchmark."""

    weights = None

    def __init__(self, num_joints: int, seed: int, max_joint_velocity: float = 0.5) -> None:
        self.rng = np.random.default_rng(seed)
        self.num_joints = num_joints
        self.v = max_joint_velocity

    def reset(self, goal, goal_valid=None) -> None:
        pass

    def step(self, values, valid, q) -> np.ndarray:
        return self.rng.uniform(-self.v, self.v, self.num_joints)


class _BudgetCallback:
    """Stops SAC when the wall-clock budget is spent (a stable-baselines3 callback built lazily)."""

    @staticmethod
    def make(minutes: float):
        from stable_baselines3.common.callbacks import BaseCallback

        class Budget(BaseCallback):
            def __init__(self) -> None:
                super().__init__()
                self.deadline = time.monotonic() + 60.0 * minutes
                self.successes: list[bool] = []

            def _on_step(self) -> bool:
                for info, done in zip(self.locals.get("infos", []), self.locals.get("dones", []), strict=False):
                    if done:
                        self.successes.append(bool(info.get("is_success", False)))
                if self.n_calls % 500 == 0 and self.successes:
                    recent = self.successes[-20:]
                    print(f"rl: step {self.num_timesteps}, episodes {len(self.successes)}, success (last "
                          f"{len(recent)}) {np.mean(recent):.0%}", flush=True)
                return time.monotonic() < self.deadline

        return Budget()


def export_policy(model, env, out: Path, keypoint_model: str, joint_names: list[str]) -> Path:
    """The SAC actor -> ``out/policy.onnx`` (+ ``policy.json``), deterministic, named inputs."""
    import torch

    policy = model.policy.to("cpu").eval()

    class Actor(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.policy = policy

        def forward(self, keypoints, valid, goal_keypoints, goal_valid, joint_positions):
            obs = {"keypoints": keypoints, "valid": valid, "goal_keypoints": goal_keypoints,
                   "goal_valid": goal_valid, "joint_positions": joint_positions}
            return self.policy.actor(obs, deterministic=True)

    space = env.observation_space
    dummy = tuple(torch.zeros((1, *space[k].shape), dtype=torch.float32) for k in POLICY_INPUTS)
    path = out / "policy.onnx"
    torch.onnx.export(Actor(), dummy, str(path), input_names=list(POLICY_INPUTS), output_names=["action"],
                      opset_version=18, dynamo=False)
    spec = PolicySpec(num_slots=space["keypoints"].shape[0], num_fields=space["keypoints"].shape[1],
                      num_joints=space["joint_positions"].shape[0], max_joint_velocity=env.max_joint_velocity,
                      keypoint_model=keypoint_model, joint_names=tuple(joint_names))
    atomic_write_text(path.with_suffix(".json"), json.dumps(spec.to_json(), indent=2) + "\n")
    return path


def train(args: argparse.Namespace) -> dict:
    import torch
    from stable_baselines3 import SAC

    from kp_perception_training.control.reach_env import ReachKeypointEnv

    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = ReachKeypointEnv(model=args.model, observer=args.observer, seed=args.seed)
    model = SAC("MultiInputPolicy", env, learning_rate=3e-4, buffer_size=200_000, learning_starts=1000,
                batch_size=256, gamma=0.95, train_freq=1, gradient_steps=1, policy_kwargs={"net_arch": [256, 256]},
                seed=args.seed, device="cpu", verbose=0)
    budget = _BudgetCallback.make(args.minutes)
    started = time.monotonic()
    model.learn(total_timesteps=args.steps, callback=budget)
    elapsed = time.monotonic() - started
    model.save(out / "sac.zip")
    joint_names = env.scene.joint_names if env.scene is not None else []
    path = export_policy(model, env, out, args.model if args.observer == "model" else "ground_truth", joint_names)
    summary = {"observer": args.observer, "model": args.model, "steps": int(model.num_timesteps),
               "episodes": len(budget.successes), "wall_time_min": round(elapsed / 60.0, 1),
               "budget_min": args.minutes, "max_steps": args.steps,
               "training_success_last_50": float(np.mean(budget.successes[-50:])) if budget.successes else None,
               "policy": str(path), "seed": args.seed}
    atomic_write_text(out / "train.json", json.dumps(summary, indent=2) + "\n")
    env.close()
    return summary


def main(argv: list[str] | None = None) -> int:
    from kp_perception.resources import share_path

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--observer", choices=("model", "ground_truth"), default="model")
    parser.add_argument("--model", default=str(share_path("models", "pyramids.onnx")), help="keypoint model")
    parser.add_argument("--minutes", type=float, default=30.0, help="wall-clock budget (default 30)")
    parser.add_argument("--steps", type=int, default=1_000_000, help="environment step limit")
    parser.add_argument("--seed", type=int, default=1000, help="training episodes' seed (default 1000)")
    parser.add_argument("--out", required=True, help="output folder")
    args = parser.parse_args(argv)
    print(json.dumps(train(args), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
