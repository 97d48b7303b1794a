"""The dataset reader: real rosbag2 bags (mcap, sqlite3), videos and image folders read back as RGB frames."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest

from kp_perception.errors import DataError
from kp_perception.sequences import BagSequence, FolderSequence, VideoSequence, open_sequences
from test.fixtures_bags import (
    bag_file,
    expected_rgb,
    smooth_frames,
    tree_snapshot,
    truncate,
    write_bag,
    write_image_folder,
    write_string_bag,
    write_two_topic_bag,
    write_video,
)

pytestmark = pytest.mark.timeout(60)

STORAGES = ("mcap", "sqlite3")
LOSSLESS = ("rgb8", "bgr8", "rgba8", "mono8", "mono16", "png")


@pytest.mark.parametrize("storage", STORAGES)
@pytest.mark.parametrize("encoding", LOSSLESS)
def test_lossless_bag_round_trip_is_frame_exact(tmp_path, storage, encoding):
    frames = smooth_frames(5, seed=1)
    bag = write_bag(tmp_path / "ep", frames, storage=storage, encoding=encoding)
    (seq,) = open_sequences([bag])
    assert isinstance(seq, BagSequence)
    assert (seq.name, seq.kind, seq.topic, len(seq)) == ("ep", "rosbag2", "/camera/image_raw", 5)
    assert seq.frame_size == (32, 24)
    assert seq.encoding == encoding
    out = list(seq.iter_frames())
    assert len(out) == 5
    for got, frame in zip(out, frames, strict=True):
        assert got.dtype == np.uint8 and got.shape == (24, 32, 3)
        np.testing.assert_array_equal(got, expected_rgb(frame, encoding))
    np.testing.assert_array_equal(seq.read_frame(3), expected_rgb(frames[3], encoding))


@pytest.mark.parametrize("storage", STORAGES)
def test_jpeg_compressed_bag_round_trip_is_close(tmp_path, storage):
    frames = smooth_frames(4, height=32, width=48, seed=2)
    (seq,) = open_sequences([write_bag(tmp_path / "jp", frames, storage=storage, encoding="jpeg")])
    assert seq.encoding == "jpeg"
    out = list(seq.iter_frames())
    errors = [np.abs(a.astype(int) - b.astype(int)).mean() for a, b in zip(out, frames, strict=True)]
    assert len(out) == 4 and max(errors) < 4.0
    # Frames keep their order: each is closest to its own original.
    for i, got in enumerate(out):
        assert int(np.argmin([np.abs(got.astype(int) - f).mean() for f in frames])) == i


@pytest.mark.parametrize("storage", STORAGES)
def test_single_storage_file_reads_like_its_bag_directory(tmp_path, storage):
    frames = smooth_frames(3)
    bag = write_bag(tmp_path / "single", frames, storage=storage)
    (seq,) = open_sequences([bag_file(bag)])
    assert seq.name == "single" and len(seq) == 3
    np.testing.assert_array_equal(np.stack(list(seq.iter_frames())), np.stack(frames))


def test_bag_stamps_are_the_recorded_times(tmp_path):
    (seq,) = open_sequences([write_bag(tmp_path / "s", smooth_frames(3))])
    assert seq.stamps == [1_000_000_000, 1_033_333_333, 1_066_666_666]


def test_video_reads_back_with_exact_frame_count(tmp_path):
    frames = smooth_frames(7, height=32, width=48, seed=3)
    (seq,) = open_sequences([write_video(tmp_path / "clip.avi", frames)])
    assert isinstance(seq, VideoSequence)
    assert (seq.name, seq.kind, len(seq), seq.frame_size) == ("clip", "video", 7, (48, 32))
    assert seq.encoding.startswith("video")
    out = list(seq.iter_frames())
    assert len(out) == 7
    for got, frame in zip(out, frames, strict=True):
        assert np.abs(got.astype(int) - frame.astype(int)).mean() < 6.0
    assert len(seq.stamps) == 7 and seq.stamps == sorted(seq.stamps)


def test_image_folder_is_read_in_name_order_exactly(tmp_path):
    frames = smooth_frames(4, seed=4)
    folder = write_image_folder(tmp_path / "shots", frames)
    (folder / "notes.txt").write_text("not an image")
    (seq,) = open_sequences([folder])
    assert isinstance(seq, FolderSequence)
    assert (seq.name, seq.kind, len(seq), seq.encoding) == ("shots", "folder", 4, "png")
    np.testing.assert_array_equal(np.stack(list(seq.iter_frames())), np.stack(frames))


def test_mixed_resolutions_are_not_an_error(tmp_path):
    small, large = smooth_frames(1, 24, 32)[0], smooth_frames(1, 48, 64)[0]
    folder = tmp_path / "mixed"
    write_image_folder(folder, [small])
    cv2.imwrite(str(folder / "frame_0001.png"), cv2.cvtColor(large, cv2.COLOR_RGB2BGR))
    (seq,) = open_sequences([folder])
    assert seq.frame_size == (32, 24)
    assert [f.shape for f in seq.iter_frames()] == [(24, 32, 3), (48, 64, 3)]


def test_folder_of_sources_expands_to_one_sequence_each(tmp_path):
    root = tmp_path / "sim_out"
    root.mkdir()
    write_bag(root / "episode_000", smooth_frames(3), storage="mcap")
    write_bag(root / "episode_001", smooth_frames(2), storage="sqlite3")
    write_video(root / "handheld.avi", smooth_frames(4))
    write_image_folder(root / "nested" / "stills", smooth_frames(2))
    (root / "annotations.csv").write_text("sequence,frame,name,x,y\n")
    seqs = open_sequences([root])
    assert [(s.name, s.kind, len(s)) for s in seqs] == [
        ("episode_000", "rosbag2", 3),
        ("episode_001", "rosbag2", 2),
        ("handheld", "video", 4),
        ("stills", "folder", 2),
    ]


def test_same_path_twice_is_one_sequence_and_clashing_names_are_an_error(tmp_path):
    bag = write_bag(tmp_path / "a" / "ep", smooth_frames(2))
    assert len(open_sequences([bag, bag])) == 1
    other = write_bag(tmp_path / "b" / "ep", smooth_frames(2))
    with pytest.raises(DataError, match="'ep' is also used"):
        open_sequences([bag, other])


def test_several_image_topics_need_a_choice(tmp_path):
    a, b = smooth_frames(3, seed=5), smooth_frames(3, seed=6)
    bag = write_two_topic_bag(tmp_path / "two", a, b)
    with pytest.raises(DataError, match=r"two: several image topics \(/cam_a/image, /cam_b/image/compressed\)"):
        open_sequences([bag])
    (seq_b,) = open_sequences([bag], image_topic="/cam_b/image/compressed")
    assert seq_b.topic == "/cam_b/image/compressed" and len(seq_b) == 3 and seq_b.encoding == "png"
    np.testing.assert_array_equal(np.stack(list(seq_b.iter_frames())), np.stack(b))
    (seq_a,) = open_sequences([bag], image_topic="/cam_a/image")
    np.testing.assert_array_equal(np.stack(list(seq_a.iter_frames())), np.stack(a))
    with pytest.raises(DataError, match=r"'/nope' not found; image topics found: /cam_a/image, /cam_b"):
        open_sequences([bag], image_topic="/nope")


def test_fingerprint_is_stable_and_follows_content(tmp_path):
    folder = write_image_folder(tmp_path / "f", smooth_frames(3))
    (seq,) = open_sequences([folder])
    first = seq.fingerprint()
    assert open_sequences([folder])[0].fingerprint() == first
    cv2.imwrite(str(folder / "frame_0001.png"), np.zeros((24, 32, 3), np.uint8))
    assert open_sequences([folder])[0].fingerprint() != first

    bag = write_bag(tmp_path / "b", smooth_frames(3))
    before = open_sequences([bag])[0].fingerprint()
    shutil.rmtree(bag)
    write_bag(bag, smooth_frames(3, seed=9))
    assert open_sequences([bag])[0].fingerprint() != before


# --- bad input: one DataError naming the file and the problem -------------------------------


def test_truncated_mcap_is_a_clear_error(tmp_path):
    bag = write_bag(tmp_path / "cut", smooth_frames(4), storage="mcap")
    truncate(bag_file(bag))
    with pytest.raises(DataError, match=r"cut: cannot read rosbag2: .*truncated"):
        open_sequences([bag])
    with pytest.raises(DataError, match=r"cut\.mcap: cannot read rosbag2"):
        open_sequences([bag_file(bag)])


def test_sqlite_bag_with_missing_database_is_a_clear_error(tmp_path):
    bag = write_bag(tmp_path / "nodb", smooth_frames(2), storage="sqlite3")
    bag_file(bag).unlink()
    with pytest.raises(DataError, match=r"nodb: cannot read rosbag2: .*database files are missing"):
        open_sequences([bag])


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_sqlite_bag_with_corrupt_database_is_a_clear_error(tmp_path, damage):
    bag = write_bag(tmp_path / "bad", smooth_frames(4), storage="sqlite3")
    db = bag_file(bag)
    if damage == "garbage":
        db.write_bytes(b"not a database at all" * 200)
    else:
        truncate(db)
    with pytest.raises(DataError, match=r"bad: cannot read rosbag2: Cannot open database .*bad\.db3"):
        open_sequences([bag])


@pytest.mark.parametrize("storage", STORAGES)
def test_bag_without_image_topic_lists_the_topics_found(tmp_path, storage):
    bag = write_string_bag(tmp_path / "talk", storage)
    with pytest.raises(DataError) as err:
        open_sequences([bag])
    message = str(err.value)
    assert message.startswith(f"{bag}: no sensor_msgs/Image or CompressedImage topic")
    assert "/chatter (std_msgs/msg/String)" in message and "/count (std_msgs/msg/Int32)" in message


@pytest.mark.parametrize("content", [b"", b"this is not a video" * 50])
def test_unreadable_video_is_a_clear_error(tmp_path, content):
    video = tmp_path / "broken.mp4"
    video.write_bytes(content)
    with pytest.raises(DataError, match=r"broken\.mp4: unreadable video"):
        open_sequences([video])


def test_empty_folder_is_a_clear_error(tmp_path):
    empty = tmp_path / "nothing_here"
    (empty / "sub").mkdir(parents=True)
    (empty / "readme.txt").write_text("no images")
    with pytest.raises(DataError, match=r"nothing_here: empty folder"):
        open_sequences([empty])


def test_nonexistent_path_and_unknown_file_type_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match=r"missing_bag: no such file or directory"):
        open_sequences([tmp_path / "missing_bag"])
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match=r"notes\.txt: unsupported file type '\.txt'"):
        open_sequences([tmp_path / "notes.txt"])


def test_unreadable_image_in_folder_names_the_image(tmp_path):
    folder = write_image_folder(tmp_path / "imgs", smooth_frames(2))
    (folder / "frame_0002.png").write_bytes(b"\x89PNG broken")
    (seq,) = open_sequences([folder])
    with pytest.raises(DataError, match=r"frame_0002\.png: unreadable image"):
        list(seq.iter_frames())


def test_reading_never_writes_into_the_users_data(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    write_bag(root / "m", smooth_frames(3), storage="mcap")
    write_bag(root / "s", smooth_frames(3), storage="sqlite3", encoding="jpeg")
    write_video(root / "v.avi", smooth_frames(3))
    write_image_folder(root / "f", smooth_frames(3))
    before = tree_snapshot(root)
    for seq in open_sequences([root]):
        list(seq.iter_frames())
        _ = seq.encoding, seq.frame_size, seq.stamps, seq.fingerprint()
    assert tree_snapshot(root) == before


def test_a_bare_path_is_one_path(tmp_path):
    bag = write_bag(tmp_path / "solo", smooth_frames(2))
    assert [s.name for s in open_sequences(str(bag))] == ["solo"]


@pytest.mark.parametrize("storage", STORAGES)
def test_image_topic_without_messages_is_a_clear_error(tmp_path, storage):
    from kp_perception_training.data.bag_writer import BagWriter

    with BagWriter(tmp_path / "silent", storage) as bag:
        bag.declare_topic("/camera/image_raw", "sensor_msgs/msg/Image")
    with pytest.raises(DataError, match=r"silent: image topic /camera/image_raw has no messages"):
        open_sequences([tmp_path / "silent"])
