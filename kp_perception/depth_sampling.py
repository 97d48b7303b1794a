"""A robust depth for each keypoint: the median of the valid depth pixels in a small window.

Why a median over a window and not the pixel under the keypoint: keypoints
sit on object edges and thin parts, where a single depth pixel is often a
hole (no return) or the background behind the object. The median of the
valid pixels around it follows the majority surface and ignores holes.
Depth images come from ``kp_perception.image_conversion``: either
``depth_to_metres`` (float32 metres, NaN where there is no measurement) or,
cheaper, ``depth_view`` (the stored 16UC1/32FC1 values and their factor to
metres), of which only the pixels in the windows are converted. A keypoint with no valid pixel
in its window, or outside the image, is flagged invalid; its depth is NaN,
never 0.
"""

from __future__ import annotations

import numpy as np

__all__ = ["sample_depth"]


def sample_depth(depth_m: np.ndarray, xy: np.ndarray, window: int = 5,
                 scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Median depth of the valid pixels in a ``window``×``window`` square around each point.

    Args:
        depth_m: H×W depth, ``scale`` × value = metres (float32 metres with scale 1,
            or the stored uint16 millimetres with scale 0.001); NaN, Inf and
            values <= 0 are invalid.
        xy: N×2 (x, y) pixels of the same image ((0, 0) = centre of the top-left
            pixel); the window is centred on the nearest pixel.
        window: odd side length in pixels (1 = the pixel itself).
        scale: factor from stored values to metres.

    Returns:
        (depth, valid): N float32 metres (NaN where invalid) and N bool.
    """
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be a positive odd number of pixels, got {window}")
    depth_m = np.asarray(depth_m)
    if depth_m.ndim != 2:
        raise ValueError(f"depth image must be H×W, got shape {depth_m.shape}")
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    n = len(xy)
    height, width = depth_m.shape
    if n == 0:
        return np.zeros(0, np.float32), np.zeros(0, bool)
    finite = np.isfinite(xy).all(axis=1)
    centre = np.where(finite[:, None], np.rint(xy), -1).astype(np.int64)
    inside = finite & (centre[:, 0] >= 0) & (centre[:, 0] < width) & (centre[:, 1] >= 0) & (centre[:, 1] < height)

    r = window // 2
    offsets = np.arange(-r, r + 1)
    cols = centre[:, 0, None, None] + offsets[None, None, :]  # N×1×w
    rows = centre[:, 1, None, None] + offsets[None, :, None]  # N×w×1
    in_image = (cols >= 0) & (cols < width) & (rows >= 0) & (rows < height)
    values = depth_m[np.clip(rows, 0, height - 1), np.clip(cols, 0, width - 1)].astype(np.float32)
    values *= np.float32(scale)
    ok = in_image & np.isfinite(values) & (values > 0.0)
    values = np.where(ok, values, np.nan).reshape(n, -1)

    count = ok.reshape(n, -1).sum(axis=1)
    ordered = np.sort(values, axis=1)  # NaN last
    lo = np.clip((count - 1) // 2, 0, None)
    hi = np.clip(count // 2, 0, None)
    rows_n = np.arange(n)
    median = 0.5 * (ordered[rows_n, lo] + ordered[rows_n, hi])
    valid = inside & (count > 0)
    return np.where(valid, median, np.nan).astype(np.float32), valid
