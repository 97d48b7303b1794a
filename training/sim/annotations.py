"""The ground-truth keypoint annotations CSV: one writer (the simulator) and one reader (evaluation).

Format (the header ``sequence,frame,name,x,y`` plus a visibility column)::

    sequence,frame,name,x,y,visible
    episode_000,0,arm/panda_link4,61.250,20.875,1
    episode_000,0,teddy/centre,40.500,77.125,0

- ``sequence``: the bag, video or folder stem (for the simulator, ``episode_NNN``,
  the rosbag2 directory stem, which is what the dataset reader calls the sequence).
- ``frame``: 0-based index in that sequence's image stream.
- ``name``: the keypoint's identity, stable across frames and sequences
  (``arm/<link>``, ``gripper``, ``<object>/centre``, ``<object>/surface_<i>``).
- ``x``, ``y``: pixels of the original frame, x right, y down, (0, 0) the centre
  of the top-left pixel (the convention of kp_perception.results). Points may
  lie outside the frame; they are then not visible.
- ``visible``: 1 when the point is seen in the frame, 0 when occluded or off
  screen, so evaluation can leave it out. Optional when reading: a file with
  the five-column header (no ``visible``) reads as all visible.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from kp_perception.errors import DataError

HEADER = ("sequence", "frame", "name", "x", "y", "visible")
_REQUIRED = HEADER[:5]


@dataclass(frozen=True)
class Annotation:
    """One annotated point in one frame; x, y in original-frame pixels."""

    sequence: str
    frame: int
    name: str
    x: float
    y: float
    visible: bool = True


def write_annotations(path: str | Path, annotations: Iterable[Annotation]) -> int:
    """Write ``annotations`` to ``path`` (overwriting it) in file order; return the row count."""
    count = 0
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(HEADER)
        for a in annotations:
            writer.writerow([a.sequence, a.frame, a.name, f"{a.x:.3f}", f"{a.y:.3f}", int(a.visible)])
            count += 1
    return count


def read_annotations(path: str | Path) -> list[Annotation]:
    """Read an annotations CSV; any malformed row raises DataError naming the file and line."""
    path = Path(path)
    _require_utf8(path)
    try:
        f = open(path, newline="", encoding="utf-8")
    except OSError as exc:
        raise DataError(f"{path}: cannot read annotations ({exc.strerror or exc})") from None
    with f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        missing = [c for c in _REQUIRED if c not in fields]
        if missing:
            raise DataError(
                f"{path}: not an annotations CSV, missing column(s) {', '.join(missing)} "
                f"(expected header {','.join(HEADER)})"
            )
        out = []
        for row in reader:
            try:
                visible = row.get("visible")
                out.append(
                    Annotation(
                        sequence=row["sequence"],
                        frame=int(row["frame"]),
                        name=row["name"],
                        x=float(row["x"]),
                        y=float(row["y"]),
                        visible=True if visible in (None, "") else _parse_bool(visible),
                    )
                )
            except (TypeError, ValueError) as exc:
                raise DataError(f"{path}:{reader.line_num}: bad annotation row ({exc})") from None
    return out


def group_by_frame(
    annotations: Iterable[Annotation],
) -> dict[tuple[str, int], dict[str, Annotation]]:
    """Index annotations by (sequence, frame) then by point name, the lookup evaluation needs."""
    grouped: dict[tuple[str, int], dict[str, Annotation]] = {}
    for a in annotations:
        grouped.setdefault((a.sequence, a.frame), {})[a.name] = a
    return grouped


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes"):
        return True
    if value in ("0", "false", "no"):
        return False
    raise ValueError(f"visible must be 0 or 1, got {text!r}")


def _require_utf8(path: Path) -> None:
    """A file that is not UTF-8 text (a binary, a UTF-16 export) is one DataError, not a decode traceback."""
    try:
        path.read_bytes().decode("utf-8")
    except OSError:
        return  # open() below reports it
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}: not a UTF-8 text file (byte {exc.start}: {exc.reason}); "
            f"expected an annotations CSV with the header {','.join(HEADER)}"
        ) from None
