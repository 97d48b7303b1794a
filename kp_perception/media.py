"""Writing annotated frames to a video or GIF, atomically.

The output goes to a temporary file beside the target and is renamed when
complete, so an interrupted ``infer`` or demo never leaves a half-written file
that looks finished.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from types import TracebackType

import cv2
import numpy as np

from kp_perception.atomic import atomic_path
from kp_perception.errors import KpPerceptionError

VIDEO_SUFFIXES = {".mp4": "mp4v", ".avi": "MJPG"}


class AnnotatedVideoWriter:
    """Write H×W×3 uint8 RGB frames to .mp4/.avi (OpenCV) or .gif (imageio).

    Frames of another size than the first are resized to it, so mixed-size
    sources still give one valid video.
    """

    def __init__(self, path: str | Path, fps: float = 10.0) -> None:
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix not in VIDEO_SUFFIXES and suffix != ".gif":
            raise KpPerceptionError(f"{self.path}: unsupported video type {suffix!r} (use .mp4, .avi or .gif)")
        self._stack = ExitStack()
        self._tmp = self._stack.enter_context(atomic_path(self.path, suffix=suffix))
        self.fps = float(fps)
        self._size: tuple[int, int] | None = None
        self._cv_writer: cv2.VideoWriter | None = None
        self._gif_frames: list[np.ndarray] = []
        self.frames_written = 0

    def write(self, frame_rgb: np.ndarray) -> None:
        if self._size is None:
            self._size = (frame_rgb.shape[1], frame_rgb.shape[0])
            suffix = self.path.suffix.lower()
            if suffix in VIDEO_SUFFIXES:
                fourcc = cv2.VideoWriter_fourcc(*VIDEO_SUFFIXES[suffix])
                self._cv_writer = cv2.VideoWriter(str(self._tmp), fourcc, self.fps, self._size)
                if not self._cv_writer.isOpened():
                    raise KpPerceptionError(f"{self.path}: OpenCV cannot open a video writer for it")
        if (frame_rgb.shape[1], frame_rgb.shape[0]) != self._size:
            frame_rgb = cv2.resize(frame_rgb, self._size, interpolation=cv2.INTER_AREA)
        if self._cv_writer is not None:
            self._cv_writer.write(cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2BGR))
        else:
            self._gif_frames.append(np.ascontiguousarray(frame_rgb))
        self.frames_written += 1

    def close(self) -> None:
        """Finish the file and move it into place (nothing is written for zero frames)."""
        if not self.frames_written:
            self.abort()
            return
        if self._cv_writer is not None:
            self._cv_writer.release()
        else:
            import imageio.v3 as iio

            iio.imwrite(self._tmp, self._gif_frames, extension=".gif", duration=1000.0 / self.fps, loop=0)
        self._stack.close()

    def abort(self) -> None:
        """Drop the partial file; the target is left as it was."""
        if self._cv_writer is not None:
            self._cv_writer.release()
        self._stack.__exit__(RuntimeError, RuntimeError("aborted"), None)

    def __enter__(self) -> AnnotatedVideoWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
