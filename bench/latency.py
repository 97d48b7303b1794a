"""Inference latency per backend at batch 1: onnxruntime vs torch eager (and TensorRT when present).

For each model kind (default: Keypoint Pyramids with the paper config at
128×128, and TUSK with the Tetrominoes config or the encoder defaults), an
initial-weights encoder is exported exactly as ``kp-perception export`` does,
then timed, with the backends interleaved call by call so that load from other
processes hits all of them alike:

- ``inference_ms``: ``Backend.run`` on a ready 1×H×W×3 uint8 batch (graph alone);
- ``with_preprocessing_ms``: ``Backend.infer`` on a 640×480 RGB frame (resize to
  the model size + graph + mapping back to frame pixels);
- ``preprocessing_640x480_ms``: the resize alone (``Backend.preprocess``).

Weights do not change the cost of these graphs, so initial weights are enough.
``onnxruntime_over_torch_p50`` < 0.5 means onnxruntime is more than 2× faster.

``--int8`` (issue 18) adds ``onnxruntime_int8``: the same export quantized by
``kp-perception export --int8``'s code (static QDQ, calibrated on
``--calibration`` frames), timed interleaved with the others, with
``int8_over_fp32_p50`` and the keypoint deviation from the float32 graph on
``--held-out`` frames (never used to calibrate), in model-input pixels.
Initial weights say nothing about int8 accuracy, so give a trained model with
``--checkpoint pyramids=RUN/best.pt`` for the deviation to mean something.

Each thread count is measured separately (default 1 and all cores): on a
shared, oversubscribed CPU torch's OpenMP threads degrade far more than
onnxruntime's, so the single-thread ratio is the fairer one there.

    python -m kp_perception_bench.latency [--kinds pyramids tusk --iters 200 --threads 1 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from kp_perception.kinds import KIND_NAMES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kinds", nargs="+", default=["pyramids", "tusk"],
                        choices=KIND_NAMES)
    parser.add_argument("--image-size", type=int, default=128, help="square model input size for every kind")
    parser.add_argument("--pyramids-config", default="pyramids",
                        help="training config name/path for pyramid kinds (default: the kind's defaults)")
    parser.add_argument("--tusk-config", default="tusk_tetrominoes", help="training config name/path for tusk")
    parser.add_argument("--iters", type=int, default=200, help="timed calls per backend and measurement")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, os.cpu_count() or 1],
                        help="intra-op thread counts to measure, each for onnxruntime and torch alike")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint", action="append", default=[], metavar="KIND=PATH",
                        help="a trained checkpoint (or run directory) instead of initial weights for KIND "
                        "(exported at its training size)")
    parser.add_argument("--int8", action="store_true", help="also time the int8 model side by side (needs "
                        "--calibration and --held-out)")
    parser.add_argument("--calibration", nargs="+", metavar="DATA", help="--int8 calibration frames (training data)")
    parser.add_argument("--held-out", nargs="+", metavar="DATA", help="--int8 deviation frames, disjoint from "
                        "--calibration (e.g. the test split)")
    parser.add_argument("--calibration-frames", type=int, default=32)
    parser.add_argument("--held-out-frames", type=int, default=64)


def _model_config(kind: str, name: str) -> tuple[dict[str, Any], str]:
    """The ``model`` section of the training config ``name`` (a config name or path) for ``kind``."""
    from kp_perception_training.config import load_config

    return load_config(kind, name).to_dict()["model"], name


def _percentiles(samples: list[float]) -> dict[str, float]:
    ms = np.asarray(samples) * 1e3
    return {"p50": round(float(np.percentile(ms, 50)), 4), "p99": round(float(np.percentile(ms, 99)), 4)}


def _interleaved(calls: dict[str, Any], iters: int, warmup: int, desc: str) -> dict[str, list[float]]:
    """Time each callable ``iters`` times, alternating between them call by call."""
    from tqdm import tqdm

    for _ in range(warmup):
        for fn in calls.values():
            fn()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in tqdm(range(iters), desc=desc, leave=False):
        for name, fn in calls.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return samples


def _export(kind: str, model_config: dict[str, Any], size: int, out_dir: Path, seed: int,
            checkpoint: str | None = None) -> Path:
    import torch

    from kp_perception.checkpoint import save_checkpoint
    from kp_perception.models import build_encoder
    from kp_perception_training.export import export_checkpoint

    if checkpoint is not None:
        import shutil

        from kp_perception_training.export import resolve_checkpoint

        source = resolve_checkpoint(checkpoint)
        shutil.copy2(source, out_dir / f"{kind}.pt")  # the torch backend loads <kind>.pt beside the ONNX
        return export_checkpoint(out_dir / f"{kind}.pt", out_dir / f"{kind}.onnx").onnx_path
    torch.manual_seed(seed)
    encoder = build_encoder(kind, model_config)
    path = out_dir / f"{kind}.pt"
    config = {"model": model_config, "data": {"image_size": size}}
    save_checkpoint(path, {"kind": kind, "config": config, "encoder": encoder.state_dict(), "training": {}})
    return export_checkpoint(path, out_dir / f"{kind}.onnx").onnx_path


def op_profile(model_path: Path, batch: np.ndarray, threads: int, runs: int = 50) -> dict[str, Any]:
    """ONNX Runtime's own profiler: milliseconds per run spent in each op type of the optimised graph.

    Shows where an int8 graph still spends float32 time (the ops left float32,
    quantize/dequantize at their borders) next to the integer convolutions.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    options.add_session_config_entry("session.set_denormal_as_zero", "1")
    with tempfile.TemporaryDirectory(prefix="kp_profile_") as tmp:
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "ort")
        session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        for _ in range(5):
            session.run(None, {name: batch})
        start = time.perf_counter()
        for _ in range(runs):
            session.run(None, {name: batch})
        wall = (time.perf_counter() - start) / runs
        events = json.loads(Path(session.end_profiling()).read_text())
    per_op: dict[str, float] = {}
    counted = 0
    for event in events:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            op = event.get("args", {}).get("op_name", "?")
            per_op[op] = per_op.get(op, 0.0) + float(event["dur"]) / 1e3
            counted += 1
    total_runs = runs + 5
    per_op = {op: round(ms / total_runs, 4) for op, ms in sorted(per_op.items(), key=lambda kv: -kv[1])}
    return {"ms_per_run_by_op": per_op, "kernel_ms_per_run": round(sum(per_op.values()), 4),
            "wall_ms_per_run_while_profiling": round(wall * 1e3, 4), "runs": total_runs}


def _tensorrt_available() -> bool:
    try:
        from kp_perception.backends.tensorrt_backend import require_tensorrt_gpu

        require_tensorrt_gpu()
        return True
    except Exception:  # no tensorrt, no pycuda, or no GPU
        return False


def run(args: argparse.Namespace) -> dict:
    import torch

    from kp_perception.backends import load_backend
    from kp_perception.errors import ConfigError

    if args.int8 and not (args.calibration and args.held_out):
        raise ConfigError("--int8 needs --calibration DATA and --held-out DATA (disjoint frames)")
    checkpoints = dict(item.split("=", 1) for item in args.checkpoint if "=" in item)
    if len(checkpoints) != len(args.checkpoint) or not set(checkpoints) <= set(KIND_NAMES):
        raise ConfigError(f"--checkpoint {args.checkpoint}: expected KIND=PATH with KIND in {', '.join(KIND_NAMES)}")
    rng = np.random.default_rng(args.seed)
    frame = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    with_trt = _tensorrt_available()
    threads = sorted(set(args.threads))
    report: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        },
        "threads": threads,
        "iters": args.iters,
        "batch": 1,
        "frame": [640, 480],
        "tensorrt": "measured" if with_trt else "not available on this machine (no tensorrt/pycuda/GPU)",
        "kinds": {},
    }
    with tempfile.TemporaryDirectory(prefix="kp_bench_latency_") as tmp:
        for kind in args.kinds:
            config_name = args.tusk_config if kind == "tusk" else args.pyramids_config
            model_config, config_source = _model_config(kind, config_name)
            onnx_path = _export(kind, model_config, args.image_size, Path(tmp), args.seed, checkpoints.get(kind))
            from kp_perception.sidecar import read_sidecar, sidecar_path

            side = read_sidecar(sidecar_path(onnx_path))
            entry: dict[str, Any] = {
                "image_size": [side.input_width, side.input_height],
                "model_config": f"checkpoint {checkpoints[kind]}" if kind in checkpoints else config_source,
                "by_threads": {},
            }
            int8_path = None
            if args.int8:
                from kp_perception_training.quantization import quantize_int8, sample_frames

                q = quantize_int8(onnx_path, args.calibration, frames=args.calibration_frames)
                int8_path = q.onnx_path
                held_out = sample_frames(args.held_out, side.input_width, side.input_height, args.held_out_frames)
                entry["int8"] = {"calibration": args.calibration, "calibration_frames": q.calibration_frames,
                                 "float32_conv_nodes": list(q.float_nodes), "held_out": args.held_out,
                                 "held_out_frames": len(held_out)}
            for n in threads:
                torch.set_num_threads(n)
                backends = {
                    "onnxruntime": load_backend(onnx_path, providers=["CPUExecutionProvider"], threads=n),
                    "torch": load_backend(onnx_path.with_suffix(".pt"), threads=n),
                }
                if int8_path is not None:
                    backends["onnxruntime_int8"] = load_backend(int8_path, providers=["CPUExecutionProvider"],
                                                                threads=n)
                if with_trt:
                    backends["tensorrt"] = load_backend(onnx_path, backend="tensorrt")
                entry["parameters"] = int(sum(p.numel() for p in backends["torch"].graph.parameters()))
                batch = backends["onnxruntime"].preprocess(frame)
                inference = _interleaved(
                    {name: (lambda b=b, x=batch: b.run(x)) for name, b in backends.items()},
                    args.iters, args.warmup, f"{kind} inference, {n} thread(s)",
                )
                full = _interleaved(
                    {name: (lambda b=b: b.infer(frame)) for name, b in backends.items()},
                    args.iters, args.warmup, f"{kind} with preprocessing, {n} thread(s)",
                )
                figures: dict[str, Any] = {
                    name: {
                        "inference_ms": _percentiles(inference[name]),
                        "with_preprocessing_ms": _percentiles(full[name]),
                    }
                    for name in backends
                }
                ort_p50 = figures["onnxruntime"]["inference_ms"]["p50"]
                torch_p50 = figures["torch"]["inference_ms"]["p50"]
                figures["onnxruntime_over_torch_p50"] = round(ort_p50 / torch_p50, 4)
                figures["onnxruntime_speedup_vs_torch_p50"] = round(torch_p50 / ort_p50, 3)
                if int8_path is not None:
                    from kp_perception_training.quantization import keypoint_deviation

                    figures["int8_over_fp32_p50"] = round(
                        figures["onnxruntime_int8"]["inference_ms"]["p50"] / ort_p50, 4)
                    figures["int8_over_fp32_with_preprocessing_p50"] = round(
                        figures["onnxruntime_int8"]["with_preprocessing_ms"]["p50"]
                        / figures["onnxruntime"]["with_preprocessing_ms"]["p50"], 4)
                    entry["int8"]["keypoint_deviation_from_fp32_model_px"] = keypoint_deviation(
                        backends["onnxruntime"].session, backends["onnxruntime_int8"].session,
                        side.input_name, held_out)
                    entry["int8"][f"op_profile_{n}_threads"] = {
                        "fp32": op_profile(onnx_path, batch, n), "int8": op_profile(int8_path, batch, n)}
                entry["by_threads"][str(n)] = figures
            report["kinds"][kind] = entry
        pre = _interleaved({"pre": lambda: backends["onnxruntime"].preprocess(frame)},
                           max(args.iters, 200), args.warmup, "preprocessing")
        report["preprocessing_640x480_ms"] = {**_percentiles(pre["pre"]), "to": [args.image_size, args.image_size]}
    report["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return report


if __name__ == "__main__":
    from kp_perception_bench._entry import run_as_module

    run_as_module("latency")
