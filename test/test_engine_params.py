"""The nodes' GPU engine parameters (Isaac ROS names): declared with descriptors, read into EngineSettings.

Real rclpy: a node declares them from parameter overrides as a params file or
``-p`` would give them; the node processes are started as the launch file
starts them. The GPU itself is not needed for what is checked here: which
engine file the parameters select is decided before TensorRT is imported.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

rclpy = pytest.importorskip("rclpy")

from rcl_interfaces.msg import ParameterType  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402

from kp_perception.backends.engine_settings import DEFAULT_WORKSPACE_BYTES, EngineSettings  # noqa: E402
from kp_perception.errors import ConfigError  # noqa: E402
from kp_perception.nodes.engine_params import ENGINE_PARAMETERS, declare_engine_parameters  # noqa: E402
from kp_perception.nodes.launch_args import default_params_file, node_command, node_launch_config  # noqa: E402

pytestmark = pytest.mark.timeout(120)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def context():
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    yield ctx
    rclpy.try_shutdown(context=ctx)


def _node(context, **overrides):
    params = [Parameter(k, value=v) for k, v in overrides.items()]
    return rclpy.create_node("engine_params_test", context=context, parameter_overrides=params)


def test_defaults_are_fp32_beside_the_model_one_gib_workspace(context):
    node = _node(context)
    try:
        assert declare_engine_parameters(node) == EngineSettings(
            engine_file_path="", fp16=False, force_engine_update=False, workspace_size=DEFAULT_WORKSPACE_BYTES
        )
    finally:
        node.destroy_node()


def test_overrides_reach_the_settings_and_descriptors_say_what_they_hold(context):
    node = _node(context, engine_file_path="/engines/arm.fp16.engine", enable_fp16=True,
                 force_engine_update=True, workspace_size=1 << 28)
    try:
        settings = declare_engine_parameters(node)
        assert settings.engine_file_path == "/engines/arm.fp16.engine" and settings.precision == "fp16"
        assert settings.force_engine_update and settings.workspace_size == 1 << 28
        descriptors = node.describe_parameters([spec.name for spec in ENGINE_PARAMETERS])
        types = {d.name: d.type for d in descriptors}
        assert types == {"engine_file_path": ParameterType.PARAMETER_STRING,
                         "enable_fp16": ParameterType.PARAMETER_BOOL,
                         "force_engine_update": ParameterType.PARAMETER_BOOL,
                         "workspace_size": ParameterType.PARAMETER_INTEGER}
        assert all(d.read_only and d.description for d in descriptors)
        assert "precision" in descriptors[0].description
    finally:
        node.destroy_node()


@pytest.mark.parametrize(("name", "value", "expected"), [
    ("enable_fp16", "yes", "parameter 'enable_fp16'"),
    ("workspace_size", 0, "parameter 'workspace_size'"),
])
def test_bad_engine_parameter_is_one_config_error_naming_it(context, name, value, expected):
    node = _node(context, **{name: value})
    try:
        with pytest.raises(ConfigError, match=expected):
            declare_engine_parameters(node)
    finally:
        node.destroy_node()


def _run_node(model: Path, extra: dict[str, str]) -> subprocess.CompletedProcess:
    cfg = node_launch_config("pyramids", params_file=default_params_file("pyramids"), model=str(model),
                             namespace="engine_params_test")
    cmd = node_command(cfg)
    for key, value in extra.items():
        cmd += ["-p", f"{key}:={value}"]
    env = {**os.environ, **cfg.env, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=90)


def test_node_with_engine_named_for_the_other_precision_stops_with_one_clear_line(tmp_path):
    from test.model_fixtures import make_model

    model = make_model("pyramids", tmp_path)
    engine = tmp_path / "pyramids.fp16.engine"
    out = _run_node(model, {"backend": "tensorrt", "engine_file_path": str(engine), "enable_fp16": "false"})
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert out.returncode != 0 and len(lines) == 1, out.stderr
    assert "file name says fp16, but enable_fp16 is False" in lines[0] and "Traceback" not in out.stderr
    assert not engine.exists()
