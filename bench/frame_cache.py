"""Frame cache speed-up: one epoch of decode + resize from a bag against one epoch read from the cache.

Writes a synthetic rosbag2 (default 300 frames, 640×480, JPEG CompressedImage,
like a compressed camera topic), then times, alternately in one run:

- ``decode``: every frame read from the bag, decoded and resized to the training size
  (what each epoch would cost without the cache);
- ``cached``: every frame read, in a shuffled order as a DataLoader would, from the
  N×H×W×3 uint8 memmap (what each later epoch costs).

Reports the median seconds per epoch of each, their ratio (the speed-up),
the one-off cache build and the cache lookup (fingerprint + open) time. The
cached reads hit the OS page cache after the first epoch, as they do in training.

    python -m kp_perception_bench.frame_cache [--frames 300 --width 640 --height 480 --size 128 --encoding jpeg]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--frames", type=int, default=300, help="frames in the synthetic bag")
    parser.add_argument("--width", type=int, default=640, help="recorded frame width")
    parser.add_argument("--height", type=int, default=480, help="recorded frame height")
    parser.add_argument("--size", type=int, default=128, help="training resolution (square)")
    parser.add_argument("--encoding", default="jpeg", choices=("jpeg", "png", "rgb8"),
                        help="CompressedImage jpeg/png or raw Image rgb8")
    parser.add_argument("--storage", default="mcap", choices=("mcap", "sqlite3"))
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs of each kind (median reported)")
    parser.add_argument("--workdir", default=None, help="where to write the bag and cache (default: a temp dir)")
    parser.add_argument("--seed", type=int, default=0)


def _synthetic_frames(n: int, width: int, height: int, seed: int):
    """Camera-like frames: a smooth background, coloured blobs that move, sensor noise."""
    import cv2

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    background = np.stack([90 + 60 * xx / width, 110 + 40 * yy / height, np.full_like(xx, 120)], axis=2)
    blobs = [(rng.uniform(0, width), rng.uniform(0, height), rng.uniform(15, 60), rng.integers(0, 255, 3))
             for _ in range(8)]
    for i in range(n):
        frame = background.copy()
        for k, (x, y, r, colour) in enumerate(blobs):
            cx = int((x + 3 * i * (k % 3 - 1)) % width)
            cy = int((y + 2 * i * (k % 2)) % height)
            cv2.circle(frame, (cx, cy), int(r), tuple(int(c) for c in colour), -1)
        frame += rng.normal(0, 3, frame.shape).astype(np.float32)
        yield np.clip(frame, 0, 255).astype(np.uint8)


def run(args: argparse.Namespace) -> dict:
    from tqdm import tqdm

    from kp_perception.preprocessing import resize_rgb
    from kp_perception.sequences import open_sequences
    from kp_perception_training.data.bag_writer import write_image_bag
    from kp_perception_training.data.frame_cache import FrameCache

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        root = Path(tmp)
        frames = tqdm(_synthetic_frames(args.frames, args.width, args.height, args.seed), total=args.frames,
                      desc="writing bag", unit="frame", leave=False)
        bag = write_image_bag(root / "bench_bag", frames, storage=args.storage, encoding=args.encoding)
        bag_bytes = sum(p.stat().st_size for p in bag.iterdir())
        (seq,) = open_sequences([bag])

        t0 = time.perf_counter()
        FrameCache(seq, args.size, args.size, root / "cache").build(progress=False)
        build_s = time.perf_counter() - t0

        rng = np.random.default_rng(args.seed)
        decode_s, cached_s, lookup_s = [], [], []
        for _ in tqdm(range(args.epochs), desc="timing epochs", leave=False):
            t0 = time.perf_counter()
            for frame in seq.iter_frames():
                resize_rgb(frame, args.size, args.size)
            decode_s.append(time.perf_counter() - t0)

            t0 = time.perf_counter()
            cache = FrameCache(seq, args.size, args.size, root / "cache")  # fingerprint, as each run does
            frames_mm = cache.load()
            lookup_s.append(time.perf_counter() - t0)
            assert frames_mm is not None and len(frames_mm) == args.frames
            t0 = time.perf_counter()
            for i in rng.permutation(len(frames_mm)):
                np.array(frames_mm[i])
            cached_s.append(time.perf_counter() - t0)

    decode, cached = statistics.median(decode_s), statistics.median(cached_s)
    return {
        "benchmark": "frame_cache",
        "frames": args.frames,
        "recorded_size": [args.width, args.height],
        "training_size": [args.size, args.size],
        "encoding": args.encoding,
        "storage": args.storage,
        "bag_mb": round(bag_bytes / 1e6, 2),
        "epochs_timed": args.epochs,
        "decode_s_per_epoch": round(decode, 4),
        "cached_s_per_epoch": round(cached, 5),
        "speedup_decode_over_cached": round(decode / cached, 1),
        "decode_ms_per_frame": round(1000 * decode / args.frames, 3),
        "cached_ms_per_frame": round(1000 * cached / args.frames, 4),
        "cache_build_s": round(build_s, 3),
        "cache_lookup_s": round(statistics.median(lookup_s), 4),
        "note": "wall-clock on a shared CPU; the ratio is measured side by side in one run",
    }


if __name__ == "__main__":
    from kp_perception_bench._entry import run_as_module

    run_as_module("frame_cache")
