"""Pairing messages by header stamp: a small buffer of the newest items and a nearest-stamp lookup.

Why here and not message_filters: message_filters has no wheel on the
development machine, and the two jobs this project has (an aligned depth
frame for a colour frame in the node; the joint state for an observation in
the consumer API) need only "the item whose stamp is nearest, if within a
tolerance". Stamps are integer nanoseconds, so no float rounding decides a
match. Nothing here imports rclpy: headers and stamps are duck-typed.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any, Generic, TypeVar

T = TypeVar("T")


def stamp_to_ns(stamp: Any) -> int:
    """A builtin_interfaces/Time (``sec``, ``nanosec``), or anything with a ``header`` or ``stamp``, in ns."""
    if hasattr(stamp, "header"):
        stamp = stamp.header
    if hasattr(stamp, "stamp"):
        stamp = stamp.stamp
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


class StampBuffer(Generic[T]):
    """The newest ``capacity`` items with their stamps; thread-safe.

    Items may arrive out of stamp order (two publishers, two transports);
    the lookup compares stamps, not arrival order.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self._items: deque[tuple[int, T]] = deque(maxlen=capacity)
        self._lock = threading.Lock()

    def add(self, stamp_ns: int, item: T) -> None:
        with self._lock:
            self._items.append((int(stamp_ns), item))

    def nearest(self, stamp_ns: int, tolerance_ns: int) -> tuple[T, int] | None:
        """The item nearest in stamp to ``stamp_ns`` and its offset (item - query, ns), if within tolerance.

        Ties go to the newer arrival.
        """
        with self._lock:
            best: tuple[T, int] | None = None
            for stamp, item in self._items:
                dt = stamp - int(stamp_ns)
                if abs(dt) <= tolerance_ns and (best is None or abs(dt) <= abs(best[1])):
                    best = (item, dt)
            return best

    def newest_stamp(self) -> int | None:
        """The largest stamp held, or None when empty."""
        with self._lock:
            return max((s for s, _ in self._items), default=None)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
