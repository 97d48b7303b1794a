"""The frame cache: decoded once at the training size, reused, and never served stale."""

from __future__ import annotations

import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from kp_perception.errors import DataError
from kp_perception.preprocessing import resize_rgb
from kp_perception.sequences import open_sequences
from kp_perception_training.data.frame_cache import FrameCache, build_frame_cache, default_cache_dir
from test.fixtures_bags import smooth_frames, write_bag, write_image_folder

pytestmark = pytest.mark.timeout(60)


def _open_one(path):
    (seq,) = open_sequences([path])
    return seq


def test_cache_holds_every_frame_resized_by_the_one_policy(tmp_path):
    frames = smooth_frames(5, height=24, width=32)
    seq = _open_one(write_bag(tmp_path / "ep", frames, storage="sqlite3"))
    cached = build_frame_cache(seq, 16, 12, tmp_path / "cache", progress=False)
    assert cached.shape == (5, 12, 16, 3) and cached.dtype == np.uint8
    assert isinstance(cached, np.memmap) and not cached.flags.writeable
    for got, frame in zip(cached, frames, strict=True):
        np.testing.assert_array_equal(got, resize_rgb(frame, 16, 12))


def test_second_load_reuses_the_cache_file(tmp_path):
    folder = write_image_folder(tmp_path / "f", smooth_frames(4))
    cache_dir = tmp_path / "cache"
    first = build_frame_cache(_open_one(folder), 8, 8, cache_dir, progress=False)
    (path,) = cache_dir.glob("*.npy")
    stat = path.stat()
    second = build_frame_cache(_open_one(folder), 8, 8, cache_dir, progress=False)
    assert list(cache_dir.glob("*.npy")) == [path]
    assert (path.stat().st_ino, path.stat().st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)
    np.testing.assert_array_equal(first, second)


def test_changed_source_is_rebuilt_not_served_stale(tmp_path):
    cache_dir = tmp_path / "cache"
    bag = write_bag(tmp_path / "ep", smooth_frames(3, seed=1))
    old = np.array(build_frame_cache(_open_one(bag), 8, 8, cache_dir, progress=False))
    shutil.rmtree(bag)
    new_frames = smooth_frames(3, seed=2)
    write_bag(bag, new_frames)
    new = build_frame_cache(_open_one(bag), 8, 8, cache_dir, progress=False)
    assert not np.array_equal(old, new)
    np.testing.assert_array_equal(new[0], resize_rgb(new_frames[0], 8, 8))
    assert len(list(cache_dir.glob("*.npy"))) == 2


def test_edited_image_in_folder_is_rebuilt(tmp_path):
    folder = write_image_folder(tmp_path / "f", smooth_frames(3))
    cache_dir = tmp_path / "cache"
    build_frame_cache(_open_one(folder), 8, 8, cache_dir, progress=False)
    black = np.zeros((24, 32, 3), np.uint8)
    cv2.imwrite(str(folder / "frame_0002.png"), black)
    rebuilt = build_frame_cache(_open_one(folder), 8, 8, cache_dir, progress=False)
    np.testing.assert_array_equal(rebuilt[2], black[:8, :8])


def test_each_size_has_its_own_cache(tmp_path):
    seq = _open_one(write_image_folder(tmp_path / "f", smooth_frames(2)))
    a = build_frame_cache(seq, 8, 8, tmp_path / "c", progress=False)
    b = build_frame_cache(seq, 16, 12, tmp_path / "c", progress=False)
    assert a.shape[1:3] == (8, 8) and b.shape[1:3] == (12, 16)
    assert len(list((tmp_path / "c").glob("*.npy"))) == 2


def test_mixed_resolutions_are_resized_consistently(tmp_path):
    small, large = smooth_frames(1, 24, 32, seed=1)[0], smooth_frames(1, 48, 64, seed=2)[0]
    folder = tmp_path / "mixed"
    write_image_folder(folder, [small])
    cv2.imwrite(str(folder / "frame_0001.png"), cv2.cvtColor(large, cv2.COLOR_RGB2BGR))
    cached = build_frame_cache(_open_one(folder), 16, 16, tmp_path / "c", progress=False)
    assert cached.shape == (2, 16, 16, 3)
    np.testing.assert_array_equal(cached[0], resize_rgb(small, 16, 16))
    np.testing.assert_array_equal(cached[1], resize_rgb(large, 16, 16))


def test_failed_build_leaves_neither_cache_nor_temporary_file(tmp_path):
    folder = write_image_folder(tmp_path / "f", smooth_frames(3))
    (folder / "frame_0003.png").write_bytes(b"broken")
    seq = _open_one(folder)
    cache_dir = tmp_path / "cache"
    with pytest.raises(DataError, match=r"frame_0003\.png: unreadable image"):
        build_frame_cache(seq, 8, 8, cache_dir, progress=False)
    assert [p.suffix for p in cache_dir.iterdir()] == [".lock"]  # no cache, no temporary file
    assert FrameCache(seq, 8, 8, cache_dir).load() is None


def test_damaged_cache_file_is_rebuilt(tmp_path):
    frames = smooth_frames(3)
    seq = _open_one(write_image_folder(tmp_path / "f", frames))
    cache = FrameCache(seq, 8, 8, tmp_path / "cache")
    cache.get(progress=False)
    cache.path.write_bytes(cache.path.read_bytes()[:100])
    assert cache.load() is None
    np.testing.assert_array_equal(cache.get(progress=False)[1], resize_rgb(frames[1], 8, 8))


def test_cache_dir_defaults_to_the_environment_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("KP_PERCEPTION_CACHE", str(tmp_path / "envcache"))
    assert default_cache_dir() == tmp_path / "envcache"
    seq = _open_one(write_image_folder(tmp_path / "f", smooth_frames(2)))
    build_frame_cache(seq, 8, 8, progress=False)
    assert len(list((tmp_path / "envcache").glob("f-*-8x8.npy"))) == 1
    monkeypatch.delenv("KP_PERCEPTION_CACHE")
    assert default_cache_dir().parts[-3:] == (".cache", "kp_perception", "frames")


_BUILD_IN_CHILD = """
import sys, numpy as np
from kp_perception.sequences import open_sequences
from kp_perception_training.data.frame_cache import build_frame_cache
(seq,) = open_sequences([sys.argv[1]])
frames = build_frame_cache(seq, 16, 16, sys.argv[2], progress=False)
print(int(np.asarray(frames, dtype=np.int64).sum()))
"""


@pytest.mark.timeout(90)
def test_concurrent_builders_share_one_complete_cache(tmp_path):
    bag = write_bag(tmp_path / "ep", smooth_frames(40, 48, 64), storage="mcap", encoding="png")
    cache_dir = tmp_path / "cache"
    procs = [subprocess.Popen([sys.executable, "-c", _BUILD_IN_CHILD, str(bag), str(cache_dir)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=80) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    sums = {out.strip() for out, _ in results}
    expected = build_frame_cache(_open_one(bag), 16, 16, cache_dir, progress=False)
    assert sums == {str(int(np.asarray(expected, dtype=np.int64).sum()))}
    assert len(list(cache_dir.glob("*.npy"))) == 1 and not list(cache_dir.glob("*.tmp"))
