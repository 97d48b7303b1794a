"""TensorRT backend: the engine cache key, staleness and binding checks run everywhere; GPU paths skip.

The pure parts are what decides whether an engine is loaded or rebuilt and
whether its bindings can be trusted, so they are tested without tensorrt.
"""

from __future__ import annotations

import importlib.util
import json
import logging

import numpy as np
import pytest

from kp_perception.backends import load_backend
from kp_perception.backends.tensorrt_backend import (
    Binding,
    EngineKey,
    file_sha256,
    meta_path,
    stale_reason,
    validate_bindings,
    write_meta,
)
from kp_perception.errors import ModelLoadError
from kp_perception.sidecar import make_sidecar

pytestmark = pytest.mark.timeout(300)

KEY = EngineKey("ab" * 32, "10.3.0", "NVIDIA GeForce RTX 4090", False)


def _gpu_reason() -> str | None:
    for module in ("tensorrt", "pycuda"):
        if importlib.util.find_spec(module) is None:
            return f"needs the {module} package and a CUDA GPU; {module} is not installed here"
    try:
        import pycuda.driver as cuda

        cuda.init()
        if cuda.Device.count() == 0:
            return "needs a CUDA GPU; pycuda sees none"
    except Exception as exc:  # pycuda raises its own error types without a driver
        return f"needs a CUDA GPU; CUDA init failed ({exc})"
    return None


GPU_REASON = _gpu_reason()
needs_gpu = pytest.mark.skipif(GPU_REASON is not None, reason=GPU_REASON or "")


# ---------------------------------------------------------------- cache key and staleness (no GPU)


@pytest.mark.parametrize(
    "field, value",
    [("onnx_sha256", "cd" * 32), ("tensorrt_version", "10.4.0"), ("gpu_name", "Orin"), ("fp16", True)],
)
def test_cache_key_changes_with_each_component(field, value):
    other = EngineKey(**{**KEY.__dict__, field: value})
    assert other.digest != KEY.digest
    assert EngineKey(**KEY.__dict__).digest == KEY.digest


def test_file_sha256_is_the_content_hash(tmp_path):
    import hashlib

    path = tmp_path / "m.onnx"
    path.write_bytes(b"graph bytes")
    assert file_sha256(path) == hashlib.sha256(b"graph bytes").hexdigest()


def test_engine_with_matching_key_is_current(tmp_path):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"plan")
    write_meta(engine, KEY)
    assert meta_path(engine).name == "m.engine.meta.json"
    assert stale_reason(engine, KEY) is None


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("tensorrt_version", "10.0.1", "tensorrt_version '10.0.1' -> '10.3.0'"),
        ("gpu_name", "Orin", "gpu_name 'Orin' -> 'NVIDIA GeForce RTX 4090'"),
        ("onnx_sha256", "00" * 32, "onnx_sha256"),
        ("fp16", True, "fp16 True -> False"),
    ],
)
def test_engine_built_for_another_setup_is_stale_naming_the_difference(tmp_path, field, value, message):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"plan")
    write_meta(engine, EngineKey(**{**KEY.__dict__, field: value}))
    reason = stale_reason(engine, KEY)
    assert reason is not None and message in reason


def test_engine_without_key_file_or_unreadable_key_is_stale(tmp_path):
    engine = tmp_path / "m.engine"
    assert "no engine" in stale_reason(engine, KEY)
    engine.write_bytes(b"plan")
    assert "no key file" in stale_reason(engine, KEY)
    meta_path(engine).write_text("{broken")
    assert "unreadable key file" in stale_reason(engine, KEY)
    meta_path(engine).write_text(json.dumps({"onnx_sha256": "x"}))
    assert "unreadable key file" in stale_reason(engine, KEY)


# ---------------------------------------------------------------- binding shapes vs sidecar (no GPU)

PYR = make_sidecar("pyramids", 128, 96, level_sizes=(2, 4), parents=(-1, -1, 0, 0, 1, 1))
TUSK_DYNAMIC = make_sidecar("tusk", 64, 64, num_keypoints=3, num_prototypes=8, descriptor_dim=16, dynamic_batch=True)


def _bindings(sidecar, batch=1):
    out = [Binding(s.name, True, tuple(batch if isinstance(d, str) else d for d in s.shape), s.dtype)
           for s in sidecar.inputs]
    out += [Binding(s.name, False, tuple(batch if isinstance(d, str) else d for d in s.shape), s.dtype)
            for s in sidecar.outputs]
    return out


def test_bindings_matching_the_sidecar_pass():
    validate_bindings("m.engine", _bindings(PYR), PYR)
    validate_bindings("m.engine", _bindings(TUSK_DYNAMIC, batch=-1), TUSK_DYNAMIC)  # dynamic batch dim
    validate_bindings("m.engine", list(reversed(_bindings(PYR))), PYR)  # order does not matter


def test_binding_with_wrong_shape_names_expected_and_found():
    bindings = _bindings(PYR)
    bindings[0] = Binding("image", True, (1, 96, 96, 3), "uint8")
    with pytest.raises(ModelLoadError, match=r"'image' is input \[1, 96, 96, 3\]:uint8, expected input \[1, 96, 128, 3\]"):
        validate_bindings("m.engine", bindings, PYR)


def test_binding_with_wrong_dtype_or_direction_is_rejected():
    bindings = _bindings(PYR)
    bindings[1] = Binding("keypoints", False, (1, 6, 2), "float16")
    with pytest.raises(ModelLoadError, match="float16, expected output"):
        validate_bindings("m.engine", bindings, PYR)
    bindings = _bindings(PYR)
    bindings[2] = Binding("scores", True, (1, 6), "float32")
    with pytest.raises(ModelLoadError, match="'scores' is input"):
        validate_bindings("m.engine", bindings, PYR)


def test_binding_names_not_in_sidecar_are_rejected():
    bindings = _bindings(PYR)[:-1] + [Binding("level_ids", False, (6,), "int32")]
    with pytest.raises(ModelLoadError, match=r"engine tensors are .*'level_ids'.*expected .*'levels'"):
        validate_bindings("m.engine", bindings, PYR)


def test_fixed_batch_sidecar_rejects_dynamic_engine():
    bindings = _bindings(PYR)
    bindings[0] = Binding("image", True, (-1, 96, 128, 3), "uint8")
    with pytest.raises(ModelLoadError, match="expected input"):
        validate_bindings("m.engine", bindings, PYR)


# ---------------------------------------------------------------- without tensorrt: clear errors


@pytest.mark.skipif(GPU_REASON is None, reason="tensorrt and a GPU are present; this checks their absence")
def test_tensorrt_backend_without_tensorrt_or_gpu_is_a_clear_load_error(tmp_path):
    from test.model_fixtures import make_model

    onnx_path = make_model("pyramids", tmp_path)
    with pytest.raises(ModelLoadError, match="tensorrt backend needs"):
        load_backend(onnx_path, backend="tensorrt")


@pytest.mark.skipif(GPU_REASON is None, reason="tensorrt and a GPU are present; this checks their absence")
def test_export_engine_without_tensorrt_fails_before_exporting(tmp_path):
    from kp_perception_training.export import ExportError, export_checkpoint
    from test.model_fixtures import make_checkpoint

    checkpoint = make_checkpoint("pyramids", tmp_path)
    with pytest.raises(ExportError, match="--engine .*tensorrt backend needs"):
        export_checkpoint(checkpoint, tmp_path / "m.onnx", engine_path=tmp_path / "m.engine")
    assert not (tmp_path / "m.onnx").exists()


def test_importing_the_tensorrt_backend_imports_neither_tensorrt_nor_pycuda():
    import subprocess
    import sys

    code = (
        "import sys, kp_perception.backends.tensorrt_backend\n"
        "print(sorted(m for m in ('tensorrt', 'pycuda', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------- GPU paths (skip without one)


@pytest.fixture(scope="module")
def gpu_model(tmp_path_factory):
    from test.model_fixtures import make_model

    return make_model("pyramids", tmp_path_factory.mktemp("trt"))


@needs_gpu
def test_engine_matches_onnxruntime_within_005_px(gpu_model):
    trt_backend = load_backend(gpu_model, backend="tensorrt")
    ort_backend = load_backend(gpu_model, providers=["CPUExecutionProvider"])
    frame = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    batch = ort_backend.preprocess(frame)
    a, b = trt_backend.run(batch), ort_backend.run(batch)
    assert np.abs(a["keypoints"] - b["keypoints"]).max() < 0.05
    assert a["parents"].tolist() == b["parents"].tolist()


@needs_gpu
def test_engine_loaded_by_extension_reuses_the_cache(gpu_model):
    engine = gpu_model.with_suffix(".engine")
    load_backend(gpu_model, backend="tensorrt")
    mtime = engine.stat().st_mtime_ns
    backend = load_backend(engine)
    assert backend.name == "tensorrt" and engine.stat().st_mtime_ns == mtime


@needs_gpu
def test_engine_for_another_tensorrt_version_is_rebuilt_with_a_log_line(gpu_model, caplog):
    engine = gpu_model.with_suffix(".engine")
    load_backend(gpu_model, backend="tensorrt")
    key = EngineKey(**json.loads(meta_path(engine).read_text()))
    write_meta(engine, EngineKey(**{**key.__dict__, "tensorrt_version": "0.0.0-other"}))
    with caplog.at_level(logging.WARNING, logger="kp_perception.backends.tensorrt_backend"):
        load_backend(engine)
    assert any("tensorrt_version '0.0.0-other'" in r.getMessage() for r in caplog.records)
    assert stale_reason(engine, key) is None
