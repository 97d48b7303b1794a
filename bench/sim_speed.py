"""Tabletop simulator throughput: frames per second at 128×128 with 1 and with 2 worker processes.

Runs ``generate_tabletop`` end to end (scene set-up, physics, ER_TINY_RENDERER,
annotation, rosbag2 writing) for the same episodes with ``--workers 1`` and
with ``--workers 2``, alternating the two over ``--repeats`` rounds in one run,
and reports the median frames per second of each and their ratio (the
parallel speed-up; at most 2 on two cores). It also times, in this process,
one episode's per-frame cost split into physics step, rendering and annotation.

    python -m kp_perception_bench.sim_speed [--episodes 4 --frames 20 --size 128 --repeats 1]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--episodes", type=int, default=4, help="episodes per timed run (>= 2 to use 2 workers)")
    parser.add_argument("--frames", type=int, default=20, help="frames per episode")
    parser.add_argument("--size", type=int, default=128, help="square image size")
    parser.add_argument("--storage", default="mcap", choices=("mcap", "sqlite3"))
    parser.add_argument("--repeats", type=int, default=1, help="rounds of (1 worker, 2 workers); median reported")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=None, help="where to write the bags (default: a temp dir)")


def _per_frame_breakdown(config, frames: int) -> dict:
    """Mean ms per frame of physics (one frame = 1/fps s of simulation), render and annotation."""
    from kp_perception_training.sim.tabletop import TabletopScene

    t0 = time.perf_counter()
    scene = TabletopScene(config, 0)
    setup = time.perf_counter() - t0
    step = render = annotate = 0.0
    try:
        for _ in range(frames):
            t0 = time.perf_counter()
            scene.step()
            t1 = time.perf_counter()
            _, seg = scene.render()
            t2 = time.perf_counter()
            scene.annotate(seg)
            t3 = time.perf_counter()
            step, render, annotate = step + t1 - t0, render + t2 - t1, annotate + t3 - t2
    finally:
        scene.close()
    return {
        "scene_setup_s": round(setup, 3),
        "physics_ms_per_frame": round(1000 * step / frames, 2),
        "render_ms_per_frame": round(1000 * render / frames, 2),
        "annotate_ms_per_frame": round(1000 * annotate / frames, 3),
    }


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (the pool workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run(args: argparse.Namespace) -> dict:
    from kp_perception_training.sim.tabletop import TabletopConfig, generate_tabletop

    config = TabletopConfig(frames=args.frames, size=args.size, seed=args.seed)
    total_frames = args.episodes * args.frames
    seconds: dict[int, list[float]] = {1: [], 2: []}
    cores: dict[int, list[float]] = {1: [], 2: []}  # CPU seconds used per wall second
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        for r in range(args.repeats):
            order = (1, 2) if r % 2 == 0 else (2, 1)  # alternate so drifting load hits both alike
            for workers in order:
                out = Path(tmp) / f"w{workers}_r{r}"
                cpu0 = _cpu_seconds()
                t0 = time.perf_counter()
                generate_tabletop(out, args.episodes, config, storage=args.storage, workers=workers,
                                  show_progress=False)
                seconds[workers].append(time.perf_counter() - t0)
                cores[workers].append((_cpu_seconds() - cpu0) / seconds[workers][-1])
    fps = {w: total_frames / statistics.median(s) for w, s in seconds.items()}
    return {
        "benchmark": "sim_speed",
        "size": [args.size, args.size],
        "episodes": args.episodes,
        "frames_per_episode": args.frames,
        "storage": args.storage,
        "repeats": args.repeats,
        "fps_1_worker": round(fps[1], 2),
        "fps_2_workers": round(fps[2], 2),
        "speedup_2_over_1": round(fps[2] / fps[1], 2),
        "wall_s_1_worker": [round(s, 2) for s in seconds[1]],
        "wall_s_2_workers": [round(s, 2) for s in seconds[2]],
        # How many cores the runs actually got: near 1 and 2 on a quiet machine. When the
        # 2-worker run gets little more than 1, the machine (not the simulator) is the limit.
        "cores_used_1_worker": round(statistics.median(cores[1]), 2),
        "cores_used_2_workers": round(statistics.median(cores[2]), 2),
        "cpu_ms_per_frame_2_workers": round(1000 * statistics.median(
            [c * s for c, s in zip(cores[2], seconds[2], strict=True)]) / total_frames, 1),
        "breakdown_one_process": _per_frame_breakdown(config, args.frames),
        "note": "end to end (set-up, physics, render, annotations, bag writing); wall-clock on a shared "
        "CPU, so absolute figures are noisy; the ratio is measured side by side in one run",
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m kp_perception_bench.sim_speed", description=__doc__.split("\n")[0])
    add_arguments(parser)
    print(json.dumps(run(parser.parse_args(argv)), indent=2))


if __name__ == "__main__":
    main()
