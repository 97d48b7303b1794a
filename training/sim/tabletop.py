"""A Bot-and-Objects-like tabletop simulator (Keypoint Pyramids paper, section 4.1), in pybullet.

The paper's B&O data is an arm making random gripper motions of at most 5 cm
between frames inside a 50×50 cm workspace, frequently displacing and rotating
plush toys, seen by a fixed camera. Here:

- The arm (Panda from pybullet_data by default; ``kuka`` and ``xarm6`` too) sits
  at the back edge of the workspace with its gripper pointing down, closed, at
  table height, so it pushes what it meets.
- Objects: two plush toys (teddy, duck; rigid meshes in pybullet, enlarged to
  toy size) and three rigid ones (mug, jenga block, lego brick), each painted one
  flat distinct colour (textures removed) so they are distinguishable, on a
  neutral grey table.
- Motion: the gripper walks towards a waypoint at a random speed of 2-4.5 cm per
  commanded frame, so the real gripper (which lags or overshoots its target by a
  few mm) moves at most 5 cm between frames. With
  probability ``push_probability`` the next waypoint is *through* an object
  (behind it as seen from the gripper), so pushes are frequent; otherwise it is a
  random point of the workspace.
- Rendering: ER_TINY_RENDERER (CPU, deterministic), one fixed camera looking down
  at the table at an angle.
- Determinism: each episode builds a fresh pybullet client (in its worker process) and draws everything
  from ``numpy.random.default_rng([seed, episode])``, so an episode's frames do
  not depend on which worker runs it or on the other episodes.

Output of :func:`generate_tabletop` in ``OUT/``:

- ``episode_NNN/``: one rosbag2 (mcap by default, sqlite3 on request) with
  ``/camera/image_raw`` (sensor_msgs/msg/Image, rgb8) and ``/camera/camera_info``
  (the pinhole intrinsics equivalent to pybullet's projection), stamped at
  ``fps`` Hz. The sequence name is the directory stem, as the dataset reader sees it.
- ``annotations.csv`` (kp_perception_training.sim.annotations): per frame, the arm's joint
  points (``arm/<link>``), the ``gripper`` point, each object's ``<obj>/centre``
  (its bounding-box centre) and three ``<obj>/surface_<i>`` points found by
  casting rays onto the object's top at load time, stored in the object frame
  and moved with the object's pose. A point is visible when the segmentation
  mask at its pixel is the body it belongs to.
- ``scene.json``: objects (name, kind plush/rigid, urdf, colour), the camera
  (view/projection matrices, intrinsics), the arm, workspace and seed.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import queue
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from kp_perception.errors import DataError, KpPerceptionError
from kp_perception_training.sim.annotations import Annotation, write_annotations

IMAGE_TOPIC = "/camera/image_raw"
CAMERA_INFO_TOPIC = "/camera/camera_info"
FRAME_ID = "camera"
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"
# Bag stamps start here (2023-11-14T22:13:20Z) so every run writes identical stamps.
_T0_NS = 1_700_000_000 * 10**9

TIME_STEP = 1.0 / 240.0
TABLE_POSITION = (0.1, 0.0, 0.0)  # table/table.urdf: top 1.5×1 m, surface at z≈0.626
WORKSPACE_CENTRE = (0.0, 0.0)
WORKSPACE_HALF = 0.25  # 50×50 cm
MAX_STEP = 0.05  # metres the gripper may move between frames (B&O)


@dataclass(frozen=True)
class ObjectSpec:
    """An object on the table: pybullet_data URDF, flat colour, size scale, plush or rigid."""

    name: str
    urdf: str
    kind: str  # "plush" | "rigid"
    rgba: tuple[float, float, float, float]
    scale: float = 1.0


DEFAULT_OBJECTS: tuple[ObjectSpec, ...] = (
    ObjectSpec("teddy", "teddy_vhacd.urdf", "plush", (0.85, 0.45, 0.10, 1.0), 1.8),
    ObjectSpec("duck", "duck_vhacd.urdf", "plush", (1.0, 0.9, 0.05, 1.0), 1.5),
    ObjectSpec("mug", "objects/mug.urdf", "rigid", (0.85, 0.05, 0.05, 1.0), 1.0),
    ObjectSpec("jenga", "jenga/jenga.urdf", "rigid", (0.10, 0.25, 0.95, 1.0), 1.0),
    ObjectSpec("lego", "lego/lego.urdf", "rigid", (0.05, 0.75, 0.20, 1.0), 1.6),
)


@dataclass(frozen=True)
class ArmSpec:
    """A pybullet_data arm: base placement, the link the IK drives, and its gripper."""

    urdf: str
    ee_link: str  # link steered by IK and annotated as "gripper"
    ee_height: float  # height of ee_link above the table while pushing
    base_xy: tuple[float, float] = (-0.5, 0.0)
    ee_euler: tuple[float, float, float] = (math.pi, 0.0, 0.0)  # pointing down
    closed_joints: dict[str, float] = field(default_factory=dict)  # gripper joints held closed
    rest_pose: tuple[float, ...] = ()


ARMS: dict[str, ArmSpec] = {
    "panda": ArmSpec(
        "franka_panda/panda.urdf",
        "panda_grasptarget",
        0.03,
        closed_joints={"panda_finger_joint1": 0.0, "panda_finger_joint2": 0.0},
        rest_pose=(0.0, 0.4, 0.0, -2.0, 0.0, 2.4, 0.8),
    ),
    "kuka": ArmSpec("kuka_iiwa/model.urdf", "lbr_iiwa_link_7", 0.07, rest_pose=(0, 0.5, 0, -1.6, 0, 1.0, 0)),
    "xarm6": ArmSpec(
        "xarm/xarm6_with_gripper.urdf",
        "xarm_gripper_base_link",
        0.19,
        base_xy=(-0.45, 0.0),
        closed_joints={"drive_joint": 0.85},
    ),
}


@dataclass(frozen=True)
class TabletopConfig:
    """What one episode looks like; everything random is drawn from (seed, episode)."""

    frames: int = 30
    size: int = 128  # square images, size×size pixels
    seed: int = 0
    arm: str = "panda"
    fps: float = 10.0
    push_probability: float = 0.7
    objects: tuple[ObjectSpec, ...] = DEFAULT_OBJECTS
    # Looks at a point just in front of the arm (offset from the workspace centre on
    # the table top, metres), so the whole workspace, the gripper and the lower arm are in view
    # (the Panda's upper links leave the frame; their points are then not visible).
    camera_target: tuple[float, float, float] = (-0.08, 0.0, 0.08)
    camera_distance: float = 1.05
    camera_yaw: float = 90.0
    camera_pitch: float = -60.0
    camera_fov: float = 50.0  # vertical, degrees

    def validate(self) -> None:
        if self.frames < 1:
            raise KpPerceptionError(f"--frames must be at least 1, got {self.frames}")
        if not 16 <= self.size <= 2048:
            raise KpPerceptionError(f"--size must be between 16 and 2048 pixels, got {self.size}")
        if not self.fps > 0:
            raise KpPerceptionError(f"--fps must be positive, got {self.fps}")
        if self.arm not in ARMS:
            raise KpPerceptionError(f"unknown arm '{self.arm}'; choose one of {', '.join(ARMS)}")
        if len(self.objects) < 3 or not any(o.kind == "plush" for o in self.objects):
            raise KpPerceptionError("the scene needs at least three objects, one of them plush")


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


def make_camera(config: TabletopConfig, table_top: float) -> tuple[Camera, list[float], list[float]]:
    """The fixed camera; also returns pybullet's flat view and projection lists for rendering."""
    import pybullet as p

    dx, dy, dz = config.camera_target
    target = (WORKSPACE_CENTRE[0] + dx, WORKSPACE_CENTRE[1] + dy, table_top + dz)
    view = p.computeViewMatrixFromYawPitchRoll(
        target, config.camera_distance, config.camera_yaw, config.camera_pitch, 0.0, 2
    )
    proj = p.computeProjectionMatrixFOV(config.camera_fov, 1.0, 0.05, 5.0)
    # pybullet matrices are column-major flat lists.
    camera = Camera(
        view=np.array(view).reshape(4, 4).T,
        projection=np.array(proj).reshape(4, 4).T,
        width=config.size,
        height=config.size,
        fov=config.camera_fov,
    )
    return camera, view, proj


@dataclass
class _Body:
    """A loaded object: its pybullet id and points fixed in its base frame."""

    spec: ObjectSpec
    body: int
    local_points: dict[str, np.ndarray]  # name -> 3-vector in the object's base frame


class TabletopScene:
    """One episode's pybullet world: build, step one frame, render, annotate.

    Owns its own DIRECT client, so several scenes can live in different
    processes (never share a client across processes).
    """

    def __init__(self, config: TabletopConfig, episode: int) -> None:
        import pybullet as p
        import pybullet_data

        self.p = p
        self.config = config
        self.rng = np.random.default_rng([config.seed, episode])
        self.client = p.connect(p.DIRECT)
        c = self.client
        p.setAdditionalSearchPath(pybullet_data.getDataPath(), physicsClientId=c)
        p.setGravity(0, 0, -9.81, physicsClientId=c)
        p.setTimeStep(TIME_STEP, physicsClientId=c)
        p.loadURDF("plane.urdf", physicsClientId=c)
        self.table = p.loadURDF("table/table.urdf", TABLE_POSITION, useFixedBase=True, physicsClientId=c)
        p.changeVisualShape(self.table, -1, rgbaColor=(0.55, 0.55, 0.55, 1), textureUniqueId=-1, physicsClientId=c)
        self.table_top = p.getAABB(self.table, physicsClientId=c)[1][2]
        self.camera, self._view, self._proj = make_camera(config, self.table_top)
        self._load_arm()
        self.objects = [self._load_object(spec, i) for i, spec in enumerate(config.objects)]
        self._place_objects()
        self.target = self._random_workspace_point()
        self.waypoint = self.target.copy()
        self.speed = MAX_STEP
        self._reset_arm(self.target)
        for _ in range(120):  # let objects settle before the first frame
            p.stepSimulation(physicsClientId=c)

    # -- scene construction -------------------------------------------------------------
    def _load_arm(self) -> None:
        p, c = self.p, self.client
        spec = ARMS[self.config.arm]
        self.arm_spec = spec
        self.arm = p.loadURDF(spec.urdf, (*spec.base_xy, self.table_top), useFixedBase=True, physicsClientId=c)
        self.movable: list[int] = []  # joint indices IK returns values for, in order
        self.arm_points: list[tuple[str, int]] = [("arm/base", -1)]
        self.closed: dict[int, float] = {}
        self.ee_link = -1
        for j in range(p.getNumJoints(self.arm, physicsClientId=c)):
            info = p.getJointInfo(self.arm, j, physicsClientId=c)
            joint, jtype, link = info[1].decode(), info[2], info[12].decode()
            if jtype != p.JOINT_FIXED:
                self.movable.append(j)
            if link == spec.ee_link:
                self.ee_link = j
            if joint in spec.closed_joints:
                self.closed[j] = spec.closed_joints[joint]
            elif jtype == p.JOINT_REVOLUTE and self.ee_link < 0:
                self.arm_points.append((f"arm/{link}", j))
        if self.ee_link < 0:
            raise KpPerceptionError(f"{spec.urdf}: no link named {spec.ee_link}")
        self.arm_points.append(("gripper", self.ee_link))
        self.ee_orientation = p.getQuaternionFromEuler(spec.ee_euler)
        # Links whose frames coincide (e.g. panda_link1/link2) would be duplicate
        # keypoints: keep the first, judged in the rest pose so every episode agrees.
        self._set_rest_pose()
        kept: list[tuple[str, int]] = []
        kept_pos: list[np.ndarray] = []
        for name, link in self.arm_points:
            pos = np.array(
                p.getBasePositionAndOrientation(self.arm, physicsClientId=c)[0]
                if link < 0
                else p.getLinkState(self.arm, link, computeForwardKinematics=True, physicsClientId=c)[4]
            )
            if name == "gripper" or all(np.linalg.norm(pos - q) > 0.005 for q in kept_pos):
                kept.append((name, link))
                kept_pos.append(pos)
        self.arm_points = kept

    def _set_rest_pose(self) -> None:
        rest = self.arm_spec.rest_pose
        for k, j in enumerate(self.movable):
            q = self.closed.get(j, rest[k] if k < len(rest) else 0.0)
            self.p.resetJointState(self.arm, j, q, physicsClientId=self.client)

    def _load_object(self, spec: ObjectSpec, index: int) -> _Body:
        """Load the object far from everything, and find its centre and top-surface points."""
        p, c = self.p, self.client
        origin = np.array([20.0 + 5.0 * index, 20.0, 5.0])  # away from the table and other objects
        body = p.loadURDF(spec.urdf, origin, (0, 0, 0, 1), globalScaling=spec.scale, physicsClientId=c)
        p.changeVisualShape(body, -1, rgbaColor=spec.rgba, textureUniqueId=-1, physicsClientId=c)
        base_pos, _ = p.getBasePositionAndOrientation(body, physicsClientId=c)
        base_pos = np.array(base_pos)
        lo, hi = (np.array(v) for v in p.getAABB(body, physicsClientId=c))
        centre = (lo + hi) / 2.0
        points = {"centre": centre - base_pos}
        half = (hi - lo) / 2.0
        # Rays straight down onto the top, at 30 % of the half-extent off centre.
        offsets = [(-0.3 * half[0], 0.0), (0.3 * half[0], 0.0), (0.0, 0.3 * half[1])]
        starts = [(centre[0] + dx, centre[1] + dy, hi[2] + 0.05) for dx, dy in offsets]
        ends = [(x, y, lo[2] - 0.05) for x, y, _ in starts]
        hits = p.rayTestBatch(starts, ends, physicsClientId=c)
        for i, (hit, start) in enumerate(zip(hits, starts, strict=True)):
            if hit[0] == body:
                point = np.array(hit[3])
            else:  # a ray through a gap (e.g. into the mug): use the box top above that spot
                point = np.array([start[0], start[1], hi[2]])
            points[f"surface_{i}"] = point - base_pos
        return _Body(spec, body, points)

    def _place_objects(self) -> None:
        """Drop objects at random, well-separated workspace positions with random yaw."""
        p, c = self.p, self.client
        placed: list[np.ndarray] = []
        for obj in self.objects:
            for _ in range(200):
                xy = self._random_workspace_point(margin=0.05)[:2]
                if all(np.linalg.norm(xy - q) > 0.13 for q in placed):
                    break
            placed.append(xy)
            yaw = self.rng.uniform(-math.pi, math.pi)
            lo, _ = p.getAABB(obj.body, physicsClientId=c)
            base_z, _ = p.getBasePositionAndOrientation(obj.body, physicsClientId=c)
            z = self.table_top + (base_z[2] - lo[2]) + 0.005
            p.resetBasePositionAndOrientation(
                obj.body, (xy[0], xy[1], z), p.getQuaternionFromEuler((0, 0, yaw)), physicsClientId=c
            )

    def _random_workspace_point(self, margin: float = 0.0) -> np.ndarray:
        h = WORKSPACE_HALF - margin
        xy = np.array(WORKSPACE_CENTRE) + self.rng.uniform(-h, h, size=2)
        return np.array([xy[0], xy[1], self.table_top + self.arm_spec.ee_height])

    def _ik(self, target: np.ndarray) -> list[float]:
        p = self.p
        kwargs = {}
        if self.arm_spec.rest_pose:
            rest = list(self.arm_spec.rest_pose) + [0.0] * (len(self.movable) - len(self.arm_spec.rest_pose))
            kwargs["restPoses"] = rest
        return list(
            p.calculateInverseKinematics(
                self.arm,
                self.ee_link,
                target.tolist(),
                self.ee_orientation,
                maxNumIterations=60,
                physicsClientId=self.client,
                **kwargs,
            )
        )

    def _reset_arm(self, target: np.ndarray) -> None:
        self._set_rest_pose()  # start IK from the rest pose for a tidy elbow-up solution
        for _ in range(3):
            q = [self.closed.get(j, v) for j, v in zip(self.movable, self._ik(target), strict=True)]
            for j, v in zip(self.movable, q, strict=True):
                self.p.resetJointState(self.arm, j, v, physicsClientId=self.client)
        self._command(q)

    def _command(self, positions: list[float]) -> None:
        self.p.setJointMotorControlArray(
            self.arm, self.movable, self.p.POSITION_CONTROL, targetPositions=positions,
            forces=[200.0] * len(self.movable), physicsClientId=self.client,
        )

    # -- motion -------------------------------------------------------------------------
    def _next_waypoint(self) -> None:
        p, c = self.p, self.client
        # Commanded ≤ 4.5 cm per frame: the position-controlled arm lags or overshoots
        # its target by a few mm, so the real gripper stays within MAX_STEP (5 cm).
        self.speed = self.rng.uniform(0.02, MAX_STEP - 0.005)
        if self.rng.random() < self.config.push_probability:
            obj = self.objects[self.rng.integers(len(self.objects))]
            pos, _ = p.getBasePositionAndOrientation(obj.body, physicsClientId=c)
            direction = np.array(pos[:2]) - self.target[:2]
            angle = math.atan2(direction[1], direction[0]) + self.rng.uniform(-0.3, 0.3)
            through = self.rng.uniform(0.06, 0.14)  # how far past the object the push ends
            xy = np.array(pos[:2]) + through * np.array([math.cos(angle), math.sin(angle)])
            lo = np.array(WORKSPACE_CENTRE) - WORKSPACE_HALF
            xy = np.clip(xy, lo, lo + 2 * WORKSPACE_HALF)
            self.waypoint = np.array([xy[0], xy[1], self.target[2]])
        else:
            self.waypoint = self._random_workspace_point()

    def step(self, substeps: int | None = None) -> None:
        """Advance one frame (1/fps s): move the commanded gripper target ≤ 5 cm, in small IK steps."""
        p, c = self.p, self.client
        if np.linalg.norm(self.waypoint - self.target) < 0.01:
            self._next_waypoint()
        delta = self.waypoint - self.target
        dist = float(np.linalg.norm(delta))
        if dist > self.speed:
            delta *= self.speed / dist
        start = self.target.copy()
        self.target = start + delta
        substeps = substeps or max(1, round(1.0 / (self.config.fps * TIME_STEP)))
        ik_points = 4
        for k in range(ik_points):
            q = self._ik(start + delta * (k + 1) / ik_points)
            self._command([self.closed.get(j, v) for j, v in zip(self.movable, q, strict=True)])
            for _ in range(max(1, substeps // ik_points)):
                p.stepSimulation(physicsClientId=c)

    # -- observation --------------------------------------------------------------------
    def render(self) -> tuple[np.ndarray, np.ndarray]:
        """The frame (H×W×3 uint8 RGB) and its segmentation (H×W int32 body ids, -1 = none)."""
        size = self.config.size
        _, _, rgba, _, seg = self.p.getCameraImage(
            size, size, self._view, self._proj, renderer=self.p.ER_TINY_RENDERER, physicsClientId=self.client
        )
        rgb = np.asarray(rgba, dtype=np.uint8).reshape(size, size, 4)[..., :3].copy()
        return rgb, np.asarray(seg, dtype=np.int32).reshape(size, size)

    def world_points(self) -> list[tuple[str, int, np.ndarray]]:
        """(name, owning body, world xyz) of every annotated point, in a fixed order."""
        p, c = self.p, self.client
        out: list[tuple[str, int, np.ndarray]] = []
        for name, link in self.arm_points:
            if link < 0:
                pos = p.getBasePositionAndOrientation(self.arm, physicsClientId=c)[0]
            else:
                pos = p.getLinkState(self.arm, link, computeForwardKinematics=True, physicsClientId=c)[4]
            out.append((name, self.arm, np.array(pos)))
        for obj in self.objects:
            pos, orn = p.getBasePositionAndOrientation(obj.body, physicsClientId=c)
            rot = np.array(p.getMatrixFromQuaternion(orn)).reshape(3, 3)
            for point_name, local in obj.local_points.items():
                out.append((f"{obj.spec.name}/{point_name}", obj.body, np.array(pos) + rot @ local))
        return out

    def annotate(self, seg: np.ndarray) -> list[tuple[str, float, float, bool]]:
        """Project every point; visible when the segmentation at its pixel is its own body."""
        points = self.world_points()
        xy = self.camera.project(np.stack([w for _, _, w in points]))
        h, w = seg.shape
        rows = []
        for (name, body, _), (x, y) in zip(points, xy, strict=True):
            col, row = int(round(x)), int(round(y))
            visible = 0 <= col < w and 0 <= row < h and int(seg[row, col]) == body
            rows.append((name, float(x), float(y), bool(visible)))
        return rows

    def close(self) -> None:
        self.p.disconnect(physicsClientId=self.client)


def simulate_episode(
    config: TabletopConfig, episode: int
) -> Iterator[tuple[np.ndarray, list[tuple[str, float, float, bool]]]]:
    """Yield (frame H×W×3 uint8 RGB, [(name, x, y, visible), ...]) for each frame of one episode."""
    scene = TabletopScene(config, episode)
    try:
        for _ in range(config.frames):
            scene.step()
            frame, seg = scene.render()
            yield frame, scene.annotate(seg)
    finally:
        scene.close()


def camera_info_fields(camera: Camera) -> dict:
    """sensor_msgs/CameraInfo fields (minus header) for the simulated pinhole camera, no distortion."""
    k = camera.intrinsics
    p = np.zeros((3, 4))
    p[:, :3] = k
    return {
        "height": camera.height,
        "width": camera.width,
        "distortion_model": "plumb_bob",
        "d": np.zeros(5, dtype=np.float64),
        "k": k.reshape(-1).astype(np.float64),
        "r": np.eye(3).reshape(-1).astype(np.float64),
        "p": p.reshape(-1).astype(np.float64),
    }


def episode_name(episode: int) -> str:
    return f"episode_{episode:03d}"


def write_episode(
    out_dir: Path, config: TabletopConfig, episode: int, storage: str = "mcap", progress=None
) -> list[Annotation]:
    """Simulate one episode into ``out_dir/episode_NNN`` (a rosbag2) and return its annotations.

    ``progress``, when given, gets ``put(1)`` after each frame (a queue in workers).
    """
    from kp_perception_training.data.bag_writer import BagWriter

    name = episode_name(episode)
    annotations: list[Annotation] = []
    scene = TabletopScene(config, episode)
    info_fields = camera_info_fields(scene.camera)
    frame_ns = round(1e9 / config.fps)
    try:
        with BagWriter(out_dir / name, storage) as bag:
            types = bag.typestore.types
            roi = types["sensor_msgs/msg/RegionOfInterest"](
                x_offset=0, y_offset=0, height=0, width=0, do_rectify=False
            )
            for index in range(config.frames):
                scene.step()
                frame, seg = scene.render()
                stamp_ns = _T0_NS + index * frame_ns
                bag.write_image(IMAGE_TOPIC, frame, stamp_ns, encoding="rgb8", frame_id=FRAME_ID)
                info = types[CAMERA_INFO_TYPE](
                    header=bag.header(stamp_ns, FRAME_ID), **info_fields, binning_x=0, binning_y=0, roi=roi
                )
                bag.write_message(CAMERA_INFO_TOPIC, CAMERA_INFO_TYPE, info, stamp_ns)
                annotations.extend(
                    Annotation(name, index, point, x, y, visible) for point, x, y, visible in scene.annotate(seg)
                )
                if progress is not None:
                    progress.put(1)
    finally:
        scene.close()
    return annotations


# -- parallel generation ---------------------------------------------------------------
_progress_queue = None


def _init_worker(progress_queue) -> None:
    global _progress_queue
    _progress_queue = progress_queue


def _episode_task(args: tuple[Path, TabletopConfig, int, str]) -> list[Annotation]:
    out_dir, config, episode, storage = args
    return write_episode(out_dir, config, episode, storage, _progress_queue)


def _prepare_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse to write into a non-empty folder unless told; with overwrite, remove only our outputs."""
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a directory")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise DataError(f"{out}: output directory exists and is not empty (use --overwrite)")
        for child in out.iterdir():
            if child.is_dir() and child.name.startswith("episode_"):
                shutil.rmtree(child)
            elif child.name in ("annotations.csv", "scene.json"):
                child.unlink()
    out.mkdir(parents=True, exist_ok=True)


def generate_tabletop(
    out: str | Path,
    episodes: int,
    config: TabletopConfig,
    storage: str = "mcap",
    workers: int | None = None,
    overwrite: bool = False,
    show_progress: bool = True,
) -> dict:
    """Simulate ``episodes`` episodes into ``out`` across ``workers`` processes; return a summary.

    Episodes are independent (own pybullet client, own seed), so they run in a
    process pool; the annotations are gathered and written in
    episode order, so the output does not depend on the worker count.
    """
    from tqdm import tqdm

    config.validate()
    if episodes < 1:
        raise KpPerceptionError(f"--episodes must be at least 1, got {episodes}")
    if storage not in ("mcap", "sqlite3"):
        raise KpPerceptionError(f"--storage must be mcap or sqlite3, got '{storage}'")
    out = Path(out)
    _prepare_out_dir(out, overwrite)
    workers = max(1, min(workers or os.cpu_count() or 1, episodes))
    tasks = [(out, config, e, storage) for e in range(episodes)]
    results: dict[int, list[Annotation]] = {}
    with tqdm(total=episodes * config.frames, desc="sim tabletop", unit="frame", disable=not show_progress) as bar:
        if workers == 1:

            class _Bar:
                def put(self, n: int) -> None:
                    bar.update(n)

            for task in tasks:
                results[task[2]] = write_episode(*task, progress=_Bar())
        else:
            # fork where available: no pybullet client exists in this process yet, and
            # unlike spawn it works from scripts without an ``if __name__ == "__main__"`` guard.
            ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
            progress = ctx.Queue()
            with ctx.Pool(workers, initializer=_init_worker, initargs=(progress,)) as pool:
                pending = {e: pool.apply_async(_episode_task, (t,)) for e, t in zip(range(episodes), tasks, strict=True)}
                while pending:
                    try:
                        bar.update(progress.get(timeout=0.2))
                    except queue.Empty:
                        pass
                    for e in [e for e, r in pending.items() if r.ready()]:
                        results[e] = pending.pop(e).get()
                while True:  # drain late progress ticks
                    try:
                        bar.update(progress.get_nowait())
                    except queue.Empty:
                        break
    rows = [a for e in range(episodes) for a in results[e]]
    write_annotations(out / "annotations.csv", rows)
    scene = describe_scene(config, episodes, storage)
    (out / "scene.json").write_text(json.dumps(scene, indent=2))
    return {"out": str(out), "episodes": episodes, "frames": episodes * config.frames, "annotations": len(rows)}


def describe_scene(config: TabletopConfig, episodes: int, storage: str) -> dict:
    """scene.json: what evaluation needs to know about objects, camera and generation settings."""
    import pybullet as p

    client = p.connect(p.DIRECT)
    try:
        # The table top height is fixed by the URDF; recompute it rather than hard-code it.
        import pybullet_data

        p.setAdditionalSearchPath(pybullet_data.getDataPath(), physicsClientId=client)
        table = p.loadURDF("table/table.urdf", TABLE_POSITION, useFixedBase=True, physicsClientId=client)
        table_top = p.getAABB(table, physicsClientId=client)[1][2]
        camera, _, _ = make_camera(config, table_top)
    finally:
        p.disconnect(physicsClientId=client)
    return {
        "seed": config.seed,
        "episodes": episodes,
        "frames_per_episode": config.frames,
        "fps": config.fps,
        "storage": storage,
        "image_topic": IMAGE_TOPIC,
        "camera_info_topic": CAMERA_INFO_TOPIC,
        "arm": {"name": config.arm, "urdf": ARMS[config.arm].urdf, "gripper_link": ARMS[config.arm].ee_link},
        "objects": [
            {"name": o.name, "kind": o.kind, "urdf": o.urdf, "colour": list(o.rgba[:3]), "scale": o.scale}
            for o in config.objects
        ],
        "camera": {
            "width": camera.width,
            "height": camera.height,
            "fov_y_deg": camera.fov,
            "distance": config.camera_distance,
            "yaw_deg": config.camera_yaw,
            "pitch_deg": config.camera_pitch,
            "K": camera.intrinsics.tolist(),
            "view_matrix": camera.view.tolist(),
            "projection_matrix": camera.projection.tolist(),
        },
        "table_top_z": table_top,
        "workspace": {"centre": list(WORKSPACE_CENTRE), "size_m": 2 * WORKSPACE_HALF},
        "max_step_m": MAX_STEP,
        "config": {k: v for k, v in asdict(config).items() if k != "objects"},
    }
