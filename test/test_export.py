"""ONNX export: graph contract, sidecar contents, TensorRT-10-safe ops, atomic writes, the CLI."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from kp_perception.checkpoint import load_checkpoint
from kp_perception.sidecar import config_sha256, read_sidecar, sidecar_path
from kp_perception_training.export import (
    ALLOWED_TENSOR_TYPES,
    TENSORRT10_OPS,
    ExportError,
    export_checkpoint,
    graph_ops,
    resolve_checkpoint,
)
from test.model_fixtures import make_checkpoint, make_model

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    out = tmp_path_factory.mktemp("export_models")
    return {kind: make_model(kind, out) for kind in ("pyramids", "tusk")}


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_pyramids_sidecar_describes_graph_hierarchy_config_and_version(models):
    path = models["pyramids"]
    side = read_sidecar(sidecar_path(path), expected_kind="pyramids")
    checkpoint = load_checkpoint(path.with_suffix(".pt"))
    from kp_perception import __version__
    from kp_perception.models import build_encoder

    encoder = build_encoder("pyramids", checkpoint["config"]["model"])
    assert (side.input_width, side.input_height) == (64, 64)
    assert (side.colour_order, side.dtype, side.layout) == ("RGB", "uint8", "NHWC")
    assert side.precision == "fp32"  # the int8 graph (export --int8) says "int8"
    assert side.level_sizes == encoder.level_sizes
    assert side.parents == encoder.parents
    assert side.levels == tuple(lvl for lvl, n in enumerate(encoder.level_sizes) for _ in range(n))
    assert side.config_sha256 == config_sha256(checkpoint["config"])
    assert side.project_version == __version__
    assert side.opset >= 17
    n = sum(encoder.level_sizes)
    graph_outputs = {o.name: [d.dim_value for d in o.type.tensor_type.shape.dim] for o in onnx.load(path).graph.output}
    assert graph_outputs == {"keypoints": [1, n, 2], "scores": [1, n], "parents": [n], "levels": [n]}
    assert {s.name: list(s.shape) for s in side.outputs} == graph_outputs


def test_pyramids_graph_returns_pixel_keypoints_and_constant_hierarchy(models):
    path = models["pyramids"]
    side = read_sidecar(sidecar_path(path))
    frame = np.random.default_rng(0).integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    keypoints, scores, parents, levels = _session(path).run(None, {"image": frame})
    assert keypoints.dtype == np.float32 and keypoints.shape == (1, sum(side.level_sizes), 2)
    # pixels of the 64×64 input: (k + 1) / 2 * 63 maps [-1, 1] onto [0, 63]
    assert keypoints.min() >= 0.0 and keypoints.max() <= 63.0
    assert np.all((scores >= 0) & (scores <= 1))
    assert parents.tolist() == list(side.parents)
    assert levels.tolist() == list(side.levels)


def test_tusk_graph_holds_nms_topk_and_prototype_assignment(models):
    path = models["tusk"]
    side = read_sidecar(sidecar_path(path), expected_kind="tusk")
    ops = graph_ops(path)
    assert {"MaxPool", "TopK", "ArgMin"} <= ops  # NMS by max-pool, top-K, nearest prototype in the graph
    frame = np.random.default_rng(1).integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    out = dict(zip(side.output_names, _session(path).run(None, {"image": frame}), strict=True))
    k = out["keypoints"].shape[1]
    assert out["descriptors"].shape == (1, k, side.descriptor_dim)
    np.testing.assert_allclose(np.linalg.norm(out["descriptors"], axis=-1), 1.0, atol=1e-4)
    assert out["prototype_ids"].dtype == np.int32
    assert np.all((out["prototype_ids"] >= 0) & (out["prototype_ids"] < side.num_prototypes))
    assert np.all(out["distances"] >= 0)
    assert out["keypoints"].min() >= 0.0 and out["keypoints"].max() <= 63.0


@pytest.mark.parametrize("kind", ["pyramids", "tusk"])
def test_graph_uses_only_tensorrt10_ops_and_types(models, kind):
    model = onnx.shape_inference.infer_shapes(onnx.load(models[kind]))
    assert {n.op_type for n in model.graph.node} <= TENSORRT10_OPS
    assert all(n.domain in ("", "ai.onnx") for n in model.graph.node)
    types = {v.type.tensor_type.elem_type for v in [*model.graph.value_info, *model.graph.output]}
    assert types <= ALLOWED_TENSOR_TYPES
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17


def test_non_square_size_and_dynamic_batch(tmp_path):
    checkpoint = make_checkpoint("pyramids", tmp_path, image_size=64)
    result = export_checkpoint(checkpoint, tmp_path / "wide.onnx", image_size=(48, 32), dynamic_batch=True)
    side = read_sidecar(result.sidecar_path)
    assert (side.input_width, side.input_height, side.dynamic_batch) == (48, 32, True)
    assert side.inputs[0].shape == ("batch", 32, 48, 3)
    session = _session(result.onnx_path)
    frames = np.random.default_rng(2).integers(0, 256, (3, 32, 48, 3), dtype=np.uint8)
    batched = session.run(["keypoints"], {"image": frames})[0]
    single = np.concatenate([session.run(["keypoints"], {"image": frames[i : i + 1]})[0] for i in range(3)])
    assert batched.shape == (3, sum(side.level_sizes), 2)
    np.testing.assert_allclose(batched, single, atol=1e-3)
    assert batched[..., 0].max() <= 47.0 and batched[..., 1].max() <= 31.0  # x spans width, y height


def test_failed_export_leaves_no_files(tmp_path):
    checkpoint = make_checkpoint("pyramids", tmp_path)
    with pytest.raises(ExportError, match="opset 16"):
        export_checkpoint(checkpoint, tmp_path / "old.onnx", opset=16)
    assert not (tmp_path / "old.onnx").exists() and not (tmp_path / "old.json").exists()
    assert not list(tmp_path.glob(".*tmp*"))


def test_sidecar_round_trips_and_is_written_atomically(models, tmp_path):
    from kp_perception.sidecar import write_sidecar

    side = read_sidecar(sidecar_path(models["tusk"]), expected_kind="tusk")
    target = tmp_path / "copy.json"
    write_sidecar(target, side)
    assert read_sidecar(target) == side
    assert [p.name for p in tmp_path.iterdir()] == ["copy.json"]


def test_resolve_checkpoint_prefers_best_then_last(tmp_path):
    (tmp_path / "last.pt").write_bytes(b"x")
    assert resolve_checkpoint(tmp_path).name == "last.pt"
    (tmp_path / "best.pt").write_bytes(b"x")
    assert resolve_checkpoint(tmp_path).name == "best.pt"
    assert resolve_checkpoint(tmp_path, "last").name == "last.pt"


def test_cli_exports_a_run_directory(tmp_path, models, capsys):
    from kp_perception.cli.main import main

    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(models["tusk"].with_suffix(".pt").read_bytes())
    assert main(["export", str(run), "--onnx", str(tmp_path / "out" / "model.onnx")]) == 0
    summary = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert summary["kind"] == "tusk" and summary["parity_max_error_px"] < 0.05
    assert read_sidecar(tmp_path / "out" / "model.json").kind == "tusk"
    assert not list((tmp_path / "out").glob(".*"))  # temporary files were renamed away


@pytest.mark.parametrize(
    "args, message",
    [
        (["nowhere"], "no such run directory"),
        (["RUN", "--fp16"], "--fp16 applies to the TensorRT engine"),
        (["RUN", "--image-size", "4", "4"], "expected both >= 8"),
    ],
)
def test_cli_bad_input_is_one_line(tmp_path, models, capsys, args, message):
    from kp_perception.cli.main import main

    args = [str(models["tusk"].with_suffix(".pt")) if a == "RUN" else str(tmp_path / a) if a == "nowhere" else a
            for a in args]
    assert main(["export", *args, "--onnx", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_cli_corrupt_checkpoint_is_one_line(tmp_path, capsys):
    from kp_perception.cli.main import main

    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert main(["export", str(bad), "--onnx", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert "bad.pt" in err and len(err.splitlines()) == 1
