"""A Bot-and-Objects-like tabletop simulator (Keypoint Pyramids paper, section 4.1), in pybullet.

The paper's B&O data is an arm making random gripper motions of at most 5 cm
between frames inside a 50×50 cm workspace, frequently displacing and rotating
plush toys, seen by a fixed camera. Here:

- The arm (Panda from pybullet_data by default; ``kuka`` and ``xarm6`` too,
  ``kp_perception_training.sim.arms``) sits at the back edge of the workspace
  with its gripper pointing down, closed, at table height, so it pushes what
  it meets.
- Objects come from a catalogue of pybullet_data models
  (``kp_perception_training.sim.catalogue``): plush toys (teddy, duck, bunny;
  rigid meshes in pybullet, enlarged to toy size) and rigid ones, each painted
  one flat distinct colour (textures removed). The default scene has teddy,
  duck, mug, jenga and lego on a neutral grey table.
- Scene presets (``kp_perception_training.sim.scenes``) vary the arm, the
  camera rig (``kp_perception_training.sim.cameras``), the object pool and how
  many objects each episode draws, the table, the light and non-annotated
  distractors. ``default`` is the original scene, bit for bit.
- Motion: the gripper walks towards a waypoint at a random speed of 2-4.5 cm per
  commanded frame, so the real gripper (which lags or overshoots its target by a
  few mm) moves at most 5 cm between frames. With
  probability ``push_probability`` the next waypoint is *through* an object
  (behind it as seen from the gripper), so pushes are frequent; otherwise it is a
  random point of the workspace.
- Rendering: ER_TINY_RENDERER (CPU, deterministic); colour, depth and
  segmentation come from one ``getCameraImage`` call.
- Determinism: each episode builds a fresh pybullet client (in its worker process) and draws
  the motion from ``numpy.random.default_rng([seed, episode])``; each varied
  aspect (objects drawn, distractors, camera jitter, light, table) has its own
  stream ``default_rng([seed, episode, aspect])``, so turning one on changes
  neither the motion stream nor the others, and an episode's frames do not
  depend on which worker runs it or on the other episodes.

Output of :func:`generate_tabletop` in ``OUT/`` (the topics, frames and
formats are documented in ``kp_perception_training.sim.bag_topics`` and
docs/training_guide.md):

- ``episode_NNN/``: one rosbag2 (mcap by default, sqlite3 on request) with the
  colour image, camera_info, depth, instance ids, joint states and tf_static,
  stamped at ``fps`` Hz. The sequence name is the directory stem, as the
  dataset reader sees it.
- ``annotations.csv`` (kp_perception_training.sim.annotations): per frame, the arm's joint
  points (``arm/<link>``), the ``gripper`` point, each object's ``<obj>/centre``
  (its bounding-box centre) and three ``<obj>/surface_<i>`` points found by
  casting rays onto the object's top at load time, stored in the object frame
  and moved with the object's pose; pixels, visibility and the point in the
  camera's optical frame (metres). A point is visible when the segmentation
  mask at its pixel is the body it belongs to.
- ``scene.json``: the preset, objects (name, type, kind, model, colour,
  instance id), the instance-id table, the camera, per-sequence details, the
  arm, workspace and seed.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import queue
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from kp_perception.errors import DataError, KpPerceptionError
from kp_perception_training.sim.annotations import Annotation, write_annotations
from kp_perception_training.sim.arms import ARMS, ArmSpec
from kp_perception_training.sim.bag_topics import (
    ARM_BASE_FRAME,
    ARM_ID,
    BACKGROUND_ID,
    CAMERA_FRAME,
    CAMERA_INFO_TOPIC,
    CAMERA_INFO_TYPE,
    DEPTH_TOPIC,
    FIRST_OBJECT_ID,
    IMAGE_TOPIC,
    INSTANCE_TOPIC,
    JOINT_STATE_TYPE,
    JOINT_STATES_TOPIC,
    T0_NS,
    TF_MESSAGE_TYPE,
    TF_STATIC_TOPIC,
    WORLD_FRAME,
    camera_info_message,
    joint_state_message,
    tf_static_message,
)
from kp_perception_training.sim.cameras import (
    CAMERA_CHOICES,
    Camera,
    CameraRig,
    camera_rig,
    jittered,
    make_camera,
)
from kp_perception_training.sim.catalogue import (
    DEFAULT_OBJECTS,
    DISTRACTOR_MODELS,
    DISTRACTOR_SCALE,
    ObjectSpec,
    distractor_urdf,
    instance_names,
    objects_from_types,
)
from kp_perception_training.sim.scenes import (
    LIGHT_CHOICES,
    LIGHTS,
    SCENE_PRESETS,
    TABLE_CHOICES,
    TABLE_STYLES,
    TableStyle,
    random_light,
    random_table,
)

__all__ = [
    "ARMS", "ArmSpec", "Camera", "DEFAULT_OBJECTS", "ObjectSpec", "TabletopConfig", "TabletopScene",
    "IMAGE_TOPIC", "CAMERA_INFO_TOPIC", "DEPTH_TOPIC", "INSTANCE_TOPIC", "JOINT_STATES_TOPIC", "TF_STATIC_TOPIC",
    "FRAME_ID", "generate_tabletop", "simulate_episode", "write_episode",
]

FRAME_ID = CAMERA_FRAME  # the frame_id of every camera message header

TIME_STEP = 1.0 / 240.0
TABLE_POSITION = (0.1, 0.0, 0.0)  # table/table.urdf: top 1.5×1 m, surface at z≈0.626
WORKSPACE_CENTRE = (0.0, 0.0)
WORKSPACE_HALF = 0.25  # 50×50 cm
MAX_STEP = 0.05  # metres the gripper may move between frames (B&O)
MAX_DISTRACTORS = 20
SURFACE_POINTS = ("collision", "rendered")

# Random streams of the varied aspects: default_rng([seed, episode, aspect]).
_ASPECT_OBJECTS, _ASPECT_DISTRACTORS, _ASPECT_CAMERA, _ASPECT_LIGHT, _ASPECT_TABLE = 1, 2, 3, 4, 5


@dataclass(frozen=True)
class TabletopConfig:
    """What one episode looks like; everything random is drawn from (seed, episode).

    Build one from a preset with :meth:`from_scene`; ``TabletopConfig()`` is
    the ``default`` scene. ``objects`` is the pool; ``objects_per_episode``
    of them (0: all, in pool order) are drawn per episode.
    """

    frames: int = 30
    size: int = 128  # square images, size×size pixels
    seed: int = 0
    arm: str = "panda"
    fps: float = 10.0
    push_probability: float = 0.7
    objects: tuple[ObjectSpec, ...] = DEFAULT_OBJECTS
    scene: str = "default"  # the preset these settings came from (recorded in scene.json)
    camera: str = "oblique"  # a rig of cameras.CAMERA_RIGS, or "random" (oblique, jittered per episode)
    camera_jitter: bool = False
    objects_per_episode: int = 0
    table: str = "grey"
    light: str = "default"
    distractors: int = 0
    # "collision": surface points by ray casts on collision shapes, visibility by segmentation (the
    # original ground truth, kept by the default preset); "rendered": points on the rendered surface,
    # and a surface point is visible only where the depth image sees it.
    surface_points: str = "collision"
    depth: bool = True  # write /camera/depth/image_raw
    instance_ids: bool = True  # write /camera/instance_ids
    joint_states: bool = True  # write /joint_states

    @classmethod
    def from_scene(cls, scene: str = "default", objects: tuple[str, ...] | None = None, **overrides
                   ) -> TabletopConfig:
        """The preset ``scene`` with single fields overridden (``None`` values are ignored).

        ``objects`` is a list of catalogue types here (``("teddy", "mug")``).
        """
        if scene not in SCENE_PRESETS:
            raise KpPerceptionError(f"unknown scene '{scene}'; choose one of {', '.join(SCENE_PRESETS)}")
        preset = SCENE_PRESETS[scene]
        known = {f.name for f in fields(cls)}
        unknown = [k for k in overrides if k not in known]
        if unknown:
            raise TypeError(f"unknown TabletopConfig field(s): {', '.join(unknown)}")
        values = {
            "scene": scene, "arm": preset.arm, "camera": preset.camera, "table": preset.table,
            "light": preset.light, "distractors": preset.distractors,
            "objects_per_episode": preset.objects_per_episode, "surface_points": preset.surface_points,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        types = preset.objects if objects is None else tuple(objects)
        if objects is not None and overrides.get("objects_per_episode") is None:
            values["objects_per_episode"] = 0  # a pool given by hand is shown whole unless told otherwise
        values["objects"] = objects_from_types(types)
        return cls(**values)

    def validate(self) -> None:
        if self.frames < 1:
            raise KpPerceptionError(f"--frames must be at least 1, got {self.frames}")
        if not 16 <= self.size <= 2048:
            raise KpPerceptionError(f"--size must be between 16 and 2048 pixels, got {self.size}")
        if not self.fps > 0:
            raise KpPerceptionError(f"--fps must be positive, got {self.fps}")
        if self.arm not in ARMS:
            raise KpPerceptionError(f"unknown arm '{self.arm}'; choose one of {', '.join(ARMS)}")
        if self.camera not in CAMERA_CHOICES:
            raise KpPerceptionError(f"unknown camera '{self.camera}'; choose one of {', '.join(CAMERA_CHOICES)}")
        if self.table not in TABLE_CHOICES:
            raise KpPerceptionError(f"unknown table '{self.table}'; choose one of {', '.join(TABLE_CHOICES)}")
        if self.light not in LIGHT_CHOICES:
            raise KpPerceptionError(f"unknown light '{self.light}'; choose one of {', '.join(LIGHT_CHOICES)}")
        if self.surface_points not in SURFACE_POINTS:
            raise KpPerceptionError(
                f"unknown surface points '{self.surface_points}'; choose one of {', '.join(SURFACE_POINTS)}"
            )
        if not self.objects:
            raise KpPerceptionError("the scene needs at least one object")
        if not 0 <= self.objects_per_episode <= len(self.objects):
            raise KpPerceptionError(
                f"--objects-per-episode must be between 0 (all) and the pool size {len(self.objects)}, "
                f"got {self.objects_per_episode}"
            )
        if not 0 <= self.distractors <= MAX_DISTRACTORS:
            raise KpPerceptionError(f"--distractors must be between 0 and {MAX_DISTRACTORS}, got {self.distractors}")

    @property
    def object_names(self) -> list[str]:
        """Instance names of the pool (``teddy``, ``teddy_2``, ...), in pool order."""
        return instance_names(o.name for o in self.objects)

    def instance_table(self) -> list[dict]:
        """The id table of ``/camera/instance_ids`` (the same for every episode of a run)."""
        table = [
            {"id": BACKGROUND_ID, "class": "background", "name": "background"},
            {"id": ARM_ID, "class": "arm", "name": "arm"},
        ]
        for k, (name, spec) in enumerate(zip(self.object_names, self.objects, strict=True)):
            table.append({"id": FIRST_OBJECT_ID + k, "class": "object", "name": name, "type": spec.name,
                          "kind": spec.kind})
        first_distractor = FIRST_OBJECT_ID + len(self.objects)
        table += [{"id": first_distractor + j, "class": "distractor", "name": f"distractor_{j}"}
                  for j in range(self.distractors)]
        return table


def nominal_rig(config: TabletopConfig) -> CameraRig:
    """The configured rig before any per-episode jitter."""
    return camera_rig(config.camera, config.camera_jitter)


@dataclass
class _Body:
    """A loaded object: its pybullet id, names and points fixed in its base frame."""

    spec: ObjectSpec
    name: str  # instance name
    instance_id: int
    body: int
    local_points: dict[str, np.ndarray]  # name -> 3-vector in the object's base frame


@dataclass(frozen=True)
class RenderedViews:
    """One getCameraImage call: colour, segmentation (pybullet body ids, -1 none) and raw depth buffer."""

    rgb: np.ndarray  # H×W×3 uint8
    seg: np.ndarray  # H×W int32
    depth_buffer: np.ndarray  # H×W float32, OpenGL depth in [0, 1]


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
        self.episode = episode
        self.rng = np.random.default_rng([config.seed, episode])
        self.client = p.connect(p.DIRECT)
        c = self.client
        p.setAdditionalSearchPath(pybullet_data.getDataPath(), physicsClientId=c)
        p.setGravity(0, 0, -9.81, physicsClientId=c)
        p.setTimeStep(TIME_STEP, physicsClientId=c)
        p.loadURDF("plane.urdf", physicsClientId=c)
        self.table = p.loadURDF("table/table.urdf", TABLE_POSITION, useFixedBase=True, physicsClientId=c)
        self.table_style = self._paint_table()
        self.table_top = p.getAABB(self.table, physicsClientId=c)[1][2]
        rig = nominal_rig(config)
        if rig.jitter:
            rig = jittered(rig, self._aspect_rng(_ASPECT_CAMERA))
        self.rig = rig
        self.camera, self._view, self._proj = make_camera(rig, config.size, self.table_top, WORKSPACE_CENTRE)
        light = LIGHTS[config.light] if config.light != "random" else random_light(self._aspect_rng(_ASPECT_LIGHT))
        self.light_direction = None if light is None else tuple(float(v) for v in light)
        self._load_arm()
        names = config.object_names
        self.objects = [
            self._load_object(config.objects[k], k, names[k]) for k in self._chosen_objects()
        ]
        self._place_objects()
        self.distractors = self._load_distractors(self._aspect_rng(_ASPECT_DISTRACTORS))
        self._instance_lut = self._build_instance_lut()
        self.target = self._random_workspace_point()
        self.waypoint = self.target.copy()
        self.speed = MAX_STEP
        self._reset_arm(self.target)
        for _ in range(120):  # let objects settle before the first frame
            p.stepSimulation(physicsClientId=c)

    def _aspect_rng(self, aspect: int) -> np.random.Generator:
        return np.random.default_rng([self.config.seed, self.episode, aspect])

    # -- scene construction -------------------------------------------------------------
    def _paint_table(self) -> TableStyle:
        p, c = self.p, self.client
        if self.config.table == "random":
            style = random_table(self._aspect_rng(_ASPECT_TABLE))
        else:
            style = TABLE_STYLES[self.config.table]
        texture = -1 if style.texture is None else p.loadTexture(style.texture, physicsClientId=c)
        p.changeVisualShape(self.table, -1, rgbaColor=style.rgba, textureUniqueId=texture, physicsClientId=c)
        return style

    def _chosen_objects(self) -> list[int]:
        """Pool indices of this episode's objects, in pool order."""
        pool, n = len(self.config.objects), self.config.objects_per_episode
        if n == 0 or n == pool:
            return list(range(pool))
        return sorted(int(k) for k in self._aspect_rng(_ASPECT_OBJECTS).choice(pool, size=n, replace=False))

    def _load_arm(self) -> None:
        p, c = self.p, self.client
        spec = ARMS[self.config.arm]
        self.arm_spec = spec
        self.arm = p.loadURDF(spec.urdf, (*spec.base_xy, self.table_top), useFixedBase=True, physicsClientId=c)
        self.base_link = p.getBodyInfo(self.arm, physicsClientId=c)[0].decode()
        self.movable: list[int] = []  # joint indices IK returns values for, in order
        self.joint_names: list[str] = []
        self.arm_points: list[tuple[str, int]] = [("arm/base", -1)]
        self.closed: dict[int, float] = {}
        self.ee_link = -1
        for j in range(p.getNumJoints(self.arm, physicsClientId=c)):
            info = p.getJointInfo(self.arm, j, physicsClientId=c)
            joint, jtype, link = info[1].decode(), info[2], info[12].decode()
            if jtype != p.JOINT_FIXED:
                self.movable.append(j)
                self.joint_names.append(joint)
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

    def _create_body(self, spec: ObjectSpec, origin: np.ndarray, orientation) -> int:
        """A URDF via loadURDF, or a mesh as one rigid body centred on its bounding box."""
        p, c = self.p, self.client
        if not spec.is_mesh:
            return p.loadURDF(spec.urdf, origin, orientation, globalScaling=spec.scale, physicsClientId=c)
        lo, hi = _mesh_bounds(spec.urdf)
        offset = (-(lo + hi) / 2.0 * spec.scale).tolist()
        scale = [spec.scale] * 3
        collision = p.createCollisionShape(p.GEOM_MESH, fileName=spec.urdf, meshScale=scale,
                                           collisionFramePosition=offset, physicsClientId=c)
        visual = p.createVisualShape(p.GEOM_MESH, fileName=spec.urdf, meshScale=scale,
                                     visualFramePosition=offset, physicsClientId=c)
        return p.createMultiBody(spec.mass, collision, visual, origin, orientation, physicsClientId=c)

    def _load_object(self, spec: ObjectSpec, index: int, name: str) -> _Body:
        """Load the object far from everything, and find its centre and top-surface points."""
        p, c = self.p, self.client
        origin = np.array([20.0 + 5.0 * index, 20.0, 5.0])  # away from the table and other objects
        upright = spec.base_euler != (0.0, 0.0, 0.0)
        orientation = p.getQuaternionFromEuler(spec.base_euler) if upright else (0, 0, 0, 1)
        body = self._create_body(spec, origin, orientation)
        p.changeVisualShape(body, -1, rgbaColor=spec.rgba, textureUniqueId=-1, physicsClientId=c)
        base_pos, base_orn = p.getBasePositionAndOrientation(body, physicsClientId=c)
        base_pos = np.array(base_pos)
        # World offsets to the body frame (the identity for objects loaded unrotated).
        to_body = np.array(p.getMatrixFromQuaternion(base_orn)).reshape(3, 3).T if upright else None
        lo, hi = (np.array(v) for v in p.getAABB(body, physicsClientId=c))
        centre = (lo + hi) / 2.0
        points = {"centre": centre - base_pos}
        half = (hi - lo) / 2.0
        # Rays straight down onto the top, at 30 % of the half-extent off centre.
        offsets = [(-0.3 * half[0], 0.0), (0.3 * half[0], 0.0), (0.0, 0.3 * half[1])]
        starts = [(centre[0] + dx, centre[1] + dy, hi[2] + 0.05) for dx, dy in offsets]
        ends = [(x, y, lo[2] - 0.05) for x, y, _ in starts]
        hits = p.rayTestBatch(starts, ends, physicsClientId=c)
        tops = self._rendered_tops(body, starts, lo, hi) if self.config.surface_points == "rendered" else None
        for i, (hit, start) in enumerate(zip(hits, starts, strict=True)):
            if tops is not None and tops[i] is not None:
                point = np.array([start[0], start[1], tops[i]])
            elif hit[0] == body:
                point = np.array(hit[3])
            else:  # a ray through a gap (e.g. into the mug): use the box top above that spot
                point = np.array([start[0], start[1], hi[2]])
            points[f"surface_{i}"] = point - base_pos
        if to_body is not None:
            points = {k: to_body @ v for k, v in points.items()}
        return _Body(spec, name, FIRST_OBJECT_ID + index, body, points)

    def _rendered_tops(self, body: int, starts, lo: np.ndarray, hi: np.ndarray) -> list[float | None]:
        """Height of the *rendered* surface below each (x, y) of ``starts``, or None where it is not ``body``.

        Collision shapes (convex hulls) can bridge a mesh's concavities, so a ray
        cast on them may stop centimetres above what the camera sees. One
        orthographic depth render straight down on the isolated object finds the
        visual surface instead (pixels of about 1.5 mm for a 10 cm object);
        rendering changes no simulation state.
        """
        p, c = self.p, self.client
        n = 64
        centre = (lo + hi) / 2.0
        half = max(hi[0] - lo[0], hi[1] - lo[1]) / 2.0 + 0.01
        eye = (centre[0], centre[1], hi[2] + 0.1)
        near, far = 0.01, hi[2] - lo[2] + 0.2
        view = p.computeViewMatrix(eye, (centre[0], centre[1], lo[2]), (0, 1, 0))
        projection = _orthographic(half, near, far)
        _, _, _, depth, seg = p.getCameraImage(n, n, view, projection.T.reshape(-1).tolist(),
                                               renderer=p.ER_TINY_RENDERER, physicsClientId=c)
        depth = np.asarray(depth, dtype=np.float64).reshape(n, n)
        seg = np.asarray(seg).reshape(n, n)
        camera = Camera(np.array(view).reshape(4, 4).T, projection, n, n, 0.0)
        pixels = camera.project(np.array([[x, y, hi[2]] for x, y, _ in starts]))
        tops: list[float | None] = []
        for x, y in pixels:
            col, row = int(round(x)), int(round(y))
            if 0 <= col < n and 0 <= row < n and seg[row, col] == body:
                tops.append(float(eye[2] - (near + depth[row, col] * (far - near))))  # orthographic: linear
            else:
                tops.append(None)
        return tops

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
            orientation = p.getQuaternionFromEuler((0, 0, yaw))
            if obj.spec.base_euler != (0.0, 0.0, 0.0):
                upright = p.getQuaternionFromEuler(obj.spec.base_euler)
                orientation = p.multiplyTransforms((0, 0, 0), orientation, (0, 0, 0), upright)[1]
            lo, _ = p.getAABB(obj.body, physicsClientId=c)
            base_z, _ = p.getBasePositionAndOrientation(obj.body, physicsClientId=c)
            z = self.table_top + (base_z[2] - lo[2]) + 0.005
            p.resetBasePositionAndOrientation(obj.body, (xy[0], xy[1], z), orientation, physicsClientId=c)
        self._placed = placed

    def _load_distractors(self, rng: np.random.Generator) -> list[tuple[int, str, int]]:
        """Non-annotated clutter: (body, model, instance id) of small random_urdfs shapes, random colours."""
        p, c = self.p, self.client
        out: list[tuple[int, str, int]] = []
        placed = list(self._placed)
        first_id = FIRST_OBJECT_ID + len(self.config.objects)
        for j in range(self.config.distractors):
            model = distractor_urdf(int(rng.integers(DISTRACTOR_MODELS)))
            for _ in range(200):
                xy = np.array(WORKSPACE_CENTRE) + rng.uniform(-WORKSPACE_HALF + 0.03, WORKSPACE_HALF - 0.03, size=2)
                if all(np.linalg.norm(xy - q) > 0.09 for q in placed):
                    break
            placed.append(xy)
            yaw = rng.uniform(-math.pi, math.pi)
            rgba = (*rng.uniform(0.15, 0.95, size=3), 1.0)
            body = p.loadURDF(model, (20.0, -20.0 - 5.0 * j, 5.0), globalScaling=DISTRACTOR_SCALE,
                              physicsClientId=c)
            p.changeVisualShape(body, -1, rgbaColor=rgba, textureUniqueId=-1, physicsClientId=c)
            lo, _ = p.getAABB(body, physicsClientId=c)
            base_z, _ = p.getBasePositionAndOrientation(body, physicsClientId=c)
            z = self.table_top + (base_z[2] - lo[2]) + 0.005
            p.resetBasePositionAndOrientation(body, (xy[0], xy[1], z), p.getQuaternionFromEuler((0, 0, yaw)),
                                              physicsClientId=c)
            out.append((body, model, first_id + j))
        return out

    def _build_instance_lut(self) -> np.ndarray:
        """Lookup from pybullet body id + 1 (segmentation -1 = nothing) to instance id."""
        ids = {self.arm: ARM_ID}
        ids.update({o.body: o.instance_id for o in self.objects})
        ids.update({body: iid for body, _, iid in self.distractors})
        lut = np.full(max(ids) + 2, BACKGROUND_ID, dtype=np.uint16)
        for body, iid in ids.items():
            lut[body + 1] = iid
        return lut

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
    def render_views(self) -> RenderedViews:
        """Colour, segmentation and depth buffer of the current state, from one getCameraImage call."""
        size = self.config.size
        light = {} if self.light_direction is None else {"lightDirection": list(self.light_direction)}
        _, _, rgba, depth, seg = self.p.getCameraImage(
            size, size, self._view, self._proj, renderer=self.p.ER_TINY_RENDERER, physicsClientId=self.client,
            **light,
        )
        rgb = np.asarray(rgba, dtype=np.uint8).reshape(size, size, 4)[..., :3].copy()
        return RenderedViews(
            rgb=rgb,
            seg=np.asarray(seg, dtype=np.int32).reshape(size, size),
            depth_buffer=np.asarray(depth, dtype=np.float32).reshape(size, size),
        )

    def render(self) -> tuple[np.ndarray, np.ndarray]:
        """The frame (H×W×3 uint8 RGB) and its segmentation (H×W int32 body ids, -1 = none)."""
        views = self.render_views()
        return views.rgb, views.seg

    def depth(self, views: RenderedViews) -> np.ndarray:
        """H×W float32 metres along the optical axis (+inf: nothing within the far plane)."""
        return self.camera.linear_depth(views.depth_buffer)

    def instance_ids(self, seg: np.ndarray) -> np.ndarray:
        """H×W uint16 instance ids (0 background, 1 arm, 2 + k pool object k, then distractors)."""
        return self._instance_lut[np.clip(seg, -1, len(self._instance_lut) - 2) + 1]

    def joint_state(self) -> tuple[list[str], list[float], list[float], list[float]]:
        """Names, positions, velocities and applied efforts of the arm's non-fixed joints."""
        states = self.p.getJointStates(self.arm, self.movable, physicsClientId=self.client)
        return (
            list(self.joint_names),
            [s[0] for s in states],
            [s[1] for s in states],
            [s[3] for s in states],
        )

    def arm_base_pose(self) -> np.ndarray:
        """4×4 pose in the world of the arm URDF's root link frame (pybullet reports the base's inertial frame)."""
        p, c = self.p, self.client
        com_pos, com_orn = p.getBasePositionAndOrientation(self.arm, physicsClientId=c)
        local_pos, local_orn = p.getDynamicsInfo(self.arm, -1, physicsClientId=c)[3:5]
        inv_pos, inv_orn = p.invertTransform(local_pos, local_orn)
        pos, orn = p.multiplyTransforms(com_pos, com_orn, inv_pos, inv_orn)
        pose = np.eye(4)
        pose[:3, :3] = np.array(p.getMatrixFromQuaternion(orn)).reshape(3, 3)
        pose[:3, 3] = pos
        return pose

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
                out.append((f"{obj.name}/{point_name}", obj.body, np.array(pos) + rot @ local))
        return out

    def annotate(
        self, seg: np.ndarray, depth_buffer: np.ndarray | None = None
    ) -> list[tuple[str, float, float, bool, tuple[float, float, float]]]:
        """Project every point: (name, x, y, visible, XYZ in the optical frame, metres).

        Visible when the segmentation at its (rounded) pixel is its own body. With
        ``surface_points="rendered"`` a ``surface_*`` point must also be what the
        depth image sees there (within 1 cm plus one pixel's footprint), so a
        point turned away from the camera by a toppled object is not visible;
        that needs ``depth_buffer`` (RenderedViews.depth_buffer).
        """
        rendered = self.config.surface_points == "rendered"
        if rendered and depth_buffer is None:
            raise ValueError("surface_points='rendered' judges visibility by depth: pass depth_buffer")
        points = self.world_points()
        world = np.stack([w for _, _, w in points])
        xy = self.camera.project(world)
        xyz = self.camera.to_optical(world)
        fy = self.camera.intrinsics[1, 1]
        h, w = seg.shape
        rows = []
        for (name, body, _), (x, y), optical in zip(points, xy, xyz, strict=True):
            col, row = int(round(x)), int(round(y))
            visible = 0 <= col < w and 0 <= row < h and int(seg[row, col]) == body
            if visible and rendered and "/surface_" in name:
                seen = float(self.camera.linear_depth(depth_buffer[row : row + 1, col : col + 1])[0, 0])
                visible = abs(seen - optical[2]) <= 0.01 + optical[2] / fy
            rows.append((name, float(x), float(y), bool(visible), tuple(float(v) for v in optical)))
        return rows

    def details(self) -> dict:
        """This episode's drawn scene, for scene.json ``sequences``."""
        return {
            "objects": [o.name for o in self.objects],
            "distractors": [model for _, model, _ in self.distractors],
            "camera": {
                "target_offset": list(self.rig.target),
                "distance": self.rig.distance,
                "yaw_deg": self.rig.yaw,
                "pitch_deg": self.rig.pitch,
                "T_world_camera": self.camera.world_from_optical.tolist(),
            },
            "light_direction": None if self.light_direction is None else list(self.light_direction),
            "table": {"rgba": list(self.table_style.rgba), "texture": self.table_style.texture},
            "arm_joints": list(self.joint_names),
            "arm_base_link": self.base_link,
        }

    def close(self) -> None:
        self.p.disconnect(physicsClientId=self.client)


def _orthographic(half: float, near: float, far: float) -> np.ndarray:
    """4×4 OpenGL orthographic projection of a square window ±half metres (depth linear in [near, far])."""
    m = np.diag([1.0 / half, 1.0 / half, -2.0 / (far - near), 1.0])
    m[2, 3] = -(far + near) / (far - near)
    return m


_MESH_BOUNDS: dict[str, tuple[np.ndarray, np.ndarray]] = {}


def _mesh_bounds(model: str) -> tuple[np.ndarray, np.ndarray]:
    """Vertex bounding box of a pybullet_data .obj (meshes are centred on it)."""
    if model not in _MESH_BOUNDS:
        import pybullet_data

        vertices = []
        with open(os.path.join(pybullet_data.getDataPath(), model)) as f:
            for line in f:
                if line.startswith("v "):
                    vertices.append([float(v) for v in line.split()[1:4]])
        array = np.array(vertices)
        _MESH_BOUNDS[model] = (array.min(axis=0), array.max(axis=0))
    return _MESH_BOUNDS[model]


def simulate_episode(
    config: TabletopConfig, episode: int
) -> Iterator[tuple[np.ndarray, list[tuple[str, float, float, bool, tuple[float, float, float]]]]]:
    """Yield (frame H×W×3 uint8 RGB, [(name, x, y, visible, XYZ), ...]) for each frame of one episode."""
    scene = TabletopScene(config, episode)
    try:
        for _ in range(config.frames):
            scene.step()
            views = scene.render_views()
            yield views.rgb, scene.annotate(views.seg, views.depth_buffer)
    finally:
        scene.close()


def episode_name(episode: int) -> str:
    return f"episode_{episode:03d}"


def write_episode(
    out_dir: Path, config: TabletopConfig, episode: int, storage: str = "mcap", progress=None
) -> tuple[list[Annotation], dict]:
    """Simulate one episode into ``out_dir/episode_NNN`` (a rosbag2); return its annotations and details.

    ``progress``, when given, gets ``put(1)`` after each frame (a queue in workers).
    """
    from kp_perception_training.data.bag_writer import BagWriter, latched_qos

    name = episode_name(episode)
    annotations: list[Annotation] = []
    scene = TabletopScene(config, episode)
    intrinsics = scene.camera.intrinsics
    frame_ns = round(1e9 / config.fps)
    try:
        with BagWriter(out_dir / name, storage) as bag:
            transforms = [
                (WORLD_FRAME, CAMERA_FRAME, scene.camera.world_from_optical),
                (WORLD_FRAME, ARM_BASE_FRAME, scene.arm_base_pose()),
            ]
            bag.write_message(TF_STATIC_TOPIC, TF_MESSAGE_TYPE, tf_static_message(bag, transforms, T0_NS), T0_NS,
                              qos=[latched_qos()])
            for index in range(config.frames):
                scene.step()
                views = scene.render_views()
                stamp_ns = T0_NS + index * frame_ns
                bag.write_image(IMAGE_TOPIC, views.rgb, stamp_ns, encoding="rgb8", frame_id=CAMERA_FRAME)
                info = camera_info_message(bag, intrinsics, config.size, config.size, stamp_ns)
                bag.write_message(CAMERA_INFO_TOPIC, CAMERA_INFO_TYPE, info, stamp_ns)
                if config.depth:
                    bag.write_image(DEPTH_TOPIC, scene.depth(views), stamp_ns, encoding="32FC1", frame_id=CAMERA_FRAME)
                if config.instance_ids:
                    bag.write_image(INSTANCE_TOPIC, scene.instance_ids(views.seg), stamp_ns, encoding="mono16",
                                    frame_id=CAMERA_FRAME)
                if config.joint_states:
                    msg = joint_state_message(bag, *scene.joint_state(), stamp_ns)
                    bag.write_message(JOINT_STATES_TOPIC, JOINT_STATE_TYPE, msg, stamp_ns)
                annotations.extend(
                    Annotation(name, index, point, x, y, visible, xyz)
                    for point, x, y, visible, xyz in scene.annotate(views.seg, views.depth_buffer)
                )
                if progress is not None:
                    progress.put(1)
        details = scene.details()
    finally:
        scene.close()
    return annotations, details


# -- parallel generation ---------------------------------------------------------------
_progress_queue = None


def _init_worker(progress_queue) -> None:
    global _progress_queue
    _progress_queue = progress_queue


def _episode_task(args: tuple[Path, TabletopConfig, int, str]) -> tuple[list[Annotation], dict]:
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
    results: dict[int, tuple[list[Annotation], dict]] = {}
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
    rows = [a for e in range(episodes) for a in results[e][0]]
    write_annotations(out / "annotations.csv", rows)
    details = {episode_name(e): results[e][1] for e in range(episodes)}
    scene = describe_scene(config, episodes, storage, details)
    (out / "scene.json").write_text(json.dumps(scene, indent=2))
    return {"out": str(out), "episodes": episodes, "frames": episodes * config.frames, "annotations": len(rows)}


def describe_scene(config: TabletopConfig, episodes: int, storage: str, sequences: dict[str, dict] | None = None
                   ) -> dict:
    """scene.json: what evaluation needs to know about objects, camera and generation settings."""
    import pybullet as p

    client = p.connect(p.DIRECT)
    try:
        # The table top height is fixed by the URDF; recompute it rather than hard-code it.
        import pybullet_data

        p.setAdditionalSearchPath(pybullet_data.getDataPath(), physicsClientId=client)
        table = p.loadURDF("table/table.urdf", TABLE_POSITION, useFixedBase=True, physicsClientId=client)
        table_top = p.getAABB(table, physicsClientId=client)[1][2]
        rig = nominal_rig(config)
        camera, _, _ = make_camera(rig, config.size, table_top, WORKSPACE_CENTRE)
    finally:
        p.disconnect(physicsClientId=client)
    sequences = sequences or {}
    first = next(iter(sequences.values()), {})
    arm = ARMS[config.arm]
    instances = config.instance_table()
    return {
        "scene": config.scene,
        "seed": config.seed,
        "episodes": episodes,
        "frames_per_episode": config.frames,
        "fps": config.fps,
        "storage": storage,
        "image_topic": IMAGE_TOPIC,
        "camera_info_topic": CAMERA_INFO_TOPIC,
        "topics": {
            "image": IMAGE_TOPIC,
            "camera_info": CAMERA_INFO_TOPIC,
            "depth": DEPTH_TOPIC if config.depth else None,
            "instance_ids": INSTANCE_TOPIC if config.instance_ids else None,
            "joint_states": JOINT_STATES_TOPIC if config.joint_states else None,
            "tf_static": TF_STATIC_TOPIC,
        },
        "frame_ids": {"world": WORLD_FRAME, "camera": CAMERA_FRAME, "arm_base": ARM_BASE_FRAME},
        "depth": {"encoding": "32FC1", "unit": "m", "along": "optical axis (Z)", "no_surface": "inf",
                  "near_m": 0.05, "far_m": 5.0},
        "arm": {
            "name": config.arm,
            "urdf": arm.urdf,
            "gripper_link": arm.ee_link,
            "base_link": first.get("arm_base_link"),
            "joints": first.get("arm_joints"),
        },
        "objects": [
            {"name": i["name"], "type": spec.name, "kind": spec.kind, "model": spec.urdf, "urdf": spec.urdf,
             "colour": list(spec.rgba[:3]), "scale": spec.scale, "instance_id": i["id"]}
            for i, spec in zip([i for i in instances if i["class"] == "object"], config.objects, strict=True)
        ],
        "instances": instances,
        "instance_ids": {"topic": INSTANCE_TOPIC, "encoding": "mono16", "background": BACKGROUND_ID, "arm": ARM_ID,
                         "first_object": FIRST_OBJECT_ID},
        "camera": {
            "rig": config.camera,
            "jitter": rig.jitter,
            "width": camera.width,
            "height": camera.height,
            "fov_y_deg": camera.fov,
            "distance": rig.distance,
            "yaw_deg": rig.yaw,
            "pitch_deg": rig.pitch,
            "K": camera.intrinsics.tolist(),
            "view_matrix": camera.view.tolist(),
            "projection_matrix": camera.projection.tolist(),
            "T_world_camera": camera.world_from_optical.tolist(),
            "frame_id": CAMERA_FRAME,
        },
        "sequences": sequences,
        "table_top_z": table_top,
        "workspace": {"centre": list(WORKSPACE_CENTRE), "size_m": 2 * WORKSPACE_HALF},
        "max_step_m": MAX_STEP,
        "config": {**{k: v for k, v in asdict(config).items() if k != "objects"},
                   "objects": [o.name for o in config.objects]},
    }

