"""The one resize policy between camera frames and model inputs, and its inverse for coordinates.

Frames are stretched (no letterbox) to the model's input size, exactly as the
training frame cache does, so a model sees at run time what it saw in
training. Keypoints come back mapped through the inverse of the same stretch.
"""

from __future__ import annotations

import cv2
import numpy as np


def resize_rgb(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize an H×W×3 uint8 frame to ``height×width×3``.

    Shrinking averages (no aliasing of small objects): exact 2×2 box halvings
    while the frame is still at least twice the target in both axes, then
    INTER_AREA for the rest. The halvings take OpenCV's fast path, so a
    640×480 → 128×128 resize costs about half of one INTER_AREA step.
    Enlarging uses INTER_LINEAR. A frame already at size is returned as is.
    """
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"expected an H×W×3 frame, got shape {frame.shape}")
    h, w = frame.shape[:2]
    if (w, h) == (width, height):
        return frame
    if width * height >= w * h:
        return cv2.resize(frame, (width, height), interpolation=cv2.INTER_LINEAR)
    while w >= 2 * width and h >= 2 * height:
        w, h = w // 2, h // 2
        frame = cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA)
    if (w, h) == (width, height):
        return frame
    return cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)


def normalized_to_model_pixels(xy: np.ndarray, width: int, height: int) -> np.ndarray:
    """Map N×2 (x, y) in [-1, 1] (align_corners: ±1 are the outer pixel centres) to model pixels."""
    xy = np.asarray(xy, dtype=np.float32)
    scale = np.array([(width - 1) / 2.0, (height - 1) / 2.0], dtype=np.float32)
    return (xy + 1.0) * scale


def model_to_frame_pixels(
    xy: np.ndarray, model_size: tuple[int, int], frame_size: tuple[int, int]
) -> np.ndarray:
    """Map N×2 pixel coordinates at the model's (width, height) to the frame's (width, height).

    Pixel centres map to pixel centres under the stretch: u_frame = (u + 0.5) * s - 0.5.
    """
    xy = np.asarray(xy, dtype=np.float32)
    scale = np.array(
        [frame_size[0] / model_size[0], frame_size[1] / model_size[1]], dtype=np.float32
    )
    return (xy + 0.5) * scale - 0.5
