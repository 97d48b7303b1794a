"""Inference backends: onnxruntime/torch parity, frame-pixel results, and clear load-time errors."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from kp_perception.backends import backend_for, load_backend
from kp_perception.backends.onnxruntime_backend import default_providers
from kp_perception.errors import ImageConversionError, ModelLoadError
from kp_perception.preprocessing import model_to_frame_pixels
from kp_perception.results import KeypointPyramidResult, PrototypeDetectionResult
from test.model_fixtures import make_model

pytestmark = pytest.mark.timeout(240)

PARITY_PX = 0.05


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    out = tmp_path_factory.mktemp("backend_models")
    return {kind: make_model(kind, out) for kind in ("pyramids", "keynet", "tusk")}


def _frames(n, shape=(64, 64, 3), seed=0):
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        # Smooth random blobs, so the maps have real structure (not white noise).
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        frames.append(cv2.resize(small, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC))
    return frames


@pytest.mark.parametrize("kind", ["pyramids", "tusk"])
def test_onnxruntime_matches_torch_within_005_px_at_model_resolution(models, kind):
    onnx_backend = load_backend(models[kind])
    torch_backend = load_backend(models[kind].with_suffix(".pt"))
    assert (onnx_backend.name, torch_backend.name) == ("onnxruntime", "torch")
    assert onnx_backend.sidecar.outputs == torch_backend.sidecar.outputs
    for frame in _frames(4, seed=3):
        batch = onnx_backend.preprocess(frame)
        a, b = onnx_backend.run(batch), torch_backend.run(batch)
        assert np.abs(a["keypoints"] - b["keypoints"]).max() < PARITY_PX
        np.testing.assert_allclose(a["scores"], b["scores"], atol=1e-4)
        if kind == "tusk":
            np.testing.assert_array_equal(a["prototype_ids"], b["prototype_ids"])
            np.testing.assert_allclose(a["descriptors"], b["descriptors"], atol=1e-4)


def test_pyramid_result_is_in_frame_pixels(models):
    backend = load_backend(models["pyramids"], expected_kind="pyramids")
    frame = _frames(1, shape=(480, 640, 3), seed=5)[0]
    result = backend.infer(frame)
    assert isinstance(result, KeypointPyramidResult)
    assert (result.image_width, result.image_height) == (640, 480)
    raw = backend.run(backend.preprocess(frame))
    expected = model_to_frame_pixels(raw["keypoints"][0], (64, 64), (640, 480))
    np.testing.assert_allclose(result.xy, expected, atol=1e-4)
    # the stretch maps model pixel centres [0, 63] into the frame's [-0.5, 639.5] × [-0.5, 479.5]
    assert result.xy[:, 0].min() >= -0.5 and result.xy[:, 0].max() <= 639.5
    assert result.xy[:, 1].min() >= -0.5 and result.xy[:, 1].max() <= 479.5
    assert result.level_sizes == backend.sidecar.level_sizes
    assert result.parents.tolist() == list(backend.sidecar.parents)
    assert result.levels.dtype == np.int32 and result.parents.dtype == np.int32


def test_prototype_result_is_in_frame_pixels(models):
    backend = load_backend(models["tusk"], expected_kind="tusk")
    frame = _frames(1, shape=(120, 200, 3), seed=6)[0]
    result = backend.infer(frame)
    assert isinstance(result, PrototypeDetectionResult)
    assert (result.image_width, result.image_height, result.num_prototypes) == (200, 120, 8)
    raw = backend.run(backend.preprocess(frame))
    np.testing.assert_allclose(result.xy, model_to_frame_pixels(raw["keypoints"][0], (64, 64), (200, 120)), atol=1e-4)
    assert result.prototypes.tolist() == raw["prototype_ids"][0].tolist()


def test_torch_and_onnxruntime_results_agree_in_frame_pixels(models):
    frame = _frames(1, shape=(240, 320, 3), seed=7)[0]
    a = load_backend(models["tusk"]).infer(frame)
    b = load_backend(models["tusk"].with_suffix(".pt")).infer(frame)
    # 0.05 px at 64×64 is 0.25 px in a 320×240 frame (scale 5 and 3.75)
    assert np.abs(a.xy - b.xy).max() < PARITY_PX * 5


def test_keynet_is_accepted_where_a_pyramids_model_is_expected(models):
    assert load_backend(models["keynet"], expected_kind="pyramids").sidecar.kind == "keynet"


@pytest.mark.parametrize("kind, expected", [("tusk", "pyramids"), ("pyramids", "tusk")])
def test_kind_mismatch_names_expected_and_found(models, kind, expected):
    with pytest.raises(ModelLoadError) as err:
        load_backend(models[kind], expected_kind=expected)
    assert f"'{kind}'" in str(err.value) and f"'{expected}'" in str(err.value)
    with pytest.raises(ModelLoadError, match=f"'{kind}'.*expected '{expected}'"):
        load_backend(models[kind].with_suffix(".pt"), expected_kind=expected)


def test_missing_sidecar_is_a_load_error(models, tmp_path):
    model = tmp_path / "lonely.onnx"
    model.write_bytes(models["pyramids"].read_bytes())
    with pytest.raises(ModelLoadError, match="lonely.json: sidecar JSON not found"):
        load_backend(model)


def test_corrupt_onnx_is_a_load_error(models, tmp_path):
    model = tmp_path / "broken.onnx"
    model.write_bytes(models["pyramids"].read_bytes()[:2000])
    (tmp_path / "broken.json").write_text(models["pyramids"].with_suffix(".json").read_text())
    with pytest.raises(ModelLoadError, match="broken.onnx: not a loadable ONNX model"):
        load_backend(model)


def test_corrupt_sidecar_is_a_load_error(models, tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(models["pyramids"].read_bytes())
    (tmp_path / "m.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="m.json: sidecar is not valid JSON"):
        load_backend(model)


def test_graph_not_matching_its_sidecar_names_expected_and_found(models, tmp_path):
    # A tusk sidecar next to a pyramids graph: the outputs differ.
    model = tmp_path / "swapped.onnx"
    model.write_bytes(models["pyramids"].read_bytes())
    (tmp_path / "swapped.json").write_text(models["tusk"].with_suffix(".json").read_text())
    with pytest.raises(ModelLoadError) as err:
        load_backend(model)
    text = str(err.value)
    assert "outputs do not match the sidecar" in text
    assert "expected keypoints[1, 3, 2]" in text and "found keypoints[1, 12, 2]" in text


def test_sidecar_with_wrong_input_size_names_expected_and_found(models, tmp_path):
    model = tmp_path / "resized.onnx"
    model.write_bytes(models["pyramids"].read_bytes())
    data = json.loads(models["pyramids"].with_suffix(".json").read_text())
    data["input_width"] = data["input_height"] = 128
    data["inputs"][0]["shape"] = [1, 128, 128, 3]
    (tmp_path / "resized.json").write_text(json.dumps(data))
    with pytest.raises(ModelLoadError, match=r"expected image\[1, 128, 128, 3\]:uint8, found image\[1, 64, 64, 3\]"):
        load_backend(model)


def test_inconsistent_sidecar_is_rejected_before_the_model_loads(models, tmp_path):
    data = json.loads(models["pyramids"].with_suffix(".json").read_text())
    data["colour_order"] = "BGR"
    (tmp_path / "m.json").write_text(json.dumps(data))
    (tmp_path / "m.onnx").write_bytes(models["pyramids"].read_bytes())
    with pytest.raises(ModelLoadError, match="colour_order is 'BGR', expected 'RGB'"):
        load_backend(tmp_path / "m.onnx")


def test_corrupt_checkpoint_is_a_load_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(ModelLoadError, match="bad.pt"):
        load_backend(bad)


def test_missing_model_file_is_a_load_error(tmp_path):
    with pytest.raises(ModelLoadError, match="model file not found"):
        load_backend(tmp_path / "absent.onnx")


def test_backend_is_chosen_by_argument_or_extension():
    assert backend_for("m.onnx") == "onnxruntime"
    assert backend_for("m.engine") == "tensorrt" and backend_for("m.plan") == "tensorrt"
    assert backend_for("m.pt") == "torch"
    assert backend_for("m.onnx", "tensorrt") == "tensorrt"
    with pytest.raises(ModelLoadError, match="'.bin'"):
        backend_for("m.bin")
    with pytest.raises(ModelLoadError, match="unknown backend 'tvm'"):
        backend_for("m.onnx", "tvm")


def test_onnxruntime_providers_are_configurable(models):
    assert default_providers()[-1] == "CPUExecutionProvider"
    backend = load_backend(models["pyramids"], providers=["CPUExecutionProvider"], threads=1)
    assert backend.session.get_providers() == ["CPUExecutionProvider"]
    assert backend.session.get_session_options().intra_op_num_threads == 1


@pytest.mark.parametrize(
    "frame",
    [np.zeros((0, 10, 3), np.uint8), np.zeros((10, 10), np.uint8), np.zeros((10, 10, 3), np.float32), "img"],
    ids=["empty", "gray", "float", "not-array"],
)
def test_bad_frames_raise_one_clear_error(models, frame):
    backend = load_backend(models["pyramids"])
    with pytest.raises(ImageConversionError, match="frame must be"):
        backend.infer(frame)
