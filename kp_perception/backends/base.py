"""The one inference-backend interface: frame in, result in the frame's pixels out.

Why one base class: every backend (onnxruntime, tensorrt, torch) must see the
same input and return the same arrays, so the only thing a backend implements
is :meth:`Backend.run` — named graph outputs for a 1×H×W×3 uint8 batch. The
pre-processing (the training resize policy, ``kp_perception.preprocessing``)
and post-processing (model pixels -> frame pixels, result types) live here once.

Graph outputs follow ``kp_perception.sidecar``: keypoints are (x, y) pixels of
the model input; score thresholds are NOT applied here (the nodes apply them).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from kp_perception.errors import ImageConversionError
from kp_perception.preprocessing import model_to_frame_pixels, resize_rgb
from kp_perception.results import KeypointPyramidResult, PrototypeDetectionResult
from kp_perception.sidecar import HIERARCHY_KINDS, Sidecar

Result = KeypointPyramidResult | PrototypeDetectionResult


class Backend(ABC):
    """A loaded model. Subclasses set ``name`` and ``sidecar`` and implement :meth:`run`."""

    name: str = "base"
    sidecar: Sidecar

    @abstractmethod
    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run the graph on a B×H×W×3 uint8 RGB batch at the model's input size -> named outputs."""

    def preprocess(self, frame_rgb: np.ndarray) -> np.ndarray:
        """H×W×3 uint8 RGB frame of any size -> 1×h×w×3 uint8 at the model input size (training resize)."""
        check_frame(frame_rgb)
        resized = resize_rgb(frame_rgb, self.sidecar.input_width, self.sidecar.input_height)
        return np.ascontiguousarray(resized)[None]

    def infer(self, frame_rgb: np.ndarray) -> Result:
        """One frame -> ``KeypointPyramidResult`` or ``PrototypeDetectionResult`` in frame pixels."""
        outputs = self.run(self.preprocess(frame_rgb))
        height, width = frame_rgb.shape[:2]
        return build_result(self.sidecar, outputs, width, height)


def check_frame(frame_rgb: np.ndarray) -> None:
    """Reject anything but a non-empty H×W×3 uint8 array with one clear line."""
    if not isinstance(frame_rgb, np.ndarray):
        raise ImageConversionError(f"frame must be a numpy array, got {type(frame_rgb).__name__}")
    if frame_rgb.ndim != 3 or frame_rgb.shape[2] != 3 or frame_rgb.shape[0] == 0 or frame_rgb.shape[1] == 0:
        raise ImageConversionError(f"frame must be H×W×3 with H, W > 0, got shape {frame_rgb.shape}")
    if frame_rgb.dtype != np.uint8:
        raise ImageConversionError(f"frame must be uint8 RGB, got dtype {frame_rgb.dtype}")


def build_result(sidecar: Sidecar, outputs: dict[str, np.ndarray], width: int, height: int) -> Result:
    """Named outputs of batch item 0 (model pixels) -> result in a ``width×height`` frame's pixels."""
    model_size = (sidecar.input_width, sidecar.input_height)
    xy = model_to_frame_pixels(np.asarray(outputs["keypoints"])[0], model_size, (width, height))
    scores = np.asarray(outputs["scores"][0], dtype=np.float32)
    if sidecar.kind in HIERARCHY_KINDS:
        return KeypointPyramidResult(
            xy=xy.astype(np.float32, copy=False),
            scores=scores,
            levels=np.asarray(outputs["levels"], dtype=np.int32).reshape(-1),
            parents=np.asarray(outputs["parents"], dtype=np.int32).reshape(-1),
            level_sizes=sidecar.level_sizes,
            image_width=int(width),
            image_height=int(height),
        )
    return PrototypeDetectionResult(
        xy=xy.astype(np.float32, copy=False),
        scores=scores,
        prototypes=np.asarray(outputs["prototype_ids"][0], dtype=np.int32),
        distances=np.asarray(outputs["distances"][0], dtype=np.float32),
        descriptors=np.asarray(outputs["descriptors"][0], dtype=np.float32),
        num_prototypes=sidecar.num_prototypes,
        image_width=int(width),
        image_height=int(height),
    )
