"""Example images of a run, in TensorBoard and as PNG files next to it.

The trainer hands ``TrainingMethod.log_images`` an ``ExampleImageWriter``: a
SummaryWriter whose ``add_image``/``add_images`` also save
``RUN/images/<tag>/<step>.png``, so a run's example images can be looked at
without TensorBoard (and by the docs). Every other SummaryWriter method is
passed through unchanged.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import cv2
import numpy as np


def to_uint8_hwc(image: Any, dataformats: str = "CHW") -> np.ndarray:
    """One image (torch or numpy, CHW/HWC/HW; float in [0, 1] or uint8) -> H×W×3 uint8 RGB."""
    array = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
    if dataformats == "CHW":
        array = np.moveaxis(array, 0, -1)
    elif dataformats == "HW":
        array = array[..., None]
    if array.dtype != np.uint8:
        array = (np.clip(array.astype(np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return np.ascontiguousarray(array[..., :3])


def image_row(images: Any, dataformats: str = "NCHW", gap: int = 2) -> np.ndarray:
    """N images (N×C×H×W or N×H×W×C) side by side with a ``gap``-pixel white border -> H×W'×3 uint8."""
    single = dataformats[1:]
    tiles = [to_uint8_hwc(images[i], single) for i in range(len(images))]
    if not tiles:
        return np.zeros((1, 1, 3), np.uint8)
    h = max(t.shape[0] for t in tiles)
    padded = [np.pad(t, ((0, h - t.shape[0]), (gap, 0), (0, 0)), constant_values=255) for t in tiles]
    return np.concatenate(padded, axis=1)


class ExampleImageWriter:
    """Proxy of a SummaryWriter that also writes each logged image to ``directory/<tag>/<step>.png``."""

    def __init__(self, writer: Any, directory: str | Path) -> None:
        self._writer = writer
        self.directory = Path(directory)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._writer, name)

    def _save(self, tag: str, image_hwc: np.ndarray, step: int | None) -> None:
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", tag).strip("_") or "image"
        folder = self.directory / safe
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"{int(step or 0):08d}.png"), image_hwc[..., ::-1])

    def add_image(self, tag: str, img_tensor: Any, global_step: int | None = None, *args, dataformats: str = "CHW",
                  **kwargs) -> None:
        self._writer.add_image(tag, img_tensor, global_step, *args, dataformats=dataformats, **kwargs)
        self._save(tag, to_uint8_hwc(img_tensor, dataformats), global_step)

    def add_images(self, tag: str, img_tensor: Any, global_step: int | None = None, *args,
                   dataformats: str = "NCHW", **kwargs) -> None:
        self._writer.add_images(tag, img_tensor, global_step, *args, dataformats=dataformats, **kwargs)
        self._save(tag, image_row(img_tensor, dataformats), global_step)
