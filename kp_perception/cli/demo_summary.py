"""What ``kp-perception demo`` measured and drew, from the messages the node published.

The received messages are decoded with ``kp_perception.ros_conversion`` (the
inverse of what the node sends), matched to the frames they answer by header
stamp, drawn (GIF, MP4, PNG) and summarised: frames answered, output rate,
end-to-end latency, and how far keypoints moved next to how far the
simulator's ground-truth points moved.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kp_perception.kinds import DETECTIONS, KINDS, NODES, PYRAMID

DEMO_KINDS = tuple(name for name, kind in KINDS.items() if kind.shipped_model)
MSG_TYPES = {name: KINDS[name].node.message for name in DEMO_KINDS}
DIAGNOSTICS_TYPE = "diagnostic_msgs/msg/DiagnosticArray"
DEBUG_IMAGE_TYPE = "sensor_msgs/msg/Image"


@dataclass(frozen=True)
class Received:
    """One message from the node: its topic, CDR bytes and receive time (ns, system clock)."""

    topic: str
    msgtype: str
    data: bytes
    received_ns: int


def message_classes() -> dict[str, type]:
    """ROS type name -> rclpy message class, for the topics the demo records (imported when called)."""
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import Image

    from kp_perception_msgs.msg import KeypointPyramid, PrototypeDetectionArray

    return {
        NODES[PYRAMID].message: KeypointPyramid,
        NODES[DETECTIONS].message: PrototypeDetectionArray,
        DIAGNOSTICS_TYPE: DiagnosticArray,
        DEBUG_IMAGE_TYPE: Image,
    }


def keypoint_displacement(prev, curr, ordered: bool) -> float:
    """Mean pixel distance keypoints moved between two results (NaN when one is empty).

    ``ordered`` (pyramids): keypoint i is the same keypoint in every frame, so index to
    index. Detections (TUSK) are unordered, so each current detection to the nearest
    previous one.
    """
    a, b = np.asarray(prev.xy, dtype=np.float64), np.asarray(curr.xy, dtype=np.float64)
    if len(a) == 0 or len(b) == 0:
        return float("nan")
    if ordered and a.shape == b.shape:
        return float(np.linalg.norm(b - a, axis=1).mean())
    return float(np.linalg.norm(b[:, None, :] - a[None, :, :], axis=2).min(axis=1).mean())


def ground_truth_motion(annotations_csv: Path, frames: int) -> np.ndarray:
    """Mean pixel motion of the simulator's visible ground-truth points from frame i-1 to i (index 0 = NaN)."""
    from kp_perception_training.sim.annotations import group_by_frame, read_annotations

    grouped = group_by_frame(read_annotations(annotations_csv))
    motion = np.full(frames, np.nan)
    for i in range(1, frames):
        prev, curr = grouped.get(("episode_000", i - 1), {}), grouped.get(("episode_000", i), {})
        moved = [np.hypot(curr[n].x - prev[n].x, curr[n].y - prev[n].y)
                 for n in curr if n in prev and curr[n].visible and prev[n].visible]
        if moved:
            motion[i] = float(np.mean(moved))
    return motion


def _percentile_ms(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if values else None


def summarise(args, frames, recording, sent, received, node_exit, domain) -> dict[str, Any]:
    from rclpy.serialization import deserialize_message
    from tqdm import tqdm

    from kp_perception.drawing import draw_caption, draw_detections, draw_pyramid
    from kp_perception.media import AnnotatedVideoWriter
    from kp_perception.ros_conversion import detections_from_msg, pyramid_from_msg

    kind = args.kind
    pyramid = KINDS[kind].family == PYRAMID
    from_msg = pyramid_from_msg if pyramid else detections_from_msg
    msg_class = message_classes()[MSG_TYPES[kind]]
    by_stamp = {s.stamp_ns: s for s in sent}
    outputs = [r for r in received if r.msgtype == MSG_TYPES[kind]]
    results: dict[int, Any] = {}
    latencies_ms: list[float] = []
    receive_times: list[int] = []
    unmatched = 0
    for r in outputs:
        msg = deserialize_message(r.data, msg_class)
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        frame = by_stamp.get(stamp)
        if frame is None:
            unmatched += 1
            continue
        results[frame.index] = from_msg(msg)
        latencies_ms.append((r.received_ns - stamp) * 1e-6)
        receive_times.append(r.received_ns)

    # Motion: consecutive frames the node answered both of, next to the ground truth's motion.
    gt = ground_truth_motion(recording / "annotations.csv", len(frames))
    pairs = [(i, keypoint_displacement(results[i - 1], results[i], pyramid), gt[i])
             for i in sorted(results) if i - 1 in results]
    pairs = [(i, d, g) for i, d, g in pairs if np.isfinite(d)]
    disp = np.array([d for _, d, _ in pairs])
    gts = np.array([g for _, _, g in pairs])
    both = np.isfinite(gts)
    correlation = None
    if both.sum() >= 3 and disp[both].std() > 0 and gts[both].std() > 0:
        correlation = round(float(np.corrcoef(disp[both], gts[both])[0, 1]), 3)

    out = args.out
    types = None if pyramid else prototype_types(recording / "annotations.csv", results, args.size)
    draw = draw_pyramid if pyramid else draw_detections
    if types is not None:  # detections coloured by (and labelled with) the object type their prototype stands for
        colours, labels = types.pop("colours"), types.pop("labels")

        def draw(frame, result):  # noqa: F811  (the TUSK variant of the drawing function)
            return draw_detections(frame, result, colours, labels)
    gif, mp4, png = out / "keypoints.gif", out / "keypoints.mp4", out / "keypoints.png"
    shown = sorted(results)
    if shown:
        with AnnotatedVideoWriter(gif, fps=args.rate) as g, AnnotatedVideoWriter(mp4, fps=args.rate) as m:
            for i in tqdm(shown, desc="drawing", unit="frame"):
                canvas = draw_caption(draw(frames[i], results[i]), f"{kind}_node  frame {i}")
                g.write(canvas)
                m.write(canvas)
                if i == shown[len(shown) // 2]:
                    import imageio.v3 as iio

                    iio.imwrite(png, canvas)

    span_s = (max(receive_times) - min(receive_times)) * 1e-9 if len(receive_times) > 1 else 0.0
    sent_span = sent[-1].sent_monotonic - sent[0].sent_monotonic if len(sent) > 1 else 0.0
    diagnostics = _last_diagnostics(received)
    counts = [len(r.scores) for r in results.values()]
    return {
        "kind": kind,
        "model": str(args.model),
        "node": KINDS[kind].node.executable,
        "ros_domain_id": domain,
        "frame_size": [args.size, args.size],
        "frames_sent": len(sent),
        "frames_received": len(results),
        "frames_unanswered": len(sent) - len(results),
        "answered_frames": shown,
        "unmatched_messages": unmatched,
        "input_rate_hz": round((len(sent) - 1) / sent_span, 2) if sent_span else None,
        "output_rate_hz": round((len(receive_times) - 1) / span_s, 2) if span_s else None,
        "latency_ms": {
            "p50": _percentile_ms(latencies_ms, 50),
            "p99": _percentile_ms(latencies_ms, 99),
            "max": round(max(latencies_ms), 2) if latencies_ms else None,
        },
        "keypoints_per_frame": round(float(np.mean(counts)), 2) if counts else 0,
        "motion": {
            "pairs": len(pairs),
            "mean_displacement_px": round(float(disp.mean()), 3) if len(disp) else None,
            "std_displacement_px": round(float(disp.std()), 3) if len(disp) else None,
            "ground_truth_mean_displacement_px": round(float(np.nanmean(gts)), 3) if both.any() else None,
            "correlation_with_ground_truth": correlation,
            "per_pair": [{"frame": i, "keypoints_px": round(d, 3), "ground_truth_px": None if not np.isfinite(g)
                          else round(float(g), 3)} for i, d, g in pairs],
        },
        **({"prototypes": types} if types is not None else {}),
        "node_diagnostics": diagnostics,
        "node_exit_code": node_exit,
        "outputs": {
            "gif": str(gif) if shown else None,
            "mp4": str(mp4) if shown else None,
            "png": str(png) if shown else None,
            "png_frame": shown[len(shown) // 2] if shown else None,
            "summary": str(out / "summary.json"),
            "node_log": str(out / "node.log"),
        },
    }


def prototype_types(annotations_csv: Path, results: dict[int, Any], size: int) -> dict[str, Any]:
    """How the node's prototypes name the clip's object types (the clip carries ground truth).

    Detections are matched to the annotated objects as ``kp-perception eval`` does
    (nearest visible ``<object>/<point>`` within 8 % of the frame side); each prototype
    stands for the type most of its matched detections lie on. Returns the
    prototypes fired, purity / inverse purity against the types, detection recall,
    and, for drawing, each matched prototype's type colour (the simulator's
    catalogue) and name.
    """
    from kp_perception_training.evaluation.purity import inverse_purity, purity
    from kp_perception_training.sim.annotations import object_points, read_annotations
    from kp_perception_training.sim.catalogue import CATALOGUE, object_type
    from kp_perception_training.tusk.evaluate import match_to_objects

    objects = object_points(read_annotations(annotations_csv), annotations_csv)
    sequence = next(iter(objects))[0] if objects else "episode_000"
    protos: list[int] = []
    kinds: list[str] = []
    recalled: list[bool] = []
    fired: set[int] = set()
    for i, result in results.items():
        ids = np.asarray(result.prototypes).reshape(-1)
        fired.update(int(p) for p in ids)
        matches, seen = match_to_objects(np.asarray(result.xy), ids, objects.get((sequence, i), {}), 0.08 * size)
        protos += [p for p, _ in matches]
        kinds += [object_type(o) for _, o in matches]
        recalled += [r for _, r in seen]
    majority: dict[int, str] = {}
    for p in set(protos):
        members = [k for q, k in zip(protos, kinds, strict=True) if q == p]
        majority[p] = max(set(members), key=members.count)
    colours = {p: tuple(int(round(255 * c)) for c in CATALOGUE[t].rgba[:3])
               for p, t in majority.items() if t in CATALOGUE}
    return {
        "fired": len(fired),
        "matched_to_objects": len(set(protos)),
        "detections_matched": len(protos),
        "purity": round(purity(protos, kinds), 3) if protos else None,
        "inverse_purity": round(inverse_purity(protos, kinds), 3) if protos else None,
        "detection_recall": round(float(np.mean(recalled)), 3) if recalled else None,
        "type_of_prototype": {str(p): t for p, t in sorted(majority.items())},
        "colours": colours,
        "labels": {p: f"{p}:{t}" for p, t in majority.items()},
    }


def _last_diagnostics(received: list[Received]) -> dict[str, str]:
    """The key/values of the node's last /diagnostics status (its own rate, latency, drops)."""
    from rclpy.serialization import deserialize_message

    diags = [r for r in received if r.msgtype == DIAGNOSTICS_TYPE]
    if not diags:
        return {}
    msg = deserialize_message(diags[-1].data, message_classes()[DIAGNOSTICS_TYPE])
    return {kv.key: kv.value for status in msg.status for kv in status.values}


def print_summary(summary: dict[str, Any], out: Path) -> None:
    lat = summary["latency_ms"]
    motion = summary["motion"]
    lines = [
        f"demo {summary['kind']}: {summary['frames_received']}/{summary['frames_sent']} frames answered by "
        f"{summary['node']}, output {summary['output_rate_hz']} Hz (input {summary['input_rate_hz']} Hz)",
        f"  end-to-end latency p50 {lat['p50']} ms, p99 {lat['p99']} ms (shared CPU: indicative only)",
        f"  keypoints moved {motion['mean_displacement_px']} px/frame on average (ground-truth points: "
        f"{motion['ground_truth_mean_displacement_px']} px/frame, correlation {motion['correlation_with_ground_truth']})",
        f"outputs in {out}/:",
    ]
    protos = summary.get("prototypes")
    if protos is not None:
        lines.insert(3, (
            f"  prototypes: {protos['fired']} fired, {protos['matched_to_objects']} on objects; purity "
            f"{protos['purity']} against the object types (inverse {protos['inverse_purity']}), detection recall "
            f"{protos['detection_recall']} on this clip's ground truth; detections coloured by object type"))
    for key, path in summary["outputs"].items():
        if isinstance(path, str):
            lines.append(f"  {key:10s} {path}")
    print("\n".join(lines), flush=True)
