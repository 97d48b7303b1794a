"""Every GPU-only test and benchmark in one run, for the day a GPU is there: one JSON, skips with reasons.

``scripts/gpu_check.sh`` runs this. Each check runs in its own process (a
crashing driver or engine build fails that check, not the report), in this
order, within a total budget (default 10 minutes; a check that would start
after it is skipped, saying so):

- ``environment``: nvidia-smi, GPUs, tensorrt / pycuda / onnxruntime providers / torch CUDA versions.
- ``pytest_gpu_tests``: the GPU tests of test/test_tensorrt.py (engine build, parity with onnxruntime
  < 0.05 px, cache reuse, rebuild on a foreign key, fp16 and fp32 engines side by side, forced
  rebuild, onnxruntime's TensorRT provider cache) and test/test_trainer.py's CUDA mixed precision;
  pass / fail / skip counts and every skip reason.
- ``tensorrt_engines``: a 128×128 Pyramids export built as fp32 and fp16 engines: build seconds,
  reload seconds (cache), max keypoint difference from onnxruntime CPU, latency p50/p99.
- ``onnxruntime_gpu_providers``: the same model on ORT's CUDA and TensorRT providers (fp32, fp16):
  session start (first = engine build, second = from the cache), latency, difference from CPU.
- ``node_tensorrt``: ``bench node`` with the fp32 engine (pyramids_node on TensorRT, 30 Hz, 640×480).
- ``cuda_mixed_precision``: ``kp-perception train pyramids --device cuda`` (amp on) for a few steps.
- ``nccl_torchrun_2gpu``: the same under ``torchrun --nproc_per_node 2`` (NCCL), if there are 2 GPUs.

Nothing here is faked: without a GPU every GPU check is "skipped" with the
reason, and the JSON says so.

    scripts/gpu_check.sh [--out FILE] [--budget-seconds 600]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

CHECKS = ("environment", "pytest_gpu_tests", "tensorrt_engines", "onnxruntime_gpu_providers", "node_tensorrt",
          "cuda_mixed_precision", "nccl_torchrun_2gpu")
REPO = Path(__file__).resolve().parents[1]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"), help="the JSON report to write")
    parser.add_argument("--budget-seconds", type=float, default=600.0, help="total time for all checks")
    parser.add_argument("--only", choices=CHECKS, help=argparse.SUPPRESS)  # one check, in this process
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)


# --- what is present --------------------------------------------------------------------------------


def gpu_count() -> tuple[int, str]:
    """(number of CUDA GPUs, how it was found or why none), without initialising CUDA in this process."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0, "nvidia-smi not found (no NVIDIA driver)"
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 0, f"nvidia-smi failed ({exc})"
    gpus = [line for line in out.stdout.splitlines() if line.startswith("GPU ")]
    return len(gpus), "; ".join(gpus) if gpus else f"nvidia-smi lists no GPU ({out.stderr.strip()[:200]})"


def _module_version(name: str) -> str | None:
    import importlib.util

    if importlib.util.find_spec(name) is None:
        return None
    try:
        module = __import__(name)
        return str(getattr(module, "__version__", "present"))
    except Exception as exc:  # a broken install is information too
        return f"import failed: {type(exc).__name__}: {exc}"


def missing(needs: tuple[str, ...]) -> str | None:
    """Why a check cannot run here (every missing need, "; "-separated), or None."""
    gpus, how = gpu_count()
    reasons = []
    for need in needs:
        if need == "gpu" and gpus < 1:
            reasons.append(f"needs a CUDA GPU: {how}")
        elif need == "2gpu" and gpus < 2:
            reasons.append(f"needs 2 CUDA GPUs, found {gpus}")
        elif need in ("tensorrt", "pycuda") and _module_version(need) is None:
            reasons.append(f"needs the {need} Python package (not installed)")
        elif need == "torch_cuda":
            import torch

            if not torch.cuda.is_available():
                reasons.append(f"needs torch with CUDA (torch {torch.__version__} has no usable CUDA)")
        elif need == "ort_gpu":
            import onnxruntime as ort

            if "CUDAExecutionProvider" not in ort.get_available_providers():
                reasons.append("needs onnxruntime-gpu (the installed onnxruntime has "
                               f"{', '.join(ort.get_available_providers())})")
        elif need == "checkout" and not (REPO / "test").is_dir():
            reasons.append("needs the source checkout's test/ folder")
    return "; ".join(reasons) or None


NEEDS: dict[str, tuple[str, ...]] = {
    "environment": (),
    "pytest_gpu_tests": ("checkout", "gpu"),
    "tensorrt_engines": ("gpu", "tensorrt", "pycuda"),
    "onnxruntime_gpu_providers": ("gpu", "ort_gpu"),
    "node_tensorrt": ("gpu", "tensorrt", "pycuda"),
    "cuda_mixed_precision": ("gpu", "torch_cuda"),
    "nccl_torchrun_2gpu": ("2gpu", "torch_cuda"),
}
TIMEOUTS = {"environment": 60, "pytest_gpu_tests": 240, "tensorrt_engines": 240, "onnxruntime_gpu_providers": 240,
            "node_tensorrt": 180, "cuda_mixed_precision": 180, "nccl_torchrun_2gpu": 180}


# --- the checks (each runs in its own process via --only) ------------------------------------------


def _environment(work: Path) -> dict[str, Any]:
    gpus, how = gpu_count()
    out: dict[str, Any] = {"gpus": gpus, "gpu_list": how, "python": platform.python_version(),
                           "machine": platform.machine(), "cpu_count": os.cpu_count()}
    for name in ("tensorrt", "pycuda", "onnxruntime", "torch"):
        out[name] = _module_version(name)
    import onnxruntime as ort
    import torch

    out["onnxruntime_providers"] = ort.get_available_providers()
    out["torch_cuda_available"] = bool(torch.cuda.is_available())
    out["torch_cuda_version"] = torch.version.cuda
    return {"status": "passed", **out}


def _pytest(work: Path) -> dict[str, Any]:
    import xml.etree.ElementTree as ET

    report = work / "pytest.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", f"--junitxml={report}",
           "test/test_tensorrt.py", "test/test_trainer.py::test_mixed_precision_on_cuda_trains_and_saves_the_scaler"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=TIMEOUTS["pytest_gpu_tests"] - 10)
    cases = ET.parse(report).getroot().iter("testcase") if report.is_file() else []
    passed, failed, skipped = [], [], {}
    for case in cases:
        name = case.get("name")
        if case.find("skipped") is not None:
            skipped[name] = case.find("skipped").get("message", "")
        elif case.find("failure") is not None or case.find("error") is not None:
            failed.append(name)
        else:
            passed.append(name)
    return {"status": "passed" if proc.returncode == 0 else "failed", "exit_code": proc.returncode,
            "passed": len(passed), "failed": failed, "skipped": skipped, "tail": proc.stdout[-1500:]}


def _model(work: Path) -> Path:
    """A 128×128 Keypoint Pyramids export (initial weights, CPU preset; weights do not change the cost)."""
    from kp_perception_bench.node import _build_model

    onnx = work / "pyramids.onnx"
    return onnx if onnx.is_file() else _build_model(work, 128, "cpu")


def _latency(backend, batch: np.ndarray, iters: int = 200) -> dict[str, float]:
    for _ in range(20):
        backend.run(batch)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        backend.run(batch)
        times.append((time.perf_counter() - t0) * 1e3)
    return {"p50": float(np.percentile(times, 50)), "p99": float(np.percentile(times, 99))}


def _difference(a, b, batch) -> float:
    return float(np.abs(a.run(batch)["keypoints"] - b.run(batch)["keypoints"]).max())


def _tensorrt_engines(work: Path) -> dict[str, Any]:
    from kp_perception.backends import load_backend
    from kp_perception.backends.engine_settings import EngineSettings

    onnx = _model(work)
    cpu = load_backend(onnx, providers=["CPUExecutionProvider"])
    batch = cpu.preprocess(np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8))
    out: dict[str, Any] = {"model": "pyramids 128x128 initial weights (CPU preset)"}
    ok = True
    for fp16 in (False, True):
        settings = EngineSettings(fp16=fp16)
        t0 = time.perf_counter()
        backend = load_backend(onnx, backend="tensorrt", engine=settings)
        build = time.perf_counter() - t0
        t0 = time.perf_counter()
        backend = load_backend(onnx, backend="tensorrt", engine=settings)
        reload = time.perf_counter() - t0
        diff = _difference(backend, cpu, batch)
        limit = 0.5 if fp16 else 0.05
        ok &= diff < limit
        out[settings.precision] = {"engine": str(backend.engine_path.name), "build_seconds": build,
                                   "reload_seconds": reload, "max_keypoint_diff_vs_onnxruntime_cpu_px": diff,
                                   "limit_px": limit, "latency_ms": _latency(backend, batch)}
    out["onnxruntime_cpu_latency_ms"] = _latency(cpu, batch)
    return {"status": "passed" if ok else "failed", **out}


def _ort_gpu(work: Path) -> dict[str, Any]:
    import onnxruntime as ort

    from kp_perception.backends import load_backend
    from kp_perception.backends.engine_settings import EngineSettings

    onnx = _model(work)
    cpu = load_backend(onnx, providers=["CPUExecutionProvider"])
    batch = cpu.preprocess(np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8))
    out: dict[str, Any] = {"providers_available": ort.get_available_providers()}
    ok = True
    runs = [("cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"], EngineSettings())]
    if "TensorrtExecutionProvider" in ort.get_available_providers():
        runs += [(f"tensorrt_{p}", ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
                  EngineSettings(fp16=p == "fp16")) for p in ("fp32", "fp16")]
    else:
        out["tensorrt"] = "skipped: this onnxruntime build has no TensorrtExecutionProvider"
    for label, providers, settings in runs:
        starts = []
        for _ in range(2):  # the second start must load the TensorRT provider's cached engine
            t0 = time.perf_counter()
            backend = load_backend(onnx, providers=providers, engine=settings)
            backend.run(batch)
            starts.append(time.perf_counter() - t0)
        diff = _difference(backend, cpu, batch)
        ok &= diff < (0.5 if settings.fp16 else 0.05)
        out[label] = {"session_providers": backend.session.get_providers(), "first_start_seconds": starts[0],
                      "second_start_seconds": starts[1], "max_keypoint_diff_vs_cpu_px": diff,
                      "latency_ms": _latency(backend, batch), "provider_options": backend.provider_options}
    return {"status": "passed" if ok else "failed", **out}


def _node_tensorrt(work: Path) -> dict[str, Any]:
    from kp_perception.backends import load_backend

    onnx = _model(work)
    engine = load_backend(onnx, backend="tensorrt").engine_path
    cmd = [sys.executable, "-m", "kp_perception_bench.node", "--model", str(engine), "--rates", "30",
           "--seconds", "8", "--no-geometry", "--inference-iterations", "100"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUTS["node_tensorrt"] - 20)
    if proc.returncode != 0:
        return {"status": "failed", "exit_code": proc.returncode, "stderr": proc.stderr[-1500:]}
    figures = json.loads(proc.stdout)
    return {"status": "passed", "engine": engine.name, "inference_ms": figures["inference"]["latency_ms"],
            "node_30hz": figures["node"]["30hz"], "goals": figures["goals"]}


def _sim_data(work: Path) -> Path:
    data = work / "sim"
    if not (data / "annotations.csv").is_file():
        subprocess.run([sys.executable, "-m", "kp_perception.cli.main", "sim", "tabletop", "--out", str(data),
                        "--episodes", "2", "--frames", "16", "--size", "64", "--overwrite"],
                       check=True, capture_output=True, text=True, timeout=120)
    return data


def _train_cmd(data: Path, out: Path) -> list[str]:
    return ["-m", "kp_perception.cli.main", "train", "pyramids", "--data", str(data), "--out", str(out),
            "--steps", "10", "--device", "cuda", "--no-progress", "--set", "data.image_size=64",
            "train.batch_size=8", "train.num_workers=0", "train.amp=true"]


def _summary(proc: subprocess.CompletedProcess) -> dict[str, Any]:
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


def _cuda_mixed_precision(work: Path) -> dict[str, Any]:
    data = _sim_data(work)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, *_train_cmd(data, work / "amp_run")], capture_output=True, text=True,
                          timeout=TIMEOUTS["cuda_mixed_precision"] - 30)
    summary = _summary(proc)
    ok = proc.returncode == 0 and summary.get("step") == 10 and str(summary.get("device", "")).startswith("cuda")
    return {"status": "passed" if ok else "failed", "seconds": time.perf_counter() - t0, "summary": summary,
            "stderr": proc.stderr[-800:] if not ok else ""}


def _nccl(work: Path) -> dict[str, Any]:
    data = _sim_data(work)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           *_train_cmd(data, work / "ddp_run")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUTS["nccl_torchrun_2gpu"] - 30)
    summary = _summary(proc)
    ok = proc.returncode == 0 and summary.get("world_size") == 2
    return {"status": "passed" if ok else "failed", "summary": summary,
            "stderr": proc.stderr[-800:] if not ok else ""}


RUNNERS = {"environment": _environment, "pytest_gpu_tests": _pytest, "tensorrt_engines": _tensorrt_engines,
           "onnxruntime_gpu_providers": _ort_gpu, "node_tensorrt": _node_tensorrt,
           "cuda_mixed_precision": _cuda_mixed_precision, "nccl_torchrun_2gpu": _nccl}


# --- orchestration -----------------------------------------------------------------------------------


def _run_one(name: str, work: Path, remaining: float) -> dict[str, Any]:
    reason = missing(NEEDS[name])
    if reason:
        return {"status": "skipped", "reason": reason}
    timeout = min(TIMEOUTS[name], remaining)
    if timeout < 10:
        return {"status": "skipped", "reason": "the time budget is used up"}
    cmd = [sys.executable, "-m", "kp_perception_bench.gpu_check", "--only", name, "--work", str(work)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"status": "failed", "reason": f"timed out after {timeout:.0f} s", "seconds": timeout}
    seconds = time.perf_counter() - t0
    try:
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"status": "failed", "reason": f"exit code {proc.returncode}: {tail}", "seconds": seconds}
    return {**result, "seconds": round(seconds, 2)}


def run(args: argparse.Namespace) -> dict:
    if args.only:
        work = args.work or Path(tempfile.mkdtemp(prefix="gpu_check_"))
        try:
            result = RUNNERS[args.only](work)
        except Exception as exc:  # one failing check is a result, not a crash
            result = {"status": "failed", "reason": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
        print(json.dumps(result, default=str))
        return {}
    started = time.perf_counter()
    report: dict[str, Any] = {
        "what": "every GPU-only test and benchmark of kp_perception (bench/gpu_check.py)",
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "budget_seconds": args.budget_seconds,
        "load_average_at_start": list(os.getloadavg()),
        "checks": {},
    }
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        for name in CHECKS:
            remaining = args.budget_seconds - (time.perf_counter() - started)
            report["checks"][name] = _run_one(name, Path(tmp), remaining)
            print(f"gpu_check: {name}: {report['checks'][name]['status']}", file=sys.stderr, flush=True)
    statuses = [c["status"] for c in report["checks"].values()]
    report["summary"] = {s: statuses.count(s) for s in ("passed", "failed", "skipped")}
    report["seconds"] = round(time.perf_counter() - started, 2)
    report["load_average_at_end"] = list(os.getloadavg())
    from kp_perception.atomic import atomic_write_text

    atomic_write_text(args.out, json.dumps(report, indent=2, default=str) + "\n")
    print(f"gpu_check: report written to {args.out}", file=sys.stderr)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/gpu_check.sh", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    report = run(args)
    if not args.only:
        print(json.dumps(report["summary"]))
        return 1 if report["summary"]["failed"] else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
