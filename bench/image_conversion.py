"""Image conversion speed: message -> H×W×3 uint8 RGB for each common camera encoding.

Builds one camera-like 640×480 frame, encodes it as sensor_msgs/Image in
several encodings (rclpy messages when sensor_msgs is importable, else
rosbags-style objects with numpy data) and as a JPEG CompressedImage, then
times ``image_to_rgb8`` / ``compressed_to_rgb8`` round-robin over the cases
(so CPU contention hits all of them alike) and reports the median and p90
in µs per conversion. ``copy`` is a plain copy of the rgb8 buffer, the floor
any conversion that returns a fresh array pays; ``ratio_to_copy`` relates
each case to it, which travels between machines better than µs.

    python -m kp_perception_bench.image_conversion [--width 640 --height 480 --repeats 200]
    kp-perception bench image_conversion
"""

from __future__ import annotations

import argparse
import array
import statistics
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import numpy as np

from kp_perception.image_conversion import compressed_to_rgb8, image_fields, image_to_rgb8, rgb8_to_compressed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--width", type=int, default=640, help="frame width (even)")
    parser.add_argument("--height", type=int, default=480, help="frame height")
    parser.add_argument("--repeats", type=int, default=200, help="timed conversions per case")
    parser.add_argument("--jpeg-quality", type=int, default=90)
    parser.add_argument("--seed", type=int, default=0)


def _camera_frame(width: int, height: int, seed: int) -> np.ndarray:
    """Smooth gradients plus sensor noise: JPEG sizes like a real camera's, not a flat image."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    frame = np.stack([80 + 120 * xx / width, 60 + 140 * yy / height, 100 + 50 * np.sin(xx / 37.0)], axis=2)
    frame += rng.normal(0, 6, frame.shape)
    return np.clip(frame, 0, 255).astype(np.uint8)


def _message_factory() -> tuple[str, Callable[..., Any]]:
    try:
        from sensor_msgs.msg import Image
    except ImportError:
        return "namespace+numpy", lambda **f: SimpleNamespace(**f)

    def build(**fields: Any) -> Any:
        msg = Image(height=fields["height"], width=fields["width"], encoding=fields["encoding"],
                    is_bigendian=fields["is_bigendian"], step=fields["step"])
        msg.data = array.array("B", fields["data"].tobytes())  # rclpy's fast path
        return msg

    return "rclpy", build


Case = tuple[Callable[[Any], np.ndarray], Any]  # (conversion, its input)


def _cases(frame: np.ndarray, quality: int) -> tuple[str, dict[str, Case]]:
    """(message flavour, {case name: (conversion, message)})."""
    import cv2

    flavour, build = _message_factory()
    height, width = frame.shape[:2]
    gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    mosaic = np.empty((height, width), np.uint8)  # RGGB sampling of the frame
    mosaic[0::2, 0::2] = frame[0::2, 0::2, 0]
    mosaic[0::2, 1::2] = frame[0::2, 1::2, 1]
    mosaic[1::2, 0::2] = frame[1::2, 0::2, 1]
    mosaic[1::2, 1::2] = frame[1::2, 1::2, 2]
    raw = {
        "rgb8": image_fields(frame, "rgb8"),
        "bgr8": image_fields(np.ascontiguousarray(frame[..., ::-1]), "bgr8"),
        "mono8": image_fields(gray, "mono8"),
        "mono16": image_fields(gray.astype(np.uint16) * 257, "mono16"),
        "yuv422": image_fields(cv2.cvtColor(frame, cv2.COLOR_RGB2YUV_UYVY), "yuv422"),
        "bayer_rggb8": image_fields(mosaic, "bayer_rggb8"),
    }
    # Row padding and foreign byte order: the strided and byte-swapping paths.
    padded = dict(raw["rgb8"], step=width * 3 + 64)
    padded["data"] = np.pad(frame.reshape(height, -1), ((0, 0), (0, 64))).reshape(-1)
    raw["rgb8_padded_step"] = padded
    big = dict(raw["mono16"], is_bigendian=1)
    big["data"] = (gray.astype(np.uint16) * 257).astype(">u2").reshape(-1).view(np.uint8)
    raw["mono16_bigendian"] = big

    cases: dict[str, Case] = {
        name: (image_to_rgb8, build(**fields)) for name, fields in raw.items()
    }
    fmt, payload = rgb8_to_compressed(frame, "jpeg", quality)
    cases["jpeg"] = (compressed_to_rgb8, SimpleNamespace(format=fmt, data=payload))
    return flavour, cases


def run(args: argparse.Namespace) -> dict:
    frame = _camera_frame(args.width, args.height, args.seed)
    flavour, cases = _cases(frame, args.jpeg_quality)
    rgb8_bytes = np.frombuffer(frame.tobytes(), np.uint8)
    cases["copy"] = (lambda buf: buf.copy(), rgb8_bytes)

    # Correctness guard: a fast wrong answer is worthless.
    for name, (fn, msg) in cases.items():
        out = fn(msg)
        if name != "copy":
            assert out.shape == frame.shape and out.dtype == np.uint8, name
    samples: dict[str, list[int]] = {name: [] for name in cases}
    for _ in range(3):  # warm-up
        for fn, msg in cases.values():
            fn(msg)
    for _ in range(args.repeats):
        for name, (fn, msg) in cases.items():
            start = time.perf_counter_ns()
            fn(msg)
            samples[name].append(time.perf_counter_ns() - start)

    copy_median = statistics.median(samples["copy"]) / 1000
    results = {}
    for name, times in samples.items():
        us = sorted(t / 1000 for t in times)
        median = statistics.median(us)
        results[name] = {
            "median_us": round(median, 1),
            "p90_us": round(us[int(0.9 * (len(us) - 1))], 1),
            "ratio_to_copy": round(median / copy_median, 2),
        }
    return {
        "benchmark": "image_conversion",
        "frame": f"{args.width}x{args.height}",
        "message_flavour": flavour,
        "repeats": args.repeats,
        "jpeg_bytes": len(cases["jpeg"][1].data),
        "per_encoding": results,
        "note": "microseconds are wall-clock on this machine and noisy on a shared CPU; ratio_to_copy is side by side",
    }


if __name__ == "__main__":
    from kp_perception_bench._entry import run_as_module

    run_as_module("image_conversion")
