"""Camera geometry on the robot side: sensor_msgs/CameraInfo -> undistorted normalised coordinates and 3D.

Why OpenCV and not our own formulas: the plumb_bob and rational_polynomial
models are OpenCV's own distortion models (ROS calibrates with OpenCV), so
``cv2.undistortPoints`` with K and D is the reference inversion. We call its
iterative form with a tight stopping rule (100 iterations or 1e-12): the
default 5 iterations are meant for mild lenses; the test's strongly distorted
synthetic cameras must come back within 1e-4 (test/test_camera_geometry.py).

Conventions: pixels as in ``kp_perception.results`` ((0, 0) = centre of the
top-left pixel, which is also OpenCV's and camera_info's convention);
normalised coordinates are (X/Z, Y/Z) in the camera optical frame (x right,
y down, z forward, REP 103); 3D points are metres in that same frame, the
``frame_id`` of the image header, so TF can move them anywhere.

No size is ever adapted silently: :meth:`CameraModel.check_size` rejects a
camera_info calibrated for another resolution, and binning or ROI (which
would mean a scaled or cropped image) are rejected when the model is built.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import cv2
import numpy as np

from kp_perception.depth_sampling import sample_depth
from kp_perception.errors import CameraInfoError
from kp_perception.results import KeypointPyramidResult, PrototypeDetectionResult

__all__ = ["DISTORTION_MODELS", "CameraModel", "deproject", "locate_keypoints"]

#: Supported camera_info distortion models and the number of coefficients in D.
DISTORTION_MODELS: dict[str, int] = {"plumb_bob": 5, "rational_polynomial": 8}

_CRITERIA = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-12)


@dataclass(frozen=True)
class CameraModel:
    """A pinhole camera with lens distortion, as one camera_info describes it.

    Attributes:
        width, height: image size the calibration is for, in pixels.
        K: 3×3 float64 intrinsic matrix.
        D: float64 distortion coefficients in OpenCV order (empty = none).
        distortion_model: "plumb_bob", "rational_polynomial" or "" (none).
    """

    width: int
    height: int
    K: np.ndarray
    D: np.ndarray
    distortion_model: str = ""

    @classmethod
    def from_camera_info(cls, msg: Any) -> CameraModel:
        """Validate a sensor_msgs/CameraInfo (rclpy or rosbags) and keep what undistortion needs.

        Raises:
            CameraInfoError: zero size, a K without positive focal lengths, an
                unsupported distortion model or a D of the wrong length,
                binning or a partial ROI.
        """
        width, height = int(msg.width), int(msg.height)
        if width <= 0 or height <= 0:
            raise CameraInfoError(f"camera_info has size {width}x{height}; an uncalibrated camera?")
        k = np.asarray(msg.k, dtype=np.float64).reshape(-1)
        if k.size != 9:
            raise CameraInfoError(f"camera_info K has {k.size} entries, expected 9")
        k = k.reshape(3, 3)
        if not (np.isfinite(k).all() and k[0, 0] > 0 and k[1, 1] > 0):
            raise CameraInfoError(f"camera_info K has no positive focal lengths (fx={k[0, 0]}, fy={k[1, 1]})")
        d = np.asarray(msg.d, dtype=np.float64).reshape(-1)
        model = str(msg.distortion_model).strip()
        if model in DISTORTION_MODELS:
            if d.size != DISTORTION_MODELS[model] and d.any():
                raise CameraInfoError(
                    f"camera_info distortion model {model} needs {DISTORTION_MODELS[model]} coefficients, D has {d.size}"
                )
            d = d if d.size == DISTORTION_MODELS[model] else np.zeros(0)
        elif d.any():
            raise CameraInfoError(
                f"camera_info distortion model {model!r} is not supported; supported: "
                f"{', '.join(DISTORTION_MODELS)}"
            )
        else:
            model, d = "", np.zeros(0)
        if not np.isfinite(d).all():
            raise CameraInfoError("camera_info D holds NaN or Inf")
        binning = (int(getattr(msg, "binning_x", 0)), int(getattr(msg, "binning_y", 0)))
        if max(binning) > 1:
            raise CameraInfoError(f"camera_info binning {binning[0]}x{binning[1]} is not supported")
        roi = getattr(msg, "roi", None)
        if roi is not None and (int(roi.width), int(roi.height)) not in ((0, 0), (width, height)):
            raise CameraInfoError(f"camera_info ROI {int(roi.width)}x{int(roi.height)} is not supported")
        return cls(width=width, height=height, K=k, D=d, distortion_model=model)

    def check_size(self, width: int, height: int) -> None:
        """Raise CameraInfoError when the frame is not the size this calibration is for."""
        if (int(width), int(height)) != (self.width, self.height):
            raise CameraInfoError(
                f"camera_info is for {self.width}x{self.height} images but the frame is {width}x{height}; "
                "ignored (never rescaled): publish the camera_info of this stream"
            )

    def undistort(self, xy: np.ndarray) -> np.ndarray:
        """N×2 distorted pixels -> N×2 float32 undistorted normalised coordinates (X/Z, Y/Z)."""
        pts = np.asarray(xy, dtype=np.float64).reshape(-1, 1, 2)
        if len(pts) == 0:
            return np.zeros((0, 2), np.float32)
        if self.D.size == 0:
            out = cv2.undistortPoints(pts, self.K, None)
        elif hasattr(cv2, "undistortPointsIter"):  # OpenCV 4 names the form with stopping criteria so
            out = cv2.undistortPointsIter(pts, self.K, self.D, None, None, _CRITERIA)
        else:  # OpenCV 5
            out = cv2.undistortPoints(pts, self.K, self.D, R=None, P=None, criteria=_CRITERIA)
        return out.reshape(-1, 2).astype(np.float32)


def deproject(normalized_xy: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """N×2 normalised coordinates and N depths (z, metres) -> N×3 float32 points (X, Y, Z)."""
    norm = np.asarray(normalized_xy, dtype=np.float32).reshape(-1, 2)
    z = np.asarray(depth, dtype=np.float32).reshape(-1, 1)
    return np.concatenate([norm * z, z], axis=1)


Result = KeypointPyramidResult | PrototypeDetectionResult


def locate_keypoints(result: Result, camera: CameraModel | None, depth_m: np.ndarray | None = None,
                     window: int = 5, depth_scale: float = 1.0) -> Result:
    """Add camera geometry to a result (frame pixels): normalised coordinates, and 3D with depth.

    ``camera`` must already match the frame (:meth:`CameraModel.check_size`);
    ``depth_m`` is the aligned depth image, the frame's size: metres
    (``depth_to_metres``) or stored values with their ``depth_scale``
    (``depth_view``). Without a camera nothing is added (depth alone cannot be
    deprojected). Points without a valid depth are NaN with ``point_valid`` False.
    """
    if camera is None:
        return result
    normalized = camera.undistort(result.xy)
    if depth_m is None:
        return replace(result, normalized_xy=normalized)
    if depth_m.shape != (result.image_height, result.image_width):
        raise CameraInfoError(
            f"depth image is {depth_m.shape[1]}x{depth_m.shape[0]} but the frame is "
            f"{result.image_width}x{result.image_height}; an aligned depth image has the colour image's size"
        )
    z, valid = sample_depth(depth_m, result.xy, window, depth_scale)
    points = deproject(normalized, z)
    points[~valid] = np.nan
    return replace(result, normalized_xy=normalized, points=points, point_valid=valid)
