"""Test helpers that write real data sources: rosbag2 bags (via kp_perception_training.data.bag_writer), videos, image folders.

Frames are smooth gradients with a moving square, so lossy codecs (JPEG,
MJPG) stay close to the original and every frame differs from its neighbours.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np

from kp_perception_training.data.bag_writer import BagWriter, write_image_bag


def smooth_frames(n: int, height: int = 24, width: int = 32, seed: int = 0) -> list[np.ndarray]:
    """``n`` distinct H×W×3 uint8 RGB frames: a seeded colour gradient plus a square moving right."""
    rng = np.random.default_rng(seed)
    base_colour = rng.integers(40, 200, size=3)
    yy, xx = np.mgrid[0:height, 0:width]
    frames = []
    for i in range(n):
        frame = np.empty((height, width, 3), dtype=np.float64)
        frame[..., 0] = base_colour[0] + 40 * xx / width
        frame[..., 1] = base_colour[1] + 40 * yy / height
        frame[..., 2] = base_colour[2]
        x0 = (2 + 3 * i) % max(1, width - 6)
        frame[4:10, x0 : x0 + 6] = 250
        frames.append(np.clip(frame, 0, 255).astype(np.uint8))
    return frames


def as_encoding(rgb: np.ndarray, encoding: str) -> np.ndarray:
    """An RGB frame in ``encoding``'s raw layout (the array image_fields expects)."""
    if encoding == "rgb8":
        return rgb
    if encoding == "bgr8":
        return np.ascontiguousarray(rgb[..., ::-1])
    if encoding == "rgba8":
        return np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2)
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    if encoding == "mono8":
        return gray
    if encoding == "mono16":
        return gray.astype(np.uint16) * 257
    raise ValueError(f"no test layout for {encoding}")


def expected_rgb(rgb: np.ndarray, encoding: str) -> np.ndarray:
    """What the reader must return for ``rgb`` written in ``encoding`` (lossless encodings)."""
    if encoding in ("mono8", "mono16"):
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        return np.repeat(gray[:, :, None], 3, axis=2)
    return rgb


def write_bag(path: Path, frames: list[np.ndarray], storage: str = "mcap", encoding: str = "rgb8",
              topic: str = "/camera/image_raw") -> Path:
    """Write RGB ``frames`` as ``encoding`` (an Image encoding, or "jpeg"/"png" for CompressedImage)."""
    raw = frames if encoding in ("jpeg", "png") else [as_encoding(f, encoding) for f in frames]
    return write_image_bag(path, raw, topic=topic, storage=storage, encoding=encoding)


def write_two_topic_bag(path: Path, frames_a: list[np.ndarray], frames_b: list[np.ndarray],
                        storage: str = "mcap") -> Path:
    """A bag with /cam_a/image (Image rgb8), /cam_b/image/compressed (png) and a std_msgs/String topic."""
    with BagWriter(path, storage) as bag:
        string_type = bag.typestore.types["std_msgs/msg/String"]
        for i, (a, b) in enumerate(zip(frames_a, frames_b, strict=True)):
            stamp = 1_000_000_000 + i * 10_000_000
            bag.write_image("/cam_a/image", a, stamp)
            bag.write_compressed("/cam_b/image/compressed", b, stamp + 1, fmt="png")
            bag.write_message("/chatter", "std_msgs/msg/String", string_type(data=f"hello {i}"), stamp + 2)
    return path


def write_string_bag(path: Path, storage: str = "mcap") -> Path:
    """A bag with no image topic at all: /chatter (String) and /count (Int32)."""
    with BagWriter(path, storage) as bag:
        types = bag.typestore.types
        for i in range(3):
            bag.write_message("/chatter", "std_msgs/msg/String", types["std_msgs/msg/String"](data="x"), 10 + i)
            bag.write_message("/count", "std_msgs/msg/Int32", types["std_msgs/msg/Int32"](data=i), 11 + i)
    return path


def write_video(path: Path, frames: list[np.ndarray], fps: float = 10.0) -> Path:
    """An MJPG .avi (decodable by opencv-python-headless) of RGB ``frames``."""
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    assert writer.isOpened(), f"cannot write {path}"
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def write_image_folder(path: Path, frames: list[np.ndarray], suffix: str = ".png") -> Path:
    """``path/frame_0000.png`` ... in name order."""
    path.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames):
        assert cv2.imwrite(str(path / f"frame_{i:04d}{suffix}"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    return path


def bag_file(bag_dir: Path) -> Path:
    """The single storage file (.mcap or .db3) of a bag directory."""
    (file,) = [p for p in bag_dir.iterdir() if p.suffix in (".mcap", ".db3")]
    return file


def truncate(path: Path, keep_fraction: float = 0.5) -> Path:
    """Cut ``path`` to a fraction of its size, as an interrupted copy or recording would."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep_fraction)])
    return path


def tree_snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    """{relative path: (size, mtime_ns, sha256)} of every file under ``root``: proof nothing was written."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            st = p.stat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def write_square_sequence(root: Path, name: str = "squares", frames: int = 8) -> tuple[Path, Path]:
    """An image folder ``root/name`` of a bright 6×6 square moving over a dark 32×32 background,
    and ``root/annotations.csv`` with the square's centre per frame (a landmark a model can learn)."""
    folder = root / name
    folder.mkdir(parents=True)
    rows = ["sequence,frame,name,x,y"]
    for t in range(frames):
        img = np.full((32, 32, 3), 30, np.uint8)
        x, y = 3 + 3 * t % 23, 4 + 2 * t % 22
        img[y : y + 6, x : x + 6] = (240, 200, 60)
        cv2.imwrite(str(folder / f"{t:04d}.png"), img)
        rows.append(f"{name},{t},square,{x + 2.5},{y + 2.5}")
    annotations = root / "annotations.csv"
    annotations.write_text("\n".join(rows) + "\n")
    return folder, annotations
