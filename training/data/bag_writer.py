"""Writing rosbag2 files (mcap or sqlite3) with rosbags, no ROS install needed: the one bag writer.

Used by tests (round trips against the reader), benchmarks (synthetic bags),
the simulator and the demo (what a node published, as the CDR bytes it sent,
with the ``kp_perception_msgs`` types of :func:`kp_typestore`). Messages are built from the same conversion module the
reader uses (``kp_perception.image_conversion``), so a frame written here and
read back by ``kp_perception.sequences`` goes through one pair of functions.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from kp_perception.errors import DataError
from kp_perception.image_conversion import image_fields, rgb8_to_compressed

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
STORAGES = ("mcap", "sqlite3")


def latched_qos():
    """The QoS a ``/tf_static`` publisher offers (tf2_ros's static broadcaster): reliable, transient local, depth 1."""
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

    infinite = QosTime(sec=2147483647, nsec=4294967295)  # rclpy's "infinite" duration as rosbag2 records it
    return Qos(
        history=QosHistory.KEEP_LAST,
        depth=1,
        reliability=QosReliability.RELIABLE,
        durability=QosDurability.TRANSIENT_LOCAL,
        deadline=infinite,
        lifespan=infinite,
        liveliness=QosLiveliness.AUTOMATIC,
        liveliness_lease_duration=infinite,
        avoid_ros_namespace_conventions=False,
    )


def _typestore():
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_KILTED)


class BagWriter:
    """A rosbag2 being written; use as a context manager.

    ``storage`` is "mcap" or "sqlite3". The bag directory must not exist yet
    (rosbags only creates new bags). ``kp_msgs`` registers the
    ``kp_perception_msgs`` types (:func:`kp_typestore`).
    """

    def __init__(self, path: str | Path, storage: str = "mcap", kp_msgs: bool = False) -> None:
        from rosbags.rosbag2 import StoragePlugin, Writer

        if storage not in STORAGES:
            raise DataError(f"{path}: unknown bag storage {storage!r}; expected one of {', '.join(STORAGES)}")
        self.path = Path(path)
        if self.path.exists():
            raise DataError(f"{self.path}: already exists; rosbag2 writers only create new bags")
        plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
        self.typestore = kp_typestore() if kp_msgs else _typestore()
        self._writer = Writer(self.path, version=Writer.VERSION_LATEST, storage_plugin=plugin)
        self._connections: dict[str, Any] = {}

    def __enter__(self) -> BagWriter:
        self._writer.open()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._writer.close()

    def declare_topic(self, topic: str, msgtype: str, qos: Sequence[Any] = ()):
        """The rosbags connection of ``topic`` (created on first use; a topic may stay empty).

        ``qos``: the publisher's offered QoS profiles (rosbags ``Qos``), recorded
        in the bag so a player can republish with them, e.g. :func:`latched_qos`.
        """
        conn = self._connections.get(topic)
        if conn is None:
            conn = self._writer.add_connection(topic, msgtype, typestore=self.typestore,
                                               offered_qos_profiles=list(qos))
            self._connections[topic] = conn
        return conn

    def header(self, stamp_ns: int, frame_id: str = "camera"):
        """A std_msgs/Header with the given stamp."""
        types = self.typestore.types
        stamp = types["builtin_interfaces/msg/Time"](sec=int(stamp_ns // 1_000_000_000),
                                                       nanosec=int(stamp_ns % 1_000_000_000))
        return types["std_msgs/msg/Header"](stamp=stamp, frame_id=frame_id)

    def write_message(self, topic: str, msgtype: str, msg: Any, stamp_ns: int, qos: Sequence[Any] = ()) -> None:
        """Serialise any typestore message (e.g. a CameraInfo) onto ``topic`` (``qos``: see declare_topic)."""
        conn = self.declare_topic(topic, msgtype, qos)
        self._writer.write(conn, int(stamp_ns), self.typestore.serialize_cdr(msg, msgtype))

    def write_image(
        self,
        topic: str,
        array: np.ndarray,
        stamp_ns: int,
        encoding: str = "rgb8",
        frame_id: str = "camera",
    ) -> None:
        """Write ``array`` (in ``encoding``'s raw layout, see image_fields) as a sensor_msgs/Image."""
        msg = self.typestore.types[IMAGE_TYPE](header=self.header(stamp_ns, frame_id),
                                               **image_fields(array, encoding))
        self.write_message(topic, IMAGE_TYPE, msg, stamp_ns)

    def write_compressed(
        self,
        topic: str,
        rgb: np.ndarray,
        stamp_ns: int,
        fmt: str = "jpeg",
        quality: int = 90,
        frame_id: str = "camera",
    ) -> None:
        """Write H×W×3 uint8 RGB as a sensor_msgs/CompressedImage (jpeg or png)."""
        format_string, payload = rgb8_to_compressed(rgb, fmt, quality)
        msg = self.typestore.types[COMPRESSED_TYPE](
            header=self.header(stamp_ns, frame_id),
            format=format_string,
            data=np.frombuffer(payload, dtype=np.uint8),
        )
        self.write_message(topic, COMPRESSED_TYPE, msg, stamp_ns)

    def write_cdr(self, topic: str, msgtype: str, data: bytes, stamp_ns: int) -> None:
        """Write an already serialised message (the CDR bytes a subscriber received with ``raw=True``)."""
        self._writer.write(self.declare_topic(topic, msgtype), int(stamp_ns), bytes(data))


def write_image_bag(
    path: str | Path,
    frames: Iterable[np.ndarray],
    topic: str = "/camera/image_raw",
    storage: str = "mcap",
    encoding: str = "rgb8",
    period_ns: int = 33_333_333,
    quality: int = 90,
) -> Path:
    """Write ``frames`` as one image topic; returns the bag directory.

    ``encoding`` is an Image encoding (frames in its raw layout) or
    "jpeg"/"png" for CompressedImage (frames H×W×3 RGB). Stamps are
    ``i * period_ns`` from 1 s.
    """
    with BagWriter(path, storage) as bag:
        for i, frame in enumerate(frames):
            stamp = 1_000_000_000 + i * period_ns
            if encoding in ("jpeg", "png"):
                bag.write_compressed(topic, frame, stamp, fmt=encoding, quality=quality)
            else:
                bag.write_image(topic, frame, stamp, encoding=encoding)
    return Path(path)


def kp_typestore():
    """The rosbags typestore (ROS 2 Kilted) with ``kp_perception_msgs`` registered from its .msg files.

    The .msg files are the installed interface package's (``share/kp_perception_msgs/msg`` under the
    interpreter's prefix or ``AMENT_PREFIX_PATH``), else this package's copy.
    """
    import os
    import sys

    from rosbags.typesys import get_types_from_msg

    from kp_perception.resources import share_path

    prefixes = [sys.prefix, *os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep)]
    candidates = [Path(p) / "share" / "kp_perception_msgs" / "msg" for p in prefixes if p]
    candidates.append(share_path("kp_perception_msgs", "msg"))
    msg_dir = next((d for d in candidates if any(d.glob("*.msg"))), None)
    if msg_dir is None:
        raise DataError("kp_perception_msgs/msg/*.msg not found (run `make setup`)")
    store = _typestore()
    types: dict[str, Any] = {}
    for path in sorted(msg_dir.glob("*.msg")):
        types.update(get_types_from_msg(path.read_text(), f"kp_perception_msgs/msg/{path.stem}"))
    store.register(types)
    return store
