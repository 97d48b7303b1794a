"""Result types every inference backend returns, independent of ROS and of torch.

Coordinates are pixels of the frame that was passed in: x right, y down, and
(0, 0) is the centre of the top-left pixel, as OpenCV draws.

Both result types can also carry camera geometry (``normalized_xy``,
``points``, ``point_valid``), filled by ``kp_perception.camera_geometry``
when the node has a camera_info (and an aligned depth image). They stay
``None`` otherwise, so code that never sees a camera is unchanged; the
threshold functions keep them aligned with the kept rows.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np


@dataclass(frozen=True)
class KeypointPyramidResult:
    """A keypoint hierarchy for one frame, ordered coarse to fine.

    Attributes:
        xy: N×2 float32, pixels in the input frame.
        scores: N float32 in [0, 1].
        levels: N int32, 0 = coarsest.
        parents: N int32, index into the same arrays, -1 for roots.
        level_sizes: keypoints per level; sums to N.
        image_width, image_height: size of the frame the coordinates refer to.
        normalized_xy, points, point_valid: camera geometry, see :class:`PrototypeDetectionResult`.
    """

    xy: np.ndarray
    scores: np.ndarray
    levels: np.ndarray
    parents: np.ndarray
    level_sizes: tuple[int, ...]
    image_width: int
    image_height: int
    normalized_xy: np.ndarray | None = None
    points: np.ndarray | None = None
    point_valid: np.ndarray | None = None


@dataclass(frozen=True)
class PrototypeDetectionResult:
    """Multi-instance detections for one frame, each assigned to its nearest prototype.

    Attributes:
        xy: K×2 float32, pixels in the input frame.
        scores: K float32 in [0, 1].
        prototypes: K int32, nearest prototype id.
        distances: K float32, distance to that prototype.
        descriptors: K×D float32, L2-normalised.
        num_prototypes: M, the number of learned prototypes.
        image_width, image_height: size of the frame the coordinates refer to.
        normalized_xy: K×2 float32 undistorted normalised image coordinates (X/Z, Y/Z),
            or None without a camera_info.
        points: K×3 float32 metres in the camera optical frame, NaN rows where
            ``point_valid`` is False; None without depth.
        point_valid: K bool, or None without depth.
    """

    xy: np.ndarray
    scores: np.ndarray
    prototypes: np.ndarray
    distances: np.ndarray
    descriptors: np.ndarray
    num_prototypes: int
    image_width: int
    image_height: int
    normalized_xy: np.ndarray | None = None
    points: np.ndarray | None = None
    point_valid: np.ndarray | None = None


def threshold_pyramid(result: KeypointPyramidResult, threshold: float) -> KeypointPyramidResult:
    """Keep keypoints with score >= threshold, plus every ancestor of a kept keypoint.

    Ancestors are kept so that every published parent index stays valid and
    every non-root keypoint still has a parent one level up. Parents are
    re-indexed into the reduced arrays and ``level_sizes`` recounted.
    """
    n = len(result.scores)
    if threshold <= 0.0 or n == 0:
        return result
    keep = np.asarray(result.scores) >= threshold
    parents = np.asarray(result.parents, dtype=np.int64)
    # Propagate "keep" upwards, one level per pass (levels are few).
    for _ in range(len(result.level_sizes)):
        up = parents[keep & (parents >= 0)]
        if np.all(keep[up]):
            break
        keep[up] = True
    new_index = np.full(n, -1, dtype=np.int64)
    new_index[keep] = np.arange(int(keep.sum()))
    kept_parents = parents[keep]
    remapped = np.where(kept_parents >= 0, new_index[np.maximum(kept_parents, 0)], -1).astype(np.int32)
    levels = np.asarray(result.levels)[keep]
    level_sizes = tuple(int(np.count_nonzero(levels == lv)) for lv in range(len(result.level_sizes)))
    return replace(
        result,
        xy=np.asarray(result.xy)[keep],
        scores=np.asarray(result.scores)[keep],
        levels=levels,
        parents=remapped,
        level_sizes=level_sizes,
        **_take_geometry(result, keep),
    )


def threshold_detections(result: PrototypeDetectionResult, threshold: float) -> PrototypeDetectionResult:
    """Keep detections with score >= threshold, strongest first (the message's documented order)."""
    scores = np.asarray(result.scores)
    order = np.argsort(-scores, kind="stable")
    order = order[scores[order] >= threshold]
    return replace(
        result,
        xy=np.asarray(result.xy)[order],
        scores=scores[order],
        prototypes=np.asarray(result.prototypes)[order],
        distances=np.asarray(result.distances)[order],
        descriptors=np.asarray(result.descriptors)[order],
        **_take_geometry(result, order),
    )


def _take_geometry(result: KeypointPyramidResult | PrototypeDetectionResult, index: np.ndarray) -> dict:
    """The geometry fields restricted to ``index`` (a mask or index array); absent ones stay None."""
    names = ("normalized_xy", "points", "point_valid")
    return {n: None if getattr(result, n) is None else np.asarray(getattr(result, n))[index] for n in names}
