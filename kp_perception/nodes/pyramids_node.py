"""``pyramids_node``: camera images in, Keypoint Pyramids hierarchies out (``KeypointPyramid``).

Thin on purpose: everything but the message, the conversion and the drawing
lives in :mod:`kp_perception.nodes.base`. Accepts any hierarchy model
(pyramids, keynet, transporter). Topics (relative, so a namespace applies):
``image`` or ``image/compressed``, ``camera_info`` (beside the image topic) and
``depth`` in; ``keypoints``, ``keypoints_observation``, ``debug_image`` and
``/diagnostics`` out.
"""

from __future__ import annotations

import sys

import numpy as np
from std_msgs.msg import Header

from kp_perception.drawing import draw_pyramid
from kp_perception.nodes.base import KeypointNode, run_node
from kp_perception.results import KeypointPyramidResult, threshold_pyramid
from kp_perception.ros_conversion import pyramid_to_msg
from kp_perception_msgs.msg import KeypointPyramid


class PyramidsNode(KeypointNode):
    node_name = "pyramids_node"
    expected_kind = "pyramids"
    message_type = KeypointPyramid
    default_output_topic = "keypoints"

    def threshold_result(self, result: KeypointPyramidResult, threshold: float) -> KeypointPyramidResult:
        return threshold_pyramid(result, threshold)

    def to_message(self, result: KeypointPyramidResult, header: Header) -> KeypointPyramid:
        return pyramid_to_msg(result, header)

    def draw(self, frame_rgb: np.ndarray, result: KeypointPyramidResult) -> np.ndarray:
        return draw_pyramid(frame_rgb, result)


def main(args: list[str] | None = None) -> int:
    return run_node(PyramidsNode, args)


if __name__ == "__main__":
    sys.exit(main())
