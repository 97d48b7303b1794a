"""``kp-perception data inspect``: JSON description of sources, one-line errors with exit status 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kp_perception.cli.main import main
from test.fixtures_bags import (
    bag_file,
    smooth_frames,
    truncate,
    write_bag,
    write_image_folder,
    write_string_bag,
    write_two_topic_bag,
    write_video,
)

pytestmark = pytest.mark.timeout(60)


def _inspect(capsys, *args):
    code = main(["data", "inspect", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def test_inspect_describes_every_sequence(tmp_path, capsys):
    root = tmp_path / "recordings"
    write_bag(root / "ep_mcap", smooth_frames(3), storage="mcap", encoding="bgr8")
    write_bag(root / "ep_sqlite", smooth_frames(2, 48, 64), storage="sqlite3", encoding="jpeg")
    write_video(root / "clip.avi", smooth_frames(5))
    write_image_folder(root / "stills", smooth_frames(4))
    code, out, _ = _inspect(capsys, root)
    assert code == 0
    report = json.loads(out)
    rows = {r["name"]: r for r in report["sequences"]}
    assert report["total_frames"] == 14
    assert {k: rows["ep_mcap"][k] for k in ("kind", "frames", "width", "height", "encoding", "topic")} == {
        "kind": "rosbag2", "frames": 3, "width": 32, "height": 24, "encoding": "bgr8", "topic": "/camera/image_raw"}
    assert rows["ep_mcap"]["topics"] == {"/camera/image_raw": "sensor_msgs/msg/Image"}
    assert (rows["ep_sqlite"]["encoding"], rows["ep_sqlite"]["width"], rows["ep_sqlite"]["frames"]) == ("jpeg", 64, 2)
    assert (rows["clip"]["kind"], rows["clip"]["frames"]) == ("video", 5)
    assert (rows["stills"]["kind"], rows["stills"]["encoding"], rows["stills"]["topic"]) == ("folder", "png", None)


def test_inspect_reports_every_image_topic_and_honours_the_choice(tmp_path, capsys):
    bag = write_two_topic_bag(tmp_path / "two", smooth_frames(2), smooth_frames(2, seed=1))
    code, out, _ = _inspect(capsys, bag)
    assert code == 0
    rows = {r["topic"]: r for r in json.loads(out)["sequences"]}
    assert {t: (r["frames"], r["width"], r["height"], r["encoding"]) for t, r in rows.items()} == {
        "/cam_a/image": (2, 32, 24, "rgb8"), "/cam_b/image/compressed": (2, 32, 24, "png")}
    # Training still needs the choice.
    from kp_perception.errors import DataError
    from kp_perception.sequences import open_sequences

    with pytest.raises(DataError, match="several image topics"):
        open_sequences(bag)
    code, out, _ = _inspect(capsys, bag, "--image-topic", "/cam_b/image/compressed")
    (row,) = json.loads(out)["sequences"]
    assert code == 0 and row["topic"] == "/cam_b/image/compressed" and row["encoding"] == "png"
    assert row["image_topics"] == ["/cam_a/image", "/cam_b/image/compressed"]


def _bad_inputs(tmp_path):
    """(path, expected fragment of the one-line error) for each bad-input case of issue 3."""
    cut = write_bag(tmp_path / "cut", smooth_frames(3), storage="mcap")
    truncate(bag_file(cut))
    nodb = write_bag(tmp_path / "nodb", smooth_frames(2), storage="sqlite3")
    bag_file(nodb).unlink()
    corrupt = write_bag(tmp_path / "corrupt", smooth_frames(2), storage="sqlite3")
    bag_file(corrupt).write_bytes(b"\0garbage" * 300)
    talk = write_string_bag(tmp_path / "talk")
    video = tmp_path / "broken.avi"
    video.write_bytes(b"RIFF....AVI not really")
    empty = tmp_path / "empty"
    empty.mkdir()
    return [
        (cut, "cannot read rosbag2"),
        (nodb, "database files are missing"),
        (corrupt, "Cannot open database"),
        (talk, "topics found: /chatter (std_msgs/msg/String)"),
        (video, "unreadable video"),
        (empty, "empty folder"),
        (tmp_path / "does_not_exist", "no such file or directory"),
        (Path("/dev/zero"), "not a regular file or folder"),
        (_fifo(tmp_path / "pipe"), "not a regular file or folder"),
        (_folder_with_corrupt_png(tmp_path / "stills"), "unreadable image"),
    ]


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _folder_with_corrupt_png(folder: Path) -> Path:
    """Three good PNGs and a truncated one in the middle: only decoding every frame finds it."""
    write_image_folder(folder, smooth_frames(3))
    first = sorted(folder.glob("*.png"))[0]
    (folder / "frame_0001b.png").write_bytes(first.read_bytes()[:60])
    return folder


def test_every_bad_input_exits_2_with_one_line_naming_the_file(tmp_path, capsys):
    for path, fragment in _bad_inputs(tmp_path):
        code, out, err = _inspect(capsys, path)
        assert code == 2, path
        assert out == ""
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        assert lines[0].startswith(f"kp-perception data: error: {path}")
        assert fragment in lines[0]


@pytest.mark.timeout(90)
def test_corrupt_image_is_one_line_on_stderr_of_a_real_process(tmp_path):
    folder = _folder_with_corrupt_png(tmp_path / "stills")
    bad = subprocess.run([sys.executable, "-m", "kp_perception.cli.main", "data", "inspect", str(folder)],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        f"kp-perception data: error: {folder / 'frame_0001b.png'}: unreadable image (corrupt or truncated)"]


def test_quick_inspection_reads_only_the_first_frame(tmp_path, capsys):
    folder = _folder_with_corrupt_png(tmp_path / "stills")
    code, out, _ = _inspect(capsys, folder, "--quick")
    assert code == 0 and json.loads(out)["decoded"] == "first frame"


@pytest.mark.timeout(90)
def test_real_process_prints_json_or_one_line_without_traceback(tmp_path):
    bag = write_bag(tmp_path / "ep", smooth_frames(2))
    ok = subprocess.run([sys.executable, "-m", "kp_perception.cli.main", "data", "inspect", str(bag)],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["sequences"][0]["frames"] == 2
    truncate(bag_file(bag))
    bad = subprocess.run([sys.executable, "-m", "kp_perception.cli.main", "data", "inspect", str(bag)],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    assert str(bag) in bad.stderr
    # FFmpeg's own log lines must not precede the error either.
    video = tmp_path / "broken.mp4"
    video.write_bytes(b"not a video" * 100)
    bad = subprocess.run([sys.executable, "-m", "kp_perception.cli.main", "data", "inspect", str(video)],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        f"kp-perception data: error: {video}: unreadable video (OpenCV cannot open it)"]


def test_help_describes_the_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "inspect", "--help"])
    assert exit_info.value.code == 0
    assert "--image-topic" in capsys.readouterr().out
