"""The robot-side boundary: with onnxruntime, nothing imports torch, tensorrt or pycuda.

Each check runs in a fresh interpreter, because this pytest process has torch
loaded already. The onnxruntime case loads a real exported model and runs a
frame through it, so a lazy import hidden behind first use is caught too.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from test.model_fixtures import make_model

pytestmark = pytest.mark.timeout(180)

HEAVY = ("torch", "tensorrt", "pycuda")

_REPORT = (
    "\nimport json, sys\n"
    f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
)


def _heavy_modules_after(code: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + _REPORT], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "module",
    [
        "kp_perception",
        "kp_perception.sidecar",
        "kp_perception.backends",
        "kp_perception.backends.base",
        "kp_perception.backends.onnxruntime_backend",
        "kp_perception.backends.tensorrt_backend",
        "kp_perception.nodes.pyramids_node",
        "kp_perception.nodes.tusk_node",
    ],
)
def test_importing_robot_module_loads_no_torch_tensorrt_or_pycuda(module):
    assert _heavy_modules_after(f"import {module}") == []


def test_building_the_cli_parser_loads_no_torch_tensorrt_or_pycuda():
    # build_parser imports every subcommand module; each must defer torch to its run().
    code = "from kp_perception.cli.main import build_parser\nbuild_parser()"
    assert _heavy_modules_after(code) == []


@pytest.mark.parametrize("kind", ["pyramids", "tusk"])
def test_onnxruntime_inference_loads_no_torch_tensorrt_or_pycuda(tmp_path, kind):
    model = make_model(kind, tmp_path)
    code = (
        "import numpy as np\n"
        "from kp_perception.backends import load_backend\n"
        f"backend = load_backend({str(model)!r}, expected_kind={kind!r})\n"
        "result = backend.infer(np.zeros((480, 640, 3), np.uint8))\n"
        "assert result.xy.shape[1] == 2\n"
    )
    assert _heavy_modules_after(code) == []
