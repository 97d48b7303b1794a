"""Writing image streams to rosbag2 (mcap or sqlite3) with rosbags, no ROS install needed.

Used by tests (round trips against the reader), benchmarks (synthetic bags)
and the simulator. Messages are built from the same conversion module the
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
    (rosbags only creates new bags).
    """

    def __init__(self, path: str | Path, storage: str = "mcap") -> None:
        from rosbags.rosbag2 import StoragePlugin, Writer

        if storage not in STORAGES:
            raise DataError(f"{path}: unknown bag storage {storage!r}; expected one of {', '.join(STORAGES)}")
        self.path = Path(path)
        if self.path.exists():
            raise DataError(f"{self.path}: already exists; rosbag2 writers only create new bags")
        plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
        self.typestore = _typestore()
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
