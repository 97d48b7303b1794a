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
from kp_perception.backends.engine_settings import (
    EngineSettings,
    ort_trt_cache_dir,
    precision_tag,
    with_precision,
)
from kp_perception.backends.tensorrt_backend import (
    Binding,
    EngineKey,
    build_engine,
    engine_sidecar,
    file_sha256,
    meta_path,
    plan_engine,
    read_key,
    stale_reason,
    validate_bindings,
    write_meta,
)
from kp_perception.errors import ModelLoadError
from kp_perception.sidecar import make_sidecar

pytestmark = pytest.mark.timeout(300)

KEY = EngineKey("ab" * 32, "10.3.0", "NVIDIA GeForce RTX 4090", "fp32")


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
    [("onnx_sha256", "cd" * 32), ("tensorrt_version", "10.4.0"), ("gpu_name", "Orin"), ("precision", "fp16")],
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
        ("precision", "fp16", "precision 'fp16' -> 'fp32'"),
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


def test_key_file_from_before_precision_existed_reads_its_fp16_flag_as_precision(tmp_path):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"plan")
    old = {"onnx_sha256": KEY.onnx_sha256, "tensorrt_version": "10.3.0", "gpu_name": KEY.gpu_name, "fp16": True}
    meta_path(engine).write_text(json.dumps(old))
    assert read_key(engine).precision == "fp16"
    assert "precision 'fp16' -> 'fp32'" in stale_reason(engine, KEY)


# ---------------------------------------------------------------- which engine file: precision in the name


def _onnx(tmp_path):
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"onnx bytes")
    return onnx


def _engine(path, precision):
    path.write_bytes(f"{precision} plan".encode())
    write_meta(path, EngineKey(**{**KEY.__dict__, "precision": precision}))
    return path


def test_engine_names_state_their_precision():
    assert with_precision("d/model.engine", "fp16").name == "model.fp16.engine"
    assert with_precision("d/model.fp32.engine", "fp16").name == "model.fp16.engine"
    assert precision_tag("model.fp16.engine") == "fp16" and precision_tag("model.engine") is None
    assert precision_tag("my.model.plan") is None


def test_onnx_model_gets_one_engine_per_precision_beside_it(tmp_path):
    onnx = _onnx(tmp_path)
    fp32 = plan_engine(onnx, EngineSettings())
    fp16 = plan_engine(onnx, EngineSettings(fp16=True))
    assert fp32.engine_path == tmp_path / "model.fp32.engine" and fp32.precision == "fp32"
    assert fp16.engine_path == tmp_path / "model.fp16.engine" and fp16.precision == "fp16"
    assert fp32.onnx_path == fp16.onnx_path == onnx and not fp32.note


def test_documented_recipe_fp16_engine_is_not_rebuilt_as_fp32(tmp_path):
    """export --engine model.engine --fp16, then the node on model.onnx (fp32) or on model.engine (fp32)."""
    onnx = _onnx(tmp_path)
    exported = _engine(tmp_path / "model.engine", "fp16")
    on_onnx = plan_engine(onnx, EngineSettings())
    assert on_onnx.engine_path == tmp_path / "model.fp32.engine"
    on_engine = plan_engine(exported, EngineSettings())
    assert on_engine.engine_path == tmp_path / "model.fp32.engine"
    assert "holds a fp16 engine" in on_engine.note and "left as it is" in on_engine.note
    explicit = plan_engine(onnx, EngineSettings(engine_file_path=str(exported)))
    assert explicit.engine_path == tmp_path / "model.fp32.engine"
    # asking for the engine's own precision uses it as it is
    assert plan_engine(exported, EngineSettings(fp16=True)).engine_path == exported
    assert exported.read_bytes() == b"fp16 plan"


def test_engine_name_contradicting_enable_fp16_is_a_clear_error(tmp_path):
    onnx = _onnx(tmp_path)
    with pytest.raises(ModelLoadError, match="file name says fp16, but enable_fp16 is False"):
        plan_engine(onnx, EngineSettings(engine_file_path=str(tmp_path / "model.fp16.engine")))


def test_engine_of_other_precision_without_onnx_is_a_clear_error(tmp_path):
    engine = _engine(tmp_path / "robot.engine", "fp16")
    with pytest.raises(ModelLoadError, match="built for fp16, enable_fp16 asks for fp32, and there is no ONNX"):
        plan_engine(engine, EngineSettings())
    assert plan_engine(engine, EngineSettings(fp16=True)).onnx_path is None


def test_build_refuses_to_overwrite_an_engine_of_the_other_precision(tmp_path):
    """Checked before TensorRT is even imported, so it holds on every machine."""
    onnx = _onnx(tmp_path)
    engine = _engine(tmp_path / "model.engine", "fp16")
    fp32_key = EngineKey(**{**KEY.__dict__, "precision": "fp32"})
    with pytest.raises(ModelLoadError, match="refusing to overwrite a fp16 engine with a fp32 one.*model.fp32.engine"):
        build_engine(onnx, engine, PYR, fp32_key)
    assert engine.read_bytes() == b"fp16 plan" and read_key(engine).precision == "fp16"


def test_precision_named_engine_finds_the_sidecar_of_its_onnx(tmp_path):
    from kp_perception.sidecar import write_sidecar

    onnx = _onnx(tmp_path)
    write_sidecar(onnx.with_suffix(".json"), PYR)
    engine = tmp_path / "model.fp16.engine"
    assert engine_sidecar(engine, engine) == tmp_path / "model.json"
    assert engine_sidecar(onnx, engine) == tmp_path / "model.json"


# ---------------------------------------------------------------- ONNX Runtime TensorRT / CUDA provider options


def test_tensorrt_provider_options_carry_precision_cache_and_workspace(tmp_path):
    from kp_perception.backends.onnxruntime_backend import provider_options

    model = tmp_path / "model.onnx"
    settings = EngineSettings(fp16=True, workspace_size=1 << 28)
    trt, cuda, cpu = provider_options(
        ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"], model, settings
    )
    assert trt["trt_fp16_enable"] == "True" and trt["trt_engine_cache_enable"] == "True"
    assert trt["trt_engine_cache_path"] == str(tmp_path / "model.ort_trt_cache" / "fp16")
    assert trt["trt_max_workspace_size"] == str(1 << 28)
    assert trt["trt_timing_cache_enable"] == "True"
    assert cuda["device_id"] == "0" and cuda["cudnn_conv_algo_search"] == "EXHAUSTIVE"
    assert cpu == {}
    fp32 = provider_options(["TensorrtExecutionProvider"], model, EngineSettings())[0]
    assert fp32["trt_fp16_enable"] == "False"
    assert fp32["trt_engine_cache_path"] != trt["trt_engine_cache_path"]  # the two precisions never share a cache


def test_engine_file_path_names_the_ort_cache_folder(tmp_path):
    settings = EngineSettings(engine_file_path=str(tmp_path / "engines" / "arm.fp16.engine"), fp16=True)
    assert ort_trt_cache_dir(tmp_path / "model.onnx", settings) == tmp_path / "engines" / "arm.ort_trt_cache" / "fp16"


def test_force_engine_update_clears_only_this_precisions_ort_cache(tmp_path):
    from kp_perception.backends.onnxruntime_backend import prepare_trt_cache

    model = tmp_path / "model.onnx"
    fp16 = prepare_trt_cache(model, EngineSettings(fp16=True))
    fp32 = prepare_trt_cache(model, EngineSettings())
    (fp16 / "old.engine").write_bytes(b"x")
    (fp32 / "old.engine").write_bytes(b"y")
    prepare_trt_cache(model, EngineSettings(fp16=True))
    assert (fp16 / "old.engine").exists()  # current: kept
    prepare_trt_cache(model, EngineSettings(fp16=True, force_engine_update=True))
    assert fp16.is_dir() and not (fp16 / "old.engine").exists()
    assert (fp32 / "old.engine").read_bytes() == b"y"


def test_unwritable_ort_cache_folder_is_one_clear_load_error(tmp_path):
    from kp_perception.backends.onnxruntime_backend import prepare_trt_cache

    blocker = tmp_path / "engines"
    blocker.write_text("a file where the cache folder's parent should be")
    settings = EngineSettings(engine_file_path=str(blocker / "arm.engine"))
    with pytest.raises(ModelLoadError, match="cannot create the TensorRT engine cache folder"):
        prepare_trt_cache(tmp_path / "model.onnx", settings)


def test_onnxruntime_session_is_created_with_the_provider_options(tmp_path):
    """A real session: the options list goes to InferenceSession, one dict per provider that is used."""
    from test.model_fixtures import make_model

    onnx_path = make_model("pyramids", tmp_path)
    backend = load_backend(onnx_path, providers=["CPUExecutionProvider"], engine=EngineSettings(fp16=True))
    assert backend.providers == ["CPUExecutionProvider"] and backend.provider_options == [{}]
    assert backend.session.get_providers() == ["CPUExecutionProvider"]
    frame = np.zeros((48, 64, 3), np.uint8)
    assert np.isfinite(backend.infer(frame).xy).all()


ORT_TRT_REASON = None
try:
    import onnxruntime as _ort

    if "TensorrtExecutionProvider" not in _ort.get_available_providers() or GPU_REASON is not None:
        ORT_TRT_REASON = ("needs onnxruntime-gpu with the TensorRT provider and a CUDA GPU; this onnxruntime has "
                          f"{', '.join(_ort.get_available_providers())}")
except ImportError as _exc:
    ORT_TRT_REASON = f"needs onnxruntime ({_exc})"


@pytest.mark.skipif(ORT_TRT_REASON is not None, reason=ORT_TRT_REASON or "")
def test_ort_tensorrt_provider_caches_its_engine_per_precision(tmp_path):
    from test.model_fixtures import make_model

    onnx_path = make_model("pyramids", tmp_path)
    providers = ["TensorrtExecutionProvider", "CPUExecutionProvider"]
    for fp16 in (False, True):
        settings = EngineSettings(fp16=fp16)
        backend = load_backend(onnx_path, providers=providers, engine=settings)
        backend.infer(np.zeros((64, 64, 3), np.uint8))
        assert any(ort_trt_cache_dir(onnx_path, settings).iterdir())


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
    engine = gpu_model.with_suffix(".fp32.engine")
    load_backend(gpu_model, backend="tensorrt")
    mtime = engine.stat().st_mtime_ns
    backend = load_backend(engine)
    assert backend.name == "tensorrt" and engine.stat().st_mtime_ns == mtime


@needs_gpu
def test_engine_for_another_tensorrt_version_is_rebuilt_with_a_log_line(gpu_model, caplog):
    engine = gpu_model.with_suffix(".fp32.engine")
    load_backend(gpu_model, backend="tensorrt")
    key = EngineKey(**json.loads(meta_path(engine).read_text()))
    write_meta(engine, EngineKey(**{**key.__dict__, "tensorrt_version": "0.0.0-other"}))
    with caplog.at_level(logging.WARNING, logger="kp_perception.backends.tensorrt_backend"):
        load_backend(engine)
    assert any("tensorrt_version '0.0.0-other'" in r.getMessage() for r in caplog.records)
    assert stale_reason(engine, key) is None


@needs_gpu
def test_fp16_and_fp32_engines_are_built_side_by_side_and_agree(gpu_model):
    fp32 = load_backend(gpu_model, backend="tensorrt")
    fp16 = load_backend(gpu_model, backend="tensorrt", engine=EngineSettings(fp16=True))
    assert fp32.engine_path.name == "pyramids.fp32.engine" and fp16.engine_path.name == "pyramids.fp16.engine"
    assert read_key(fp16.engine_path).precision == "fp16" and read_key(fp32.engine_path).precision == "fp32"
    frame = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    batch = fp32.preprocess(frame)
    assert np.abs(fp16.run(batch)["keypoints"] - fp32.run(batch)["keypoints"]).max() < 0.5


@needs_gpu
def test_force_engine_update_rebuilds_a_current_engine(gpu_model):
    backend = load_backend(gpu_model, backend="tensorrt")
    before = backend.engine_path.stat().st_mtime_ns
    load_backend(gpu_model, backend="tensorrt", engine=EngineSettings(force_engine_update=True))
    assert backend.engine_path.stat().st_mtime_ns > before
