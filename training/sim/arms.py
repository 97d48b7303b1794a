"""The pybullet_data robot arms of the tabletop: where each stands and which link the IK steers."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


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
