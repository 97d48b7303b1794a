"""Drawing keypoint hierarchies and prototype detections on RGB frames.

One drawing for the debug image topic, offline videos and TensorBoard, so a
user sees the same picture everywhere. numpy + cv2 only (no torch).

* :func:`draw_pyramid`: as in Fig. 6 of the Keypoint Pyramids paper, every
  root (level-0 keypoint) and all its descendants share one colour; a line
  links each child to its parent; coarser levels are drawn larger.
* :func:`draw_detections`: one colour per prototype id, with the id written
  beside the point, so the same object type keeps its colour across frames.
"""

from __future__ import annotations

import cv2
import numpy as np

from kp_perception.results import KeypointPyramidResult, PrototypeDetectionResult


def palette(n: int) -> np.ndarray:
    """n distinct, saturated RGB colours (n×3 uint8), evenly spaced in hue."""
    n = max(int(n), 1)
    hsv = np.zeros((1, n, 3), dtype=np.uint8)
    hsv[0, :, 0] = (np.arange(n) * 180 // n).astype(np.uint8)
    hsv[0, :, 1] = 230
    hsv[0, :, 2] = 255
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0]


def draw_pyramid(frame_rgb: np.ndarray, result: KeypointPyramidResult) -> np.ndarray:
    """Return a copy of ``frame_rgb`` (H×W×3 uint8) with the hierarchy drawn.

    Coordinates in ``result`` are pixels of this frame. Keypoints whose
    parent index is out of range are drawn without a link.
    """
    canvas = np.ascontiguousarray(frame_rgb, dtype=np.uint8).copy()
    n = len(result.scores)
    if n == 0:
        return canvas
    parents = np.asarray(result.parents, dtype=np.int64)
    levels = np.asarray(result.levels, dtype=np.int64)
    family = _root_of(parents)
    roots = np.flatnonzero(parents < 0)
    colours = palette(len(roots))
    colour_of_root = {int(r): colours[i] for i, r in enumerate(roots)}
    scale = max(canvas.shape[0], canvas.shape[1]) / 256.0
    num_levels = max(len(result.level_sizes), 1)
    pts = np.rint(np.asarray(result.xy, dtype=np.float64)).astype(np.int64)

    for i in range(n):  # links first, so points are drawn on top
        p = parents[i]
        if 0 <= p < n:
            colour = _colour(colour_of_root.get(int(family[i]), (255, 255, 255)))
            cv2.line(canvas, _pt(pts[i]), _pt(pts[p]), colour, max(1, round(scale)), cv2.LINE_AA)
    for i in range(n):
        colour = _colour(colour_of_root.get(int(family[i]), (255, 255, 255)))
        radius = max(2, round(scale * (2 + 2 * (num_levels - 1 - min(levels[i], num_levels - 1)))))
        cv2.circle(canvas, _pt(pts[i]), radius, colour, -1, cv2.LINE_AA)
        cv2.circle(canvas, _pt(pts[i]), radius, (0, 0, 0), 1, cv2.LINE_AA)
    return canvas


def draw_detections(
    frame_rgb: np.ndarray,
    result: PrototypeDetectionResult,
    prototype_colours: dict[int, tuple[int, int, int]] | None = None,
    prototype_labels: dict[int, str] | None = None,
) -> np.ndarray:
    """Return a copy of ``frame_rgb`` (H×W×3 uint8) with detections coloured by prototype id.

    ``prototype_colours`` / ``prototype_labels`` (optional, by prototype id) replace the
    palette colour and the id text, e.g. with the object type a prototype stands for.
    """
    canvas = np.ascontiguousarray(frame_rgb, dtype=np.uint8).copy()
    colours = palette(max(int(result.num_prototypes), 1))
    scale = max(canvas.shape[0], canvas.shape[1]) / 256.0
    radius = max(3, round(4 * scale))
    pts = np.rint(np.asarray(result.xy, dtype=np.float64)).astype(np.int64)
    for pt, proto in zip(pts, np.asarray(result.prototypes).tolist(), strict=True):
        colour = _colour(colours[int(proto) % len(colours)])
        if prototype_colours is not None and int(proto) in prototype_colours:
            colour = tuple(int(c) for c in prototype_colours[int(proto)])
        cv2.circle(canvas, _pt(pt), radius, colour, 2, cv2.LINE_AA)
        cv2.putText(
            canvas,
            (prototype_labels or {}).get(int(proto), str(int(proto))),
            (int(pt[0]) + radius + 1, int(pt[1]) - radius - 1),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.35 * max(scale, 1.0),
            colour,
            1,
            cv2.LINE_AA,
        )
    return canvas


def draw_caption(canvas: np.ndarray, text: str) -> np.ndarray:
    """White text on a dark strip along the top edge, scaled to the frame width."""
    scale = max(canvas.shape[1] / 640.0, 0.3)
    (_, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    strip = h + base + 4
    canvas[:strip] = (canvas[:strip].astype(np.uint16) * 2 // 5).astype(np.uint8)
    cv2.putText(canvas, text, (3, h + 2), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return canvas


def _root_of(parents: np.ndarray) -> np.ndarray:
    """Index of each keypoint's level-0 ancestor (itself for roots), following parents upwards."""
    n = len(parents)
    root = np.arange(n)
    valid = (parents >= 0) & (parents < n)
    up = np.where(valid, parents, root)
    for _ in range(n):  # depth is the number of levels; stops as soon as nothing moves
        nxt = up[root]
        if np.array_equal(nxt, root):
            break
        root = nxt
    return root


def _pt(p: np.ndarray) -> tuple[int, int]:
    return int(p[0]), int(p[1])


def _colour(colour) -> tuple[int, int, int]:
    # The canvas is RGB, so colours are given in RGB order too (cv2 does not care about the name).
    c = np.asarray(colour).astype(int).tolist()
    return c[0], c[1], c[2]
