"""Camera geometry: camera_info validation, undistortion against OpenCV, depth decoding and sampling, 3D.

The reference for undistortion is OpenCV itself: known 3D points are
projected through a strongly distorted synthetic camera with
``cv2.projectPoints``, and ``CameraModel.undistort`` must give back their
X/Z, Y/Z within 1e-4 (issue 16).
"""

from __future__ import annotations

from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from kp_perception.camera_geometry import CameraModel, deproject, locate_keypoints
from kp_perception.depth_sampling import sample_depth
from kp_perception.errors import CameraInfoError, ImageConversionError
from kp_perception.image_conversion import depth_to_metres, image_fields
from kp_perception.results import KeypointPyramidResult, threshold_pyramid

W, H = 640, 480
K = np.array([[520.0, 0.0, 318.3], [0.0, 515.0, 241.7], [0.0, 0.0, 1.0]])
DISTORTIONS = {
    "plumb_bob": [-0.32, 0.12, 0.0012, -0.0009, -0.02],
    "rational_polynomial": [0.9, -0.4, 0.0011, -0.0007, 0.05, 1.2, -0.2, 0.1],
}


def camera_info(model: str = "plumb_bob", d=None, width: int = W, height: int = H, **extra):
    """A duck-typed sensor_msgs/CameraInfo (the module reads rclpy and rosbags messages alike)."""
    fields = {"width": width, "height": height, "k": K.reshape(-1).tolist(), "distortion_model": model,
              "d": list(DISTORTIONS.get(model, []) if d is None else d), "binning_x": 0, "binning_y": 0,
              "roi": SimpleNamespace(x_offset=0, y_offset=0, width=0, height=0, do_rectify=False)}
    fields.update(extra)
    return SimpleNamespace(**fields)


def points_in_view(n: int = 400, seed: int = 0) -> np.ndarray:
    """3D points whose distorted projections cover the whole image, corners included."""
    rng = np.random.default_rng(seed)
    z = rng.uniform(0.4, 3.0, n)
    x = rng.uniform(-0.58, 0.58, n) * z
    y = rng.uniform(-0.44, 0.44, n) * z
    return np.stack([x, y, z], axis=1)


@pytest.mark.parametrize("model", sorted(DISTORTIONS))
def test_undistort_gives_back_the_normalised_coordinates_opencv_projected(model):
    cam = CameraModel.from_camera_info(camera_info(model))
    assert cam.distortion_model == model
    pts = points_in_view()
    pixels, _ = cv2.projectPoints(pts, np.zeros(3), np.zeros(3), K, np.array(DISTORTIONS[model]))
    pixels = pixels.reshape(-1, 2)
    inside = (pixels[:, 0] >= 0) & (pixels[:, 0] <= W - 1) & (pixels[:, 1] >= 0) & (pixels[:, 1] <= H - 1)
    assert inside.sum() > 300
    truth = pts[inside, :2] / pts[inside, 2:]
    got = cam.undistort(pixels[inside])
    assert got.dtype == np.float32 and got.shape == truth.shape
    assert np.abs(got - truth).max() < 1e-4
    # The distortion is strong: the raw pinhole inverse would be far off.
    pinhole = (pixels[inside] - K[:2, 2]) / np.diag(K)[:2]
    assert np.abs(pinhole - truth).max() > 0.01


def test_no_distortion_is_the_pinhole_inverse_and_deprojection_scales_the_ray():
    cam = CameraModel.from_camera_info(camera_info("plumb_bob", d=[0, 0, 0, 0, 0]))
    uv = np.array([[318.3, 241.7], [0.0, 0.0], [639.0, 479.0]])
    expected = (uv - K[:2, 2]) / np.diag(K)[:2]
    assert np.allclose(cam.undistort(uv), expected, atol=1e-6)
    points = deproject(expected, np.array([1.0, 2.0, 0.5]))
    assert np.allclose(points[:, 2], [1.0, 2.0, 0.5])
    assert np.allclose(points[:, :2], expected * np.array([[1.0], [2.0], [0.5]]), atol=1e-6)
    empty = CameraModel.from_camera_info(camera_info("", d=[]))  # uncalibrated distortion: none
    assert empty.D.size == 0 and np.allclose(empty.undistort(uv), expected, atol=1e-6)


@pytest.mark.parametrize(
    ("info", "expected"),
    [
        (camera_info("equidistant", d=[0.1, 0.01, 0.0, 0.0]), "not supported"),
        (camera_info("plumb_bob", d=[0.1, 0.2, 0.0]), "needs 5 coefficients"),
        (camera_info(k=[0.0] * 9), "focal"),
        (camera_info(width=0, height=0), "size 0x0"),
        (camera_info(binning_x=2, binning_y=2), "binning"),
        (camera_info(roi=SimpleNamespace(x_offset=10, y_offset=0, width=320, height=240, do_rectify=False)), "ROI"),
    ],
)
def test_unusable_camera_info_is_rejected_with_the_reason(info, expected):
    with pytest.raises(CameraInfoError, match=expected):
        CameraModel.from_camera_info(info)


def test_a_camera_info_for_another_size_is_rejected_not_scaled():
    cam = CameraModel.from_camera_info(camera_info())
    cam.check_size(W, H)
    with pytest.raises(CameraInfoError, match=r"640x480 images but the frame is 320x240"):
        cam.check_size(320, 240)


def depth_msg(array: np.ndarray, encoding: str, bigendian: bool = False):
    fields = image_fields(array.astype(array.dtype.newbyteorder(">")) if bigendian else array, encoding)
    if bigendian:  # image_fields stores native order; hand-build the big-endian variant
        fields["data"] = np.ascontiguousarray(array.astype(array.dtype.newbyteorder(">"))).view(np.uint8).reshape(-1)
        fields["is_bigendian"] = 1
    return SimpleNamespace(**fields)


def test_depth_decodes_millimetres_and_metres_and_marks_missing_returns_nan():
    mm = np.array([[0, 1000, 65535], [250, 1, 2000]], np.uint16)
    for big in (False, True):
        out = depth_to_metres(depth_msg(mm, "16UC1", bigendian=big))
        assert out.dtype == np.float32
        assert np.isnan(out[0, 0])  # 0 = no return, never 0 m
        assert np.allclose(out[~np.isnan(out)], [1.0, 65.535, 0.25, 0.001, 2.0])
    m = np.array([[np.nan, 1.5, np.inf], [0.0, -1.0, 0.75]], np.float32)
    out = depth_to_metres(depth_msg(m, "32FC1"))
    assert np.isnan(out[[0, 0, 1, 1], [0, 2, 0, 1]]).all()
    assert np.allclose(out[[0, 1], [1, 2]], [1.5, 0.75])
    with pytest.raises(ImageConversionError, match="not a depth encoding"):
        depth_to_metres(depth_msg(np.zeros((2, 2, 3), np.uint8), "rgb8"))


def test_depth_sampling_takes_the_median_of_valid_pixels_and_flags_points_without_any():
    depth = np.full((40, 60), 2.0, np.float32)
    depth[10:13, 10:13] = [[1.0, np.nan, 1.0], [np.nan, 1.0, 5.0], [1.0, 1.0, 0.0]]  # holes and an outlier
    depth[30:, :] = np.nan  # no return at the bottom
    xy = np.array([[11.2, 10.8], [30.0, 20.0], [30.0, 36.0], [-3.0, 5.0], [59.4, 0.0], [np.nan, 3.0]])
    z, valid = sample_depth(depth, xy, window=3)
    assert valid.tolist() == [True, True, False, False, True, False]
    assert z[0] == pytest.approx(1.0)  # median of {1,1,1,1,1,5}: the outlier and the holes do not count
    assert z[1] == pytest.approx(2.0)
    assert z[4] == pytest.approx(2.0)  # window clipped at the border
    assert np.isnan(z[[2, 3, 5]]).all()  # flagged, never 0
    z1, v1 = sample_depth(depth, np.array([[11.0, 10.0]]), window=1)  # the pixel itself is a hole
    assert not v1[0] and np.isnan(z1[0])
    with pytest.raises(ValueError, match="odd"):
        sample_depth(depth, xy, window=4)


def test_keypoints_get_the_3d_points_of_a_plane_of_known_depth_through_a_distorted_lens():
    # A tilted plane Z = 1 + 0.5 X seen through the plumb_bob lens: its depth image is known per pixel.
    cam = CameraModel.from_camera_info(camera_info("plumb_bob"))
    v, u = np.mgrid[0:H, 0:W]
    rays = cam.undistort(np.stack([u.ravel(), v.ravel()], axis=1)).reshape(H, W, 2)
    depth = (1.0 / (1.0 - 0.5 * rays[..., 0])).astype(np.float32)  # Z = 1 + 0.5 * x * Z
    depth[:, :150] = np.nan  # a hole on the left
    truth = np.array([[0.1, -0.05, 1.05], [-0.2, 0.1, 0.9], [0.25, 0.2, 1.125], [-0.35, 0.0, 0.825]])
    pixels, _ = cv2.projectPoints(truth, np.zeros(3), np.zeros(3), K, np.array(DISTORTIONS["plumb_bob"]))
    pixels = np.rint(pixels.reshape(-1, 2))  # keypoints on pixel centres: the plane's depth there is exact
    result = KeypointPyramidResult(
        xy=pixels.astype(np.float32), scores=np.array([0.9, 0.8, 0.2, 0.7], np.float32),
        levels=np.array([0, 1, 1, 1], np.int32), parents=np.array([-1, 0, 0, 0], np.int32),
        level_sizes=(1, 3), image_width=W, image_height=H,
    )
    located = locate_keypoints(result, cam, depth, window=1)
    expected = deproject(cam.undistort(pixels), depth[pixels[:, 1].astype(int), pixels[:, 0].astype(int)])
    assert located.point_valid.tolist() == [True, True, True, False]  # the last one is in the hole
    assert np.abs(located.points[:3] - expected[:3]).max() < 1e-5
    # And those are the 3D points we started from (up to the pixel rounding of the projection).
    assert np.abs(located.points[:3, 2] - (1.0 + 0.5 * located.points[:3, 0])).max() < 1e-4
    assert np.isnan(located.points[3]).all()
    # Thresholding keeps the geometry aligned with the kept keypoints.
    kept = threshold_pyramid(located, 0.5)
    assert np.allclose(kept.points[:2], located.points[:2]) and kept.point_valid.tolist() == [True, True, False]
    # Without depth: normalised coordinates only; without a camera: nothing.
    assert locate_keypoints(result, cam).points is None
    assert locate_keypoints(result, None, depth).normalized_xy is None
