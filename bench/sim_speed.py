"""Tabletop simulator throughput: what the robot-like outputs cost, and what a second worker gains.

Runs ``generate_tabletop`` end to end (scene set-up, physics, ER_TINY_RENDERER,
annotation, rosbag2 writing) on the same episodes of one scene (``--scene``,
default ``default``) in three settings, alternated over ``--repeats`` rounds
in one run so drifting load hits all alike:

- ``all_outputs``: one worker, every topic (colour, camera_info, depth,
  instance ids, joint states, tf_static) and X,Y,Z ground truth, the default;
- ``image_only``: one worker, ``--no-depth --no-instance-ids --no-joint-states``
  (colour, camera_info and tf_static only);
- ``all_outputs_2_workers``: two worker processes, every topic.

It reports the median frames per second of each, the ratio all_outputs /
image_only (the cost of the new outputs; 1.0 = free) and the 2-worker
speed-up, and times one episode's per-frame cost in this process: physics,
the one render (colour, depth and segmentation come from a single
getCameraImage call), annotation, depth linearisation, the id mask and the
joint state read.

    python -m kp_perception_bench.sim_speed [--episodes 4 --frames 20 --size 128 --repeats 3]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

SETTINGS = ("all_outputs", "image_only", "all_outputs_2_workers")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--episodes", type=int, default=4, help="episodes per timed run (>= 2 to use 2 workers)")
    parser.add_argument("--frames", type=int, default=20, help="frames per episode")
    parser.add_argument("--size", type=int, default=128, help="square image size")
    parser.add_argument("--scene", default="default", help="scene preset (default: default)")
    parser.add_argument("--storage", default="mcap", choices=("mcap", "sqlite3"))
    parser.add_argument("--repeats", type=int, default=1, help="rounds of the three settings; median reported")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=None, help="where to write the bags (default: a temp dir)")


def _per_frame_breakdown(config, frames: int) -> dict:
    """Mean ms per frame of each stage, in this process (one frame = 1/fps s of simulation)."""
    from kp_perception_training.sim.tabletop import TabletopScene

    t0 = time.perf_counter()
    scene = TabletopScene(config, 0)
    setup = time.perf_counter() - t0
    stages = dict.fromkeys(("physics", "render", "annotate", "depth", "instance_ids", "joint_state"), 0.0)
    try:
        for _ in range(frames):
            marks = [time.perf_counter()]
            scene.step()
            marks.append(time.perf_counter())
            views = scene.render_views()
            marks.append(time.perf_counter())
            scene.annotate(views.seg, views.depth_buffer)
            marks.append(time.perf_counter())
            scene.depth(views)
            marks.append(time.perf_counter())
            scene.instance_ids(views.seg)
            marks.append(time.perf_counter())
            scene.joint_state()
            marks.append(time.perf_counter())
            for name, a, b in zip(stages, marks[:-1], marks[1:], strict=True):
                stages[name] += b - a
    finally:
        scene.close()
    return {"scene_setup_s": round(setup, 3),
            **{f"{name}_ms_per_frame": round(1000 * s / frames, 3) for name, s in stages.items()}}


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (the pool workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run(args: argparse.Namespace) -> dict:
    from kp_perception_training.sim.tabletop import TabletopConfig, generate_tabletop

    config = TabletopConfig.from_scene(args.scene, frames=args.frames, size=args.size, seed=args.seed)
    image_only = replace(config, depth=False, instance_ids=False, joint_states=False)
    runs = {"all_outputs": (config, 1), "image_only": (image_only, 1), "all_outputs_2_workers": (config, 2)}
    total_frames = args.episodes * args.frames
    seconds: dict[str, list[float]] = {s: [] for s in SETTINGS}
    cores: dict[str, list[float]] = {s: [] for s in SETTINGS}  # CPU seconds used per wall second
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        # Warm-up (imports, pybullet_data file cache), so the first timed setting pays no extra.
        generate_tabletop(Path(tmp) / "warmup", 1, replace(config, frames=1), storage=args.storage, workers=1,
                          show_progress=False)
        for r in range(args.repeats):
            order = SETTINGS if r % 2 == 0 else SETTINGS[::-1]
            for setting in order:
                run_config, workers = runs[setting]
                out = Path(tmp) / f"{setting}_r{r}"
                cpu0 = _cpu_seconds()
                t0 = time.perf_counter()
                generate_tabletop(out, args.episodes, run_config, storage=args.storage, workers=workers,
                                  show_progress=False)
                seconds[setting].append(time.perf_counter() - t0)
                cores[setting].append((_cpu_seconds() - cpu0) / seconds[setting][-1])
    fps = {s: total_frames / statistics.median(v) for s, v in seconds.items()}
    return {
        "benchmark": "sim_speed",
        "scene": args.scene,
        "size": [args.size, args.size],
        "episodes": args.episodes,
        "frames_per_episode": args.frames,
        "storage": args.storage,
        "repeats": args.repeats,
        "fps_all_outputs_1_worker": round(fps["all_outputs"], 2),
        "fps_image_only_1_worker": round(fps["image_only"], 2),
        # < 1: the new topics cost that fraction of the throughput; measured side by side.
        "fps_ratio_all_outputs_over_image_only": round(fps["all_outputs"] / fps["image_only"], 3),
        "fps_all_outputs_2_workers": round(fps["all_outputs_2_workers"], 2),
        "speedup_2_over_1_workers": round(fps["all_outputs_2_workers"] / fps["all_outputs"], 2),
        "wall_s": {s: [round(v, 2) for v in seconds[s]] for s in SETTINGS},
        # How many cores the runs actually got: near 1 and 2 on a quiet machine. When the
        # 2-worker run gets little more than 1, the machine (not the simulator) is the limit.
        "cores_used": {s: round(statistics.median(cores[s]), 2) for s in SETTINGS},
        "breakdown_one_process": _per_frame_breakdown(config, args.frames),
        "note": "end to end (set-up, physics, render, annotations, bag writing); wall-clock on a shared "
        "CPU, so absolute figures are noisy; the ratios are measured side by side in one run",
    }


if __name__ == "__main__":
    from kp_perception_bench._entry import run_as_module

    run_as_module("sim_speed")
