"""Closed-loop visual servoing on the simulated reach task: can a controller reach a goal from keypoints alone?

The control-side version of the Keypoint Pyramids paper's Table 1. Every
variant runs the SAME episodes (start/goal joint configurations fixed by
``--seed`` and the episode index, training/sim/reach.py) with the SAME
controller (uncalibrated Broyden IBVS, kp_perception/control/ibvs.py, default
settings) and differs only in what it observes:

- ``ground_truth``: the arm's annotated points projected by the simulator (upper bound);
- ``pyramids``: the shipped Keypoint Pyramids model, all 30 keypoints (models/pyramids.onnx);
- ``pyramids_level1``: the same model, only its 10 coarsest keypoints (slots ``level0/``);
- ``transporter30``: the flat Transporter baseline with 30 keypoints, trained on the same
  simulated data for the same number of steps (models/transporter30.onnx, see docs/results.md);
- ``pyramids_ros``: as ``pyramids``, but through the real nodes over ROS 2 topics
  (``pyramids_node`` and ``servo_node`` processes, the loop of ``kp-perception demo servo``);
- ``policy_*``: a trained RL policy (``--policy FILE.onnx``) instead of IBVS, in-process on
  ground truth or Pyramids observations, or through the real nodes (``policy_pyramids_ros``);
- ``map_*``: the learned visuomotor map controller (``--map``, one fitted per observation by
  ``kp_perception_training.control.visuomotor_map``) on each of the four observations, and through
  the real nodes (``map_pyramids_ros``); a run of map variants has only map variants;
- ``random``: uniformly random joint velocities (the floor).

Scoring, fixed before the first comparison: success = end effector within 2 cm of
the goal position at the end of the episode (``--duration`` s of control at 30 Hz);
final position error in mm (median, p90); time to converge (first time after which
the error stays within 2 cm; median over successful episodes). The JSON also says,
per variant, which keypoint slots the controller used (mean weight) and where they
sat in the goal images (mean normalised position), so a loss can be explained.

The in-process variants run the observer and controller in this process (ONNX
Runtime, one thread); the ROS variants run in real time, so they take
``--duration`` s of wall clock per episode.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from kp_perception.errors import KpPerceptionError
from kp_perception_bench._doc_block import write_block

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "results.md"
GUIDE = ROOT / "docs" / "robot_guide.md"  # "From keypoints to a controller" shows the same table
BEGIN, END = "<!-- Servo table: begin (bench/servo.py) -->", "<!-- Servo table: end -->"

OBSERVATIONS = ("ground_truth", "pyramids", "pyramids_level1", "transporter30")
MAPS = tuple(f"map_{o}" for o in OBSERVATIONS)
IN_PROCESS = (*OBSERVATIONS, "policy_ground_truth", "policy_pyramids", *MAPS, "random")
THROUGH_ROS = ("pyramids_ros", "policy_pyramids_ros", "map_pyramids_ros")
VARIANTS = IN_PROCESS + THROUGH_ROS
DEFAULT_VARIANTS = "ground_truth,pyramids,pyramids_level1,transporter30,pyramids_ros"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--episodes", type=int, default=50, help="episodes per variant (default 50)")
    parser.add_argument("--seed", type=int, default=0, help="episode seed (default 0; controller tuning used 100)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of control per episode (default 10)")
    parser.add_argument("--size", type=int, default=64, help="camera image size (default 64, the shipped "
                        "model's training resolution; larger frames are shrunk to 64 by the node's resize)")
    parser.add_argument("--near-goal", type=float, default=0.0, help="diagnostic: start each episode at the "
                        "goal plus N(0, this) rad per joint instead of a random configuration (default off)")
    parser.add_argument("--coordinates", choices=("normalized", "metric"), default="normalized",
                        help="in-process variants' features: the consumer API's normalised image coordinates "
                        "(default) or metric X, Y, Z from camera_info + depth (the node's median depth, 5 px window)")
    parser.add_argument("--ibvs", nargs="*", default=[], metavar="KEY=VALUE",
                        help="controller settings other than IBVSConfig's defaults (e.g. damping=0.003); "
                        "recorded in the settings, so runs with other settings do not merge")
    parser.add_argument("--variants", default=DEFAULT_VARIANTS,
                        help=f"comma-separated, from {', '.join(VARIANTS)} (default {DEFAULT_VARIANTS})")
    parser.add_argument("--model", default=str(ROOT / "models" / "pyramids.onnx"), help="Pyramids model")
    parser.add_argument("--transporter", default=str(ROOT / "models" / "transporter30.onnx"),
                        help="Transporter-30 model")
    parser.add_argument("--policy", default="", help="exported RL policy for the policy_* variants; its name "
                        "may contain {obs} (ground_truth / pyramids), replaced per variant")
    parser.add_argument("--map", default="", help="fitted visuomotor maps for the map_* variants "
                        "(policy.onnx); {obs} in the path is replaced per variant (ground_truth, pyramids, "
                        "pyramids_level1, transporter30)")
    parser.add_argument("--json", default=str(RESULTS / "servo.json"), help="where to write the figures")
    parser.add_argument("--doc", action="store_true", help="also write the table into docs/results.md")
    parser.add_argument("--tag", default="", help="suffix of the output files (e.g. smoke)")
    parser.add_argument("--quiet", action="store_true", help="no per-episode lines")
    parser.add_argument("--figure", default="", help="with --merge: draw where each model's keypoints sat in "
                        "episode 0's goal image and how much the controller used them (PNG path)")
    parser.add_argument("--merge", default="", help="comma-separated JSON files of earlier runs (e.g. one "
                        "variant per process) to combine into --json (and the doc table); runs nothing")


def _observer(variant: str, args: argparse.Namespace, camera=None):
    from kp_perception_training.control.episodes import GroundTruthObserver, ModelObserver

    metric = {"coordinates": args.coordinates, "camera": camera}
    observation = observation_of(variant)
    if observation == "ground_truth":
        return GroundTruthObserver(args.size, args.coordinates)
    if observation == "pyramids":
        return ModelObserver(args.model, **metric)
    if observation == "pyramids_level1":
        return ModelObserver(args.model, slot_prefix="level0/", **metric)
    if observation == "transporter30":
        return ModelObserver(args.transporter, **metric)
    raise KpPerceptionError(f"unknown in-process variant {variant!r}")


def observation_of(variant: str) -> str:
    """What a variant observes: ``map_pyramids_level1`` -> ``pyramids_level1``; ``random`` sees ground truth."""
    base = variant.removeprefix("policy_").removeprefix("map_").removesuffix("_ros")
    return "ground_truth" if base == "random" else base


def ibvs_config(overrides: list[str]):
    """IBVSConfig with ``KEY=VALUE`` overrides (one clear error for an unknown key or a bad value)."""
    from dataclasses import fields

    from kp_perception.control.ibvs import IBVSConfig

    types = {f.name: type(f.default) for f in fields(IBVSConfig)}
    values: dict[str, Any] = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or key not in types:
            raise KpPerceptionError(f"--ibvs {item!r}: expected KEY=VALUE with KEY one of {', '.join(types)}")
        try:
            values[key] = types[key](text)
        except ValueError:
            raise KpPerceptionError(f"--ibvs {item!r}: {key} takes a {types[key].__name__}") from None
    return IBVSConfig(**values)


def _controller(variant: str, args: argparse.Namespace, lower: np.ndarray, upper: np.ndarray, seed: int):
    from kp_perception.control.ibvs import BroydenIBVS

    if variant.startswith(("policy_", "map_")):
        from kp_perception.control.policy import OnnxPolicy

        return OnnxPolicy(policy_path(variant, args))
    if variant == "random":
        from kp_perception_training.control.rl import RandomController

        return RandomController(len(lower), seed)
    return BroydenIBVS(len(lower), ibvs_config(args.ibvs), lower=lower, upper=upper,
                       dims=3 if args.coordinates == "metric" else 2)


def policy_path(variant: str, args: argparse.Namespace) -> Path:
    """The ONNX file a ``policy_*`` (``--policy``) or ``map_*`` (``--map``) variant runs, ``{obs}`` filled in."""
    option, template = ("--map", args.map) if variant.startswith("map_") else ("--policy", args.policy)
    path = template.replace("{obs}", observation_of(variant))
    if not path or not Path(path).is_file():
        raise KpPerceptionError(f"variant {variant} needs {option} FILE.onnx (got {path!r})")
    return Path(path)


def summarise(results: list[dict[str, Any]], slot_names: list[str] | None) -> dict[str, Any]:
    """Success rate, final error median/p90, converge time, and which slots were used where."""
    errors = np.array([r["final_position_error_mm"] for r in results])
    times = [r["converge_time_s"] for r in results if r["success"] and r["converge_time_s"] is not None]
    weights = np.array([r["mean_weights"] for r in results]) if results and results[0]["mean_weights"] else None
    goals = np.array([r["goal_features"] for r in results])
    out: dict[str, Any] = {
        "episodes": len(results),
        "success_rate": float(np.mean([r["success"] for r in results])) if results else float("nan"),
        "final_error_mm_median": float(np.median(errors)) if len(errors) else float("nan"),
        "final_error_mm_p90": float(np.percentile(errors, 90)) if len(errors) else float("nan"),
        "converge_time_s_median": float(np.median(times)) if times else None,
        "orientation_error_deg_median": float(np.median([r["final_orientation_error_deg"] for r in results])),
    }
    if weights is not None and weights.ndim == 2:
        mean_w = weights.mean(axis=0)
        mean_xy = np.nanmean(goals[..., :2], axis=0)
        order = np.argsort(-mean_w)
        names = slot_names or [f"slot{i}" for i in range(len(mean_w))]
        out["slots_used"] = [
            {"slot": names[i], "mean_weight": round(float(mean_w[i]), 3),
             "goal_xy_mean": [round(float(v), 3) for v in mean_xy[i]]}
            for i in order
        ]
        out["slots_relied_on"] = int((mean_w >= 0.5).sum())
    return out


def run_in_process(variant: str, args: argparse.Namespace) -> tuple[list[dict], list[str] | None]:
    from kp_perception_training.control.episodes import camera_model, run_episode
    from kp_perception_training.sim.reach import ReachConfig, ReachScene

    config = ReachConfig(seed=args.seed, size=args.size, start_perturbation=args.near_goal)
    probe = ReachScene(config, 0)
    lower, upper = probe.lower, probe.upper
    gt_names = list(probe.arm_point_names)
    camera = camera_model(probe)
    probe.close()
    observer = _observer(variant, args, camera)
    slot_names = getattr(observer, "slot_names", gt_names)
    results = []
    for episode in range(args.episodes):
        controller = _controller(variant, args, lower, upper, seed=args.seed * 1000 + episode)
        result = run_episode(config, episode, observer, controller, args.duration)
        results.append(result.summary())
        if args.json:  # partial results survive an interrupted run
            import json

            with open(Path(args.json).with_suffix(f".{variant}.partial.jsonl"), "a") as f:
                f.write(json.dumps(results[-1]) + "\n")
        if not args.quiet:
            print(f"bench servo: {variant} episode {episode}: {'ok ' if result.success else 'MISS'} "
                  f"{result.final_position_error_mm:7.1f} mm (from {result.initial_position_error_mm:.0f} mm)",
                  flush=True)
    return results, slot_names


def merge(paths: list[str]) -> dict[str, Any]:
    """Combine runs of the same settings (one variant each, say) into one figures dict."""
    import json

    merged: dict[str, Any] = {}
    for path in paths:
        figures = json.loads(Path(path).read_text())
        if merged and {k: v for k, v in figures["settings"].items() if k not in ("policy", "map")} != \
                {k: v for k, v in merged["settings"].items() if k not in ("policy", "map")}:
            raise KpPerceptionError(f"{path}: settings differ from the first file's; not merging")
        if not merged:
            merged = {"settings": figures["settings"], "variants": {}, "wall_time_min": 0.0, "merged_from": []}
        merged["variants"].update(figures["variants"])
        for key in ("policy", "map"):
            if figures["settings"].get(key):
                merged["settings"][key] = merged["settings"].get(key) or figures["settings"][key]
        merged["wall_time_min"] = round(merged["wall_time_min"] + figures.get("wall_time_min", 0.0), 1)
        merged["merged_from"].append(str(path))
    return _ratios(merged)


def _ratios(figures: dict[str, Any]) -> dict[str, Any]:
    gt = figures["variants"].get("ground_truth") or figures["variants"].get("map_ground_truth")
    if gt and gt["success_rate"] > 0:
        for v in figures["variants"].values():
            v["success_vs_ground_truth"] = round(v["success_rate"] / gt["success_rate"], 3)
    return figures


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.merge:
        figures = merge([p.strip() for p in args.merge.split(",") if p.strip()])
        if args.figure:
            figures["figure"] = reliance_figure(figures, args, Path(args.figure))
        if args.doc:
            for doc in (DOC, GUIDE):
                write_block(doc, *markers(figures["settings"]), markdown(figures))
        return figures
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise KpPerceptionError(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    maps = [v for v in variants if v.startswith("map_")]
    if maps and len(maps) != len(variants):
        raise KpPerceptionError("map_* variants run on their own (their table's controller is the map): "
                                f"got {', '.join(variants)}")
    if args.episodes < 1:
        raise KpPerceptionError(f"--episodes must be at least 1, got {args.episodes}")
    started = time.monotonic()
    figures: dict[str, Any] = {
        "settings": {"episodes": args.episodes, "seed": args.seed, "duration_s": args.duration,
                     "control_hz": 30.0, "success_distance_mm": 20.0,
                     "size": args.size, "near_goal": args.near_goal,
                     "controller": "visuomotor map" if maps else " ".join(["BroydenIBVS defaults", *args.ibvs]),
                     "model": args.model, "transporter": args.transporter, "policy": args.policy},
        "variants": {},
    }
    if maps:
        figures["settings"]["map"] = args.map
    if args.coordinates != "normalized":  # only when set, so runs from before the option still merge
        figures["settings"]["coordinates"] = args.coordinates
    for variant in variants:
        t0 = time.monotonic()
        if variant in THROUGH_ROS:
            from kp_perception.cli.demo_servo import run_ros_episodes

            policy = policy_path(variant, args) if variant.startswith(("policy_", "map_")) else None
            results, slot_names, extra = run_ros_episodes(args, variant, policy)
        else:
            results, slot_names = run_in_process(variant, args)
            extra = {}
        summary = summarise(results, slot_names)
        summary.update(extra)
        summary["wall_time_s"] = round(time.monotonic() - t0, 1)
        summary["per_episode"] = [{k: r[k] for k in ("episode", "success", "final_position_error_mm",
                                                     "converge_time_s", "initial_position_error_mm")}
                                  for r in results]
        figures["variants"][variant] = summary
        print(f"bench servo: {variant}: success {summary['success_rate']:.0%}, final error median "
              f"{summary['final_error_mm_median']:.1f} mm, p90 {summary['final_error_mm_p90']:.1f} mm", flush=True)
    _ratios(figures)
    figures["wall_time_min"] = round((time.monotonic() - started) / 60.0, 1)
    if args.doc:
        for doc in (DOC, GUIDE):
            write_block(doc, *markers(figures["settings"]), markdown(figures))
    return figures


LABELS = {
    "ground_truth": "ground-truth arm points (upper bound)",
    "pyramids": "Keypoint Pyramids, all levels (10+20)",
    "pyramids_level1": "Keypoint Pyramids, level 1 only (10)",
    "transporter30": "Transporter-30 (flat)",
    "pyramids_ros": "Keypoint Pyramids, through ROS 2 (real nodes)",
    "policy_ground_truth": "SAC policy on ground-truth points",
    "policy_pyramids": "SAC policy on Pyramids keypoints",
    "policy_pyramids_ros": "SAC policy on Pyramids keypoints, through ROS 2",
    "map_ground_truth": "visuomotor map on ground-truth arm points (upper bound)",
    "map_pyramids": "visuomotor map on Keypoint Pyramids, all levels (10+20)",
    "map_pyramids_level1": "visuomotor map on Keypoint Pyramids, level 1 only (10)",
    "map_transporter30": "visuomotor map on Transporter-30 (flat)",
    "map_pyramids_ros": "visuomotor map on Keypoint Pyramids, through ROS 2 (real nodes)",
    "random": "random joint velocities",
}


def setting_tag(settings: dict[str, Any]) -> str:
    """What differs from the benchmark's default setting (64 px frames, image coordinates, default controller,
    random starts), e.g. "256 px frames"; "" for the default setting."""
    tags = []
    if settings.get("size", 64) != 64:
        tags.append(f"{settings['size']} px frames")
    if settings.get("coordinates", "normalized") != "normalized":
        tags.append(f"{settings['coordinates']} coordinates")
    if settings.get("controller", "BroydenIBVS defaults") != "BroydenIBVS defaults":
        tags.append(settings["controller"].replace("BroydenIBVS defaults ", "IBVS "))
    if settings.get("near_goal", 0.0):
        tags.append(f"near-goal starts ({settings['near_goal']:g} rad)")
    return ", ".join(tags)


def markers(settings: dict[str, Any]) -> tuple[str, str]:
    """The doc block's markers: one table per setting, so a study in another setting never overwrites the
    benchmark's own table."""
    tag = setting_tag(settings)
    if not tag:
        return BEGIN, END
    return f"<!-- Servo table ({tag}): begin (bench/servo.py) -->", f"<!-- Servo table ({tag}): end -->"


def markdown(figures: dict[str, Any]) -> str:
    s = figures["settings"]
    begin, end = markers(s)
    tag = setting_tag(s)
    lines = [
        begin,
        f"{s['episodes']} episodes (seed {s['seed']}), {s['duration_s']:g} s of control at 30 Hz each, success = "
        f"end effector within 2 cm of the goal position at the end; same episodes and controller for every row"
        + (f"; setting: {tag}." if tag else "."),
        "",
        "| observation | success | vs ground truth | final error median (mm) | p90 (mm) | time to converge (s) |",
        "|---|---|---|---|---|---|",
    ]
    for name, v in figures["variants"].items():
        ct = v["converge_time_s_median"]
        lines.append(
            f"| {LABELS.get(name, name)} | {v['success_rate']:.0%} | {v.get('success_vs_ground_truth', float('nan')):.2f} "
            f"| {v['final_error_mm_median']:.1f} | {v['final_error_mm_p90']:.1f} | {'—' if ct is None else f'{ct:.1f}'} |"
        )
    lines.append(end)
    return "\n".join(lines) + "\n"


def reliance_figure(figures: dict[str, Any], args: argparse.Namespace, out: Path) -> str:
    """Goal image of episode 0 with each model's keypoints, marker area ∝ the controller's mean weight."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kp_perception_training.control.episodes import GroundTruthObserver, ModelObserver
    from kp_perception_training.sim.reach import ReachConfig, ReachScene

    scene = ReachScene(ReachConfig(seed=figures["settings"]["seed"]), 0)
    frame = scene.goal_frame()
    points = scene.goal_points
    scene.close()
    panels = [(v, o) for v, o in (("ground_truth", GroundTruthObserver(frame.shape[0])),
                                  ("pyramids", ModelObserver(args.model)),
                                  ("pyramids_level1", ModelObserver(args.model, slot_prefix="level0/")),
                                  ("transporter30", ModelObserver(args.transporter)))
              if v in figures["variants"] and figures["variants"][v].get("slots_used")]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4))
    axes = np.atleast_1d(axes)
    size = frame.shape[0]
    for ax, (variant, observer) in zip(axes, panels, strict=True):
        values, valid = observer(frame, points)
        weight = {s["slot"]: s["mean_weight"] for s in figures["variants"][variant]["slots_used"]}
        names = getattr(observer, "slot_names", None) or [s["slot"] for s in figures["variants"][variant]["slots_used"]]
        if variant == "ground_truth":
            probe = ReachScene(ReachConfig(seed=figures["settings"]["seed"]), 0)
            names = list(probe.arm_point_names)
            probe.close()
        xy = (np.asarray(values)[:, :2] + 1.0) / 2.0 * (size - 1)
        w = np.array([weight.get(n, 0.0) for n in names])
        ax.imshow(frame)
        ax.scatter(xy[valid, 0], xy[valid, 1], s=8 + 120 * w[valid], c=w[valid], cmap="viridis", vmin=0, vmax=1,
                   edgecolors="white", linewidths=0.5)
        v = figures["variants"][variant]
        ax.set_title(f"{LABELS.get(variant, variant).split(' (')[0]}\nsuccess {v['success_rate']:.0%}, "
                     f"{v.get('slots_relied_on', 0)} kp used ≥ half the time", fontsize=8)
        ax.set_axis_off()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return str(out)
