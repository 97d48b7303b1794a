"""`kp-perception infer`: offline inference over bags and folders writes a video and a per-frame CSV."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from kp_perception.media import AnnotatedVideoWriter
from test.fixtures_bags import smooth_frames, write_image_bag
from test.model_fixtures import make_model

CLI = [sys.executable, "-m", "kp_perception.cli.main"]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=180)


def _video_frames(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    count = 0
    while cap.read()[0]:
        count += 1
    cap.release()
    return count


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {kind: make_model(kind, root / kind) for kind in ("pyramids", "tusk")}


@pytest.mark.timeout(240)
@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_pyramids_on_a_bag_writes_one_row_per_keypoint_per_frame(models, tmp_path, storage):
    frames = smooth_frames(6, height=48, width=64)
    bag = tmp_path / "episode"
    write_image_bag(bag, frames, storage=storage)
    out, table = tmp_path / "out.mp4", tmp_path / "kp.csv"

    proc = _run("infer", str(models["pyramids"]), "--input", str(bag), "--out", str(out), "--csv", str(table))

    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(table.open()))
    assert {int(r["frame"]) for r in rows} == set(range(6))
    per_frame = len(rows) // 6
    assert per_frame == 4 + 8  # the fixture hierarchy: 4 roots, 8 children
    xy = np.array([[float(r["x"]), float(r["y"])] for r in rows])
    assert (xy[:, 0] >= -0.5).all() and (xy[:, 0] <= 63.5).all()
    assert (xy[:, 1] >= -0.5).all() and (xy[:, 1] <= 47.5).all()
    parents = [int(r["parent"]) for r in rows if r["frame"] == "0"]
    assert all(p == -1 or 0 <= p < per_frame for p in parents)
    assert _video_frames(out) == 6


@pytest.mark.timeout(240)
def test_tusk_threshold_drops_weak_detections(models, tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(smooth_frames(4, height=64, width=64)):
        cv2.imwrite(str(folder / f"{i:03d}.png"), frame[..., ::-1])

    all_csv, strong_csv = tmp_path / "all.csv", tmp_path / "strong.csv"
    assert _run("infer", str(models["tusk"]), "--input", str(folder), "--csv", str(all_csv)).returncode == 0
    scores = np.array([float(r["score"]) for r in csv.DictReader(all_csv.open())])
    cut = float(np.median(scores))
    proc = _run("infer", str(models["tusk"]), "--input", str(folder), "--csv", str(strong_csv),
                "--threshold", str(cut))
    assert proc.returncode == 0, proc.stderr
    kept = np.array([float(r["score"]) for r in csv.DictReader(strong_csv.open())])
    assert len(kept) == int((scores >= cut).sum())
    assert (kept >= cut).all()


@pytest.mark.timeout(120)
def test_missing_model_is_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "out.mp4"
    proc = _run("infer", str(tmp_path / "missing.onnx"), "--input", str(tmp_path), "--out", str(out))
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "missing.onnx" in proc.stderr
    assert not out.exists()


def test_interrupted_video_leaves_no_file(tmp_path):
    target = tmp_path / "video.mp4"
    with pytest.raises(KeyboardInterrupt):
        with AnnotatedVideoWriter(target) as video:
            video.write(np.zeros((32, 32, 3), np.uint8))
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_gif_frames_of_other_sizes_are_resized(tmp_path):
    target = tmp_path / "clip.gif"
    with AnnotatedVideoWriter(target, fps=5) as video:
        video.write(np.full((40, 60, 3), 200, np.uint8))
        video.write(np.full((20, 30, 3), 50, np.uint8))
    import imageio.v3 as iio

    frames = iio.imread(target, index=None)
    assert frames.shape[:3] == (2, 40, 60)
