"""The ground-truth keypoint annotations CSV: one writer (the simulator) and one reader (evaluation).

Format (the header ``sequence,frame,name,x,y`` plus a visibility column and, optionally, 3D)::

    sequence,frame,name,x,y,visible,X,Y,Z
    episode_000,0,arm/panda_link4,61.250,20.875,1,0.01230,-0.22104,0.98751
    episode_000,0,teddy/centre,40.500,77.125,0,-0.10021,0.12903,0.87310

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
- ``X``, ``Y``, ``Z``: optional, the point in the camera's optical frame
  (x right, y down, z forward; the ``header.frame_id`` of the images), in
  metres. A file without them (older simulations, hand annotations) reads
  with ``xyz = None``; the writer adds them only when some row has them.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from kp_perception.errors import DataError

HEADER = ("sequence", "frame", "name", "x", "y", "visible")
XYZ_COLUMNS = ("X", "Y", "Z")
_REQUIRED = HEADER[:5]


@dataclass(frozen=True)
class Annotation:
    """One annotated point in one frame; x, y in original-frame pixels, xyz in the optical frame (m) or None."""

    sequence: str
    frame: int
    name: str
    x: float
    y: float
    visible: bool = True
    xyz: tuple[float, float, float] | None = None


def write_annotations(path: str | Path, annotations: Iterable[Annotation]) -> int:
    """Write ``annotations`` to ``path`` (overwriting it) in file order; return the row count.

    ``X,Y,Z`` columns (10 µm resolution) are written when any row has ``xyz``;
    rows without it leave them empty.
    """
    rows = list(annotations)
    with_xyz = any(a.xyz is not None for a in rows)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(HEADER + XYZ_COLUMNS if with_xyz else HEADER)
        for a in rows:
            row = [a.sequence, a.frame, a.name, f"{a.x:.3f}", f"{a.y:.3f}", int(a.visible)]
            if with_xyz:
                row += ["", "", ""] if a.xyz is None else [f"{v:.5f}" for v in a.xyz]
            writer.writerow(row)
    return len(rows)


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
                xyz = tuple(row.get(c) or "" for c in XYZ_COLUMNS)
                out.append(
                    Annotation(
                        sequence=row["sequence"],
                        frame=int(row["frame"]),
                        name=row["name"],
                        x=float(row["x"]),
                        y=float(row["y"]),
                        visible=True if visible in (None, "") else _parse_bool(visible),
                        xyz=_parse_xyz(xyz),
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


def object_of(name: str) -> str | None:
    """The object a point name belongs to (``duck_2/centre`` -> ``duck_2``); None for the arm and ``gripper``.

    The naming convention every object evaluator relies on: ``<object>/<point>``
    rows belong to ``<object>``; ``arm/<link>`` rows and names without ``/``
    (``gripper``) are not objects.
    """
    head, sep, _ = name.partition("/")
    return head if sep and head and head != "arm" else None


def object_points(
    annotations: Iterable[Annotation], path: str | Path = "annotations",
) -> dict[tuple[str, int], dict[str, list[tuple[float, float]]]]:
    """Visible points grouped by (sequence, frame) then by object (:func:`object_of`), in pixels.

    Raises DataError when no row names an object: a CSV whose names have no
    ``<object>/<point>`` form would otherwise match nothing, silently.
    """
    rows = list(annotations)
    grouped: dict[tuple[str, int], dict[str, list[tuple[float, float]]]] = {}
    named = False
    for a in rows:
        obj = object_of(a.name)
        if obj is None:
            continue
        named = True
        frame = grouped.setdefault((a.sequence, int(a.frame)), {})
        if a.visible:
            frame.setdefault(obj, []).append((a.x, a.y))
    if not named:
        examples = ", ".join(repr(n) for n in sorted({a.name for a in rows})[:3]) or "none"
        raise DataError(
            f"{path}: no annotation names an object: names must be '<object>/<point>' "
            f"(e.g. 'mug/centre'; 'arm/...' rows and names without '/' are left out), got {examples}"
        )
    return grouped


def _parse_xyz(cells: tuple[str, ...]) -> tuple[float, float, float] | None:
    if not any(c.strip() for c in cells):
        return None
    if not all(c.strip() for c in cells):
        raise ValueError("X, Y and Z must be given together")
    x, y, z = (float(c) for c in cells)
    return (x, y, z)


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
