"""int8 for CPU robots: ONNX Runtime static quantization (QDQ) of an exported graph, calibrated on real frames.

Why static QDQ: the encoders are conv stacks, which ONNX Runtime runs as int8
QLinearConv kernels (VNNI on recent x86, dot-product on ARM) once every conv
input and weight has a fixed scale; QDQ keeps the graph a plain ONNX file
that every backend reads and that says, node by node, what is quantized.

Choices, written down:

* Only ``Conv`` is quantized (activations uint8 asymmetric, weights int8
  per output channel). The in-graph pre/post-processing (uint8 -> float,
  soft-argmax, NMS, pixel mapping) stays float32.
* Two kinds of conv stay float32 (:func:`float_islands`): the first conv(s),
  which see raw pixels (quantizing them costs accuracy and saves little), and
  the last conv on every path to an output, which produce the heatmaps the
  keypoint coordinates are computed from: their rounding would move every
  keypoint. They are found from the graph's structure, not from layer names.
* Calibration frames come from the training data (bags, videos, image folders
  through :func:`kp_perception.sequences.open_sequences`, so every encoding
  the data loaders read), resized by the one resize policy
  (:func:`kp_perception.preprocessing.resize_rgb`) exactly as the backends do.
  Min-max calibration by default.
* Every selected frame that is not used for calibration checks the result:
  the keypoint deviation from the float32 graph, in model-input pixels, goes
  into the sidecar and the export summary.
* The int8 ONNX and its sidecar are written to temporary files and renamed
  into place; the sidecar's ``precision`` is ``"int8"``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kp_perception.atomic import atomic_path
from kp_perception.errors import DataError, KpPerceptionError
from kp_perception.preprocessing import resize_rgb
from kp_perception.sidecar import Sidecar, read_sidecar, sidecar_path, write_sidecar

log = logging.getLogger(__name__)

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
DEFAULT_CALIBRATION_FRAMES = 64


class QuantizationError(KpPerceptionError):
    """int8 quantization failed or was given unusable input; the message says why."""


@dataclass(frozen=True)
class Int8Result:
    """What ``quantize_int8`` wrote and how far its keypoints are from the float32 graph's."""

    onnx_path: Path
    sidecar_path: Path
    sidecar: Sidecar
    float_nodes: tuple[str, ...]
    calibration_frames: int
    check_frames: int
    deviation_px: dict[str, float]


def int8_path(onnx_path: str | Path) -> Path:
    """``model.onnx`` -> ``model.int8.onnx`` (its sidecar is then ``model.int8.json``)."""
    onnx_path = Path(onnx_path)
    return onnx_path.with_name(f"{onnx_path.stem}.int8.onnx")


def sample_frames(
    paths: Iterable[str | Path], width: int, height: int, count: int, image_topic: str | None = None
) -> list[np.ndarray]:
    """``count`` frames spread evenly over every sequence under ``paths``, each 1×height×width×3 uint8.

    Frames are read by the data loaders' reader (every bag encoding, videos,
    image folders) and resized by the backends' resize policy, so calibration
    sees what the robot's model sees.
    """
    from kp_perception.sequences import open_sequences

    if count < 1:
        raise QuantizationError(f"calibration frame count is {count}; expected at least 1")
    sequences = open_sequences(list(paths), image_topic=image_topic)
    lengths = [len(seq) for seq in sequences]
    total = sum(lengths)
    if total == 0:
        raise DataError(f"no frames in {', '.join(str(s.source) for s in sequences)}")
    wanted = sorted(set(np.linspace(0, total - 1, min(count, total)).round().astype(int).tolist()))
    frames: list[np.ndarray] = []
    start = 0
    for seq, length in zip(sequences, lengths, strict=True):
        mine = {i - start for i in wanted if start <= i < start + length}
        if mine:
            for index, frame in enumerate(seq.iter_frames()):
                if index in mine:
                    frames.append(np.ascontiguousarray(resize_rgb(frame, width, height))[None])
                if index >= max(mine):
                    break
        start += length
    return frames


def float_islands(model: Any) -> list[str]:
    """Names of the Conv nodes kept float32: the first conv on every path from the graph input, and the
    last conv on every path to a graph output (the heatmap convs keypoints are computed from).

    ``model`` is an ``onnx.ModelProto``. Paths follow the data flow through any
    ops and stop at the first Conv met, so the rule finds the stem conv and each
    head's output conv (also a coarse head whose heatmaps feed a finer level)
    whatever the layers are called.
    """
    nodes = list(model.graph.node)
    producer = {out: i for i, node in enumerate(nodes) for out in node.output}
    consumers: dict[str, list[int]] = {}
    for i, node in enumerate(nodes):
        for name in node.input:
            consumers.setdefault(name, []).append(i)

    def first_convs(starts: list[int], forward: bool) -> set[int]:
        found, seen, stack = set(), set(starts), list(starts)
        while stack:
            i = stack.pop()
            if nodes[i].op_type == "Conv":
                found.add(i)
                continue
            nxt = ([c for out in nodes[i].output for c in consumers.get(out, [])] if forward
                   else [producer[name] for name in nodes[i].input if name in producer])
            for j in nxt:
                if j not in seen:
                    seen.add(j)
                    stack.append(j)
        return found

    inputs = {value.name for value in model.graph.input}
    from_inputs = [c for name in inputs for c in consumers.get(name, [])]
    to_outputs = [producer[value.name] for value in model.graph.output if value.name in producer]
    keep = first_convs(from_inputs, forward=True) | first_convs(to_outputs, forward=False)
    return [nodes[i].name for i in sorted(keep)]


def keypoint_deviation(float_session: Any, int8_session: Any, input_name: str,
                       frames: Sequence[np.ndarray]) -> dict[str, float]:
    """Euclidean distance between the two graphs' keypoints, model-input pixels, over every keypoint of every frame."""
    distances = []
    for batch in frames:
        a = float_session.run(["keypoints"], {input_name: batch})[0]
        b = int8_session.run(["keypoints"], {input_name: batch})[0]
        distances.append(np.linalg.norm(a.astype(np.float64) - b.astype(np.float64), axis=-1).reshape(-1))
    d = np.concatenate(distances) if distances else np.zeros(0)
    if d.size and not np.isfinite(d).all():
        raise QuantizationError("the int8 graph returns NaN or Inf keypoints")
    if not d.size:
        return {"median": float("nan"), "p95": float("nan"), "max": float("nan"), "n": 0}
    return {"median": float(np.median(d)), "p95": float(np.percentile(d, 95)), "max": float(d.max()),
            "n": int(d.size)}


def cpu_session(path: str | Path, threads: int = 1):
    """A CPU onnxruntime session set up as the backend sets it up (denormals as zero), for comparisons."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    options.add_session_config_entry("session.set_denormal_as_zero", "1")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class _Frames:
    """onnxruntime's CalibrationDataReader protocol over a list of input batches."""

    def __init__(self, input_name: str, frames: Sequence[np.ndarray]) -> None:
        self._items = iter([{input_name: f} for f in frames])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._items, None)


def quantize_int8(
    onnx_path: str | Path,
    calibration: Iterable[str | Path],
    out_path: str | Path | None = None,
    *,
    frames: int = DEFAULT_CALIBRATION_FRAMES,
    method: str = "minmax",
    image_topic: str | None = None,
    keep_float: Sequence[str] | None = None,
) -> Int8Result:
    """Exported float32 ``model.onnx`` (+ sidecar) -> ``model.int8.onnx`` (+ sidecar with precision int8).

    ``2 * frames`` frames are sampled evenly from the ``calibration`` paths: the
    even ones calibrate, the odd ones measure the keypoint deviation from
    float32. ``keep_float``: Conv node names to keep float32 (default
    :func:`float_islands`; ``[]`` quantizes every conv).
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    onnx_path = Path(onnx_path)
    calibration = [Path(p) for p in calibration]
    out_path = Path(out_path) if out_path is not None else int8_path(onnx_path)
    if not calibration:
        raise QuantizationError("int8 needs calibration data: --calibration BAG_OR_FOLDER ...")
    if method not in CALIBRATION_METHODS:
        raise QuantizationError(f"calibration method {method!r}; expected one of {', '.join(CALIBRATION_METHODS)}")
    if out_path.resolve() == onnx_path.resolve():
        raise QuantizationError(f"{out_path}: the int8 model must not overwrite its float32 source")
    sidecar = read_sidecar(sidecar_path(onnx_path))
    if sidecar.precision != "fp32":
        raise QuantizationError(f"{onnx_path}: sidecar precision is {sidecar.precision}; quantize a float32 export")
    sampled = sample_frames(calibration, sidecar.input_width, sidecar.input_height, 2 * frames, image_topic)
    calib, check = sampled[::2], sampled[1::2]
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    with tempfile.TemporaryDirectory(prefix="kp_int8_") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        try:
            quant_pre_process(str(onnx_path), str(prepared), skip_symbolic_shape=True)
        except Exception as exc:  # onnxruntime's pre-processing raises assorted types
            raise QuantizationError(f"{onnx_path}: quantization pre-processing failed ({_first_line(exc)})") from None
        model = onnx.load(str(prepared))
        excluded = float_islands(model) if keep_float is None else list(keep_float)
        with atomic_path(out_path, suffix=".tmp.onnx") as tmp_out:
            try:
                with contextlib.redirect_stdout(io.StringIO()):  # its calibrators print progress to stdout
                    quantize_static(
                        str(prepared), str(tmp_out), _Frames(sidecar.input_name, calib),
                        quant_format=QuantFormat.QDQ, op_types_to_quantize=["Conv"], per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=excluded, calibrate_method=methods[method],
                    )
            except Exception as exc:
                raise QuantizationError(f"{onnx_path}: int8 quantization failed ({_first_line(exc)})") from None
            deviation = keypoint_deviation(cpu_session(onnx_path), cpu_session(tmp_out), sidecar.input_name, check)
    quantized = sum(1 for n in onnx.load(str(out_path)).graph.node if n.op_type == "QuantizeLinear")
    int8_sidecar = dataclasses.replace(sidecar, precision="int8", extra={**sidecar.extra, "quantization": {
        "tool": "onnxruntime.quantization.quantize_static",
        "format": "QDQ", "ops": ["Conv"], "activations": "uint8 asymmetric", "weights": "int8 per channel",
        "calibration_method": method, "calibration_frames": len(calib),
        "calibration_sources": [str(p) for p in calibration],
        "float32_conv_nodes": excluded, "quantize_linear_nodes": quantized,
        "keypoint_deviation_from_fp32_px": {**deviation, "frames": len(check),
                                            "frames_note": "sampled from the same sources, not used to calibrate"},
        "float32_source": onnx_path.name,
    }})
    side = sidecar_path(out_path)
    write_sidecar(side, int8_sidecar)
    log.info("int8 %s: %d calibration frames, median keypoint deviation %.3f px", out_path, len(calib),
             deviation["median"])
    return Int8Result(out_path, side, int8_sidecar, tuple(excluded), len(calib), len(check), deviation)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
