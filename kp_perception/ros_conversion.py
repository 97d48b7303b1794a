"""Results -> kp_perception_msgs and a flat std_msgs/Float32MultiArray.

Why here and not in the nodes: the same conversion serves the nodes, tests
and anything that replays results, and it is the one place that fixes the
flat layout an RL policy depends on.

Flat layouts (row-major, ``data_offset`` 0, float32; pixels of the input image):

* Keypoint Pyramids: dim0 ``"keypoints"`` (N rows, coarse to fine), dim1
  ``"x,y,score,level,parent"`` (5 columns). ``parent`` is the row of the parent,
  -1 for roots. All N keypoints are always present so the shape is fixed; the
  policy masks with the score column.
* TUSK: dim0 ``"detections"`` (K rows, strongest first), dim1
  ``"x,y,score,prototype,distance"`` (5 columns). All K top-K detections are
  present (fixed shape); descriptors are not in the flat array.

The score threshold applies to the structured messages (and the debug image)
only, through ``kp_perception.results.threshold_pyramid`` / ``threshold_detections``.
"""

from __future__ import annotations

import array

import numpy as np
from std_msgs.msg import Float32MultiArray, Header, MultiArrayDimension, MultiArrayLayout

from kp_perception.results import KeypointPyramidResult, PrototypeDetectionResult
from kp_perception_msgs.msg import (
    Keypoint,
    KeypointPyramid,
    PrototypeDetection,
    PrototypeDetectionArray,
)

PYRAMID_FLAT_COLUMNS = "x,y,score,level,parent"
DETECTION_FLAT_COLUMNS = "x,y,score,prototype,distance"


def pyramid_to_msg(result: KeypointPyramidResult, header: Header) -> KeypointPyramid:
    """KeypointPyramidResult -> KeypointPyramid with the image's header copied."""
    msg = KeypointPyramid()
    msg.header = header
    msg.image_width = int(result.image_width)
    msg.image_height = int(result.image_height)
    msg.level_sizes = [int(s) for s in result.level_sizes]
    # tolist() once: per-element numpy scalar access is the slow part, not the message objects.
    xy = np.asarray(result.xy, dtype=np.float32).tolist()
    scores = np.asarray(result.scores, dtype=np.float32).tolist()
    levels = np.asarray(result.levels).tolist()
    parents = np.asarray(result.parents).tolist()
    msg.keypoints = [
        Keypoint(x=p[0], y=p[1], score=s, level=lv, parent=pa)
        for p, s, lv, pa in zip(xy, scores, levels, parents, strict=True)
    ]
    return msg


def detections_to_msg(result: PrototypeDetectionResult, header: Header) -> PrototypeDetectionArray:
    """PrototypeDetectionResult -> PrototypeDetectionArray with the image's header copied."""
    msg = PrototypeDetectionArray()
    msg.header = header
    msg.image_width = int(result.image_width)
    msg.image_height = int(result.image_height)
    msg.num_prototypes = int(result.num_prototypes)
    xy = np.asarray(result.xy, dtype=np.float32).tolist()
    scores = np.asarray(result.scores, dtype=np.float32).tolist()
    prototypes = np.asarray(result.prototypes).tolist()
    distances = np.asarray(result.distances, dtype=np.float32).tolist()
    descriptors = np.ascontiguousarray(result.descriptors, dtype=np.float32)
    msg.detections = [
        PrototypeDetection(
            x=p[0], y=p[1], score=s, prototype=k, distance=d, descriptor=_float_array(descriptors[i])
        )
        for i, (p, s, k, d) in enumerate(zip(xy, scores, prototypes, distances, strict=True))
    ]
    return msg


def pyramid_to_flat(result: KeypointPyramidResult) -> Float32MultiArray:
    """N×5 Float32MultiArray: columns x, y, score, level, parent (see module docstring)."""
    table = np.column_stack(
        [
            np.asarray(result.xy, dtype=np.float32).reshape(-1, 2),
            np.asarray(result.scores, dtype=np.float32),
            np.asarray(result.levels, dtype=np.float32),
            np.asarray(result.parents, dtype=np.float32),
        ]
    )
    return _flat(table, "keypoints", PYRAMID_FLAT_COLUMNS)


def detections_to_flat(result: PrototypeDetectionResult) -> Float32MultiArray:
    """K×5 Float32MultiArray: columns x, y, score, prototype, distance (see module docstring)."""
    table = np.column_stack(
        [
            np.asarray(result.xy, dtype=np.float32).reshape(-1, 2),
            np.asarray(result.scores, dtype=np.float32),
            np.asarray(result.prototypes, dtype=np.float32),
            np.asarray(result.distances, dtype=np.float32),
        ]
    )
    return _flat(table, "detections", DETECTION_FLAT_COLUMNS)


def flat_to_numpy(msg: Float32MultiArray) -> np.ndarray:
    """Inverse of the flat layouts: a rows×columns float32 array (for policies and tests)."""
    dims = msg.layout.dim
    if len(dims) != 2:
        raise ValueError(f"expected a 2-D layout, got {len(dims)} dimensions")
    data = np.asarray(msg.data, dtype=np.float32)[msg.layout.data_offset :]
    return data[: dims[0].size * dims[1].size].reshape(dims[0].size, dims[1].size)


def _flat(table: np.ndarray, rows_label: str, columns_label: str) -> Float32MultiArray:
    rows, cols = table.shape
    msg = Float32MultiArray()
    msg.layout = MultiArrayLayout(
        dim=[
            MultiArrayDimension(label=rows_label, size=rows, stride=rows * cols),
            MultiArrayDimension(label=columns_label, size=cols, stride=cols),
        ],
        data_offset=0,
    )
    msg.data = _float_array(table)
    return msg


def _float_array(values: np.ndarray) -> array.array:
    # array('f', bytes) is the setter's fast path; a numpy array would be checked element by element.
    return array.array("f", np.ascontiguousarray(values, dtype=np.float32).tobytes())


# Messages -> results: what a consumer, a replay or the demo reads back.


def pyramid_from_msg(msg) -> KeypointPyramidResult:
    """A KeypointPyramid (rclpy or rosbags-decoded) -> KeypointPyramidResult, for consumers and replays."""
    kps = msg.keypoints
    return KeypointPyramidResult(
        xy=np.array([[k.x, k.y] for k in kps], dtype=np.float32).reshape(-1, 2),
        scores=np.array([k.score for k in kps], dtype=np.float32),
        levels=np.array([k.level for k in kps], dtype=np.int32),
        parents=np.array([k.parent for k in kps], dtype=np.int32),
        level_sizes=tuple(int(s) for s in msg.level_sizes),
        image_width=int(msg.image_width),
        image_height=int(msg.image_height),
    )


def detections_from_msg(msg) -> PrototypeDetectionResult:
    """A PrototypeDetectionArray (rclpy or rosbags-decoded) -> PrototypeDetectionResult."""
    dets = msg.detections
    dim = len(dets[0].descriptor) if dets else 0
    return PrototypeDetectionResult(
        xy=np.array([[d.x, d.y] for d in dets], dtype=np.float32).reshape(-1, 2),
        scores=np.array([d.score for d in dets], dtype=np.float32),
        prototypes=np.array([d.prototype for d in dets], dtype=np.int32),
        distances=np.array([d.distance for d in dets], dtype=np.float32),
        descriptors=np.array([list(d.descriptor) for d in dets], dtype=np.float32).reshape(len(dets), dim),
        num_prototypes=int(msg.num_prototypes),
        image_width=int(msg.image_width),
        image_height=int(msg.image_height),
    )
