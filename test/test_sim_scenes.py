"""Scene presets of the tabletop simulator: every family renders, its ground truth lands on the right
instance, object types are recoverable from names, and a seed fixes an episode byte for byte.

Tiny sizes (48-64 px, a few frames) keep the file to seconds per preset.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kp_perception_training.sim.catalogue import CATALOGUE, instance_names, object_type
from kp_perception_training.sim.scenes import SCENE_PRESETS
from kp_perception_training.sim.tabletop import TabletopConfig, TabletopScene, generate_tabletop

pytestmark = pytest.mark.timeout(180)


def _chromaticity(rgb) -> np.ndarray:
    rgb = np.asarray(rgb, dtype=np.float64)
    return rgb / max(rgb.sum(), 1e-6)


@pytest.mark.parametrize("preset", list(SCENE_PRESETS))
def test_every_preset_renders_and_its_ground_truth_lands_on_the_right_instance(preset):
    """Under every visible point the instance-id mask names the point's own arm or object, and under a
    visible object point the pixel has that object's catalogue colour (closest among the episode's objects)."""
    config = TabletopConfig.from_scene(preset, size=64, frames=4, seed=1)
    ids = {row["name"]: row["id"] for row in config.instance_table()}
    scene = TabletopScene(config, episode=0)
    try:
        present = [o.name for o in scene.objects]
        palette = {o.name: _chromaticity(o.spec.rgba[:3]) for o in scene.objects}
        palette["neutral"] = _chromaticity([1, 1, 1])
        seen_ids: set[int] = set()
        seen_objects: set[str] = set()
        arm_points = colour_checks = 0
        for _ in range(config.frames):
            scene.step()
            views = scene.render_views()
            mask = scene.instance_ids(views.seg)
            assert mask.dtype == np.uint16 and mask.shape == (64, 64)
            seen_ids |= set(np.unique(mask).tolist())
            for name, x, y, visible, _ in scene.annotate(views.seg, views.depth_buffer):
                if not visible:
                    continue
                owner = name.split("/")[0] if "/" in name and not name.startswith("arm/") else "arm"
                row, col = int(round(y)), int(round(x))
                assert mask[row, col] == ids[owner], f"{preset}: {name} at ({x:.1f}, {y:.1f}) is on id {mask[row, col]}"
                if owner == "arm":
                    arm_points += 1
                    continue
                seen_objects.add(owner)
                chroma = _chromaticity(views.rgb[row, col])
                if np.linalg.norm(palette[owner] - palette["neutral"]) > 0.1:  # skip near-white objects
                    nearest = min(palette, key=lambda k: np.linalg.norm(palette[k] - chroma))
                    assert nearest == owner, f"{preset}: {name} sees {views.rgb[row, col]}, closest to {nearest}"
                    colour_checks += 1
    finally:
        scene.close()
    assert arm_points > 0 and ids["arm"] in seen_ids
    assert len({object_type(n) for n in seen_objects}) >= 3, f"{preset}: only {seen_objects} visible"
    assert colour_checks > 0
    assert {ids[n] for n in present} <= seen_ids
    absent = {row["id"] for row in config.instance_table() if row["class"] == "object" and row["name"] not in present}
    assert not absent & seen_ids, "objects not drawn for this episode never appear in its mask"
    distractor_ids = {i for n, i in ids.items() if n.startswith("distractor_")}
    assert len(distractor_ids) == config.distractors
    if config.distractors:
        assert distractor_ids & seen_ids, "distractors are in the mask with their own ids"


def test_presets_differ_in_what_they_vary():
    configs = {name: TabletopConfig.from_scene(name) for name in SCENE_PRESETS}
    assert configs["default"] == TabletopConfig(), "no --scene and --scene default are the same scene"
    assert {c.arm for c in configs.values()} >= {"panda", "kuka", "xarm6"}
    assert {c.camera for c in configs.values()} >= {"oblique", "topdown", "side", "random"}
    assert len(configs["bo"].objects) >= 8 and configs["bo"].objects_per_episode == 5
    assert configs["clutter"].distractors > 0
    overridden = TabletopConfig.from_scene("side", arm="kuka", objects=("teddy", "mug", "lego"))
    assert (overridden.camera, overridden.arm, overridden.objects_per_episode) == ("side", "kuka", 0)
    assert [o.name for o in overridden.objects] == ["teddy", "mug", "lego"]


def test_episodes_draw_their_objects_from_the_pool():
    config = TabletopConfig.from_scene("bo", size=32, frames=1, seed=4)
    drawn = []
    for episode in range(3):
        scene = TabletopScene(config, episode)
        try:
            drawn.append(tuple(o.name for o in scene.objects))
            camera = scene.details()["camera"]
        finally:
            scene.close()
        assert len(drawn[-1]) == 5 and set(drawn[-1]) <= set(CATALOGUE)
        assert camera["yaw_deg"] != 90.0, "the bo camera is jittered per episode"
    assert len(set(drawn)) > 1


def test_instances_of_one_type_are_named_so_the_type_is_recoverable():
    assert instance_names(["teddy", "duck", "teddy", "teddy"]) == ["teddy", "duck", "teddy_2", "teddy_3"]
    assert object_type("teddy_2") == "teddy" and object_type("teddy_2/surface_1") == "teddy"
    config = TabletopConfig.from_scene("default", objects=("teddy", "teddy", "duck", "mug"))
    table = [row for row in config.instance_table() if row["class"] == "object"]
    assert [(r["name"], r["type"], r["kind"]) for r in table] == [
        ("teddy", "teddy", "plush"), ("teddy_2", "teddy", "plush"), ("duck", "duck", "plush"), ("mug", "mug", "rigid")]
    scene = TabletopScene(replace_size(config), 0)
    try:
        scene.step()
        names = {n.split("/")[0] for n, *_ in scene.annotate(*_seg_depth(scene))}
    finally:
        scene.close()
    assert {"teddy", "teddy_2", "duck", "mug", "gripper"} <= names


def replace_size(config: TabletopConfig) -> TabletopConfig:
    from dataclasses import replace

    return replace(config, size=32, frames=1)


def _seg_depth(scene: TabletopScene):
    views = scene.render_views()
    return views.seg, views.depth_buffer


def _bag_contents(bag: Path) -> list[tuple[str, int, bytes]]:
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    with AnyReader([bag], default_typestore=get_typestore(Stores.ROS2_KILTED)) as reader:
        return [(c.topic, t, bytes(raw)) for c, t, raw in reader.messages()]


def test_same_seed_gives_the_same_episode_in_any_worker_layout(tmp_path):
    """Every message of every topic, annotations.csv and scene.json are the same bytes for one seed
    (a preset with every random aspect on), whether one or two processes write the episodes."""
    config = TabletopConfig.from_scene("bo", size=40, frames=3, seed=7, distractors=2)
    generate_tabletop(tmp_path / "a", 2, config, workers=1, show_progress=False)
    generate_tabletop(tmp_path / "b", 2, config, workers=2, show_progress=False)
    for episode in ("episode_000", "episode_001"):
        a, b = _bag_contents(tmp_path / "a" / episode), _bag_contents(tmp_path / "b" / episode)
        assert len(a) == 1 + 5 * 3 and a == b
    for name in ("annotations.csv", "scene.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    other = TabletopConfig.from_scene("bo", size=40, frames=3, seed=8, distractors=2)
    generate_tabletop(tmp_path / "c", 1, other, workers=1, show_progress=False)
    frames = [raw for topic, _, raw in _bag_contents(tmp_path / "c" / "episode_000") if topic == "/camera/image_raw"]
    assert frames[0] != [raw for topic, _, raw in _bag_contents(tmp_path / "a" / "episode_000")
                         if topic == "/camera/image_raw"][0]


def test_optional_outputs_and_rendered_surface_points_leave_the_frames_unchanged():
    """Depth, ids, joint states and rendered surface points only add data: the default scene's
    frames are the same bytes with any of them (they are read from the same render)."""
    def frames(config: TabletopConfig) -> list[bytes]:
        scene = TabletopScene(config, 0)
        try:
            out = []
            for _ in range(3):
                scene.step()
                out.append(scene.render_views().rgb.tobytes())
            return out
        finally:
            scene.close()

    base = TabletopConfig(size=48, frames=3, seed=2)
    reference = frames(base)
    from dataclasses import replace

    assert frames(replace(base, surface_points="rendered")) == reference
    assert frames(replace(base, depth=False, instance_ids=False, joint_states=False)) == reference


def test_default_scene_frames_are_those_of_the_original_simulator():
    """Golden bytes: SHA-256 of the first 4 frames (32 px, seed 0, episode 0) and of their x, y,
    visible ground truth, produced by the simulator on main at b730962, before presets existed. The
    shipped models and the benchmark comparisons were made on this scene; it must not drift."""
    import hashlib

    frames, truth = hashlib.sha256(), hashlib.sha256()
    scene = TabletopScene(TabletopConfig(size=32, frames=4, seed=0), 0)
    try:
        for _ in range(4):
            scene.step()
            views = scene.render_views()
            frames.update(views.rgb.tobytes())
            for name, x, y, visible, _ in scene.annotate(views.seg):
                truth.update(f"{name},{x:.3f},{y:.3f},{int(visible)}\n".encode())
    finally:
        scene.close()
    assert (frames.hexdigest()[:16], truth.hexdigest()[:16]) == (GOLDEN_FRAMES, GOLDEN_TRUTH)


GOLDEN_FRAMES = "c51b8bd0eb0267ea"
GOLDEN_TRUTH = "fbab57f54fa5a74e"


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kp_perception.cli.main", *args], capture_output=True, text=True, timeout=120
    )


def test_cli_lists_presets_and_writes_types_to_scene_json(tmp_path):
    result = _cli("sim", "tabletop", "--help")
    assert result.returncode == 0
    for name in SCENE_PRESETS:
        assert f"  {name} " in result.stdout
    out = tmp_path / "sim"
    result = _cli("sim", "tabletop", "--out", str(out), "--scene", "topdown", "--objects", "duck,duck,block",
                  "--frames", "1", "--size", "32", "--workers", "1", "--no-depth")
    assert result.returncode == 0, result.stderr
    scene = json.loads((out / "scene.json").read_text())
    assert scene["scene"] == "topdown" and scene["topics"]["depth"] is None
    assert [(o["name"], o["type"], o["kind"], o["instance_id"]) for o in scene["objects"]] == [
        ("duck", "duck", "plush", 2), ("duck_2", "duck", "plush", 3), ("block", "block", "rigid", 4)]
    assert scene["sequences"]["episode_000"]["objects"] == ["duck", "duck_2", "block"]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--scene", "nowhere"], "unknown scene 'nowhere'"),
        (["--objects", "teddy,spaceship"], "unknown object type(s) spaceship"),
        (["--objects", "teddy,duck", "--objects-per-episode", "3"], "--objects-per-episode"),
        (["--distractors", "99"], "--distractors"),
    ],
)
def test_cli_rejects_bad_scene_options_in_one_line(tmp_path, args, fragment):
    result = _cli("sim", "tabletop", "--out", str(tmp_path / "x"), "--frames", "1", "--size", "32", *args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in result.stderr
