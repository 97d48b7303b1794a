"""Camera rigs of the tabletop and the pinhole model of a pybullet camera.

A rig places a fixed camera by pybullet's yaw/pitch/distance about a target
point (offset from the workspace centre on the table top). ``oblique`` is the
original scene's camera; ``topdown`` looks straight down; ``side`` looks
across the table from the arm's left. Jitter moves the pose per episode and
keeps the intrinsics, so every episode of a run shares one K.

Frames: pybullet's view matrix maps world points to OpenGL eye coordinates
(x right, y up, z backwards). The *optical* frame used in every message
header (REP 103: x right, y down, z forward) is the eye frame turned half a
turn about x, so a world point p has optical coordinates
``diag(1, -1, -1) @ (view @ [p, 1])[:3]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

NEAR = 0.05  # metres: the projection's near and far planes (depth linearisation uses them)
FAR = 5.0
_EYE_TO_OPTICAL = np.diag([1.0, -1.0, -1.0, 1.0])


@dataclass(frozen=True)
class CameraRig:
    """A camera pose about the workspace: target offset (m, from the workspace centre on the table top)."""

    target: tuple[float, float, float]
    distance: float
    yaw: float  # degrees, pybullet convention
    pitch: float
    fov: float = 50.0  # vertical, degrees
    jitter: bool = False


CAMERA_RIGS: dict[str, CameraRig] = {
    # Looks at a point just in front of the arm, so the whole workspace, the gripper and the lower
    # arm are in view (the Panda's upper links leave the frame; their points are then not visible).
    "oblique": CameraRig((-0.08, 0.0, 0.08), 1.05, 90.0, -60.0),
    "topdown": CameraRig((-0.12, 0.0, 0.0), 1.15, 90.0, -89.9),
    "side": CameraRig((-0.18, 0.0, 0.12), 1.2, 0.0, -28.0),
}
CAMERA_CHOICES = (*CAMERA_RIGS, "random")

# Per-episode jitter, uniform in ± these amounts.
JITTER_YAW = 20.0
JITTER_PITCH = 8.0
JITTER_DISTANCE = 0.10  # relative
JITTER_TARGET = 0.03  # metres, in x and y


def camera_rig(name: str, jitter: bool = False) -> CameraRig:
    """The named rig; ``random`` is ``oblique`` with per-episode jitter."""
    if name == "random":
        return replace(CAMERA_RIGS["oblique"], jitter=True)
    rig = CAMERA_RIGS[name]
    return replace(rig, jitter=True) if jitter else rig


def jittered(rig: CameraRig, rng: np.random.Generator) -> CameraRig:
    """One episode's pose: the rig moved by a random amount (pitch kept between -89.9 and -5 degrees)."""
    u = rng.uniform(-1.0, 1.0, size=5)
    tx, ty, tz = rig.target
    return replace(
        rig,
        target=(tx + JITTER_TARGET * u[0], ty + JITTER_TARGET * u[1], tz),
        distance=rig.distance * (1.0 + JITTER_DISTANCE * u[2]),
        yaw=rig.yaw + JITTER_YAW * u[3],
        pitch=float(np.clip(rig.pitch + JITTER_PITCH * u[4], -89.9, -5.0)),
    )


@dataclass(frozen=True)
class Camera:
    """A fixed pybullet camera and its projection of world points to frame pixels."""

    view: np.ndarray  # 4×4 world -> eye (OpenGL)
    projection: np.ndarray  # 4×4 eye -> clip (OpenGL)
    width: int
    height: int
    fov: float

    @property
    def intrinsics(self) -> np.ndarray:
        """3×3 pinhole K equivalent to the projection, pixel centres at integers (ROS/OpenCV)."""
        fy = (self.height / 2.0) / math.tan(math.radians(self.fov) / 2.0)
        fx = fy  # the projection's aspect is width/height: square pixels
        return np.array(
            [[fx, 0.0, (self.width - 1) / 2.0], [0.0, fy, (self.height - 1) / 2.0], [0.0, 0.0, 1.0]]
        )

    def project(self, points: np.ndarray) -> np.ndarray:
        """World N×3 -> N×2 pixels (x right, y down, (0, 0) = centre of the top-left pixel)."""
        homogeneous = np.concatenate([points, np.ones((len(points), 1))], axis=1)
        clip = homogeneous @ (self.projection @ self.view).T
        ndc = clip[:, :2] / clip[:, 3:4]
        x = (ndc[:, 0] + 1.0) / 2.0 * self.width - 0.5
        y = (1.0 - ndc[:, 1]) / 2.0 * self.height - 0.5
        return np.stack([x, y], axis=1)

    @property
    def optical_from_world(self) -> np.ndarray:
        """4×4 transform of world points into the optical frame (x right, y down, z forward)."""
        return _EYE_TO_OPTICAL @ self.view

    @property
    def world_from_optical(self) -> np.ndarray:
        """4×4 pose of the optical frame in the world (the ``/tf_static`` world -> camera transform)."""
        return np.linalg.inv(self.optical_from_world)

    def to_optical(self, points: np.ndarray) -> np.ndarray:
        """World N×3 -> N×3 metres in the optical frame."""
        return points @ self.optical_from_world[:3, :3].T + self.optical_from_world[:3, 3]

    def linear_depth(self, buffer: np.ndarray) -> np.ndarray:
        """pybullet's non-linear depth buffer (H×W in [0, 1]) -> H×W float32 metres along the optical axis.

        OpenGL's perspective depth d maps to eye depth z = far·near / (far - (far - near)·d);
        pixels at the far plane (no surface within ``FAR``) become +inf (REP 117).
        """
        d = np.asarray(buffer, dtype=np.float64)
        z = FAR * NEAR / (FAR - (FAR - NEAR) * d)
        z[d >= 1.0] = np.inf
        return z.astype(np.float32)


def make_camera(rig: CameraRig, size: int, table_top: float, workspace_centre: tuple[float, float]
                ) -> tuple[Camera, list[float], list[float]]:
    """The camera of a rig (already jittered if it should be); also pybullet's flat view/projection lists."""
    import pybullet as p

    dx, dy, dz = rig.target
    target = (workspace_centre[0] + dx, workspace_centre[1] + dy, table_top + dz)
    view = p.computeViewMatrixFromYawPitchRoll(target, rig.distance, rig.yaw, rig.pitch, 0.0, 2)
    proj = p.computeProjectionMatrixFOV(rig.fov, 1.0, NEAR, FAR)
    # pybullet matrices are column-major flat lists.
    camera = Camera(
        view=np.array(view).reshape(4, 4).T,
        projection=np.array(proj).reshape(4, 4).T,
        width=size,
        height=size,
        fov=rig.fov,
    )
    return camera, view, proj
