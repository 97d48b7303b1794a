"""Tetrominoes multi-object images after DeepMind's multi-object-datasets "Tetris" spec.

Spec (multi_object_datasets README): 35×35 images, black background, three
tetrominoes each, one of six colours (red, green, blue, yellow, magenta, cyan).
That README says "17 unique shapes/orientations"; we use all 19 fixed
tetrominoes (7 free shapes × their distinct rotations: I 2, O 1, T 4, S 2, Z 2,
J 4, L 4), the count TUSK's 114 = 19 × 6 prototypes assumes. Choices made here:

- A tetromino is drawn as 4 square cells of ``cell`` pixels (5 px at 35×35:
  ``size // 7``), flat colour, no shading.
- Pieces never overlap (the original's pieces do not occlude each other) and may
  be cut off at the border: a piece's bounding box may stick out of the canvas
  by up to half a cell on any side (about a third of the pieces lose a strip),
  so every piece stays recognisable and every instance is in the mask.
- ``x``, ``y`` in objects.csv are the centroid of the piece's *visible* pixels
  (pixel centres at integers), the same pixels as its mask.

Output (the multi-object format of docs/training_guide.md), written by :func:`write_multi_object`:
``images/NNNNNN.png`` (RGB), ``masks/NNNNNN.png`` (uint8 instance ids, 0 =
background, 1..3 pieces), ``objects.csv`` (image,instance,shape,color,x,y).
"""

from __future__ import annotations

import csv
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from kp_perception.errors import DataError, KpPerceptionError

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "magenta": (255, 0, 255),
    "cyan": (0, 255, 255),
}

# The 7 free tetrominoes in one orientation (rows of cells); rotations give the 19 fixed ones.
_FREE = {
    "I": ["####"],
    "O": ["##", "##"],
    "T": ["###", ".#."],
    "S": [".##", "##."],
    "Z": ["##.", ".##"],
    "J": ["#..", "###"],
    "L": ["..#", "###"],
}


def _fixed_tetrominoes() -> dict[str, np.ndarray]:
    """The 19 fixed tetrominoes as boolean cell grids, named ``<letter><rotation>`` (e.g. T0..T3)."""
    shapes: dict[str, np.ndarray] = {}
    for letter, rows in _FREE.items():
        grid = np.array([[c == "#" for c in row] for row in rows])
        seen: list[np.ndarray] = []
        for k in range(4):
            rotated = np.rot90(grid, k)
            if not any(r.shape == rotated.shape and (r == rotated).all() for r in seen):
                seen.append(rotated)
        for k, r in enumerate(seen):
            shapes[f"{letter}{k}"] = r
    return shapes


SHAPES: dict[str, np.ndarray] = _fixed_tetrominoes()
# The same header kp_perception_training.data.multi_object reads (kept here so generating needs no torch).
OBJECTS_HEADER = ("image", "instance", "shape", "color", "x", "y")


def render_tetrominoes(
    rng: np.random.Generator, size: int = 35, pieces: int = 3
) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str]]]:
    """One image: (H×W×3 uint8 RGB, H×W uint8 instance mask, [(shape, colour)] per instance 1..pieces)."""
    cell = max(1, size // 7)
    overhang = cell // 2  # how far a piece may stick out of the canvas, pixels
    colour_names = list(COLOURS)
    shape_names = list(SHAPES)
    for _ in range(1000):  # restart the whole image if the pieces do not fit
        image = np.zeros((size, size, 3), np.uint8)
        mask = np.zeros((size, size), np.uint8)
        labels: list[tuple[str, str]] = []
        for instance in range(1, pieces + 1):
            shape = shape_names[rng.integers(len(shape_names))]
            colour = colour_names[rng.integers(len(colour_names))]
            piece = np.kron(SHAPES[shape], np.ones((cell, cell), bool))
            ph, pw = piece.shape
            for _ in range(100):
                top = int(rng.integers(-overhang, size - ph + overhang + 1))
                left = int(rng.integers(-overhang, size - pw + overhang + 1))
                placed = np.zeros((size + 2 * cell, size + 2 * cell), bool)
                placed[top + cell : top + cell + ph, left + cell : left + cell + pw] = piece
                visible = placed[cell : cell + size, cell : cell + size]
                if visible.sum() >= 2 * cell * cell and not (mask[visible] > 0).any():
                    break
            else:
                break
            mask[visible] = instance
            image[visible] = COLOURS[colour]
            labels.append((shape, colour))
        if len(labels) == pieces:
            return image, mask, labels
    raise KpPerceptionError(f"cannot fit {pieces} tetrominoes into a {size}×{size} image")


def centroids(mask: np.ndarray, count: int) -> list[tuple[float, float]]:
    """(x, y) centroid of each instance 1..count's pixels (pixel centres at integers)."""
    out = []
    for instance in range(1, count + 1):
        ys, xs = np.nonzero(mask == instance)
        out.append((float(xs.mean()), float(ys.mean())))
    return out


def prepare_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse a non-empty output folder unless told; with overwrite, remove only our outputs."""
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a directory")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise DataError(f"{out}: output directory exists and is not empty (use --overwrite)")
        for name in ("images", "masks"):
            if (out / name).is_dir():
                shutil.rmtree(out / name)
        if (out / "objects.csv").exists():
            (out / "objects.csv").unlink()
    out.mkdir(parents=True, exist_ok=True)


def write_multi_object(
    out: str | Path,
    num: int,
    sample: Callable[[int], tuple[np.ndarray, np.ndarray, list[tuple[str, str]]]],
    overwrite: bool = False,
    desc: str = "sim",
    show_progress: bool = True,
) -> dict:
    """Write ``num`` images from ``sample(index) -> (rgb, mask, [(shape, colour)])`` in the folder format.

    Shared by the tetrominoes and MNIST-hard generators. Each image is drawn
    from its own ``default_rng([seed, index])`` inside ``sample``, so image i
    does not depend on how many images are generated.
    """
    import cv2
    from tqdm import tqdm

    if num < 1:
        raise KpPerceptionError(f"--num must be at least 1, got {num}")
    out = Path(out)
    first = sample(0)  # an impossible setting fails here, before anything is written
    prepare_out_dir(out, overwrite)
    (out / "images").mkdir()
    (out / "masks").mkdir()
    count = 0
    with open(out / "objects.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(OBJECTS_HEADER)
        for index in tqdm(range(num), desc=desc, unit="image", disable=not show_progress):
            image, mask, labels = first if index == 0 else sample(index)
            stem = f"{index:06d}"
            cv2.imwrite(str(out / "images" / f"{stem}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            cv2.imwrite(str(out / "masks" / f"{stem}.png"), mask)
            for instance, ((shape, colour), (x, y)) in enumerate(
                zip(labels, centroids(mask, len(labels)), strict=True), start=1
            ):
                writer.writerow([stem, instance, shape, colour, f"{x:.3f}", f"{y:.3f}"])
                count += 1
    return {"out": str(out), "images": num, "objects": count}


def generate_tetrominoes(
    out: str | Path, num: int, seed: int = 0, size: int = 35, overwrite: bool = False, show_progress: bool = True
) -> dict:
    """``kp-perception sim tetrominoes``: ``num`` images of three tetrominoes into ``out``."""
    if size < 7:
        raise KpPerceptionError(f"--size must be at least 7 pixels for tetrominoes, got {size}")
    return write_multi_object(
        out,
        num,
        lambda index: render_tetrominoes(np.random.default_rng([seed, index]), size),
        overwrite=overwrite,
        desc="sim tetrominoes",
        show_progress=show_progress,
    )
