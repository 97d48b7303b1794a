"""TUSK's tabletop evaluation: annotation names, purity by type and detection recall.

Annotation rows are grouped into objects by ``<object>/<point>`` names; a CSV
without such names is refused in one line (it used to match nothing, silently).
The last test runs the real ``sim tabletop``, ``train tusk`` and ``eval`` CLI.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from kp_perception.errors import DataError
from kp_perception_training.evaluation.purity import purity_by_identity
from kp_perception_training.sim.annotations import Annotation, object_of, object_points
from kp_perception_training.tusk.evaluate import match_to_objects


def _row(name: str, x: float = 1.0, y: float = 2.0, visible: bool = True, frame: int = 0) -> Annotation:
    return Annotation("episode_000", frame, name, x, y, visible)


def test_object_names_are_the_part_before_the_slash_and_arm_rows_are_left_out():
    assert object_of("duck_2/centre") == "duck_2"
    assert object_of("mug/surface_0") == "mug"
    assert object_of("arm/panda_link4") is None
    assert object_of("gripper") is None


def test_object_points_group_visible_points_by_object_and_frame():
    rows = [_row("mug/centre", 1, 1), _row("mug/surface_0", 2, 2), _row("duck/centre", 5, 5, visible=False),
            _row("arm/link1", 9, 9), _row("gripper", 8, 8), _row("mug/centre", 3, 3, frame=1)]
    grouped = object_points(rows)
    assert grouped[("episode_000", 0)] == {"mug": [(1, 1), (2, 2)]}  # duck occluded: no visible point
    assert grouped[("episode_000", 1)] == {"mug": [(3, 3)]}


def test_annotations_without_object_names_raise_one_clear_error():
    rows = [_row("nose"), _row("left_eye"), _row("arm/link1"), _row("gripper")]
    with pytest.raises(DataError, match=r"<object>/<point>") as info:
        object_points(rows, "mine.csv")
    assert "mine.csv" in str(info.value) and "\n" not in str(info.value)


def test_recall_counts_visible_objects_with_a_detection_in_range_and_matches_take_the_nearest_object():
    objects = {"mug": [(10.0, 10.0), (14.0, 10.0)], "duck_2": [(40.0, 40.0)], "teddy": []}
    xy = np.array([[13.0, 11.0], [41.0, 40.0], [80.0, 80.0]])
    matches, seen = match_to_objects(xy, np.array([3, 5, 7]), objects, radius=3.0)
    assert matches == [(3, "mug"), (5, "duck_2")]  # the far detection matches nothing
    assert seen == [("mug", True), ("duck_2", True)]  # teddy has no visible point: not counted
    _, seen = match_to_objects(xy[2:], np.array([7]), objects, radius=3.0)
    assert seen == [("mug", False), ("duck_2", False)]


def test_purity_by_type_scores_each_type_on_its_prototypes_majority():
    protos = [0, 0, 0, 1, 1, 2]
    types = ["mug", "mug", "duck", "duck", "duck", "lego"]
    by_type = purity_by_identity(protos, types)
    assert by_type == {"duck": pytest.approx(2 / 3), "lego": 1.0, "mug": 1.0}


@pytest.mark.timeout(600)
def test_eval_cli_reports_tabletop_recall_and_refuses_unnamed_annotations(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cli = [sys.executable, "-m", "kp_perception.cli.main"]
    data = tmp_path / "table"
    subprocess.run([*cli, "sim", "tabletop", "--out", str(data), "--episodes", "1", "--frames", "4", "--size", "64",
                    "--objects", "duck,mug,lego"], check=True, env=env, timeout=300, capture_output=True)
    run = tmp_path / "run"
    subprocess.run([*cli, "train", "tusk", "--data", str(data), "--out", str(run), "--steps", "1", "--no-progress",
                    "--config", "tusk_tabletop", "--set", "train.batch_size=2", "train.num_workers=0",
                    "model.width=8", "data.val_fraction=0"], check=True, env=env, timeout=300, capture_output=True)
    res = subprocess.run([*cli, "eval", str(run), "--data", str(data), "--annotations", str(data / "annotations.csv")],
                         check=True, env=env, timeout=300, capture_output=True, text=True)
    got = json.loads(res.stdout)["tabletop"]
    assert got["frames"] == 4 and got["visible_objects"] > 0
    assert 0.0 <= got["detection_recall"] <= 1.0
    assert set(got["recall_by_type"]) <= {"duck", "mug", "lego"}
    bad = tmp_path / "bad.csv"
    bad.write_text("sequence,frame,name,x,y\n" + "".join(f"episode_000,{f},nose,3,4\n" for f in range(4)))
    res = subprocess.run([*cli, "eval", str(run), "--data", str(data), "--annotations", str(bad)],
                         env=env, timeout=300, capture_output=True, text=True)
    assert res.returncode != 0
    assert "<object>/<point>" in res.stderr and len(res.stderr.strip().splitlines()) == 1
