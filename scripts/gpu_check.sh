#!/usr/bin/env bash
# One command for the day a GPU is there: runs every GPU-only test and benchmark of kp_perception
# (TensorRT engine build, parity and latency for fp32 and fp16 engines, onnxruntime's CUDA/TensorRT
# providers and their engine cache, pyramids_node on TensorRT, CUDA mixed-precision training, NCCL
# torchrun with 2 processes when there are 2 GPUs) within a 10-minute budget, and writes ONE JSON report.
# Whatever is missing (GPU, tensorrt, pycuda, onnxruntime-gpu, a second GPU) is skipped with the reason.
#
#   scripts/gpu_check.sh [--out gpu_check.json] [--budget-seconds 600]
#
# Exit status: 0 when nothing failed (skips included), 1 when a check failed, 2 on bad arguments.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
if [ ! -x "$PY" ]; then
  PY="$(command -v python3)"
fi
exec "$PY" -m kp_perception_bench.gpu_check "$@"
