"""``tusk_node``: camera images in, TUSK prototype detections out (``PrototypeDetectionArray``).

Thin on purpose: everything but the message, the conversion and the drawing
lives in :mod:`kp_perception.nodes.base`. Topics (relative, so a namespace
applies): ``image`` or ``image/compressed``, ``camera_info`` (beside the image
topic) and ``depth`` in; ``detections``, ``detections_observation``,
``debug_image`` and ``/diagnostics`` out.
"""

from __future__ import annotations

import sys

import numpy as np
from std_msgs.msg import Header

from kp_perception.drawing import draw_detections
from kp_perception.nodes.base import KeypointNode, run_node
from kp_perception.results import PrototypeDetectionResult, threshold_detections
from kp_perception.ros_conversion import detections_to_msg
from kp_perception_msgs.msg import PrototypeDetectionArray


class TuskNode(KeypointNode):
    node_name = "tusk_node"
    expected_kind = "tusk"
    message_type = PrototypeDetectionArray
    default_output_topic = "detections"

    def threshold_result(self, result: PrototypeDetectionResult, threshold: float) -> PrototypeDetectionResult:
        return threshold_detections(result, threshold)

    def to_message(self, result: PrototypeDetectionResult, header: Header) -> PrototypeDetectionArray:
        return detections_to_msg(result, header)

    def draw(self, frame_rgb: np.ndarray, result: PrototypeDetectionResult) -> np.ndarray:
        return draw_detections(frame_rgb, result)


def main(args: list[str] | None = None) -> int:
    return run_node(TuskNode, args)


if __name__ == "__main__":
    sys.exit(main())
