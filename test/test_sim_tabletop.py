"""The B&O-style tabletop simulator: real pybullet episodes written to real rosbag2 files.

Small on purpose (96 px, 16 frames, two episodes in two worker processes) so
the file stays well under a minute on two shared cores.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from kp_perception.sequences import open_sequences
from kp_perception_training.sim.annotations import Annotation, read_annotations, write_annotations
from kp_perception_training.sim.tabletop import (
    CAMERA_INFO_TOPIC,
    DEPTH_TOPIC,
    FRAME_ID,
    IMAGE_TOPIC,
    INSTANCE_TOPIC,
    JOINT_STATES_TOPIC,
    TF_STATIC_TOPIC,
    TabletopConfig,
    TabletopScene,
    generate_tabletop,
)

pytestmark = pytest.mark.timeout(120)

FRAMES = 16
SIZE = 96
CONFIG = TabletopConfig(frames=FRAMES, size=SIZE, seed=3)


@pytest.fixture(scope="module")
def sim_out(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tabletop")
    generate_tabletop(out, episodes=2, config=CONFIG, storage="mcap", workers=2, show_progress=False)
    return out


@pytest.fixture(scope="module")
def frames(sim_out) -> dict[str, list[np.ndarray]]:
    """Every episode's frames, read back with the project's one dataset reader."""
    return {seq.name: list(seq.iter_frames()) for seq in open_sequences([sim_out])}


def _scene(sim_out: Path) -> dict:
    return json.loads((sim_out / "scene.json").read_text())


def _by_point(annotations: list[Annotation], sequence: str) -> dict[str, dict[int, Annotation]]:
    out: dict[str, dict[int, Annotation]] = defaultdict(dict)
    for a in annotations:
        if a.sequence == sequence:
            out[a.name][a.frame] = a
    return out


def test_each_episode_is_a_bag_with_every_camera_topic_once_per_frame(sim_out):
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    scene = _scene(sim_out)
    per_frame = {
        IMAGE_TOPIC: "sensor_msgs/msg/Image",
        CAMERA_INFO_TOPIC: "sensor_msgs/msg/CameraInfo",
        DEPTH_TOPIC: "sensor_msgs/msg/Image",
        INSTANCE_TOPIC: "sensor_msgs/msg/Image",
        JOINT_STATES_TOPIC: "sensor_msgs/msg/JointState",
    }
    for episode in ("episode_000", "episode_001"):
        bag = sim_out / episode
        assert list(bag.glob("*.mcap")), "mcap is the default storage"
        with AnyReader([bag], default_typestore=get_typestore(Stores.ROS2_KILTED)) as reader:
            types = {c.topic: c.msgtype for c in reader.connections}
            assert types == {**per_frame, TF_STATIC_TOPIC: "tf2_msgs/msg/TFMessage"}
            stamps = defaultdict(list)
            for conn, _, raw in reader.messages():
                msg = reader.deserialize(raw, conn.msgtype)
                if conn.topic == TF_STATIC_TOPIC:
                    continue
                stamps[conn.topic].append(msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec)
                if conn.topic == JOINT_STATES_TOPIC:
                    continue
                assert msg.header.frame_id == FRAME_ID == "camera_optical_frame"
                if conn.topic == IMAGE_TOPIC:
                    assert (msg.encoding, msg.width, msg.height, msg.step) == ("rgb8", SIZE, SIZE, 3 * SIZE)
                elif conn.topic == DEPTH_TOPIC:
                    assert (msg.encoding, msg.width, msg.height, msg.step) == ("32FC1", SIZE, SIZE, 4 * SIZE)
                elif conn.topic == INSTANCE_TOPIC:
                    assert (msg.encoding, msg.width, msg.height, msg.step) == ("mono16", SIZE, SIZE, 2 * SIZE)
                else:
                    np.testing.assert_allclose(msg.k.reshape(3, 3), scene["camera"]["K"])
                    assert (msg.width, msg.height) == (SIZE, SIZE)
        assert all(len(stamps[t]) == FRAMES for t in per_frame)
        assert all(stamps[t] == stamps[IMAGE_TOPIC] for t in per_frame)
        np.testing.assert_allclose(np.diff(stamps[IMAGE_TOPIC]), 1e9 / CONFIG.fps)  # 10 Hz


def test_sequences_are_named_as_in_the_annotations(sim_out, frames):
    annotations = read_annotations(sim_out / "annotations.csv")
    assert set(frames) == {a.sequence for a in annotations} == {"episode_000", "episode_001"}
    for name, seq_frames in frames.items():
        assert len(seq_frames) == FRAMES
        assert seq_frames[0].shape == (SIZE, SIZE, 3)
        assert {a.frame for a in annotations if a.sequence == name} == set(range(FRAMES))


def test_annotations_hold_arm_gripper_and_object_points(sim_out):
    scene = _scene(sim_out)
    objects = scene["objects"]
    assert len(objects) >= 3 and any(o["kind"] == "plush" for o in objects)
    points = _by_point(read_annotations(sim_out / "annotations.csv"), "episode_000")
    names = set(points)
    assert "gripper" in names
    assert len([n for n in names if n.startswith("arm/")]) >= 4
    for obj in objects:
        assert f"{obj['name']}/centre" in names
        assert len([n for n in names if n.startswith(f"{obj['name']}/surface_")]) >= 2
    # Every point is annotated in every frame; occluded/off-screen ones are marked, not dropped.
    assert all(len(per_frame) == FRAMES for per_frame in points.values())
    visible = [a.visible for per_frame in points.values() for a in per_frame.values()]
    assert any(visible) and not all(visible)


def _chromaticity(rgb) -> np.ndarray:
    rgb = np.asarray(rgb, dtype=np.float64)
    return rgb / max(rgb.sum(), 1e-6)


def test_pushed_object_points_move_and_stay_on_the_object(sim_out, frames):
    """The colour under every visible point of a moved object is that object's colour in every frame."""
    scene = _scene(sim_out)
    # Everything the camera sees: painted objects, the grey table, the white/grey arm.
    palette = {o["name"]: _chromaticity(o["colour"]) for o in scene["objects"]}
    palette["neutral"] = _chromaticity([1, 1, 1])
    annotations = read_annotations(sim_out / "annotations.csv")
    moved_objects = 0
    for sequence, seq_frames in frames.items():
        points = _by_point(annotations, sequence)
        for obj in scene["objects"]:
            centre = points[f"{obj['name']}/centre"]
            travel = max(np.hypot(centre[t].x - centre[0].x, centre[t].y - centre[0].y) for t in range(FRAMES))
            if travel < 2.0:  # pixels: not pushed in this episode
                continue
            moved_objects += 1
            checked = 0
            for name, per_frame in points.items():
                if not name.startswith(obj["name"] + "/"):
                    continue
                for t, a in per_frame.items():
                    if not a.visible:
                        continue
                    pixel = seq_frames[t][int(round(a.y)), int(round(a.x))]
                    chroma = _chromaticity(pixel)
                    nearest = min(palette, key=lambda k: np.linalg.norm(palette[k] - chroma))
                    assert nearest == obj["name"], (
                        f"{sequence} frame {t}: {name} at ({a.x:.1f}, {a.y:.1f}) sees {pixel}, "
                        f"closest to {nearest}"
                    )
                    checked += 1
            assert checked >= FRAMES, f"{obj['name']} was pushed but hardly ever visible"
    assert moved_objects >= 1, "no object was pushed in either episode"


def _colour_segmentation(frame: np.ndarray, palette: dict[str, np.ndarray]) -> np.ndarray:
    """H×W index into ``palette`` of each pixel's nearest chromaticity; -1 for near-black pixels."""
    rgb = frame.astype(np.float64)
    total = rgb.sum(axis=-1, keepdims=True)
    chroma = rgb / np.maximum(total, 1e-6)
    colours = np.stack(list(palette.values()))
    labels = np.argmin(((chroma[:, :, None, :] - colours[None, None]) ** 2).sum(-1), axis=-1)
    labels[total[..., 0] < 60] = -1
    return labels


def test_pushed_object_centre_follows_its_colour_blob(sim_out, frames):
    """Independent of the simulator's own segmentation: the annotated centre of a pushed object
    stays within 2 px of the centroid of the object's colour in the rendered frame (where the
    object is not occluded), so points and pixels move together."""
    scene = _scene(sim_out)
    palette = {o["name"]: _chromaticity(o["colour"]) for o in scene["objects"]}
    palette["neutral"] = _chromaticity([1, 1, 1])
    annotations = read_annotations(sim_out / "annotations.csv")
    checked_objects = 0
    for sequence, seq_frames in frames.items():
        labels = [_colour_segmentation(f, palette) for f in seq_frames]
        points = _by_point(annotations, sequence)
        for k, obj in enumerate(scene["objects"]):
            centre = points[f"{obj['name']}/centre"]
            travel = max(np.hypot(centre[t].x - centre[0].x, centre[t].y - centre[0].y) for t in range(FRAMES))
            if travel < 4.0:
                continue
            areas = [int((lab == k).sum()) for lab in labels]
            unoccluded = [t for t in range(FRAMES) if areas[t] >= 0.8 * max(areas) and areas[t] >= 10]
            assert len(unoccluded) >= FRAMES // 2
            for t in unoccluded:
                ys, xs = np.nonzero(labels[t] == k)
                error = np.hypot(xs.mean() - centre[t].x, ys.mean() - centre[t].y)
                assert error < 2.0, f"{sequence} frame {t}: {obj['name']} centre {error:.1f} px off its pixels"
            checked_objects += 1
    assert checked_objects >= 1, "no object was pushed more than 4 px"


def test_gripper_moves_at_most_5cm_per_frame_in_the_workspace_and_pushes_objects():
    """B&O motion: ≤ 5 cm between frames inside 50×50 cm, at table height, displacing objects."""
    from kp_perception_training.sim.tabletop import MAX_STEP, WORKSPACE_CENTRE, WORKSPACE_HALF

    displaced = 0
    for episode in range(2):
        scene = TabletopScene(TabletopConfig(frames=30, size=32, seed=CONFIG.seed), episode)
        p, c = scene.p, scene.client
        try:
            start = [np.array(p.getBasePositionAndOrientation(o.body, physicsClientId=c)[0]) for o in scene.objects]
            gripper = []
            for _ in range(30):
                scene.step()
                gripper.append(p.getLinkState(scene.arm, scene.ee_link, physicsClientId=c)[4])
            end = [np.array(p.getBasePositionAndOrientation(o.body, physicsClientId=c)[0]) for o in scene.objects]
            gripper = np.array(gripper)
            assert np.linalg.norm(np.diff(gripper, axis=0), axis=1).max() <= MAX_STEP
            assert (np.abs(gripper[:, :2] - WORKSPACE_CENTRE) <= WORKSPACE_HALF + 0.02).all()
            assert np.median(gripper[:, 2] - scene.table_top) < 0.05  # low enough to push things
            displaced += sum(np.linalg.norm((b - a)[:2]) > 0.02 for a, b in zip(start, end, strict=True))
        finally:
            scene.close()
    assert displaced >= 3, f"only {displaced} object displacements over two 30-frame episodes"


def test_same_seed_gives_the_same_frames_in_any_process(sim_out, frames):
    """Episode 1 rendered here equals the one a worker process wrote; another seed differs."""
    def first_frames(config: TabletopConfig, episode: int, n: int = 3) -> list[np.ndarray]:
        scene = TabletopScene(config, episode)
        try:
            out = []
            for _ in range(n):
                scene.step()
                out.append(scene.render()[0])
            return out
        finally:
            scene.close()

    here = first_frames(CONFIG, 1)
    for mine, written in zip(here, frames["episode_001"][:3], strict=True):
        assert mine.tobytes() == written.tobytes()
    other_seed = first_frames(TabletopConfig(frames=FRAMES, size=SIZE, seed=CONFIG.seed + 1), 1, n=1)
    assert other_seed[0].tobytes() != here[0].tobytes()
    assert frames["episode_000"][0].tobytes() != frames["episode_001"][0].tobytes()


def test_sqlite3_storage_round_trips(tmp_path, frames):
    config = TabletopConfig(frames=3, size=SIZE, seed=CONFIG.seed)
    generate_tabletop(tmp_path, episodes=1, config=config, storage="sqlite3", workers=1, show_progress=False)
    assert list((tmp_path / "episode_000").glob("*.db3"))
    (seq,) = open_sequences([tmp_path])
    read = list(seq.iter_frames())
    # Same seed and episode: the same frames as the mcap episode, whatever the storage.
    assert [f.tobytes() for f in read] == [f.tobytes() for f in frames["episode_000"][:3]]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kp_perception.cli.main", *args], capture_output=True, text=True, timeout=60
    )


def test_cli_refuses_a_non_empty_output_folder_in_one_line(tmp_path):
    (tmp_path / "keep.txt").write_text("user data")
    result = _cli("sim", "tabletop", "--out", str(tmp_path), "--frames", "2", "--size", "32")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(tmp_path) in lines[0] and "--overwrite" in lines[0]
    assert "Traceback" not in result.stderr
    assert (tmp_path / "keep.txt").read_text() == "user data"


def test_cli_help_and_bad_values(tmp_path):
    result = _cli("sim", "tabletop", "--help")
    assert result.returncode == 0 and "--episodes" in result.stdout and "--storage" in result.stdout
    result = _cli("sim", "tabletop", "--out", str(tmp_path / "x"), "--frames", "0")
    assert result.returncode == 2 and "--frames" in result.stderr and "Traceback" not in result.stderr


def test_annotations_csv_round_trip_and_bad_rows(tmp_path):
    rows = [Annotation("episode_000", 0, "gripper", 1.5, 2.25, True), Annotation("ep", 3, "duck/centre", -4, 9, False)]
    write_annotations(tmp_path / "a.csv", rows)
    assert read_annotations(tmp_path / "a.csv") == rows
    # design.md's five-column header reads as all visible.
    (tmp_path / "b.csv").write_text("sequence,frame,name,x,y\nseq,2,head,3.0,4.0\n")
    assert read_annotations(tmp_path / "b.csv") == [Annotation("seq", 2, "head", 3.0, 4.0, True)]
    from kp_perception.errors import DataError

    (tmp_path / "c.csv").write_text("sequence,frame,name,x,y,visible\nseq,two,head,3.0,4.0,1\n")
    with pytest.raises(DataError, match="c.csv:2"):
        read_annotations(tmp_path / "c.csv")
    (tmp_path / "d.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="missing column"):
        read_annotations(tmp_path / "d.csv")


def test_annotations_with_3d_round_trip_and_files_without_it_still_read(tmp_path):
    from kp_perception.errors import DataError

    rows = [Annotation("ep", 0, "duck/surface_0", 1.5, 2.25, True, (0.01234, -0.2, 0.98765)),
            Annotation("ep", 0, "hand/tip", 3.0, 4.0, False)]
    write_annotations(tmp_path / "a.csv", rows)
    assert (tmp_path / "a.csv").read_text().splitlines()[0] == "sequence,frame,name,x,y,visible,X,Y,Z"
    assert read_annotations(tmp_path / "a.csv") == rows  # a row without 3D keeps xyz None
    # Written without any 3D: the six-column file of earlier releases, which reads with xyz None.
    write_annotations(tmp_path / "b.csv", [Annotation("ep", 1, "head", 3.0, 4.0, True)])
    assert (tmp_path / "b.csv").read_text().splitlines()[0] == "sequence,frame,name,x,y,visible"
    assert read_annotations(tmp_path / "b.csv")[0].xyz is None
    (tmp_path / "c.csv").write_text("sequence,frame,name,x,y,visible,X,Y,Z\nep,0,head,1,2,1,0.1,,0.3\n")
    with pytest.raises(DataError, match="c.csv:2.*together"):
        read_annotations(tmp_path / "c.csv")
