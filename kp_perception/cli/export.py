"""``kp-perception export RUN --onnx FILE [--engine FILE --fp16] [--int8 --calibration DATA]``: encoder -> ONNX.

``--int8`` also writes ``FILE`` with ``.int8.onnx`` (+ its sidecar, precision
int8): ONNX Runtime static quantization calibrated on frames of DATA
(``training/quantization.py``), for CPU robots.

RUN is a training run directory (``best.pt``, falling back to ``last.pt``) or a
``.pt`` checkpoint. torch and ``training`` are imported inside :func:`run` only.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(subparsers) -> None:
    sub = subparsers.add_parser(
        "export",
        help="export a trained encoder to ONNX (+ sidecar JSON, + optional TensorRT engine)",
        description=(
            "Export RUN's encoder to ONNX with in-graph pre/post-processing (uint8 RGB NHWC in, "
            "keypoints in model-input pixels out) and write FILE's sidecar JSON next to it."
        ),
    )
    sub.add_argument("run", metavar="RUN", type=Path, help="training run directory or a .pt checkpoint")
    sub.add_argument("--onnx", required=True, type=Path, metavar="FILE", help="ONNX file to write")
    sub.add_argument("--engine", type=Path, metavar="FILE", help="also build a TensorRT engine (needs tensorrt + GPU)")
    sub.add_argument("--fp16", action="store_true", help="build the TensorRT engine with FP16 enabled")
    sub.add_argument("--int8", action="store_true",
                     help="also write an int8 model (FILE stem + .int8.onnx) for CPU robots: ONNX Runtime static "
                     "quantization (QDQ), calibrated on --calibration frames")
    sub.add_argument("--calibration", nargs="+", type=Path, metavar="DATA",
                     help="training data for --int8 calibration: bags, videos or image folders (as `train --data`)")
    sub.add_argument("--calibration-frames", type=int, default=64, metavar="N",
                     help="calibration frames (as many more, not used to calibrate, check the keypoint deviation)")
    sub.add_argument("--calibration-method", choices=("minmax", "entropy", "percentile"), default="minmax")
    sub.add_argument("--image-topic", help="image topic of the calibration bags when they have several")
    sub.add_argument(
        "--checkpoint", choices=("best", "last"), default="best",
        help="which checkpoint of RUN (default: best, falling back to last)",
    )
    sub.add_argument(
        "--image-size", nargs=2, type=int, metavar=("W", "H"),
        help="model input size (default: the training size from the checkpoint config)",
    )
    sub.add_argument("--dynamic-batch", action="store_true", help="symbolic batch dimension (default: batch 1)")
    sub.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kp_perception.errors import ConfigError

    if args.fp16 and args.engine is None:
        raise ConfigError("--fp16 applies to the TensorRT engine; give --engine FILE too")
    if args.image_size is not None and min(args.image_size) < 8:
        raise ConfigError(f"--image-size {args.image_size[0]} {args.image_size[1]}: expected both >= 8 pixels")
    if args.onnx.suffix.lower() != ".onnx":
        raise ConfigError(f"--onnx {args.onnx}: expected a .onnx file name")
    if args.int8 and not args.calibration:
        raise ConfigError("--int8 needs --calibration DATA (frames of the training data: bags, videos, image folders)")
    if args.calibration and not args.int8:
        raise ConfigError("--calibration applies to --int8; give --int8 too")
    if args.calibration_frames < 1:
        raise ConfigError(f"--calibration-frames {args.calibration_frames}: expected at least 1")
    for path in args.calibration or []:
        if not path.exists():
            raise ConfigError(f"--calibration {path}: no such file or directory")

    from kp_perception_training.export import export_checkpoint, resolve_checkpoint

    checkpoint = resolve_checkpoint(args.run, args.checkpoint)
    print(f"exporting {checkpoint} -> {args.onnx}", flush=True)
    from kp_perception.atomic import check_writable
    from kp_perception_training.quantization import int8_path

    int8_onnx = int8_path(args.onnx) if args.int8 else None
    for output in (args.onnx, args.onnx.with_suffix(".json"), args.engine, int8_onnx):
        if output is not None:
            check_writable(output)  # an unwritable place fails now, not after the export
    result = export_checkpoint(
        checkpoint,
        args.onnx,
        image_size=tuple(args.image_size) if args.image_size else None,
        dynamic_batch=args.dynamic_batch,
        engine_path=args.engine,
        fp16=args.fp16,
        progress=True,
    )
    summary = {
        "onnx": str(result.onnx_path),
        "sidecar": str(result.sidecar_path),
        "engine": str(result.engine_path) if result.engine_path else None,
        "kind": result.sidecar.kind,
        "input_size": [result.sidecar.input_width, result.sidecar.input_height],
        "outputs": {s.name: list(s.shape) for s in result.sidecar.outputs},
        "opset": result.sidecar.opset,
        "parity_max_error_px": result.max_parity_error_px,
        "precision": result.sidecar.precision,
    }
    if args.int8:
        from kp_perception_training.quantization import quantize_int8

        print(f"int8: calibrating on {args.calibration_frames} frames of {', '.join(map(str, args.calibration))}",
              flush=True)
        q = quantize_int8(result.onnx_path, args.calibration, int8_onnx, frames=args.calibration_frames,
                          method=args.calibration_method, image_topic=args.image_topic)
        summary["int8"] = {
            "onnx": str(q.onnx_path),
            "sidecar": str(q.sidecar_path),
            "precision": q.sidecar.precision,
            "calibration_frames": q.calibration_frames,
            "float32_conv_nodes": list(q.float_nodes),
            "keypoint_deviation_from_fp32_px": q.deviation_px,
            "check_frames": q.check_frames,
        }
    print(json.dumps(summary, indent=2))
    return 0
