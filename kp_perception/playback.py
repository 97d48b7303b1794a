"""Publishing recorded frames into ROS 2 as a live camera would: one topic, a steady rate, stamps = now.

Why: the demo (and benchmarks of the nodes) must feed the REAL node over real
topics, the way a camera driver does, so that the node's QoS, conversion and
newest-frame policy are exercised. Each image is stamped with the publisher's
clock at send time, so ``receive time - header.stamp`` downstream is the
end-to-end latency (same host, same clock).

Frames are H×W×3 uint8 RGB (any iterable, e.g. ``Sequence.iter_frames()``),
sent as ``sensor_msgs/Image`` rgb8 or, with ``compressed=True``, as
``sensor_msgs/CompressedImage`` jpeg on ``<topic>/compressed`` (image_transport's
naming). Conversion goes through :mod:`kp_perception.image_conversion`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
from rclpy.node import Node
from rclpy.qos import QoSProfile, qos_profile_sensor_data
from std_msgs.msg import Header

from kp_perception.image_conversion import numpy_to_compressed, numpy_to_image


@dataclass(frozen=True)
class SentFrame:
    """One published frame: its index in the input, its header stamp (ns) and the monotonic send time (s)."""

    index: int
    stamp_ns: int
    sent_monotonic: float


class FramePlayer:
    """Publishes frames on ``topic`` like a camera driver (sensor-data QoS by default).

    ``node`` must be spun by the caller (e.g. an executor thread) if it also
    subscribes; publishing itself needs no spinning.
    """

    def __init__(
        self,
        node: Node,
        topic: str = "/camera/image_raw",
        frame_id: str = "camera",
        qos: QoSProfile = qos_profile_sensor_data,
        compressed: bool = False,
        jpeg_quality: int = 90,
    ) -> None:
        from sensor_msgs.msg import CompressedImage, Image

        self.node = node
        self.frame_id = frame_id
        self.compressed = compressed
        self.jpeg_quality = jpeg_quality
        self.topic = f"{topic.rstrip('/')}/compressed" if compressed else topic
        self.publisher = node.create_publisher(CompressedImage if compressed else Image, self.topic, qos)

    def wait_for_subscribers(self, count: int = 1, timeout: float = 30.0) -> bool:
        """Block until ``count`` subscriptions match this publisher (discovery); False on timeout."""
        deadline = time.monotonic() + timeout
        while self.publisher.get_subscription_count() < count:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def publish(self, frame_rgb: np.ndarray, index: int = 0) -> SentFrame:
        """Publish one H×W×3 uint8 RGB frame stamped now; return what was sent."""
        now = self.node.get_clock().now()
        header = Header(stamp=now.to_msg(), frame_id=self.frame_id)
        if self.compressed:
            msg = numpy_to_compressed(frame_rgb, "jpeg", header=header, quality=self.jpeg_quality)
        else:
            msg = numpy_to_image(np.ascontiguousarray(frame_rgb), "rgb8", header=header)
        self.publisher.publish(msg)
        return SentFrame(index=index, stamp_ns=now.nanoseconds, sent_monotonic=time.monotonic())

    def play(self, frames: Iterable[np.ndarray], rate_hz: float, progress: bool = False, total: int | None = None,
             on_sent: Callable[[SentFrame], None] | None = None) -> list[SentFrame]:
        """Publish ``frames`` at ``rate_hz`` on a fixed schedule (no bursts after a late frame).

        Frame i is due one period after frame i-1 was due; when publishing falls
        more than a period behind, the schedule restarts from now instead of
        sending the missed frames in a burst to catch up. ``on_sent`` is called
        right after each publish (e.g. to stream stamps to another process).
        """
        from tqdm import tqdm

        period = 1.0 / float(rate_hz)
        sent: list[SentFrame] = []
        due = time.monotonic()
        for index, frame in enumerate(tqdm(frames, total=total, desc="playing", unit="frame", disable=not progress)):
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            sent.append(self.publish(frame, index))
            if on_sent is not None:
                on_sent(sent[-1])
            due = max(due + period, time.monotonic())  # late: reset the schedule, owe nothing
        return sent

    def destroy(self) -> None:
        self.node.destroy_publisher(self.publisher)
