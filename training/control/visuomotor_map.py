"""A learned visuomotor map for servoing: keypoints -> joint configuration, fitted on the robot's own motions.

    python -m kp_perception_training.control.visuomotor_map --observer model --out build/servo_map/pyramids
    python -m kp_perception_training.control.visuomotor_map --observer model --slots level0/ --out .../pyramids_level1
    python -m kp_perception_training.control.visuomotor_map --observer ground_truth --out .../ground_truth

Why: Broyden IBVS on learned keypoints fails in two ways (docs/results.md,
"Closed-loop servoing"). Its local Jacobian cannot follow keypoints that slide
between arm parts during a large motion, and near the goal the keypoints barely
move along the camera's rays. A map fitted once, globally, over the task's
configurations has neither problem: the robot moves to many configurations of
its own workspace, records what the keypoint model says at each, and learns
f: keypoints -> joint angles (a learned hand-eye map from self-generated
motions, as in Kuperstein, Science 1988; here kernel ridge regression with an
RBF kernel on standardised features). The task's configurations (gripper down,
at the pushing height, IK from one rest pose) form a low-dimensional family, and
the map learns that family, which a single image cannot resolve on its own.

Control law, with λ = ``gain`` and the whole vector scaled so that no joint
exceeds ``max_joint_velocity``:

- ``feedback="image"`` (default): q̇ = λ (f(s*) − f(s)). The loop is closed
  through the current keypoints s; a bias of f shared by the current and goal
  images cancels at the goal.
- ``feedback="joints"``: q̇ = λ (f(s*) − q), look-and-move (Sanderson & Weiss
  1980): the goal configuration is read off the goal image once and the joint
  encoders do the rest. The current keypoints are not used.

Samples (``SampleConfig``): each of ``scenes`` reach scenes
(``ReachScene(ReachConfig(seed), episode)``, a seed the benchmark never uses)
gives ``per_scene`` configurations, cycling through three kinds: the IK
configuration of a random workspace target (what start and goal are), the same
plus N(0, ``joint_noise``) rad on joints 1-6, and a random point on the
joint-space segment to another target plus N(0, ``path_noise``) (what the arm
passes through when it reaches).

The export is a policy (``kp_perception.control.policy``): the same named
inputs and ``action`` output as the RL policies, so ``servo_node
controller:=policy`` and ``bench servo`` run it unchanged. ``OUT/policy.onnx``
holds the fitted support vectors; ``OUT/fit.json`` records the data, the
cross-validated kernel settings and the held-out fit; ``OUT/samples.npz`` keeps
the samples, so a refit or re-export with the same sampling skips the slow part.

Measured (docs/results.md, "Third round: a learned visuomotor map"): on the
benchmark's 50 episodes the closed-loop map reaches the goal in 52 % on the
shipped Pyramids model and 100 % on ground-truth points; look-and-move 70 % and
100 %. Broyden IBVS on the same keypoints: 0 %.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from kp_perception.atomic import atomic_path, atomic_write_text
from kp_perception.control.policy import POLICY_INPUTS, OnnxPolicy, PolicySpec, policy_inputs

FEEDBACK = ("image", "joints")


@dataclass(frozen=True)
class SampleConfig:
    """Which configurations the robot visits to fit the map (see the module docstring)."""

    seed: int = 2000  # reach-scene seed: not the benchmark's (0) nor its development episodes' (100)
    scenes: int = 500
    per_scene: int = 30
    size: int = 64  # camera image size, as the benchmark's
    joint_noise: float = 0.1  # rad, N(0, this) on joints 1-6 for the perturbed kind
    path_noise: float = 0.05  # rad, N(0, this) on joints 1-6 for the path kind


@dataclass
class Samples:
    """N observations (N×S×F tables, N×S validity) and the joint angles (N×n) they were seen at."""

    values: np.ndarray
    valid: np.ndarray
    q: np.ndarray
    scene: np.ndarray  # N, the reach scene each sample came from (folds keep scenes apart)


def features(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """N×S×F observation tables + N×S validity -> N×3S regression features: x, y (0 where invalid), validity.

    The tables are filled and clipped as the policy's inputs are (``policy_inputs``), so the fitted
    map sees the numbers the exported graph will see.
    """
    rows = []
    for v, ok in zip(values, valid, strict=True):
        inputs = policy_inputs(v, ok, v, ok, np.zeros(1))
        rows.append(np.concatenate([inputs["keypoints"][0, :, :2].ravel(), inputs["valid"][0]]))
    return np.asarray(rows, dtype=np.float64)


def _configurations(scene, rng: np.random.Generator, config: SampleConfig):
    lift = np.array([0.0, 0.0, scene.config.lift])
    free = np.ones(len(scene.joints))
    free[-1] = 0.0  # the last joint turns the gripper about its axis: no position change
    for k in range(config.per_scene):
        q = scene.ik_configuration(scene.scene._random_workspace_point() + lift)
        if k % 3 == 1:
            q = q + rng.normal(0.0, config.joint_noise, size=len(q)) * free
        elif k % 3 == 2:
            other = scene.ik_configuration(scene.scene._random_workspace_point() + lift)
            q = q + rng.uniform() * (other - q) + rng.normal(0.0, config.path_noise, size=len(q)) * free
        yield np.clip(q, scene.lower + 0.05, scene.upper - 0.05)


def collect(observer, config: SampleConfig, progress: bool = True) -> Samples:
    """Visit the configurations of ``config`` and record the observer's table at each (the robot's own data)."""
    from tqdm import tqdm

    from kp_perception_training.control.episodes import capture, observe_with
    from kp_perception_training.sim.reach import ReachConfig, ReachScene

    reach = ReachConfig(seed=config.seed, size=config.size)
    values, valid, qs, scenes = [], [], [], []
    for episode in tqdm(range(config.scenes), desc="visuomotor map: sampling", unit="scene", disable=not progress):
        scene = ReachScene(reach, episode)
        try:
            rng = np.random.default_rng([config.seed, episode, 1])
            for q in _configurations(scene, rng, config):
                scene.set_joints(q)
                table, ok = observe_with(observer, *capture(scene, observer))
                values.append(np.asarray(table, np.float64))
                valid.append(np.asarray(ok, bool))
                qs.append(scene.joint_positions())
                scenes.append(episode)
        finally:
            scene.close()
    return Samples(np.stack(values), np.stack(valid), np.stack(qs), np.asarray(scenes))


@dataclass
class FittedMap:
    """Kernel ridge regression f(x) = exp(−γ‖z − Z‖²) · A + q̄, z = (x − μ) / σ."""

    mean: np.ndarray  # D, feature means
    scale: np.ndarray  # D, feature standard deviations (1 where constant)
    support: np.ndarray  # N×D standardised training features
    dual: np.ndarray  # N×n dual coefficients
    q_mean: np.ndarray  # n
    gamma: float
    alpha: float

    def predict(self, x: np.ndarray) -> np.ndarray:
        """N×D features -> N×n joint angles (rad)."""
        from sklearn.metrics.pairwise import rbf_kernel

        z = (np.asarray(x, np.float64) - self.mean) / self.scale
        return rbf_kernel(z, self.support, gamma=self.gamma) @ self.dual + self.q_mean


def fit_map(x: np.ndarray, q: np.ndarray, groups: np.ndarray, gammas: tuple[float, ...] = (0.002, 0.005, 0.01, 0.02, 0.05),
            alphas: tuple[float, ...] = (1e-3, 1e-2, 1e-1), cv_samples: int = 3000) -> tuple[FittedMap, dict]:
    """Choose γ and α by 3-fold cross-validation over scenes (on the first ``cv_samples``), then fit all samples.

    With one γ and one α there is nothing to choose, and no cross-validation is run (nor reported).
    """
    from sklearn.kernel_ridge import KernelRidge
    from sklearn.model_selection import GridSearchCV, GroupKFold
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x)
    z = scaler.transform(x)
    q_mean = q.mean(axis=0)
    report: dict = {}
    if len(gammas) * len(alphas) == 1:  # nothing to choose: no cross-validation
        best = {"gamma": gammas[0], "alpha": alphas[0]}
    else:
        cv = min(cv_samples, len(z))
        folds = min(3, len(np.unique(groups[:cv])))
        if folds < 2:
            raise ValueError("the map needs samples from at least 2 scenes to choose its kernel")
        search = GridSearchCV(KernelRidge(kernel="rbf"), {"gamma": list(gammas), "alpha": list(alphas)},
                              cv=GroupKFold(n_splits=folds), scoring="neg_mean_squared_error")
        search.fit(z[:cv], q[:cv] - q_mean, groups=groups[:cv])
        best = search.best_params_
        report = {"cv_samples": int(cv), "cv_folds": folds, "cv_rmse_rad": float(np.sqrt(-search.best_score_ / q.shape[1]))}
    krr = KernelRidge(kernel="rbf", gamma=best["gamma"], alpha=best["alpha"]).fit(z, q - q_mean)
    fitted = FittedMap(mean=scaler.mean_, scale=scaler.scale_, support=z, dual=np.asarray(krr.dual_coef_),
                       q_mean=q_mean, gamma=float(best["gamma"]), alpha=float(best["alpha"]))
    return fitted, {"gamma": fitted.gamma, "alpha": fitted.alpha, **report}


def policy_module(fitted: FittedMap, gain: float, max_joint_velocity: float, feedback: str):
    """The map and its control law as a torch module with the policy inputs (B×S×F tables, B×S validity...)."""
    import torch

    if feedback not in FEEDBACK:
        raise ValueError(f"feedback must be one of {FEEDBACK}, got {feedback!r}")

    def buf(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a, np.float32))

    class VisuomotorMapPolicy(torch.nn.Module):
        """keypoints B×S×F, valid B×S, goal_keypoints, goal_valid, joint_positions B×n -> action B×n in [-1, 1]."""

        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mean", buf(fitted.mean))
            self.register_buffer("scale", buf(fitted.scale))
            self.register_buffer("support", buf(fitted.support))
            self.register_buffer("support_sq", buf((fitted.support ** 2).sum(axis=1)))
            self.register_buffer("dual", buf(fitted.dual))
            self.register_buffer("q_mean", buf(fitted.q_mean))

        def configuration(self, keypoints: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
            x = torch.cat([(keypoints[..., :2] * valid.unsqueeze(-1)).flatten(1), valid], dim=1)
            z = (x - self.mean) / self.scale
            d2 = (z * z).sum(dim=1, keepdim=True) - 2.0 * z @ self.support.T + self.support_sq
            return torch.exp(-fitted.gamma * d2.clamp_min(0.0)) @ self.dual + self.q_mean

        def forward(self, keypoints, valid, goal_keypoints, goal_valid, joint_positions):
            goal = self.configuration(goal_keypoints, goal_valid)
            # Every input stays in the graph, used or not: the policy interface has all five.
            if feedback == "image":
                now = self.configuration(keypoints, valid) + 0.0 * joint_positions
            else:
                now = joint_positions + 0.0 * (keypoints.sum() + valid.sum())
            qdot = gain * (goal - now)
            over = (qdot.abs().amax(dim=1, keepdim=True) / max_joint_velocity).clamp_min(1.0)
            return qdot / over / max_joint_velocity

    return VisuomotorMapPolicy().eval()


def export(fitted: FittedMap, out: Path, spec: PolicySpec, gain: float, feedback: str) -> Path:
    """``out/policy.onnx`` + ``policy.json``, each written to a temporary file and renamed."""
    import torch

    module = policy_module(fitted, gain, spec.max_joint_velocity, feedback)
    dummy = (torch.zeros(1, spec.num_slots, spec.num_fields), torch.ones(1, spec.num_slots),
             torch.zeros(1, spec.num_slots, spec.num_fields), torch.ones(1, spec.num_slots),
             torch.zeros(1, spec.num_joints))
    path = out / "policy.onnx"
    with atomic_path(path, suffix=".onnx") as tmp:
        with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(module, dummy, str(tmp), input_names=list(POLICY_INPUTS), output_names=["action"],
                              opset_version=18, dynamo=False)
    atomic_write_text(path.with_suffix(".json"), json.dumps(spec.to_json(), indent=2) + "\n")
    return path


def _observer(args: argparse.Namespace):
    from kp_perception_training.control.episodes import GroundTruthObserver, ModelObserver

    if args.observer == "ground_truth":
        return GroundTruthObserver(args.size), "ground_truth"
    return ModelObserver(args.model, slot_prefix=args.slots), args.model


def build(args: argparse.Namespace) -> dict:
    """Sample, fit, export and check; returns what ``fit.json`` records."""
    from kp_perception_training.sim.reach import ReachConfig, ReachScene

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    observer, keypoint_model = _observer(args)
    config = SampleConfig(seed=args.seed, scenes=args.scenes, per_scene=args.per_scene, size=args.size)
    started = time.monotonic()
    samples = _load_samples(out, config, keypoint_model, args.slots)
    if samples is None:
        samples = collect(observer, config, progress=not args.no_progress)
        _save_samples(out, samples, config, keypoint_model, args.slots)
    sampled = time.monotonic() - started
    x = features(samples.values, samples.valid)
    held = samples.scene >= int(round(config.scenes * 0.9))  # the last 10 % of scenes: a held-out check
    if held.all() or not held.any():
        held = np.zeros(len(x), bool)
    fitted, report = fit_map(x[~held], samples.q[~held], samples.scene[~held])
    held_rmse = float(np.sqrt(np.mean((fitted.predict(x[held]) - samples.q[held]) ** 2))) if held.any() else None
    fitted, _ = fit_map(x, samples.q, samples.scene, gammas=(fitted.gamma,), alphas=(fitted.alpha,))
    probe = ReachScene(ReachConfig(seed=config.seed, size=config.size), 0)
    joint_names = list(probe.joint_names)
    probe.close()
    spec = PolicySpec(num_slots=samples.values.shape[1], num_fields=samples.values.shape[2],
                      num_joints=samples.q.shape[1], max_joint_velocity=args.max_joint_velocity,
                      keypoint_model=keypoint_model, joint_names=tuple(joint_names))
    path = export(fitted, out, spec, args.gain, args.feedback)
    check = _check_export(path, fitted, samples, args.gain, args.max_joint_velocity, args.feedback)
    summary = {"controller": "visuomotor_map", "observer": args.observer, "model": keypoint_model,
               "slots": args.slots, "feedback": args.feedback, "gain": args.gain,
               "max_joint_velocity": args.max_joint_velocity, "samples": int(len(x)), "sampling": asdict(config),
               **report, "held_out_scenes": int(len(np.unique(samples.scene[held]))),
               "held_out_rmse_rad": held_rmse, "onnx_max_abs_diff": check,
               "sampling_min": round(sampled / 60.0, 1), "total_min": round((time.monotonic() - started) / 60.0, 1),
               "policy": str(path)}
    atomic_write_text(out / "fit.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _sampling_key(config: SampleConfig, keypoint_model: str, slots: str) -> str:
    return json.dumps({"sampling": asdict(config), "model": keypoint_model, "slots": slots}, sort_keys=True)


def _save_samples(out: Path, samples: Samples, config: SampleConfig, keypoint_model: str, slots: str) -> None:
    """``out/samples.npz``: the sampling is the slow part, so a later fit or export never repeats it."""
    with atomic_path(out / "samples.npz", suffix=".npz") as tmp:
        np.savez(tmp, values=samples.values, valid=samples.valid, q=samples.q, scene=samples.scene,
                 key=np.array(_sampling_key(config, keypoint_model, slots)))


def _load_samples(out: Path, config: SampleConfig, keypoint_model: str, slots: str) -> Samples | None:
    """The samples of an earlier run in ``out`` with the same sampling, model and slots; else None."""
    path = out / "samples.npz"
    if not path.is_file():
        return None
    try:
        with np.load(path) as data:
            if str(data["key"]) != _sampling_key(config, keypoint_model, slots):
                return None
            print(f"visuomotor map: reusing the samples in {path}", flush=True)
            return Samples(data["values"], data["valid"].astype(bool), data["q"], data["scene"])
    except (OSError, ValueError, KeyError):
        return None


def _check_export(path: Path, fitted: FittedMap, samples: Samples, gain: float, vmax: float, feedback: str) -> float:
    """The ONNX policy's action against the numpy map's on a few sample pairs; a mismatch is an error.

    The graph computes in float32 (the ONNX norm), the fit in float64; large dual coefficients (a small α)
    make them differ by up to a few 1e-3 rad/s, far below what moves the arm measurably in a control period.
    """
    policy = OnnxPolicy(path)
    worst = 0.0
    for i in range(min(5, len(samples.q) - 1)):
        goal, now = i + 1, i
        policy.reset(samples.values[goal], samples.valid[goal])
        qdot = policy.step(samples.values[now], samples.valid[now], samples.q[now])
        x = features(samples.values[[goal, now]], samples.valid[[goal, now]])
        f_goal, f_now = fitted.predict(x)
        expected = gain * (f_goal - (f_now if feedback == "image" else samples.q[now]))
        expected /= max(1.0, np.abs(expected).max() / vmax)
        worst = max(worst, float(np.abs(qdot - expected).max()))
    if worst > 0.01 * vmax:  # float32 in the graph against float64 in the fit: well under 1 % of the speed limit
        raise RuntimeError(f"{path}: the exported map differs from the fitted one by {worst:.2e} rad/s")
    return worst


def main(argv: list[str] | None = None) -> int:
    from kp_perception.resources import share_path

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--observer", choices=("model", "ground_truth"), default="model")
    parser.add_argument("--model", default=str(share_path("models", "pyramids.onnx")), help="keypoint model")
    parser.add_argument("--slots", default="", help="only the model's slots whose name starts with this "
                        "(e.g. level0/: the coarsest Pyramids level)")
    parser.add_argument("--scenes", type=int, default=SampleConfig.scenes, help="reach scenes visited (default 500)")
    parser.add_argument("--per-scene", type=int, default=SampleConfig.per_scene,
                        help="configurations per scene (default 30)")
    parser.add_argument("--seed", type=int, default=SampleConfig.seed, help="reach-scene seed (default 2000)")
    parser.add_argument("--size", type=int, default=SampleConfig.size, help="camera image size (default 64)")
    parser.add_argument("--feedback", choices=FEEDBACK, default="image",
                        help="image: q̇ = λ(f(s*) − f(s)), closed through the keypoints (default); "
                        "joints: q̇ = λ(f(s*) − q), look-and-move")
    parser.add_argument("--gain", type=float, default=1.5, help="λ in 1/s (default 1.5, as the IBVS controller)")
    parser.add_argument("--max-joint-velocity", type=float, default=0.5, help="rad/s per joint (default 0.5)")
    parser.add_argument("--out", required=True, help="output folder (policy.onnx, policy.json, fit.json)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.scenes < 2 or args.per_scene < 1:
        parser.error("--scenes must be at least 2 and --per-scene at least 1")
    print(json.dumps(build(args), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
