"""``kp-perception infer``: run a model over a bag, video or image folder offline.

Writes an annotated video (the same drawing as the nodes' debug image) and a
CSV of keypoints per frame, so a user can check a model on recorded data
before putting it on the robot.
"""

from __future__ import annotations

import argparse
import csv
import sys
from contextlib import ExitStack

PYRAMID_COLUMNS = ["sequence", "frame", "index", "level", "parent", "x", "y", "score"]
TUSK_COLUMNS = ["sequence", "frame", "index", "prototype", "distance", "x", "y", "score"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "infer",
        help="run a model over a bag, video or image folder; write an annotated video and a CSV",
        description="Offline inference with the same backends and drawing as the ROS 2 nodes.",
    )
    p.add_argument("model", help="model file: .onnx (with its .json sidecar), .engine/.plan, or a .pt checkpoint")
    p.add_argument("--input", required=True, nargs="+", help="rosbag2 (mcap/sqlite3), video file or image folder")
    p.add_argument("--backend", choices=["onnxruntime", "tensorrt", "torch"], help="default: by model extension")
    p.add_argument("--providers", nargs="+", help="onnxruntime execution providers, in order of preference")
    p.add_argument("--image-topic", help="image topic, when a bag has more than one")
    p.add_argument("--out", help="annotated video (.mp4, .avi or .gif)")
    p.add_argument("--csv", help="CSV of keypoints per frame")
    p.add_argument("--threshold", type=float, default=0.0, help="drop detections/keypoints scoring below this")
    p.add_argument("--fps", type=float, default=10.0, help="frame rate of the output video")
    p.add_argument("--max-frames", type=int, default=0, help="stop after this many frames per sequence (0 = all)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from kp_perception.atomic import atomic_path, check_writable
    from kp_perception.backends import load_backend
    from kp_perception.drawing import draw_detections, draw_pyramid
    from kp_perception.errors import KpPerceptionError
    from kp_perception.kinds import PYRAMID, get_kind
    from kp_perception.media import AnnotatedVideoWriter
    from kp_perception.results import KeypointPyramidResult, threshold_detections, threshold_pyramid
    from kp_perception.sequences import open_sequences

    if not args.out and not args.csv:
        raise KpPerceptionError("nothing to write: give --out VIDEO and/or --csv FILE")
    for output in (args.out, args.csv):
        if output:
            check_writable(output)
    backend = load_backend(args.model, backend=args.backend, providers=args.providers)
    sequences = open_sequences(args.input, image_topic=args.image_topic)

    frames = 0
    with ExitStack() as stack:
        video = stack.enter_context(AnnotatedVideoWriter(args.out, fps=args.fps)) if args.out else None
        writer = None
        if args.csv:
            csv_file = stack.enter_context(open(stack.enter_context(atomic_path(args.csv)), "w", newline=""))
            writer = csv.writer(csv_file)
        hierarchy = get_kind(backend.sidecar.kind).family == PYRAMID
        if writer:
            writer.writerow(PYRAMID_COLUMNS if hierarchy else TUSK_COLUMNS)
        for sequence in sequences:
            total = len(sequence) if not args.max_frames else min(len(sequence), args.max_frames)
            for index, frame in enumerate(tqdm(sequence.iter_frames(), total=total, desc=sequence.name, unit="frame")):
                if args.max_frames and index >= args.max_frames:
                    break
                result = backend.infer(frame)
                if isinstance(result, KeypointPyramidResult):
                    result = threshold_pyramid(result, args.threshold)
                    if writer:
                        for i in range(len(result.scores)):
                            x, y = result.xy[i]
                            writer.writerow([sequence.name, index, i, int(result.levels[i]), int(result.parents[i]),
                                             f"{x:.3f}", f"{y:.3f}", f"{result.scores[i]:.4f}"])
                    if video:
                        video.write(draw_pyramid(frame, result))
                else:
                    result = threshold_detections(result, args.threshold)
                    if writer:
                        for i in range(len(result.scores)):
                            x, y = result.xy[i]
                            writer.writerow([sequence.name, index, i, int(result.prototypes[i]),
                                             f"{result.distances[i]:.5f}", f"{x:.3f}", f"{y:.3f}",
                                             f"{result.scores[i]:.4f}"])
                    if video:
                        video.write(draw_detections(frame, result))
                frames += 1
    outputs = ", ".join(str(p) for p in (args.out, args.csv) if p)
    print(f"infer: {frames} frames from {len(sequences)} sequence(s) with {backend.name} -> {outputs}", file=sys.stderr)
    return 0
