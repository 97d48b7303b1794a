"""How well each observation sees the end effector move: the "why" behind ``bench servo``'s table.

Why this benchmark: closed-loop servoing can only reach the goal to the extent
that the features change when the gripper is away from it. IBVS drives the
feature error to zero; if some joint motion moves the gripper a centimetre but
moves the keypoints by a fraction of a pixel (less than their jitter), the
controller stops there, the feature error small and the gripper far. This
measures that directly, at the benchmark's goal configurations (seed 0, the
episodes ``bench servo`` scores; nothing here is tuned):

- the feature Jacobian J_f (pixels of a 64 px frame per radian) by central
  differences of ±``delta`` rad per joint around the goal configuration, over
  the features the controller would use there (valid in every render and
  moving: Jacobian rows ≥ ``IBVSConfig.motion_threshold`` × the largest);
- the end effector's position Jacobian J_e (mm per radian) from the simulator;
- the least-visible gripper move: over all joint motions that move the gripper
  by 1 cm, the smallest RMS keypoint motion, ``10·sqrt(λ_min((J_e A⁻¹ J_eᵀ)⁻¹))``
  px with ``A = J_fᵀJ_f / F`` (joint motions that leave the gripper in place
  are free); also the median direction's (the middle of the three).

- the keypoints' jitter: the RMS residual of the linear model, f(q+δ) − f(q) − J_f δ,
  over ``--jitter-samples`` random δ ~ N(0, ``jitter_sigma``²) per joint: what is not
  explained by motion (aliasing, keypoints sliding along edges). Ground truth has none.

A keypoint model whose least-visible 1 cm move is below its keypoints' jitter
cannot be servoed to 1 cm in that direction, whatever the controller: the
ratio jitter / (px per cm) is the blind distance, reported per direction.
Frames are rendered at each ``--sizes`` value and shrunk to the model's input
by its resize (the node's path); the ground-truth points do not depend on it.
``--also NAME=PATH`` measures further Pyramids models (all levels, and level 1
as ``NAME_level1``) on the same frames, so a retrained model (say one trained at
128 px) is compared with the shipped one side by side in one run.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from kp_perception.resources import share_path
from kp_perception_bench._outputs import results_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--episodes", type=int, default=10, help="goal configurations of bench servo's episodes "
                        "0..N-1 (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="episode seed (default 0, bench servo's)")
    parser.add_argument("--sizes", default="64,256", help="camera frame sizes (default 64,256)")
    parser.add_argument("--delta", type=float, default=0.04, help="joint offset (rad) of the central differences")
    parser.add_argument("--jitter-samples", type=int, default=6, help="random small motions for the jitter")
    parser.add_argument("--jitter-sigma", type=float, default=0.01, help="their size (rad per joint)")
    parser.add_argument("--model", default=str(share_path("models", "pyramids.onnx")), help="Pyramids model")
    parser.add_argument("--transporter", default=str(share_path("models", "transporter30.onnx")),
                        help="Transporter-30 model")
    parser.add_argument("--also", nargs="*", default=[], metavar="NAME=PATH",
                        help="further Pyramids models to measure on the same frames (all levels as NAME, level 1 "
                        "as NAME_level1), e.g. pyramids128=build/pyramids128.onnx")
    parser.add_argument("--json", default=str(results_dir() / "servo_observability.json"), help="where to write the figures")


def named_models(items: list[str]) -> dict[str, str]:
    """``--also`` items ``NAME=PATH`` as {name: path}; one clear error for a bad item, a taken name or no file."""
    from pathlib import Path

    from kp_perception.errors import KpPerceptionError

    taken = {"ground_truth", "pyramids", "pyramids_level1", "transporter30"}
    models: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise KpPerceptionError(f"--also {item!r}: expected NAME=PATH")
        if name in taken or name in models or f"{name}_level1" in taken:
            raise KpPerceptionError(f"--also {item!r}: the name {name!r} is already measured")
        if not Path(path).is_file():
            raise KpPerceptionError(f"--also {item!r}: no model file at {path}")
        models[name] = path
    return models


def least_visible_move(jf: np.ndarray, je: np.ndarray) -> tuple[float, float]:
    """(smallest, median) RMS feature motion (px) over joint motions that move the end effector 1 cm.

    ``jf`` is F×2×n (px/rad), ``je`` 3×n (mm/rad). Joint motions that do not
    move the end effector cost nothing, so a feature set blind to a gripper
    direction scores 0 there.
    """
    n = je.shape[1]
    rows = jf.reshape(-1, n)
    a = rows.T @ rows / max(len(jf), 1) + 1e-9 * np.eye(n)
    m = je @ np.linalg.solve(a, je.T)  # 3×3: mm² of gripper motion per px² of RMS feature motion
    lam = np.linalg.eigvalsh(np.linalg.inv(m))  # px²/mm², ascending
    lam = np.clip(lam, 0.0, None)
    return float(10.0 * np.sqrt(lam[0])), float(10.0 * np.sqrt(lam[1]))


def _used(jf: np.ndarray, threshold: float) -> np.ndarray:
    norms = np.linalg.norm(jf.reshape(len(jf), -1), axis=1)
    return norms >= threshold * norms.max() if len(norms) and norms.max() > 0 else np.zeros(len(jf), bool)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from kp_perception.control.ibvs import IBVSConfig
    from kp_perception_training.control.episodes import GroundTruthObserver, ModelObserver
    from kp_perception_training.sim.reach import ReachConfig, ReachScene

    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    threshold = IBVSConfig().motion_threshold
    also = named_models(args.also)
    observers = {"pyramids": ModelObserver(args.model),
                 "pyramids_level1": ModelObserver(args.model, slot_prefix="level0/"),
                 "transporter30": ModelObserver(args.transporter)}
    for name, path in also.items():
        observers[name] = ModelObserver(path)
        observers[f"{name}_level1"] = ModelObserver(path, slot_prefix="level0/")
    started = time.monotonic()
    per: dict[str, list[tuple[float, float, int]]] = {}
    for size in sizes:
        for episode in range(args.episodes):
            scene = ReachScene(ReachConfig(seed=args.seed, size=size), episode)
            try:
                q0 = scene.goal_q.copy()
                n = len(q0)
                frames, truth, ee = [], [], []
                rng = np.random.default_rng([args.seed, episode])
                jitter_q = [q0 + rng.normal(0.0, args.jitter_sigma, n) for _ in range(args.jitter_samples)]
                for j in range(n):
                    for sign in (1.0, -1.0):
                        q = q0.copy()
                        q[j] += sign * args.delta
                        scene.set_joints(q)
                        frames.append(scene.render())
                        truth.append(scene.arm_image_points())
                        ee.append(scene.ee_pose()[0] * 1e3)
                for q in [q0, *jitter_q]:
                    scene.set_joints(q)
                    frames.append(scene.render())
                    truth.append(scene.arm_image_points())
                je = np.stack([(ee[2 * j] - ee[2 * j + 1]) / (2 * args.delta) for j in range(n)], axis=1)
                names = {"ground_truth": GroundTruthObserver(size)} if size == sizes[0] else {}
                names.update(observers)
                for name, observer in names.items():
                    obs = [observer(f if observer.needs_frame else None, t) for f, t in zip(frames, truth, strict=True)]
                    xy = np.stack([o[0][:, :2] for o in obs]) * 31.5  # [-1, 1] -> pixels of a 64 px frame
                    ok = np.logical_and.reduce([o[1] for o in obs])
                    jf = np.stack([(xy[2 * j] - xy[2 * j + 1]) / (2 * args.delta) for j in range(n)], axis=-1)[ok]
                    used = _used(jf, threshold)
                    jf = jf[used]
                    low, mid = least_visible_move(jf, je)
                    base = xy[2 * n][ok][used]
                    residuals = [xy[2 * n + 1 + k][ok][used] - base - jf @ (q - q0) for k, q in enumerate(jitter_q)]
                    jitter = float(np.sqrt(np.mean([np.sum(r**2, axis=1).mean() for r in residuals])))
                    key = name if name == "ground_truth" else f"{name}@{size}px"
                    per.setdefault(key, []).append((low, mid, len(jf), jitter))
            finally:
                scene.close()
            print(f"bench servo_observability: {size} px episode {episode} done", flush=True)
    figures: dict[str, Any] = {
        "settings": {"episodes": args.episodes, "seed": args.seed, "sizes": sizes, "delta_rad": args.delta,
                     "motion_threshold": threshold, "pixels": "of a 64 px frame",
                     "model": args.model, "transporter": args.transporter, **({"also": also} if also else {})},
        "observations": {},
    }
    for key, rows in per.items():
        arr = np.array(rows)
        figures["observations"][key] = {
            "least_visible_1cm_px_median": round(float(np.median(arr[:, 0])), 3),
            "least_visible_1cm_px_min": round(float(arr[:, 0].min()), 3),
            "middle_direction_1cm_px_median": round(float(np.median(arr[:, 1])), 3),
            "features_used_median": float(np.median(arr[:, 2])),
            "jitter_px_median": round(float(np.median(arr[:, 3])), 3),
            "blind_cm_least_visible_median": round(float(np.median(arr[:, 3] / np.maximum(arr[:, 0], 1e-9))), 2),
            "blind_cm_middle_median": round(float(np.median(arr[:, 3] / np.maximum(arr[:, 1], 1e-9))), 2),
            "per_episode_least_visible_px": [round(float(v), 3) for v in arr[:, 0]],
        }
    figures["wall_time_min"] = round((time.monotonic() - started) / 60.0, 1)
    return figures
