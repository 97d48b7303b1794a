"""Result types every inference backend returns, independent of ROS and of torch.

Coordinates are pixels of the frame that was passed in: x right, y down, and
(0, 0) is the centre of the top-left pixel, as OpenCV draws.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    """

    xy: np.ndarray
    scores: np.ndarray
    levels: np.ndarray
    parents: np.ndarray
    level_sizes: tuple[int, ...]
    image_width: int
    image_height: int


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
    """

    xy: np.ndarray
    scores: np.ndarray
    prototypes: np.ndarray
    distances: np.ndarray
    descriptors: np.ndarray
    num_prototypes: int
    image_width: int
    image_height: int
