"""Results -> kp_perception_msgs: the structured messages and the stamped policy observation.

Why here and not in the nodes: the same conversion serves the nodes, tests
and anything that replays results, and it is the one place that fixes how
results map onto message fields.

* ``pyramid_to_msg`` / ``detections_to_msg``: every keypoint or detection
  with its pixel position and, when the result carries camera geometry
  (``kp_perception.camera_geometry.locate_keypoints``), its undistorted
  normalised coordinates and 3D position. Missing geometry is NaN with the
  flags (``has_camera_info``, ``has_depth``, ``position_valid``) false,
  never 0.
* ``observation_to_msg``: a :class:`kp_perception.observation.KeypointObservation`
  (fixed slots, validity per slot) as ``PolicyObservation``; the inverse is
  ``KeypointObservation.from_msg``.
"""

from __future__ import annotations

import array

import numpy as np
from geometry_msgs.msg import Point
from std_msgs.msg import Header

from kp_perception.observation import KeypointObservation
from kp_perception.results import KeypointPyramidResult, PrototypeDetectionResult
from kp_perception_msgs.msg import (
    Keypoint,
    KeypointPyramid,
    PolicyObservation,
    PrototypeDetection,
    PrototypeDetectionArray,
)

_NAN = float("nan")


def pyramid_to_msg(result: KeypointPyramidResult, header: Header) -> KeypointPyramid:
    """KeypointPyramidResult -> KeypointPyramid with the image's header copied."""
    msg = KeypointPyramid()
    msg.header = header
    msg.image_width = int(result.image_width)
    msg.image_height = int(result.image_height)
    msg.level_sizes = [int(s) for s in result.level_sizes]
    msg.has_camera_info, msg.has_depth = result.normalized_xy is not None, result.points is not None
    # tolist() once: per-element numpy scalar access is the slow part, not the message objects.
    xy = np.asarray(result.xy, dtype=np.float32).tolist()
    scores = np.asarray(result.scores, dtype=np.float32).tolist()
    levels = np.asarray(result.levels).tolist()
    parents = np.asarray(result.parents).tolist()
    norm, points, point_valid = _geometry(result, len(scores))
    msg.keypoints = [
        Keypoint(x=p[0], y=p[1], score=s, level=lv, parent=pa, x_normalized=q[0], y_normalized=q[1],
                 position=Point(x=r[0], y=r[1], z=r[2]), position_valid=v)
        for p, s, lv, pa, q, r, v in zip(xy, scores, levels, parents, norm, points, point_valid, strict=True)
    ]
    return msg


def detections_to_msg(result: PrototypeDetectionResult, header: Header) -> PrototypeDetectionArray:
    """PrototypeDetectionResult -> PrototypeDetectionArray with the image's header copied."""
    msg = PrototypeDetectionArray()
    msg.header = header
    msg.image_width = int(result.image_width)
    msg.image_height = int(result.image_height)
    msg.num_prototypes = int(result.num_prototypes)
    msg.has_camera_info, msg.has_depth = result.normalized_xy is not None, result.points is not None
    xy = np.asarray(result.xy, dtype=np.float32).tolist()
    scores = np.asarray(result.scores, dtype=np.float32).tolist()
    prototypes = np.asarray(result.prototypes).tolist()
    distances = np.asarray(result.distances, dtype=np.float32).tolist()
    descriptors = np.ascontiguousarray(result.descriptors, dtype=np.float32)
    norm, points, point_valid = _geometry(result, len(scores))
    msg.detections = [
        PrototypeDetection(
            x=p[0], y=p[1], score=s, prototype=k, distance=d, descriptor=_float_array(descriptors[i]),
            x_normalized=q[0], y_normalized=q[1], position=Point(x=r[0], y=r[1], z=r[2]), position_valid=v,
        )
        for i, (p, s, k, d, q, r, v) in enumerate(
            zip(xy, scores, prototypes, distances, norm, points, point_valid, strict=True)
        )
    ]
    return msg


def observation_to_msg(obs: KeypointObservation, header: Header) -> PolicyObservation:
    """KeypointObservation -> PolicyObservation with the image's header (NaN stays NaN in invalid slots)."""
    msg = PolicyObservation()
    msg.header = header
    msg.model_kind = obs.layout.kind
    msg.coordinates = obs.layout.coordinates
    msg.slot_names = list(obs.layout.slot_names)
    msg.field_names = list(obs.layout.field_names)
    msg.data = _float_array(obs.values)
    msg.valid = np.asarray(obs.valid, dtype=bool).tolist()
    msg.image_width = int(obs.image_width)
    msg.image_height = int(obs.image_height)
    return msg


def _geometry(result: KeypointPyramidResult | PrototypeDetectionResult, n: int) -> tuple[list, list, list]:
    """Per-row (normalised xy, 3D point, valid) as Python lists; NaN / False where the result has none."""
    if result.normalized_xy is None:
        norm = [[_NAN, _NAN]] * n
    else:
        norm = np.asarray(result.normalized_xy, dtype=np.float32).reshape(n, 2).tolist()
    if result.points is None or result.point_valid is None:
        return norm, [[_NAN, _NAN, _NAN]] * n, [False] * n
    valid = np.asarray(result.point_valid, dtype=bool).reshape(n)
    points = np.where(valid[:, None], np.asarray(result.points, dtype=np.float64).reshape(n, 3), np.nan)
    return norm, points.tolist(), valid.tolist()


def _float_array(values: np.ndarray) -> array.array:
    # array('f', bytes) is the setter's fast path; a numpy array would be checked element by element.
    return array.array("f", np.ascontiguousarray(values, dtype=np.float32).tobytes())
