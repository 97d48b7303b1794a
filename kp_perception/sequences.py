"""Reading recordings as sequences of RGB frames: rosbag2 (mcap, sqlite3), videos, image folders.

One reader for training and offline inference. Each bag, video or image
folder is one *sequence*, named by its stem (annotations and splits refer to
sequences by that name). Frames come out as H×W×3 uint8 RGB at the source's
own resolution; resizing to a model's input is the frame cache's (training)
or the backend's (inference) job, both through ``kp_perception.preprocessing``.

Bags are read with ``rosbags`` (no ROS install needed) and messages converted
by ``kp_perception.image_conversion.msg_to_rgb8``, so every encoding the
robot accepts is accepted here too. The reader opens everything read-only
(sqlite3 databases with ``immutable=1`` by rosbags) and never writes into the
user's data. Every problem a user can cause becomes a one-line ``DataError``
naming the file and the problem.
"""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np

from kp_perception.errors import DataError, KpPerceptionError

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
BAG_SUFFIXES = (".mcap", ".db3")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

# Image encodings that carry colour (rgb8, bgra16, bayer_rggb8, yuv422, ...); mono, depth and ids do not.
_COLOUR_ENCODING_PREFIXES = ("rgb", "bgr", "bayer_", "yuv", "uyvy", "yuyv")

# Bytes hashed from each end of each file for the fingerprint (see Sequence.fingerprint).
_FINGERPRINT_EDGE_BYTES = 1 << 20


def _one_line(exc: BaseException) -> str:
    """An exception as one line (rosbags and cv2 messages may span several)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text


def _file_fingerprint(path: Path, digest: hashlib._Hash) -> None:
    """Feed path name, size, mtime_ns and the first/last MB of one file into ``digest``."""
    stat = path.stat()
    digest.update(f"{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
    with path.open("rb") as f:
        digest.update(f.read(_FINGERPRINT_EDGE_BYTES))
        if stat.st_size > 2 * _FINGERPRINT_EDGE_BYTES:
            f.seek(-_FINGERPRINT_EDGE_BYTES, os.SEEK_END)
            digest.update(f.read(_FINGERPRINT_EDGE_BYTES))
        elif stat.st_size > _FINGERPRINT_EDGE_BYTES:
            digest.update(f.read())


class Sequence(ABC):
    """One recording as an ordered stream of H×W×3 uint8 RGB frames.

    Attributes: ``name`` (stem, used by annotations and splits), ``source``
    (the path given or found), ``kind`` ("rosbag2" | "video" | "folder"),
    ``encoding`` (e.g. "rgb8", "jpeg", "png", "video"), ``topic`` (bags only).
    """

    kind: str = ""

    def __init__(self, source: Path, name: str) -> None:
        self.source = source
        self.name = name
        self.topic: str | None = None
        self._first: np.ndarray | None = None

    @abstractmethod
    def __len__(self) -> int:
        """Number of frames."""

    @abstractmethod
    def iter_frames(self) -> Iterator[np.ndarray]:
        """Yield every frame in order as H×W×3 uint8 RGB (sizes may differ between frames)."""

    @property
    @abstractmethod
    def encoding(self) -> str:
        """How frames are stored in the source."""

    @abstractmethod
    def _content_files(self) -> list[Path]:
        """The files whose content defines the frames (for the fingerprint)."""

    @property
    def stamps(self) -> list[int] | None:
        """Per-frame timestamps in nanoseconds, when the source has them."""
        return None

    @property
    def frame_size(self) -> tuple[int, int]:
        """(width, height) of the first frame."""
        first = self._first_frame()
        return int(first.shape[1]), int(first.shape[0])

    def read_frame(self, index: int) -> np.ndarray:
        """Frame ``index`` (0-based). Decodes from the start: slow, meant for inspection and tests."""
        n = len(self)
        if not 0 <= index < n:
            raise DataError(f"{self.source}: frame {index} out of range (sequence has {n} frames)")
        for i, frame in enumerate(self.iter_frames()):
            if i == index:
                return frame
        raise DataError(f"{self.source}: frame {index} could not be read (stream ended early)")

    def fingerprint(self) -> str:
        """A content key for the frame cache: changes whenever the frames may have changed.

        Hashes, for every content file, its name, size, ``st_mtime_ns`` and its
        first and last MB (and, for bags, the topic). Hashing whole bags would
        cost about as much as decoding them; size + mtime alone miss a rewrite
        within the clock's resolution or a copy that preserves mtime, which the
        head/tail bytes catch (bag headers, indexes and footers live there).
        What it cannot see is an in-place edit of the middle of a file that
        keeps size, mtime_ns and both ends identical, which needs a deliberate
        mtime reset.
        """
        digest = hashlib.sha256(f"{self.kind}\0{self.topic}\0".encode())
        try:
            for path in self._content_files():
                _file_fingerprint(path, digest)
        except OSError as exc:
            raise DataError(f"{self.source}: cannot read for fingerprint: {exc.strerror or exc}") from None
        return digest.hexdigest()[:20]

    def _first_frame(self) -> np.ndarray:
        if self._first is None:
            for frame in self.iter_frames():
                self._first = frame
                break
            else:
                raise DataError(f"{self.source}: no frames")
        return self._first

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, source='{self.source}', frames={len(self)})"


class BagSequence(Sequence):
    """The image topic of one rosbag2 (a directory with metadata.yaml, or one .mcap/.db3 file)."""

    kind = "rosbag2"

    def __init__(self, source: Path, image_topic: str | None = None) -> None:
        super().__init__(source, source.stem if source.is_file() else source.name)
        self._encoding: str | None = None
        self._stamps: list[int] | None = None
        with self._open() as reader:
            self.all_topics = {name: info.msgtype or "?" for name, info in reader.topics.items()}
            self.image_topics = sorted(t for t, typ in self.all_topics.items() if typ in IMAGE_TYPES)
            self.topic = self._choose_topic(image_topic, reader)
            self.msgtype = self.all_topics[self.topic]
            self._length = sum(c.msgcount for c in reader.connections if c.topic == self.topic)
        if self._length == 0:
            raise DataError(f"{self.source}: image topic {self.topic} has no messages")

    def _open(self):
        """An opened AnyReader, closed on exit; any failure to open becomes one DataError line."""
        return _open_rosbag(self.source)

    def _choose_topic(self, image_topic: str | None, reader) -> str:
        found = ", ".join(f"{t} ({typ})" for t, typ in sorted(self.all_topics.items())) or "none"
        if not self.image_topics:
            raise DataError(f"{self.source}: no sensor_msgs/Image or CompressedImage topic; topics found: {found}")
        if image_topic is None:
            if len(self.image_topics) > 1:
                # A camera's depth, mono or id images beside one colour stream: the colour one is the data.
                colour = [t for t in self.image_topics if self._is_colour_topic(reader, t)]
                if len(colour) == 1:
                    return colour[0]
                raise DataError(
                    f"{self.source}: several image topics ({', '.join(self.image_topics)}); "
                    "choose one with --image-topic"
                )
            return self.image_topics[0]
        if image_topic not in self.image_topics:
            raise DataError(
                f"{self.source}: image topic {image_topic!r} not found; "
                f"image topics found: {', '.join(self.image_topics)}"
            )
        return image_topic

    def _is_colour_topic(self, reader, topic: str) -> bool:
        """Whether ``topic``'s first message is a colour image (not depth, mono or an id mask)."""
        conns = [c for c in reader.connections if c.topic == topic]
        for conn, _, raw in self._guarded(reader.messages(connections=conns)):
            encoding = _message_encoding(self._deserialize(reader, raw, conn.msgtype)).lower()
            if conn.msgtype == "sensor_msgs/msg/CompressedImage":
                return "compresseddepth" not in encoding
            return encoding.startswith(_COLOUR_ENCODING_PREFIXES)
        return False

    def __len__(self) -> int:
        return self._length

    @property
    def encoding(self) -> str:
        if self._encoding is None:
            msg = next(self._iter_messages(), None)
            if msg is None:
                raise DataError(f"{self.source}: topic {self.topic} has no messages")
            self._encoding = _message_encoding(msg)
        return self._encoding

    @property
    def stamps(self) -> list[int]:
        """Receive timestamps (ns) recorded in the bag, one per frame."""
        if self._stamps is None:
            with self._open() as reader:
                conns = [c for c in reader.connections if c.topic == self.topic]
                self._stamps = [t for _, t, _ in self._guarded(reader.messages(connections=conns))]
        return self._stamps

    def _guarded(self, items: Iterable):
        try:
            yield from items
        except KpPerceptionError:
            raise
        except Exception as exc:  # truncated chunk, corrupt CDR, ... in the middle of a bag
            raise DataError(f"{self.source}: cannot read {self.topic}: {_one_line(exc)}") from None

    def _iter_messages(self) -> Iterator:
        with self._open() as reader:
            conns = [c for c in reader.connections if c.topic == self.topic]
            for conn, _, raw in self._guarded(reader.messages(connections=conns)):
                yield self._deserialize(reader, raw, conn.msgtype)

    def _deserialize(self, reader, raw: bytes, msgtype: str):
        try:
            return reader.deserialize(raw, msgtype)
        except Exception as exc:
            raise DataError(f"{self.source}: corrupt {msgtype} message on {self.topic}: {_one_line(exc)}") from None

    def iter_frames(self) -> Iterator[np.ndarray]:
        from kp_perception.image_conversion import msg_to_rgb8

        for i, msg in enumerate(self._iter_messages()):
            if self._encoding is None:
                self._encoding = _message_encoding(msg)
            try:
                yield msg_to_rgb8(msg)
            except KpPerceptionError as exc:
                raise DataError(f"{self.source}: {self.topic} frame {i}: {exc}") from None

    def iter_arrays(self) -> Iterator[np.ndarray]:
        """The topic's images as their native arrays (H×W uint16 for a mono16 instance-id mask, float32
        depth, ...), not converted to RGB: for label and depth topics that a model never reads."""
        from kp_perception.image_conversion import image_to_numpy

        for i, msg in enumerate(self._iter_messages()):
            try:
                yield image_to_numpy(msg)
            except KpPerceptionError as exc:
                raise DataError(f"{self.source}: {self.topic} frame {i}: {exc}") from None

    def _content_files(self) -> list[Path]:
        if self.source.is_file():
            return [self.source]
        return sorted(p for p in self.source.iterdir() if p.is_file())


@contextmanager
def _open_rosbag(source: Path):
    """An opened rosbags AnyReader of ``source``, closed on exit; a failure to open is one DataError line."""
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    try:
        reader = AnyReader([source], default_typestore=get_typestore(Stores.ROS2_KILTED))
        reader.open()
    except Exception as exc:  # rosbags, apsw and OSError all mean "unreadable bag" here
        hint = " (truncated or not an mcap file?)" if "magic" in str(exc) else ""
        raise DataError(f"{source}: cannot read rosbag2: {_one_line(exc)}{hint}") from None
    try:
        yield reader
    finally:
        reader.close()


def _message_encoding(msg) -> str:
    """'rgb8', 'mono16', ... for Image; 'jpeg' / 'png' (or the raw format) for CompressedImage."""
    fmt = getattr(msg, "format", None)
    if fmt is None:
        return str(msg.encoding)
    lowered = fmt.lower()
    for name in ("jpeg", "png"):
        if name in lowered or (name == "jpeg" and "jpg" in lowered):
            return name
    return fmt


class VideoSequence(Sequence):
    """A video file decoded with OpenCV (cv2.VideoCapture)."""

    kind = "video"

    def __init__(self, source: Path) -> None:
        super().__init__(source, source.stem)
        cap = self._capture()
        try:
            ok, frame = cap.read()
            if not ok or frame is None:
                raise DataError(f"{self.source}: unreadable video (no frame could be decoded)")
            self._first = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            fourcc = int(cap.get(cv2.CAP_PROP_FOURCC))
            self._codec = "".join(chr((fourcc >> (8 * i)) & 0xFF) for i in range(4)).strip("\0 ").lower()
            # The container's frame count can be an estimate; count by demuxing so len() is exact.
            count = 1
            while cap.grab():
                count += 1
            self._length = count
        finally:
            cap.release()

    def _capture(self) -> cv2.VideoCapture:
        # FFmpeg's own log lines ("moov atom not found") would precede our one-line error;
        # quiet unless the user asked for a level. Read by OpenCV when a capture opens.
        os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
        cap = cv2.VideoCapture(str(self.source))
        if not cap.isOpened():
            cap.release()
            raise DataError(f"{self.source}: unreadable video (OpenCV cannot open it)")
        return cap

    def __len__(self) -> int:
        return self._length

    @property
    def encoding(self) -> str:
        return f"video/{self._codec}" if self._codec else "video"

    @property
    def stamps(self) -> list[int]:
        """Presentation times (ns) from the container."""
        cap = self._capture()
        stamps = []
        try:
            while cap.grab():
                stamps.append(int(round(cap.get(cv2.CAP_PROP_POS_MSEC) * 1e6)))
        finally:
            cap.release()
        return stamps

    def iter_frames(self) -> Iterator[np.ndarray]:
        cap = self._capture()
        try:
            while True:
                ok, frame = cap.read()
                if not ok:
                    return
                yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        finally:
            cap.release()

    def _content_files(self) -> list[Path]:
        return [self.source]


class FolderSequence(Sequence):
    """A folder of images, in file-name order."""

    kind = "folder"

    def __init__(self, source: Path, name: str | None = None, files: list[Path] | None = None) -> None:
        super().__init__(source, name or source.name)
        self.files = files if files is not None else _image_files(source)
        if not self.files:
            raise DataError(f"{self.source}: empty folder (no {'/'.join(IMAGE_SUFFIXES)} images)")

    def __len__(self) -> int:
        return len(self.files)

    @property
    def encoding(self) -> str:
        return self.files[0].suffix.lower().lstrip(".").replace("jpg", "jpeg")

    def read_frame(self, index: int) -> np.ndarray:
        if not 0 <= index < len(self.files):
            raise DataError(f"{self.source}: frame {index} out of range (folder has {len(self.files)} images)")
        path = self.files[index]
        # imdecode from bytes: cv2.imread cannot report why it failed and mishandles non-ASCII paths.
        try:
            data = np.fromfile(path, dtype=np.uint8)
        except OSError as exc:
            raise DataError(f"{path}: cannot read image: {exc.strerror or exc}") from None
        bgr = _quiet_imdecode(data) if data.size else None
        if bgr is None:
            raise DataError(f"{path}: unreadable image (corrupt or truncated)")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def iter_frames(self) -> Iterator[np.ndarray]:
        for i in range(len(self.files)):
            yield self.read_frame(i)

    def _content_files(self) -> list[Path]:
        return self.files


def _quiet_imdecode(data: np.ndarray) -> np.ndarray | None:
    """cv2.imdecode without OpenCV's own warning line on a corrupt file: the DataError says it once."""
    logging = cv2.utils.logging
    level = logging.getLogLevel()
    logging.setLogLevel(min(level, logging.LOG_LEVEL_ERROR))
    try:
        return cv2.imdecode(data, cv2.IMREAD_COLOR)
    finally:
        logging.setLogLevel(level)


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _is_bag_dir(path: Path) -> bool:
    return (path / "metadata.yaml").is_file()


def _is_multi_object_dir(path: Path) -> bool:
    """The multi-object format (docs/training_guide.md): images/, masks/, objects.csv. Its frames are images/."""
    return (path / "images").is_dir() and (path / "objects.csv").is_file()


def _bag_sequences(path: Path, image_topic: str | None, every_image_topic: bool) -> list[Sequence]:
    """The bag's sequence; with ``every_image_topic`` (and no ``image_topic``), one per image topic."""
    if every_image_topic and image_topic is None:
        with _open_rosbag(path) as reader:
            topics = sorted(t for t, info in reader.topics.items() if info.msgtype in IMAGE_TYPES)
        if len(topics) > 1:
            return [BagSequence(path, topic) for topic in topics]
    return [BagSequence(path, image_topic)]


def _open_path(path: Path, image_topic: str | None, top: bool, every_image_topic: bool = False) -> list[Sequence]:
    """Sequences at ``path``; ``top`` says the user named it (so an unusable path is an error)."""
    if not path.is_file() and not path.is_dir():
        if top:
            raise DataError(f"{path}: not a regular file or folder (a device, FIFO or socket is not a recording)")
        return []
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in BAG_SUFFIXES:
            return _bag_sequences(path, image_topic, every_image_topic)
        if suffix in VIDEO_SUFFIXES:
            return [VideoSequence(path)]
        if top:
            raise DataError(
                f"{path}: unsupported file type {path.suffix!r} (expected a rosbag2 .mcap/.db3, "
                f"a video {'/'.join(VIDEO_SUFFIXES)} or a folder)"
            )
        return []
    if _is_bag_dir(path):
        return _bag_sequences(path, image_topic, every_image_topic)
    if _is_multi_object_dir(path):
        return [FolderSequence(path / "images", name=path.name)]
    sequences: list[Sequence] = []
    images = _image_files(path)
    if images:
        sequences.append(FolderSequence(path, files=images))
    for child in sorted(path.iterdir()):
        if child.name.startswith("."):
            continue
        if child.is_dir() or child.suffix.lower() in BAG_SUFFIXES + VIDEO_SUFFIXES:
            sequences.extend(_open_path(child, image_topic, False, every_image_topic))
    if top and not sequences:
        raise DataError(f"{path}: empty folder (no rosbag2, video or images found in it or below)")
    return sequences


def open_sequences(
    paths: Iterable[str | Path] | str | Path, image_topic: str | None = None, every_image_topic: bool = False
) -> list[Sequence]:
    """Open every sequence under ``paths``.

    ``every_image_topic`` (inspection): a bag with several image topics gives one
    sequence per topic instead of needing ``image_topic``.

    A path may be a rosbag2 directory (metadata.yaml + .mcap/.db3), a single
    .mcap or .db3 file, a video file, a folder of images (sorted by name), a
    multi-object dataset folder (its images/), or a folder holding any of
    these, searched recursively (e.g. the simulator's output with
    episode_000/, episode_001/ bags beside annotations.csv).

    The image topic is chosen automatically when a bag has exactly one, or
    exactly one colour stream beside depth, mono or id images (a simulated or
    RGB-D recording); otherwise ``image_topic`` must name it. Names must be unique, because
    annotations and splits refer to sequences by name.
    """
    if isinstance(paths, str | Path):
        paths = [paths]  # one path given bare: not an iterable of characters
    sequences: list[Sequence] = []
    seen: set[Path] = set()
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            raise DataError(f"{path}: no such file or directory")
        for seq in _open_path(path, image_topic, True, every_image_topic):
            key = (seq.source.resolve(), seq.topic)
            if key not in seen:
                seen.add(key)
                sequences.append(seq)
    by_name: dict[tuple[str, str | None], Sequence] = {}
    for seq in sequences:
        key = (seq.name, seq.topic if every_image_topic else None)
        if key in by_name:
            raise DataError(
                f"{seq.source}: sequence name {seq.name!r} is also used by {by_name[key].source}; "
                "names must be unique (annotations and splits refer to sequences by name)"
            )
        by_name[key] = seq
    if not sequences:
        raise DataError("no input paths given")
    return sequences
