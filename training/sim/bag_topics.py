"""What a simulated episode bag holds, as a robot would record it: topics, frame ids, message builders.

Topics (every image-like message of frame i shares ``header.stamp`` and
``header.frame_id = CAMERA_FRAME``):

- ``/camera/image_raw``: sensor_msgs/Image ``rgb8``.
- ``/camera/camera_info``: sensor_msgs/CameraInfo, the true pinhole K.
- ``/camera/depth/image_raw``: sensor_msgs/Image ``32FC1``, metres along the
  optical axis, aligned pixel for pixel with the colour frame; +inf where no
  surface lies within the far plane (REP 117).
- ``/camera/instance_ids``: sensor_msgs/Image ``mono16``, per-pixel instance
  id (0 background, 1 arm, 2 + k object k of the pool, then distractors).
- ``/joint_states``: sensor_msgs/JointState of the arm's non-fixed joints.
- ``/tf_static``: one tf2_msgs/TFMessage, ``world -> camera_optical_frame``
  and ``world -> arm_base``, offered as transient local.

``camera_optical_frame`` follows REP 103's optical convention (x right, y
down, z forward), which is what pixel coordinates and CameraInfo assume.
"""

from __future__ import annotations

from typing import Any

import numpy as np

IMAGE_TOPIC = "/camera/image_raw"
CAMERA_INFO_TOPIC = "/camera/camera_info"
DEPTH_TOPIC = "/camera/depth/image_raw"
INSTANCE_TOPIC = "/camera/instance_ids"
JOINT_STATES_TOPIC = "/joint_states"
TF_STATIC_TOPIC = "/tf_static"

WORLD_FRAME = "world"
CAMERA_FRAME = "camera_optical_frame"
ARM_BASE_FRAME = "arm_base"

CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"
JOINT_STATE_TYPE = "sensor_msgs/msg/JointState"
TF_MESSAGE_TYPE = "tf2_msgs/msg/TFMessage"

# Instance ids of the mask: fixed ones, then 2 + k for the pool's k-th object, then distractors.
BACKGROUND_ID = 0
ARM_ID = 1
FIRST_OBJECT_ID = 2

# Bag stamps start here (2023-11-14T22:13:20Z) so every run writes identical stamps.
T0_NS = 1_700_000_000 * 10**9


def camera_info_fields(intrinsics: np.ndarray, width: int, height: int) -> dict:
    """sensor_msgs/CameraInfo fields (minus header, binning, roi) for a pinhole camera without distortion."""
    k = np.asarray(intrinsics, dtype=np.float64)
    p = np.zeros((3, 4))
    p[:, :3] = k
    return {
        "height": height,
        "width": width,
        "distortion_model": "plumb_bob",
        "d": np.zeros(5, dtype=np.float64),
        "k": k.reshape(-1).astype(np.float64),
        "r": np.eye(3).reshape(-1).astype(np.float64),
        "p": p.reshape(-1).astype(np.float64),
    }


def camera_info_message(bag, intrinsics: np.ndarray, width: int, height: int, stamp_ns: int) -> Any:
    types = bag.typestore.types
    roi = types["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
    return types[CAMERA_INFO_TYPE](
        header=bag.header(stamp_ns, CAMERA_FRAME), **camera_info_fields(intrinsics, width, height),
        binning_x=0, binning_y=0, roi=roi,
    )


def joint_state_message(bag, names: list[str], position, velocity, effort, stamp_ns: int) -> Any:
    """sensor_msgs/JointState (``header.frame_id`` empty, as robot drivers publish it)."""
    return bag.typestore.types[JOINT_STATE_TYPE](
        header=bag.header(stamp_ns, ""),
        name=list(names),
        position=np.asarray(position, dtype=np.float64),
        velocity=np.asarray(velocity, dtype=np.float64),
        effort=np.asarray(effort, dtype=np.float64),
    )


def _quaternion_xyzw(rotation: np.ndarray) -> np.ndarray:
    """Unit quaternion (x, y, z, w) of a 3×3 rotation matrix, w ≥ 0."""
    from scipy.spatial.transform import Rotation

    q = Rotation.from_matrix(rotation).as_quat()
    return -q if q[3] < 0 else q


def transform_stamped(bag, parent: str, child: str, pose: np.ndarray, stamp_ns: int) -> Any:
    """geometry_msgs/TransformStamped: ``pose`` (4×4) is the child frame's pose in the parent frame."""
    types = bag.typestore.types
    qx, qy, qz, qw = (float(v) for v in _quaternion_xyzw(pose[:3, :3]))
    tx, ty, tz = (float(v) for v in pose[:3, 3])
    return types["geometry_msgs/msg/TransformStamped"](
        header=bag.header(stamp_ns, parent),
        child_frame_id=child,
        transform=types["geometry_msgs/msg/Transform"](
            translation=types["geometry_msgs/msg/Vector3"](x=tx, y=ty, z=tz),
            rotation=types["geometry_msgs/msg/Quaternion"](x=qx, y=qy, z=qz, w=qw),
        ),
    )


def tf_static_message(bag, transforms: list[tuple[str, str, np.ndarray]], stamp_ns: int) -> Any:
    """tf2_msgs/TFMessage of (parent, child, 4×4 pose of child in parent) transforms."""
    return bag.typestore.types[TF_MESSAGE_TYPE](
        transforms=[transform_stamped(bag, parent, child, pose, stamp_ns) for parent, child, pose in transforms]
    )
