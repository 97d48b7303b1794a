"""Publish one KeypointPyramid, PrototypeDetectionArray and PolicyObservation built from a JSON spec.

Run as a separate process by test/test_msgs_roundtrip.py, so the messages
cross a real process boundary through Fast DDS. Reliable, transient-local
QoS; it waits until both topics have a subscriber, then republishes every
``--period`` seconds (tolerating discovery races) until the subscriber goes
away or ``--timeout`` passes.

Usage: python publish_kp_msgs.py SPEC.json --prefix /kp_roundtrip [--timeout 30]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import rclpy
from geometry_msgs.msg import Point
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from kp_perception_msgs.msg import (
    Keypoint,
    KeypointPyramid,
    PolicyObservation,
    PrototypeDetection,
    PrototypeDetectionArray,
)

QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=5,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)


def _header(msg, spec: dict) -> None:
    msg.header.stamp.sec = spec["header"]["sec"]
    msg.header.stamp.nanosec = spec["header"]["nanosec"]
    msg.header.frame_id = spec["header"]["frame_id"]
    msg.image_width = spec["image_width"]
    msg.image_height = spec["image_height"]
    if "has_depth" in spec:
        msg.has_camera_info, msg.has_depth = spec["has_camera_info"], spec["has_depth"]


def _geometry(spec: dict) -> dict:
    x, y, z = spec["position"]
    return {"x_normalized": spec["x_normalized"], "y_normalized": spec["y_normalized"],
            "position": Point(x=x, y=y, z=z), "position_valid": spec["position_valid"]}


def build_pyramid(spec: dict) -> KeypointPyramid:
    msg = KeypointPyramid()
    _header(msg, spec)
    msg.level_sizes = spec["level_sizes"]
    msg.keypoints = [
        Keypoint(x=k["x"], y=k["y"], score=k["score"], level=k["level"], parent=k["parent"], **_geometry(k))
        for k in spec["keypoints"]
    ]
    return msg


def build_detections(spec: dict) -> PrototypeDetectionArray:
    msg = PrototypeDetectionArray()
    _header(msg, spec)
    msg.num_prototypes = spec["num_prototypes"]
    msg.detections = [
        PrototypeDetection(
            x=d["x"], y=d["y"], score=d["score"], prototype=d["prototype"],
            distance=d["distance"], descriptor=d["descriptor"], **_geometry(d),
        )
        for d in spec["detections"]
    ]
    return msg


def build_observation(spec: dict) -> PolicyObservation:
    msg = PolicyObservation()
    _header(msg, spec)
    msg.model_kind, msg.coordinates = spec["model_kind"], spec["coordinates"]
    msg.slot_names, msg.field_names = spec["slot_names"], spec["field_names"]
    msg.data = spec["data"]
    msg.valid = spec["valid"]
    return msg


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("spec")
    parser.add_argument("--prefix", default="/kp_roundtrip")
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--period", type=float, default=0.5)
    args = parser.parse_args()
    with open(args.spec) as f:
        spec = json.load(f)

    rclpy.init()
    node = rclpy.create_node("kp_roundtrip_publisher")
    pubs = [
        (node.create_publisher(KeypointPyramid, f"{args.prefix}/pyramid", QOS), build_pyramid(spec["pyramid"])),
        (node.create_publisher(PrototypeDetectionArray, f"{args.prefix}/detections", QOS),
         build_detections(spec["detections"])),
        (node.create_publisher(PolicyObservation, f"{args.prefix}/observation", QOS),
         build_observation(spec["observation"])),
    ]
    deadline = time.monotonic() + args.timeout
    matched = False
    status = 0
    try:
        while time.monotonic() < deadline:
            counts = [pub.get_subscription_count() for pub, _ in pubs]
            if all(counts):
                if not matched:
                    print("matched", flush=True)
                matched = True
                for pub, msg in pubs:
                    pub.publish(msg)
            elif matched and not any(counts):
                break  # the receiver is done and has left
            time.sleep(args.period if matched else 0.05)
        else:
            if not matched:
                print("no subscriber matched before the timeout", file=sys.stderr)
                status = 3
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return status


if __name__ == "__main__":
    sys.exit(main())
