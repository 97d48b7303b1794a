"""Start-up time of the lifecycle nodes: process start -> ``active``, warm-up included (issue 18 goal: <= 2 s).

Each run starts the node as the launch file starts it (config/<kind>.yaml +
launch_args, ``autostart`` true, the shipped CPU model ``models/<kind>.onnx``
unless ``--model``), and reads the node's own log lines, whose rcutils stamps
are wall-clock time on this machine:

- ``startup_s``: from just before ``Popen`` to the ``active:`` line (Python
  start and imports, rclpy init, parameters, configure, activate);
- ``configure_s`` / ``model_load_s`` / ``warmup_s``: what the node reports
  for its configure transition (model load, then ``warmup_inferences`` on a
  grey frame);
- ``before_configure_s``: startup - configure - activate, i.e. the
  interpreter, imports and rclpy/DDS set-up.

Runs are sequential; the node is stopped (SIGINT) after each. The load
average is recorded: on a shared CPU the figures include waiting for it.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import threading
import time
from pathlib import Path

import numpy as np

LINE = re.compile(r"\[(?P<level>[A-Z]+)\] \[(?P<stamp>\d+\.\d+)\] \[(?P<node>[^\]]+)\]: (?P<text>.*)")
CONFIGURED = re.compile(r"loaded in (?P<load>[\d.]+) s; (?P<n>\d+) warm-up inference\(s\) in (?P<warm>[\d.]+) s")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kinds", nargs="+", default=["pyramids", "tusk"], choices=["pyramids", "tusk"],
                        help="nodes to start (pyramids_node, tusk_node)")
    parser.add_argument("--model", help="model for a single kind (default: the shipped models/<kind>.onnx)")
    parser.add_argument("--runs", type=int, default=5, help="starts per node")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for 'active' per run")
    parser.add_argument("--json", help="also write the figures to this file")


def run(args: argparse.Namespace) -> dict:
    from kp_perception.errors import ConfigError
    from kp_perception.resources import share_path

    if args.model and len(args.kinds) != 1:
        raise ConfigError("--model needs exactly one --kinds")
    out: dict = {
        "what": "process start -> lifecycle 'active' (autostart), warm-up included; goal <= 2 s",
        "cpu_count": os.cpu_count(),
        "load_average_at_start": list(os.getloadavg()),
        "runs_per_node": args.runs,
        "nodes": {},
    }
    for kind in args.kinds:
        model = Path(args.model) if args.model else share_path("models", f"{kind}.onnx")
        runs = [_one_start(kind, model, args.timeout) for _ in range(args.runs)]
        startup = np.array([r["startup_s"] for r in runs])
        out["nodes"][f"{kind}_node"] = {
            "model": str(model),
            "runs": runs,
            "startup_s": {"p50": float(np.median(startup)), "min": float(startup.min()),
                          "max": float(startup.max())},
            "goal_startup_le_2s_p50": bool(np.median(startup) <= 2.0),
        }
    out["load_average_at_end"] = list(os.getloadavg())
    return out


def _one_start(kind: str, model: Path, timeout: float) -> dict:
    """Start the node once, wait for its 'active:' line, stop it; the timings from its log stamps."""
    from kp_perception.errors import KpPerceptionError
    from kp_perception.nodes.launch_args import default_params_file, node_command, node_launch_config

    cfg = node_launch_config(kind, params_file=default_params_file(kind), model=str(model),
                             image_topic="/bench_startup/camera/image_raw", namespace="bench_startup")
    env = {**os.environ, **cfg.env, "PYTHONUNBUFFERED": "1", "RCUTILS_LOGGING_BUFFERED_STREAM": "0"}
    stamps: dict[str, float] = {}
    configured: dict[str, float] = {}
    lines: list[str] = []
    active = threading.Event()

    t0 = time.time()
    proc = subprocess.Popen(node_command(cfg), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def read() -> None:
        for raw in proc.stderr:
            lines.append(raw.rstrip())
            m = LINE.search(raw)
            if not m:
                continue
            text = m["text"]
            for key in ("configured:", "active:"):
                if text.startswith(key) and key not in stamps:
                    stamps[key] = float(m["stamp"])
            if (c := CONFIGURED.search(text)) is not None:
                configured.update(model_load_s=float(c["load"]), warmup_s=float(c["warm"]),
                                  warmup_inferences=int(c["n"]))
            if "active:" in stamps:
                active.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        if not active.wait(timeout):
            raise KpPerceptionError(f"{kind}_node did not become active within {timeout} s: "
                                    + " | ".join(lines[-3:]))
    finally:
        proc.send_signal(2)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        reader.join(timeout=5)
    startup = stamps["active:"] - t0
    configure_s = configured["model_load_s"] + configured["warmup_s"]
    activate_s = stamps["active:"] - stamps["configured:"]
    figures = {
        "startup_s": startup,
        "before_configure_s": startup - configure_s - activate_s,
        "configure_s": configure_s,
        **configured,
        "activate_s": activate_s,
    }
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()}


if __name__ == "__main__":
    from kp_perception_bench._entry import run_as_module

    run_as_module("node_startup")
