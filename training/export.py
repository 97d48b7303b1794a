"""ONNX export with in-graph pre/post-processing, plus the sidecar and (optionally) a TensorRT engine.

Why in-graph: every backend must return the same arrays, so uint8 -> float,
NMS / top-K / soft-argmax (TUSK) and the [-1, 1] -> pixel mapping are part of
the exported graph (:class:`kp_perception.backends.torch_backend.InferenceGraph`),
not re-implemented per backend.

Choices, written down:

* The torch.export-based ``torch.onnx.export`` at opset 18 (TensorRT 10 parses
  opsets 9-20): it folds shape arithmetic to constants, so the graph is plain
  float32/int conv + post-processing ops. Every op in the result is checked
  against :data:`TENSORRT10_OPS`, and every tensor type against float32/int32/
  int64/uint8/bool, so an unsupported op fails at export, not on the robot.
* Fixed input size (default: the training size ``config.data.image_size``),
  batch 1 unless ``dynamic_batch``.
* After export the graph is run once with ONNX Runtime and compared with torch
  on a random frame (max keypoint difference must be < 0.05 px), so a broken
  export never reaches disk under its final name.
* ONNX and sidecar are written to temporary files and renamed into place.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kp_perception.atomic import atomic_path
from kp_perception.errors import KpPerceptionError, ModelLoadError
from kp_perception.sidecar import Sidecar, sidecar_path, write_sidecar

log = logging.getLogger(__name__)

DEFAULT_OPSET = 18
PARITY_TOLERANCE_PX = 0.05

# ONNX ops the TensorRT 10 ONNX parser supports (onnx-tensorrt docs/operators.md for 10.x),
# restricted to those a conv encoder with in-graph post-processing can plausibly emit.
TENSORRT10_OPS = frozenset(
    """
    Abs Add And ArgMax ArgMin AveragePool BatchNormalization Cast Ceil Clip Concat Constant
    ConstantOfShape Conv ConvTranspose Div Einsum Equal Erf Exp Expand Flatten Floor Gather
    GatherElements GatherND Gemm GlobalAveragePool GlobalMaxPool Greater GreaterOrEqual GridSample
    Identity InstanceNormalization IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax
    LpNormalization MatMul Max MaxPool Mean Min Mod Mul Neg Not Or Pad Pow Range Reciprocal
    ReduceL2 ReduceMax ReduceMean ReduceMin ReduceSum ReduceSumSquare Relu Reshape Resize Round
    ScatterElements ScatterND Shape Sigmoid Sign Size Slice Softmax Softplus Split Sqrt Squeeze
    Sub Sum Tanh Tile TopK Transpose Unsqueeze Where
    """.split()
)


# Tensor element types TensorRT 10 handles natively (no DOUBLE: TensorRT only casts it down).
ALLOWED_TYPE_NAMES = "FLOAT, INT32, INT64, UINT8, BOOL"
ALLOWED_TENSOR_TYPES = frozenset({1, 6, 7, 2, 9})  # onnx.TensorProto FLOAT, INT32, INT64, UINT8, BOOL


class ExportError(KpPerceptionError):
    """Export failed (unsupported op, parity check, missing TensorRT/GPU); the message says why."""


@dataclass(frozen=True)
class ExportResult:
    onnx_path: Path
    sidecar_path: Path
    sidecar: Sidecar
    max_parity_error_px: float
    engine_path: Path | None = None


def resolve_checkpoint(run: str | Path, which: str = "best") -> Path:
    """RUN directory -> ``RUN/<which>.pt`` (falling back to last.pt when best.pt is absent); a .pt passes through."""
    run = Path(run)
    if run.is_file():
        return run
    if not run.exists():
        raise ModelLoadError(f"{run}: no such run directory or checkpoint")
    candidates = [run / f"{which}.pt"] + ([run / "last.pt"] if which == "best" else [])
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ModelLoadError(f"{run}: no {' or '.join(c.name for c in candidates)} in the run directory")


def export_checkpoint(
    checkpoint_path: str | Path,
    onnx_path: str | Path,
    *,
    image_size: tuple[int, int] | None = None,
    dynamic_batch: bool = False,
    opset: int = DEFAULT_OPSET,
    engine_path: str | Path | None = None,
    fp16: bool = False,
    progress: bool = False,
) -> ExportResult:
    """Checkpoint -> ONNX + sidecar (+ TensorRT engine). ``image_size`` is (width, height)."""
    from kp_perception.checkpoint import load_checkpoint

    if engine_path is not None:
        # Fail before the slow export when the engine cannot be built here.
        from kp_perception.backends.tensorrt_backend import require_tensorrt_gpu

        try:
            require_tensorrt_gpu()
        except ModelLoadError as exc:
            raise ExportError(f"--engine {engine_path}: {exc}") from None
    checkpoint = load_checkpoint(checkpoint_path)
    result = export_graph_from_checkpoint(
        checkpoint, onnx_path, image_size=image_size, dynamic_batch=dynamic_batch, opset=opset,
        source=checkpoint_path, progress=progress,
    )
    if engine_path is not None:
        from kp_perception.backends.engine_settings import EngineSettings
        from kp_perception.backends.tensorrt_backend import build_engine_for_onnx

        built = build_engine_for_onnx(result.onnx_path, EngineSettings(engine_file_path=str(engine_path), fp16=fp16))
        write_sidecar(sidecar_path(built), result.sidecar)
        result = ExportResult(**{**result.__dict__, "engine_path": built})
    return result


def export_graph_from_checkpoint(
    checkpoint: dict[str, Any],
    onnx_path: str | Path,
    *,
    image_size: tuple[int, int] | None = None,
    dynamic_batch: bool = False,
    opset: int = DEFAULT_OPSET,
    source: str | Path = "checkpoint",
    progress: bool = False,
) -> ExportResult:
    """Checkpoint dict -> ONNX file + sidecar next to it; returns paths, sidecar and parity error."""
    from tqdm import tqdm

    from kp_perception.backends.torch_backend import describe, graph_from_checkpoint

    if opset < 17:
        raise ExportError(f"opset {opset} requested, expected 17 or newer")
    graph, width, height = graph_from_checkpoint(checkpoint, image_size, source=source)
    sidecar = describe(graph, width, height, config=checkpoint["config"], opset=opset, dynamic_batch=dynamic_batch)
    onnx_path = Path(onnx_path)
    bar = tqdm(total=4, desc="export", unit="step", disable=not progress)
    try:
        with atomic_path(onnx_path, suffix=".tmp.onnx") as tmp:
            bar.set_postfix_str("torch.onnx.export")
            _torch_export(graph, sidecar, tmp, opset, dynamic_batch)
            bar.update()
            bar.set_postfix_str("onnx.checker + TensorRT op list")
            _check_graph(tmp, sidecar)
            bar.update()
            bar.set_postfix_str("onnxruntime vs torch parity")
            error_px = _parity(graph, sidecar, tmp)
            bar.update()
        side = sidecar_path(onnx_path)
        write_sidecar(side, sidecar)
        bar.update()
    finally:
        bar.close()
    log.info("exported %s (%s, %dx%d), parity %.2e px", onnx_path, sidecar.kind, width, height, error_px)
    return ExportResult(onnx_path, side, sidecar, error_px)


def _torch_export(graph, sidecar: Sidecar, path: Path, opset: int, dynamic_batch: bool) -> None:
    """torch.export-based ``torch.onnx.export`` (torch's default exporter since 2.9).

    Chosen over the TorchScript exporter because it folds shape arithmetic into
    constants: the TorchScript exporter turned the encoders' shape-dependent
    ``linspace`` into Range/Cast-to-double chains, which TensorRT supports only
    partially. Its progress prints and registry warnings are silenced.
    """
    import torch

    example = torch.zeros(1, sidecar.input_height, sidecar.input_width, 3, dtype=torch.uint8)
    dynamic_axes = None
    if dynamic_batch:
        dynamic_axes = {sidecar.input_name: {0: "batch"}}
        for spec in sidecar.outputs:
            if spec.shape and spec.shape[0] == "batch":
                dynamic_axes[spec.name] = {0: "batch"}
    onnx_logger = logging.getLogger("torch.onnx")
    level = onnx_logger.level
    onnx_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                graph,
                (example,),
                str(path),
                input_names=[sidecar.input_name],
                output_names=list(sidecar.output_names),
                opset_version=opset,
                dynamic_axes=dynamic_axes,
                dynamo=True,
                optimize=True,
                external_data=False,
            )
    except Exception as exc:  # torch.export raises many types; the first line says which op/shape
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"torch.onnx.export failed for {sidecar.kind}: {reason}") from None
    finally:
        onnx_logger.setLevel(level)


def _check_graph(path: Path, sidecar: Sidecar) -> None:
    """onnx.checker, opset and the TensorRT 10 op list."""
    import onnx

    model = onnx.load(str(path))
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"{path}: exported graph fails onnx.checker ({str(exc).splitlines()[0]})") from None
    unsupported = sorted({node.op_type for node in model.graph.node if node.domain in ("", "ai.onnx")} - TENSORRT10_OPS)
    foreign = sorted({f"{node.domain}::{node.op_type}" for node in model.graph.node if node.domain not in ("", "ai.onnx")})
    if unsupported or foreign:
        raise ExportError(
            f"{sidecar.kind} graph uses ops outside the TensorRT 10 list: {', '.join(unsupported + foreign)}"
        )
    inferred = onnx.shape_inference.infer_shapes(model)
    values = [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]
    bad = sorted({
        onnx.TensorProto.DataType.Name(v.type.tensor_type.elem_type)
        for v in values
        if v.type.tensor_type.elem_type not in ALLOWED_TENSOR_TYPES
    })
    if bad:
        raise ExportError(f"{sidecar.kind} graph has tensors of type {', '.join(bad)}, expected only {ALLOWED_TYPE_NAMES}")


def graph_ops(path: str | Path) -> set[str]:
    """The set of op types in an ONNX file (for tests and reports)."""
    import onnx

    return {node.op_type for node in onnx.load(str(path)).graph.node}


def _parity(graph, sidecar: Sidecar, path: Path) -> float:
    """Max |keypoint difference| in model pixels between torch and ONNX Runtime on one random frame."""
    import onnxruntime as ort
    import torch

    from kp_perception.backends.onnxruntime_backend import check_session

    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (1, sidecar.input_height, sidecar.input_width, 3), dtype=np.uint8)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    try:
        check_session(path, session, sidecar)
    except ModelLoadError as exc:
        raise ExportError(str(exc)) from None
    onnx_kp = session.run(["keypoints"], {sidecar.input_name: frame})[0]
    with torch.inference_mode():
        torch_kp = graph(torch.from_numpy(frame))[0].numpy()
    error = float(np.abs(onnx_kp - torch_kp).max()) if onnx_kp.size else 0.0
    if not np.isfinite(error) or error > PARITY_TOLERANCE_PX:
        raise ExportError(
            f"ONNX Runtime and torch keypoints differ by {error:.4f} px, expected <= {PARITY_TOLERANCE_PX} px"
        )
    return error
