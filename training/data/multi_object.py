"""Multi-object datasets (TUSK object discovery): images, instance masks and objects.csv.

The multi-object format (docs/training_guide.md, "Data formats"), written by ``kp-perception sim tetrominoes`` and
``sim mnist-hard``::

    DIR/images/NNNNNN.png    RGB images
    DIR/masks/NNNNNN.png     uint8 instance ids, 0 = background
    DIR/objects.csv          image,instance,shape,color,x,y (x, y in image pixels)

``image`` in objects.csv is the image's index (``3``) or its file stem or
name (``000003``, ``000003.png``); all three read the same.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from kp_perception.errors import DataError
from kp_perception.preprocessing import resize_rgb
from kp_perception_training.data.datasets import parse_size, to_tensor

OBJECTS_HEADER = ("image", "instance", "shape", "color", "x", "y")


@dataclass(frozen=True)
class ObjectRecord:
    """One object instance of one image; (x, y) its centre in original image pixels."""

    image: int
    instance: int
    shape: str
    color: str
    x: float
    y: float


def read_objects_csv(path: str | Path) -> list[ObjectRecord]:
    """Read objects.csv; a missing file, wrong header or malformed row is a DataError naming the line."""
    path = Path(path)
    try:
        with path.open(newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None or tuple(h.strip() for h in header) != OBJECTS_HEADER:
                raise DataError(f"{path}: header must be {','.join(OBJECTS_HEADER)}, got {header}")
            records = []
            for line, row in enumerate(reader, start=2):
                if not row:
                    continue
                try:
                    image, instance, shape, color, x, y = row
                    records.append(ObjectRecord(int(Path(image.strip()).stem), int(instance), shape, color,
                                                float(x), float(y)))
                except ValueError:
                    raise DataError(f"{path}:{line}: malformed row {row}") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read objects file: {exc.strerror or exc}") from None
    return records


class MultiObjectDataset(Dataset):
    """{"image": 3×H×W float32 in [0, 1], "mask": H×W int64 instance ids, "index": int}.

    ``size`` (int or [width, height]) resizes images with the one resize
    policy and masks with nearest neighbour (ids must not be blended); None
    keeps the stored size. ``objects[index]`` lists that image's ObjectRecords
    (coordinates in stored-image pixels).
    """

    def __init__(self, folder: str | Path, size: int | tuple[int, int] | None = None) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise DataError(f"{self.folder}: no such multi-object dataset folder")
        for part in ("images", "masks"):
            if not (self.folder / part).is_dir():
                raise DataError(f"{self.folder}: missing {part}/ (expected images/, masks/ and objects.csv)")
        if not (self.folder / "objects.csv").is_file():
            raise DataError(f"{self.folder}: missing objects.csv (expected images/, masks/ and objects.csv)")
        self.images = sorted((self.folder / "images").glob("*.png"))
        if not self.images:
            raise DataError(f"{self.folder / 'images'}: empty folder (no .png images)")
        self.masks = [self.folder / "masks" / p.name for p in self.images]
        missing = [m.name for m in self.masks if not m.is_file()]
        if missing:
            raise DataError(f"{self.folder / 'masks'}: missing masks for {len(missing)} images, e.g. {missing[0]}")
        self.size = parse_size(size) if size is not None else None
        self.objects: list[list[ObjectRecord]] = [[] for _ in self.images]
        index_of = {int(p.stem): i for i, p in enumerate(self.images) if p.stem.isdigit()}
        for rec in read_objects_csv(self.folder / "objects.csv"):
            if rec.image not in index_of:
                raise DataError(f"{self.folder / 'objects.csv'}: image {rec.image} has no file in images/")
            self.objects[index_of[rec.image]].append(rec)

    def __len__(self) -> int:
        return len(self.images)

    def _read(self, path: Path, flags: int) -> np.ndarray:
        data = np.fromfile(path, dtype=np.uint8)
        img = cv2.imdecode(data, flags) if data.size else None
        if img is None:
            raise DataError(f"{path}: unreadable image")
        return img

    def __getitem__(self, index: int) -> dict:
        image = cv2.cvtColor(self._read(self.images[index], cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        mask = self._read(self.masks[index], cv2.IMREAD_UNCHANGED)
        if mask.ndim != 2 or mask.shape != image.shape[:2]:
            raise DataError(f"{self.masks[index]}: mask must be a single-channel image of size {image.shape[:2]}")
        if self.size is not None:
            image = resize_rgb(image, *self.size)
            mask = cv2.resize(mask, self.size, interpolation=cv2.INTER_NEAREST)
        return {"image": to_tensor(image), "mask": torch.from_numpy(mask.astype(np.int64)), "index": int(index)}
