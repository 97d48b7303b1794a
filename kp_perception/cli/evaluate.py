"""``kp-perception eval RUN --data PATH...``: metrics of a trained model, as JSON.

Dispatches on the checkpoint's kind to its evaluator (the kind registry, ``kp_perception.kinds``)
(landmark regression RMSE for pyramids/keynet/transporter; ARI, attribute,
detection/classification accuracy and optional landmarks for TUSK). torch and
``training`` are imported inside :func:`run` only.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(subparsers) -> None:
    sub = subparsers.add_parser(
        "eval",
        help="evaluate a trained run (landmark RMSE, ARI, attribute/detection accuracy) as JSON",
        description=(
            "Evaluate RUN's checkpoint on --data. Prints the metrics as JSON (and writes them to --json); "
            "plots go next to the JSON file, or into RUN/eval/."
        ),
    )
    sub.add_argument("run", metavar="RUN", type=Path, help="training run directory or a .pt checkpoint")
    sub.add_argument("--data", nargs="+", required=True, metavar="PATH", help="evaluation data sources")
    sub.add_argument(
        "--annotations", metavar="CSV",
        help="annotations CSV (sequence,frame,name,x,y[,visible]) for landmarks; TUSK groups rows into objects "
             "by '<object>/<point>' names (e.g. mug/centre, duck_2/surface_0; the type is the object name "
             "without a _<n> suffix), leaves out arm/... rows and names without '/', and refuses a CSV in "
             "which no name has that form; keypoint models (pyramids, keynet, transporter) also report the "
             "regression RMSE split into object landmarks ('<object>/<point>') and the rest (robot: arm/..., "
             "gripper) when both are present",
    )
    sub.add_argument("--json", type=Path, metavar="FILE", help="also write the metrics JSON here")
    sub.add_argument(
        "--checkpoint", choices=("best", "last"), default="best",
        help="which checkpoint of RUN (default: best, falling back to last)",
    )
    sub.add_argument("--seed", type=int, default=0, help="seed of the fit/score split (default 0)")
    sub.add_argument("--onnx", type=Path, metavar="MODEL",
                     help="score this exported model of RUN (float32 or int8 .onnx, run by onnxruntime on CPU) "
                     "instead of RUN's torch encoder; pyramid kinds")
    sub.set_defaults(func=run)


def checkpoint_file(run_path: Path, which: str = "best") -> Path:
    """RUN/best.pt (falling back to last.pt) or RUN/last.pt; a file is used as is."""
    from kp_perception.errors import ModelLoadError

    if run_path.is_file():
        return run_path
    if not run_path.is_dir():
        raise ModelLoadError(f"{run_path}: no such run directory or checkpoint")
    order = ("best.pt", "last.pt") if which == "best" else ("last.pt",)
    for name in order:
        if (run_path / name).is_file():
            return run_path / name
    raise ModelLoadError(f"{run_path}: no {' or '.join(order)} in this run directory")


def run(args: argparse.Namespace) -> int:
    from kp_perception.checkpoint import load_checkpoint
    from kp_perception.errors import DataError

    path = checkpoint_file(args.run, args.checkpoint)
    if args.annotations is not None and not Path(args.annotations).is_file():
        raise DataError(f"{args.annotations}: annotations file not found")
    ckpt = load_checkpoint(path)

    from kp_perception_training.methods import resolve_evaluator

    evaluate = resolve_evaluator(ckpt["kind"])
    out_dir = args.json.parent if args.json is not None else (path.parent / "eval")
    extra = {}
    if args.onnx is not None:
        from kp_perception.errors import ConfigError
        from kp_perception.kinds import PYRAMID_KINDS

        if ckpt["kind"] not in PYRAMID_KINDS:
            raise ConfigError(f"eval --onnx scores pyramid kinds ({', '.join(PYRAMID_KINDS)}); this run is "
                              f"{ckpt['kind']!r}")
        if not args.onnx.is_file():
            raise DataError(f"--onnx {args.onnx}: model file not found")
        extra["onnx"] = str(args.onnx)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = evaluate(ckpt, [str(p) for p in args.data], args.annotations, out_dir, seed=args.seed, **extra)
    text = json.dumps(metrics, indent=2, sort_keys=True)
    if args.json is not None:
        args.json.write_text(text + "\n")
    print(text)
    return 0
