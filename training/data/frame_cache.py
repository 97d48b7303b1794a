"""The on-disk frame cache: each sequence decoded once, at the training resolution, as uint8.

Decoding JPEG/PNG/bag messages and resizing every frame on every epoch costs
far more than reading them back from a memory-mapped uint8 array (see
``bench/frame_cache.py`` for the ratio), so training decodes each sequence
once into ``<cache_dir>/<name>-<fingerprint>-<W>x<H>.npy`` (N×H×W×3 uint8 RGB)
and later epochs, DataLoader workers and DDP ranks all read the same file.

- **Keyed by content and size**: the file name holds ``sequence.fingerprint()``
  (see there for what it covers) and the size, so a changed source or another
  resolution gets a new file and is never served stale.
- **Atomic**: written to a temporary file beside the target and renamed, so an
  interrupted build never leaves a partial cache. Builders of the same cache
  file (DDP ranks on one machine, parallel runs) take an advisory lock
  (``fcntl.flock`` on ``<cache>.lock``), so one decodes and the others wait
  and then read its result.
- **One resize policy**: ``kp_perception.preprocessing.resize_rgb``, as at
  inference time; mixed resolutions within a sequence are simply resized.

The cache directory is ``$KP_PERCEPTION_CACHE`` or ``~/.cache/kp_perception/frames``
unless given explicitly. Nothing is ever written next to the user's data.
"""

from __future__ import annotations

import fcntl
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from tqdm import tqdm

from kp_perception.atomic import atomic_path
from kp_perception.errors import DataError
from kp_perception.preprocessing import resize_rgb
from kp_perception.sequences import Sequence

# Bump when the cache layout or the resize policy changes, so old caches are not reused.
CACHE_VERSION = 2  # 2: resize_rgb halves by 2×2 boxes before INTER_AREA


def default_cache_dir() -> Path:
    """``$KP_PERCEPTION_CACHE`` if set, else ``~/.cache/kp_perception/frames``."""
    env = os.environ.get("KP_PERCEPTION_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "kp_perception" / "frames"


class FrameCache:
    """The cache file of one sequence at one size: where it is, whether it exists, how to build it."""

    def __init__(self, sequence: Sequence, width: int, height: int, cache_dir: str | Path | None = None) -> None:
        if width <= 0 or height <= 0:
            raise DataError(f"{sequence.source}: invalid cache size {width}x{height}")
        self.sequence = sequence
        self.width, self.height = int(width), int(height)
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        safe_name = re.sub(r"[^A-Za-z0-9_.-]+", "_", sequence.name)[:80]
        key = f"v{CACHE_VERSION}-{sequence.fingerprint()}"
        self.path = self.cache_dir / f"{safe_name}-{key}-{self.width}x{self.height}.npy"

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """N×H×W×3."""
        return (len(self.sequence), self.height, self.width, 3)

    def load(self) -> np.memmap | None:
        """The cached frames, read-only memory-mapped, or None when absent or unusable."""
        if not self.path.is_file():
            return None
        try:
            frames = np.load(self.path, mmap_mode="r")
        except (OSError, ValueError):
            return None  # damaged file (e.g. a disk filled up outside our rename): rebuild
        if frames.shape != self.shape or frames.dtype != np.uint8:
            return None
        return frames

    def build(self, progress: bool = True) -> np.memmap:
        """Decode, resize and write every frame; returns the new read-only memmap."""
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataError(f"{self.cache_dir}: cannot create frame cache directory: {exc.strerror}") from None
        n = len(self.sequence)
        if n == 0:
            raise DataError(f"{self.sequence.source}: no frames to cache")
        with atomic_path(self.path, suffix=".tmp.npy") as tmp:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=self.shape)
            count = 0
            frames = self.sequence.iter_frames()
            bar = tqdm(frames, total=n, desc=f"caching {self.sequence.name}", unit="frame",
                       disable=not progress, leave=False)
            for i, frame in enumerate(bar):
                if i >= n:
                    raise DataError(f"{self.sequence.source}: more frames than announced ({n}); source changed?")
                out[i] = resize_rgb(frame, self.width, self.height)
                count += 1
            if count != n:
                raise DataError(f"{self.sequence.source}: only {count} of {n} frames could be read")
            out.flush()
            del out
        frames = self.load()
        if frames is None:
            raise DataError(f"{self.path}: frame cache unreadable right after writing it")
        return frames

    @contextmanager
    def _build_lock(self) -> Iterator[None]:
        """Exclusive advisory lock on ``<cache>.lock`` (released when the process dies, too)."""
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise DataError(f"{self.cache_dir}: cannot use frame cache directory: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def get(self, progress: bool = True) -> np.memmap:
        """The cached frames, building them first when needed (one builder at a time per file)."""
        frames = self.load()
        if frames is not None:
            return frames
        with self._build_lock():
            frames = self.load()  # another process may have built it while we waited
            return frames if frames is not None else self.build(progress)


def build_frame_cache(
    sequence: Sequence,
    width: int,
    height: int,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> np.memmap:
    """N×H×W×3 uint8 RGB frames of ``sequence`` at (width, height), decoded once and reused."""
    return FrameCache(sequence, width, height, cache_dir).get(progress)
