"""What a robot would record, from the simulator: depth, instance ids, joint states and tf_static in the
bag, and 3D ground truth in the camera's optical frame that agrees with them.

One small episode (128 px, 6 frames) of the default scene with rendered surface points: the same
frames as the default scene, with surface points that lie where the camera sees them.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from kp_perception.image_conversion import image_to_numpy
from kp_perception.sequences import open_sequences
from kp_perception_training.sim.annotations import read_annotations
from kp_perception_training.sim.tabletop import (
    DEPTH_TOPIC,
    IMAGE_TOPIC,
    INSTANCE_TOPIC,
    JOINT_STATES_TOPIC,
    TF_STATIC_TOPIC,
    TabletopConfig,
    generate_tabletop,
)

pytestmark = pytest.mark.timeout(120)

SIZE = 128
FRAMES = 6
CONFIG = TabletopConfig(size=SIZE, frames=FRAMES, seed=5, surface_points="rendered")


@pytest.fixture(scope="module")
def sim_out(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("robot_outputs")
    generate_tabletop(out, episodes=1, config=CONFIG, workers=1, show_progress=False)
    return out


@pytest.fixture(scope="module")
def bag(sim_out) -> dict:
    """Every message of episode_000, deserialised, per topic; plus the connections."""
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    messages: dict[str, list] = defaultdict(list)
    with AnyReader([sim_out / "episode_000"], default_typestore=get_typestore(Stores.ROS2_KILTED)) as reader:
        connections = {c.topic: c for c in reader.connections}
        for conn, _, raw in reader.messages():
            messages[conn.topic].append(reader.deserialize(raw, conn.msgtype))
    return {"messages": messages, "connections": connections}


def _scene(sim_out: Path) -> dict:
    return json.loads((sim_out / "scene.json").read_text())


def test_depth_deprojects_annotated_pixels_onto_the_3d_ground_truth(sim_out, bag):
    """Deprojecting a visible surface point's pixel with K and the depth image there gives the CSV's
    X, Y, Z: the depth is metres along the optical axis, aligned with the colour frame."""
    k = np.array(_scene(sim_out)["camera"]["K"])
    depths = [image_to_numpy(m) for m in bag["messages"][DEPTH_TOPIC]]
    assert depths[0].dtype == np.float32 and depths[0].shape == (SIZE, SIZE)
    errors = []
    for a in read_annotations(sim_out / "annotations.csv"):
        if not (a.visible and "/surface_" in a.name):
            continue
        z = float(depths[a.frame][int(round(a.y)), int(round(a.x))])
        deprojected = np.array([(a.x - k[0, 2]) / k[0, 0] * z, (a.y - k[1, 2]) / k[1, 1] * z, z])
        errors.append(np.linalg.norm(deprojected - np.array(a.xyz)))
    errors = np.array(errors) * 1000.0
    assert len(errors) >= 5 * FRAMES
    assert np.median(errors) < 4.0 and np.percentile(errors, 90) < 12.0, (np.median(errors), errors.max())


def test_depth_is_positive_metres_with_inf_where_no_surface_is_in_range(bag):
    depth = image_to_numpy(bag["messages"][DEPTH_TOPIC][0])
    finite = depth[np.isfinite(depth)]
    assert finite.size > 0.9 * depth.size
    assert 0.3 < finite.min() and finite.max() < 5.0  # table and floor, 0.5-3 m from the camera
    assert not np.isnan(depth).any()


def test_xyz_projects_to_the_annotated_pixel(sim_out):
    k = np.array(_scene(sim_out)["camera"]["K"])
    rows = read_annotations(sim_out / "annotations.csv")
    xyz = np.array([a.xyz for a in rows])
    pixels = xyz[:, :2] / xyz[:, 2:] * np.diag(k)[:2] + k[:2, 2]
    np.testing.assert_allclose(pixels, [(a.x, a.y) for a in rows], atol=2e-3)  # the CSV keeps 3 decimals
    assert (xyz[:, 2] > 0).all(), "every point is in front of the camera (z forward)"


def test_instance_ids_name_the_arm_objects_and_background(sim_out, bag):
    scene = _scene(sim_out)
    table = {row["id"]: row for row in scene["instances"]}
    masks = [image_to_numpy(m) for m in bag["messages"][INSTANCE_TOPIC]]
    assert masks[0].dtype == np.uint16
    values = set(np.unique(np.stack(masks)).tolist())
    assert values <= set(table)
    assert {table[v]["class"] for v in values} == {"background", "arm", "object"}
    points = read_annotations(sim_out / "annotations.csv")
    gripper = next(a for a in points if a.name == "gripper" and a.visible)
    assert table[int(masks[gripper.frame][int(round(gripper.y)), int(round(gripper.x))])]["class"] == "arm"


def test_joint_states_are_stamped_with_every_frame(sim_out, bag):
    scene = _scene(sim_out)
    states = bag["messages"][JOINT_STATES_TOPIC]
    images = bag["messages"][IMAGE_TOPIC]
    assert [s.header.stamp for s in states] == [i.header.stamp for i in images]
    names = scene["arm"]["joints"]
    assert names[:7] == [f"panda_joint{i}" for i in range(1, 8)] and "panda_finger_joint1" in names
    for s in states:
        assert list(s.name) == names and len(s.position) == len(s.velocity) == len(s.effort) == len(names)
    positions = np.array([s.position for s in states])
    assert np.abs(np.diff(positions[:, :7], axis=0)).max() > 1e-3, "the arm moves between frames"
    velocities = np.array([s.velocity for s in states])
    assert np.isfinite(velocities).all() and np.abs(velocities).max() > 1e-3


def test_tf_static_places_the_optical_camera_frame_in_the_world(sim_out, bag):
    """One latched TFMessage: world -> camera_optical_frame (x right, y down, z forward) and
    world -> arm_base. Mapping a gripper point's X, Y, Z through it lands at table height."""
    from rosbags.interfaces import QosDurability
    from scipy.spatial.transform import Rotation

    (message,) = bag["messages"][TF_STATIC_TOPIC]
    frames = {(t.header.frame_id, t.child_frame_id): t for t in message.transforms}
    assert set(frames) == {("world", "camera_optical_frame"), ("world", "arm_base")}
    (qos,) = bag["connections"][TF_STATIC_TOPIC].ext.offered_qos_profiles
    assert qos.durability == QosDurability.TRANSIENT_LOCAL and qos.depth == 1

    camera = frames[("world", "camera_optical_frame")].transform
    rotation = Rotation.from_quat([camera.rotation.x, camera.rotation.y, camera.rotation.z, camera.rotation.w])
    translation = np.array([camera.translation.x, camera.translation.y, camera.translation.z])
    scene = _scene(sim_out)
    pose = np.array(scene["camera"]["T_world_camera"])
    np.testing.assert_allclose(rotation.as_matrix(), pose[:3, :3], atol=1e-6)
    np.testing.assert_allclose(translation, pose[:3, 3], atol=1e-9)
    assert rotation.apply([0, 0, 1])[2] < -0.5, "the optical z axis looks down at the table"
    assert rotation.apply([0, 1, 0])[2] < 0, "image y (down) points downwards in the world"
    for a in read_annotations(sim_out / "annotations.csv"):
        if a.name == "gripper":
            world = rotation.apply(a.xyz) + translation
            assert abs(world[2] - scene["table_top_z"]) < 0.1
    base = frames[("world", "arm_base")].transform.translation
    assert abs(base.z - scene["table_top_z"]) < 1e-6 and base.x < -0.3


def test_the_dataset_reader_reads_the_colour_topic_of_a_sim_bag(sim_out, bag):
    (sequence,) = open_sequences([sim_out])
    assert sequence.topic == IMAGE_TOPIC and sequence.image_topics == sorted(
        [IMAGE_TOPIC, DEPTH_TOPIC, INSTANCE_TOPIC])
    first = next(sequence.iter_frames())
    assert first.tobytes() == image_to_numpy(bag["messages"][IMAGE_TOPIC][0]).tobytes()
