"""int8 for CPU robots: static QDQ quantization calibrated on real frames, its sidecar, its float islands.

Real parts only: exported encoders, rosbag2 files and image folders written by
the fixtures, onnxruntime's quantizer and CPU sessions.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from kp_perception.backends import load_backend
from kp_perception.errors import DataError, ModelLoadError
from kp_perception.sidecar import read_sidecar, sidecar_path, write_sidecar
from kp_perception_training.quantization import (
    QuantizationError,
    float_islands,
    int8_path,
    keypoint_deviation,
    quantize_int8,
    sample_frames,
)
from test.fixtures_bags import smooth_frames, write_bag, write_image_folder
from test.model_fixtures import make_model
from test.test_pyramids_training import (  # noqa: F401  (trained: the fixture, a run that learned)
    tiny_config,
    trained,
    write_square_sequence,
)

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def pyramids(tmp_path_factory):
    return make_model("pyramids", tmp_path_factory.mktemp("int8_models"))


@pytest.fixture(scope="module")
def frames_folder(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("int8_frames") / "seq", smooth_frames(24, 48, 64, seed=3))


@pytest.fixture(scope="module")
def quantized(pyramids, frames_folder):
    return quantize_int8(pyramids, [frames_folder], frames=8)


def _weight_names(model, names):
    by_name = {n.name: n for n in model.graph.node}
    return {by_name[name].input[1] for name in names}


def test_float_islands_are_the_stem_and_every_heatmap_conv(pyramids):
    model = onnx.load(str(pyramids))
    weights = _weight_names(model, float_islands(model))
    assert weights == {"encoder.fpn.stem.0.weight", "encoder.heads.0.net.2.weight", "encoder.heads.1.net.2.weight"}


def test_calibration_frames_come_evenly_from_a_bag_at_the_model_size(tmp_path):
    frames = smooth_frames(10, 24, 32, seed=1)
    bag = write_bag(tmp_path / "bag", frames, storage="mcap", encoding="bgr8")
    sampled = sample_frames([bag], 16, 12, 4)
    assert len(sampled) == 4 and all(f.shape == (1, 12, 16, 3) and f.dtype == np.uint8 for f in sampled)
    from kp_perception.preprocessing import resize_rgb

    # first and last frames are among them, converted from bgr8 and resized by the backends' policy
    np.testing.assert_array_equal(sampled[0][0], resize_rgb(frames[0], 16, 12))
    np.testing.assert_array_equal(sampled[-1][0], resize_rgb(frames[-1], 16, 12))


def test_int8_model_and_sidecar_record_precision_and_calibration(quantized, pyramids, frames_folder):
    assert quantized.onnx_path == pyramids.with_name("pyramids.int8.onnx") == int8_path(pyramids)
    side = read_sidecar(quantized.sidecar_path, expected_kind="pyramids")
    assert quantized.sidecar_path.name == "pyramids.int8.json"
    assert side.precision == "int8" and read_sidecar(sidecar_path(pyramids)).precision == "fp32"
    q = side.extra["quantization"]
    assert q["format"] == "QDQ" and q["calibration_frames"] == 8 and q["calibration_sources"] == [str(frames_folder)]
    assert q["keypoint_deviation_from_fp32_px"]["n"] > 0
    assert side.outputs == read_sidecar(sidecar_path(pyramids)).outputs  # same graph contract


def test_int8_graph_quantizes_the_inner_convs_and_keeps_the_islands_float(quantized):
    model = onnx.load(str(quantized.onnx_path))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") > 0 and ops.count("DequantizeLinear") > 0
    producers = {o: n for n in model.graph.node for o in n.output}
    convs = {n.name: n for n in model.graph.node if n.op_type == "Conv"}
    quantized_inputs = {name for name, n in convs.items() if producers.get(n.input[0]) is not None
                        and producers[n.input[0]].op_type == "DequantizeLinear"}
    assert set(quantized.float_nodes).isdisjoint(quantized_inputs)
    assert len(quantized_inputs) == len(convs) - len(quantized.float_nodes)


def test_onnxruntime_runs_the_int8_model_with_integer_convs_close_to_fp32(quantized, pyramids, tmp_path):
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(quantized.onnx_path), options, providers=["CPUExecutionProvider"])
    optimized_ops = {n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node}
    assert "QLinearConv" in optimized_ops  # int8 kernels, not fake-quantized float
    frame = smooth_frames(1, 120, 160, seed=9)[0]
    fp32 = load_backend(pyramids).infer(frame)
    int8 = load_backend(quantized.onnx_path)
    assert int8.sidecar.precision == "int8"
    result = int8.infer(frame)
    assert result.xy.shape == fp32.xy.shape and np.isfinite(result.xy).all()
    assert np.median(np.linalg.norm(result.xy - fp32.xy, axis=1)) < 1.0
    assert quantized.deviation_px["median"] < 1.0


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_every_calibration_method_quantizes_quietly_and_is_recorded(pyramids, frames_folder, tmp_path, capsys, method):
    result = quantize_int8(pyramids, [frames_folder], tmp_path / f"m.{method}.onnx", frames=4, method=method)
    assert result.sidecar.extra["quantization"]["calibration_method"] == method
    assert result.deviation_px["median"] < 1.0
    assert capsys.readouterr().out == ""  # the export CLI's stdout is its JSON summary


def test_keypoint_deviation_is_zero_for_the_same_graph_and_measures_a_shift(pyramids):
    session = ort.InferenceSession(str(pyramids), providers=["CPUExecutionProvider"])

    class Shifted:
        def run(self, names, feed):
            return [session.run(names, feed)[0] + np.array([3.0, 4.0], np.float32)]

    frames = [f[None] for f in smooth_frames(3, 64, 64, seed=2)]
    assert keypoint_deviation(session, session, "image", frames)["max"] == 0.0
    shifted = keypoint_deviation(session, Shifted(), "image", frames)
    assert shifted["median"] == pytest.approx(5.0, abs=1e-4) and shifted["n"] == 3 * 12


def test_bad_calibration_data_fails_with_nothing_written(pyramids, tmp_path):
    out = tmp_path / "m.int8.onnx"
    with pytest.raises(DataError, match="no such file"):
        quantize_int8(pyramids, [tmp_path / "missing"], out, frames=2)
    with pytest.raises(QuantizationError, match="must not overwrite"):
        quantize_int8(pyramids, [tmp_path], pyramids, frames=2)
    assert not out.exists() and not list(tmp_path.glob(".*tmp*"))


def test_an_int8_model_is_not_quantized_again(quantized, frames_folder):
    with pytest.raises(QuantizationError, match="precision is int8"):
        quantize_int8(quantized.onnx_path, [frames_folder], frames=2)


def test_sidecar_with_unknown_precision_is_rejected(quantized, tmp_path):
    import dataclasses

    path = tmp_path / "m.json"
    write_sidecar(path, dataclasses.replace(quantized.sidecar, precision="int4"))
    with pytest.raises(ModelLoadError, match="precision is 'int4'"):
        read_sidecar(path)


def test_cli_export_int8_writes_both_models_and_reports_the_deviation(pyramids, frames_folder, tmp_path, capsys):
    from kp_perception.cli.main import main

    onnx_out = tmp_path / "out" / "model.onnx"
    assert main(["export", str(pyramids.with_suffix(".pt")), "--onnx", str(onnx_out), "--int8",
                 "--calibration", str(frames_folder), "--calibration-frames", "6"]) == 0
    text = capsys.readouterr().out
    summary = json.loads(text[text.index("{"):])
    assert summary["precision"] == "fp32" and summary["int8"]["precision"] == "int8"
    assert summary["int8"]["onnx"] == str(tmp_path / "out" / "model.int8.onnx")
    assert summary["int8"]["calibration_frames"] == 6
    assert summary["int8"]["keypoint_deviation_from_fp32_px"]["median"] < 1.0
    assert read_sidecar(tmp_path / "out" / "model.int8.json").precision == "int8"
    assert not list((tmp_path / "out").glob(".*"))


@pytest.mark.parametrize(("args", "message"), [
    (["--int8"], "--int8 needs --calibration"),
    (["--calibration", "DATA"], "--calibration applies to --int8"),
    (["--int8", "--calibration", "nowhere"], "--calibration"),
])
def test_cli_int8_bad_input_is_one_line(pyramids, frames_folder, tmp_path, capsys, args, message):
    from kp_perception.cli.main import main

    args = [str(frames_folder) if a == "DATA" else str(tmp_path / a) if a == "nowhere" else a for a in args]
    assert main(["export", str(pyramids.with_suffix(".pt")), "--onnx", str(tmp_path / "m.onnx"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.timeout(300)
def test_eval_onnx_scores_the_exported_float_and_int8_models_of_a_trained_run(trained, tmp_path, monkeypatch):  # noqa: F811
    """A model that learned to follow a square: the exported float32 graph scores as the torch encoder does,
    and its int8 graph (calibrated on the same kind of frames) stays within a fraction of a pixel of it."""
    from kp_perception_training.export import export_graph_from_checkpoint
    from kp_perception_training.pyramids.evaluate import evaluate

    method, images, centre_px, _ = trained
    monkeypatch.setenv("KP_PERCEPTION_CACHE", str(tmp_path / "cache"))
    seq, ann = write_square_sequence(tmp_path, images, centre_px)
    checkpoint = {"kind": "pyramids", "config": tiny_config().to_dict(), "encoder": method.encoder.state_dict()}
    onnx_path = export_graph_from_checkpoint(checkpoint, tmp_path / "m.onnx").onnx_path
    q = quantize_int8(onnx_path, [seq], frames=32)
    torch_metrics = evaluate(checkpoint, [str(seq)], str(ann), None, seed=0)
    fp32 = evaluate(checkpoint, [str(seq)], str(ann), None, seed=0, onnx=onnx_path)
    int8 = evaluate(checkpoint, [str(seq)], str(ann), None, seed=0, onnx=q.onnx_path)
    assert fp32["precision"] == "fp32" and int8["precision"] == "int8"
    for level, value in torch_metrics["rmse_px"].items():
        assert fp32["rmse_px"][level] == pytest.approx(value, rel=1e-3, abs=1e-3)
    assert q.deviation_px["median"] < 0.25  # model pixels, frames not used to calibrate
    assert int8["rmse_px"]["flattened"] == pytest.approx(fp32["rmse_px"]["flattened"], rel=0.10, abs=0.05)


@pytest.mark.timeout(120)
def test_pyramids_node_serves_the_int8_model_like_the_float_one(quantized, pyramids):
    """A real pyramids_node process on the int8 model: hierarchies come out, keypoints near the float32 model's."""
    pytest.importorskip("rclpy")
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    from kp_perception_msgs.msg import KeypointPyramid
    from test.test_nodes import (
        H,
        NodeProcess,
        Peer,
        W,
        check_pyramid,
        make_frame,
        publish_until,
        raw_msg,
        wait_for,
    )

    peer = Peer()
    node = NodeProcess("pyramids", quantized.onnx_path, "int8_node")
    try:
        received = peer.collect(KeypointPyramid, f"{node.ns}/keypoints")
        pub = peer.node.create_publisher(Image, node.image_topic, qos_profile_sensor_data)
        wait_for(lambda: pub.get_subscription_count() > 0, 30, "the node's image subscription", node)
        sent = publish_until(peer, pub, raw_msg, lambda: len(received) >= 3, node)
        float_backend = load_backend(pyramids)
        for msg in list(received):
            check_pyramid(msg)
            expected = float_backend.infer(make_frame(sent[(msg.header.stamp.sec, msg.header.stamp.nanosec)])).xy
            got = np.array([[k.x, k.y] for k in msg.keypoints])
            assert got.shape == expected.shape == (sum(msg.level_sizes), 2) and (msg.image_width, msg.image_height) == (W, H)
            assert np.median(np.linalg.norm(got - expected, axis=1)) < 1.0
    finally:
        assert node.stop() == 0, node.stderr()
        peer.close()
