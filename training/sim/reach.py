"""The reach task: the default tabletop scene's arm, driven by joint velocities, seen by the fixed camera.

Why this scene: the shipped Pyramids model (models/pyramids.onnx) was trained
on ``kp-perception sim tabletop`` default scenes at 64 px, so its keypoints
mean something only on the same arm, objects, table and camera. The task
reuses :class:`~kp_perception_training.sim.tabletop.TabletopScene` (objects,
camera, arm, IK, rendering) and changes only how the arm moves:

- Start and goal are joint configurations. Each is the IK solution for a random
  gripper position in the 50×50 cm workspace at the pushing height, gripper
  pointing down: the configurations the model saw in training. Everything is
  drawn from ``numpy.random.default_rng([seed, episode])`` after the scene's own
  draws, so an episode is fixed by ``(seed, episode)``.
- The arm is commanded by joint velocities (rad/s, the 7 arm joints), held for
  one control period (``1 / control_hz``) by pybullet's velocity motors with the
  URDF effort limits, under gravity, with the table in the way. Commands are
  clipped to ``max_joint_velocity``; the gripper fingers stay closed.
- The objects are scenery: once settled they are made static and arm-object collisions are switched off, so the goal
  image shows the objects where they are for the whole episode (this task
  measures reaching, not pushing).

Ground truth: the end effector's pose (``ee_link`` of the arm spec, the
"gripper" annotation), and the projection of the arm's annotated points
(``arm/<link>`` and ``gripper``, the same points as the simulator's
annotations CSV) into the camera image, with a flag for points that project
inside the frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from kp_perception.errors import KpPerceptionError
from kp_perception_training.sim.tabletop import TIME_STEP, TabletopConfig, TabletopScene

MIN_START_GOAL_DISTANCE = 0.10  # metres between start and goal gripper positions


@dataclass(frozen=True)
class ReachConfig:
    """One reach episode's fixed settings; the scene is ``TabletopConfig(size, seed)`` otherwise default."""

    size: int = 64  # image size: the shipped model's training resolution
    seed: int = 0
    control_hz: float = 30.0
    max_joint_velocity: float = 1.0  # rad/s, the sim's own limit (the robot's, not the controller's)
    success_distance: float = 0.02  # metres, end-effector position error counted as reached
    lift: float = 0.05  # metres above the scene's pushing height for start and goal gripper positions
    start_perturbation: float = 0.0  # > 0: start = goal + N(0, this) rad on joints 1-6 (a near-goal study)

    def scene_config(self) -> TabletopConfig:
        return TabletopConfig(size=self.size, seed=self.seed, fps=self.control_hz)


@dataclass(frozen=True)
class EndEffectorError:
    """End-effector pose error: position (metres) and orientation (radians, angle of the relative rotation)."""

    position: float
    orientation: float


class ReachScene:
    """One reach episode: a tabletop scene whose arm takes joint-velocity commands.

    Call :meth:`goal_frame` for the goal image (rendered with the arm at the goal
    configuration); the arm is then back at the start. Each :meth:`apply`
    advances the simulation by one control period.
    """

    def __init__(self, config: ReachConfig, episode: int) -> None:
        self.config = config
        self.episode = episode
        self.scene = TabletopScene(config.scene_config(), episode)
        self.p, self.client = self.scene.p, self.scene.client
        s, p, c = self.scene, self.p, self.client
        self.joints = [j for j in s.movable if j not in s.closed]  # the arm joints, base to tip
        infos = [p.getJointInfo(s.arm, j, physicsClientId=c) for j in self.joints]
        self.joint_names = [info[1].decode() for info in infos]
        self.lower = np.array([info[8] for info in infos])
        self.upper = np.array([info[9] for info in infos])
        self.max_force = np.array([info[10] if info[10] > 0 else 100.0 for info in infos])
        for obj in s.objects:
            p.changeDynamics(obj.body, -1, mass=0.0, physicsClientId=c)  # settled scenery: static, cheap
            for link in range(-1, p.getNumJoints(s.arm, physicsClientId=c)):
                p.setCollisionFilterPair(s.arm, obj.body, link, -1, 0, physicsClientId=c)
        self.arm_point_names = [name for name, _ in s.arm_points]
        self.substeps = max(1, round(1.0 / (config.control_hz * TIME_STEP)))
        self.dt = self.substeps * TIME_STEP
        self.time = 0.0
        self.start_q, self.goal_q = self._sample_start_goal()
        self.set_joints(self.goal_q)
        self.goal_pose = self.ee_pose()
        self.goal_points = self.arm_image_points()
        self.goal_optical_points = self.arm_optical_points()
        self.set_joints(self.start_q)

    # -- episode ------------------------------------------------------------------------
    def _sample_start_goal(self) -> tuple[np.ndarray, np.ndarray]:
        s = self.scene
        lift = np.array([0.0, 0.0, self.config.lift])
        start = s._random_workspace_point() + lift
        for _ in range(1000):
            goal = s._random_workspace_point() + lift
            if np.linalg.norm(goal[:2] - start[:2]) >= MIN_START_GOAL_DISTANCE:
                break
        start_q, goal_q = self.ik_configuration(start), self.ik_configuration(goal)
        sigma = self.config.start_perturbation
        if sigma > 0:
            noise = s.rng.normal(0.0, sigma, size=len(goal_q))
            noise[-1] = 0.0  # the last joint turns the gripper about its axis: no position change
            start_q = np.clip(goal_q + noise, self.lower + 0.05, self.upper - 0.05)
        return start_q, goal_q

    def ik_configuration(self, target: np.ndarray) -> np.ndarray:
        """Joint configuration with the gripper at ``target``, pointing down (the scene's own IK reset)."""
        s = self.scene
        s._reset_arm(target)
        return self.joint_positions()

    def set_joints(self, q: np.ndarray) -> None:
        """Teleport the arm to ``q`` at rest and hold it there (velocity motors at zero)."""
        p, c, s = self.p, self.client, self.scene
        for j, v in zip(self.joints, q, strict=True):
            p.resetJointState(s.arm, j, float(v), 0.0, physicsClientId=c)
        for j, v in s.closed.items():
            p.resetJointState(s.arm, j, v, 0.0, physicsClientId=c)
        self._command(np.zeros(len(self.joints)))

    def _command(self, qdot: np.ndarray) -> None:
        p, c, s = self.p, self.client, self.scene
        p.setJointMotorControlArray(
            s.arm, self.joints, p.VELOCITY_CONTROL, targetVelocities=qdot.tolist(),
            forces=self.max_force.tolist(), physicsClientId=c,
        )
        if s.closed:
            p.setJointMotorControlArray(
                s.arm, list(s.closed), p.POSITION_CONTROL, targetPositions=list(s.closed.values()),
                forces=[200.0] * len(s.closed), physicsClientId=c,
            )

    def apply(self, qdot: np.ndarray) -> np.ndarray:
        """Hold joint velocities ``qdot`` (rad/s, clipped to the sim's limit) for one control period.

        Returns the velocities actually commanded. A joint at its limit is not
        driven further into it.
        """
        qdot = np.asarray(qdot, dtype=np.float64).reshape(-1)
        if qdot.shape != (len(self.joints),):
            raise KpPerceptionError(f"expected {len(self.joints)} joint velocities, got {qdot.shape[0]}")
        if not np.isfinite(qdot).all():
            raise KpPerceptionError("joint velocity command contains NaN or Inf")
        vmax = self.config.max_joint_velocity
        qdot = np.clip(qdot, -vmax, vmax)
        q = self.joint_positions()
        qdot = np.where((q <= self.lower + 1e-3) & (qdot < 0) | (q >= self.upper - 1e-3) & (qdot > 0), 0.0, qdot)
        self._command(qdot)
        for _ in range(self.substeps):
            self.p.stepSimulation(physicsClientId=self.client)
        self.time += self.dt
        return qdot

    # -- observation --------------------------------------------------------------------
    def render(self) -> np.ndarray:
        """The camera frame, size×size×3 uint8 RGB."""
        return self.scene.render()[0]

    def render_rgbd(self) -> tuple[np.ndarray, np.ndarray]:
        """The camera frame (size×size×3 uint8 RGB) and its aligned depth (size×size float32 metres
        along the optical axis), from one render: what an RGB-D camera gives."""
        views = self.scene.render_views()
        return views.rgb, self.scene.depth(views)

    def goal_frame(self, depth: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """The goal image (with ``depth``: and its depth): the arm at the goal configuration (then back at the start)."""
        q = self.joint_positions()
        self.set_joints(self.goal_q)
        frame = self.render_rgbd() if depth else self.render()
        self.set_joints(q)
        return frame

    def joint_positions(self) -> np.ndarray:
        states = self.p.getJointStates(self.scene.arm, self.joints, physicsClientId=self.client)
        return np.array([st[0] for st in states])

    def joint_velocities(self) -> np.ndarray:
        states = self.p.getJointStates(self.scene.arm, self.joints, physicsClientId=self.client)
        return np.array([st[1] for st in states])

    def ee_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """World position (3,) and quaternion xyzw (4,) of the end-effector link."""
        state = self.p.getLinkState(
            self.scene.arm, self.scene.ee_link, computeForwardKinematics=True, physicsClientId=self.client
        )
        return np.array(state[4]), np.array(state[5])

    def ee_error(self) -> EndEffectorError:
        """Pose error of the end effector against the goal configuration's."""
        pos, quat = self.ee_pose()
        goal_pos, goal_quat = self.goal_pose
        dot = abs(float(np.dot(quat, goal_quat)))
        return EndEffectorError(float(np.linalg.norm(pos - goal_pos)), 2.0 * math.acos(min(1.0, dot)))

    def arm_world_points(self) -> np.ndarray:
        """A×3 world positions of the arm's annotated points (``arm_point_names`` order)."""
        arm = self.scene.arm
        return np.stack([w for _, body, w in self.scene.world_points() if body == arm])

    def arm_optical_points(self) -> np.ndarray:
        """A×3 positions (metres) of the arm's annotated points in the camera optical frame."""
        return self.scene.camera.to_optical(self.arm_world_points())

    def arm_image_points(self) -> tuple[np.ndarray, np.ndarray]:
        """(A×2 pixels of the frame, A bool: inside the frame) of the arm's annotated points."""
        xy = self.scene.camera.project(self.arm_world_points())
        size = self.config.size
        inside = (xy[:, 0] >= -0.5) & (xy[:, 0] <= size - 0.5) & (xy[:, 1] >= -0.5) & (xy[:, 1] <= size - 0.5)
        return xy, inside

    def close(self) -> None:
        self.scene.close()


def reach_config(**overrides) -> ReachConfig:
    """A ReachConfig with overrides (for CLIs that pass only what the user set)."""
    return replace(ReachConfig(), **{k: v for k, v in overrides.items() if v is not None})
