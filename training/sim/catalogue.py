"""The tabletop's object catalogue: pybullet_data models with a type name, a kind and one flat colour.

An object's *type* is its catalogue name (``teddy``, ``mug``, ...); its *kind*
is ``plush`` or ``rigid``. A scene's object *pool* is a list of types, and
repeats are allowed: the instances are then named ``<type>``, ``<type>_2``,
``<type>_3``, ... in pool order, so a name means the same instance in every
episode and :func:`object_type` recovers the type from the name (no type name
ends in ``_<digits>``). Each type keeps one flat colour (textures removed) in
every scene, so colour and shape together identify the type.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

from kp_perception.errors import KpPerceptionError

_INSTANCE_SUFFIX = re.compile(r"_(\d+)$")


@dataclass(frozen=True)
class ObjectSpec:
    """An object type: a pybullet_data model (URDF, or a Wavefront mesh), its kind, colour and size.

    ``name`` is the type. ``base_euler`` is the resting orientation (roll, pitch,
    yaw) that stands a mesh upright; placement adds a random yaw on top of it.
    Meshes (``.obj``) are centred on their bounding box, with ``mass`` kg.
    """

    name: str
    urdf: str  # pybullet_data path: a .urdf, or a .obj mesh loaded as one rigid body
    kind: str  # "plush" | "rigid"
    rgba: tuple[float, float, float, float]
    scale: float = 1.0
    base_euler: tuple[float, float, float] = (0.0, 0.0, 0.0)
    mass: float = 0.2

    @property
    def model(self) -> str:
        return self.urdf

    @property
    def is_mesh(self) -> bool:
        return self.urdf.endswith(".obj")


CATALOGUE: dict[str, ObjectSpec] = {
    spec.name: spec
    for spec in (
        ObjectSpec("teddy", "teddy_vhacd.urdf", "plush", (0.85, 0.45, 0.10, 1.0), 1.8),
        ObjectSpec("duck", "duck_vhacd.urdf", "plush", (1.0, 0.9, 0.05, 1.0), 1.5),
        ObjectSpec("mug", "objects/mug.urdf", "rigid", (0.85, 0.05, 0.05, 1.0), 1.0),
        ObjectSpec("jenga", "jenga/jenga.urdf", "rigid", (0.10, 0.25, 0.95, 1.0), 1.0),
        ObjectSpec("lego", "lego/lego.urdf", "rigid", (0.05, 0.75, 0.20, 1.0), 1.6),
        ObjectSpec("bunny", "bunny.obj", "plush", (1.0, 0.62, 0.72, 1.0), 0.07, (math.pi / 2, 0.0, 0.0)),
        ObjectSpec("domino", "domino/domino.urdf", "rigid", (0.95, 0.93, 0.82, 1.0), 2.0, (0.0, math.pi / 2, 0.0)),
        ObjectSpec("cylinder", "toys/cylinder.obj", "rigid", (0.50, 0.20, 0.80, 1.0), 1.0),
        ObjectSpec("prism", "toys/prism.obj", "rigid", (0.10, 0.75, 0.80, 1.0), 1.0),
        ObjectSpec("block", "toys/cube.obj", "rigid", (0.85, 0.10, 0.60, 1.0), 1.0),
        ObjectSpec("torus", "torus/torus_textured.obj", "rigid", (0.60, 0.90, 0.20, 1.0), 0.06,
                   (math.pi / 2, 0.0, 0.0)),
    )
}

# The five objects of the original scene, in its order (``--scene default``).
DEFAULT_TYPES: tuple[str, ...] = ("teddy", "duck", "mug", "jenga", "lego")
DEFAULT_OBJECTS: tuple[ObjectSpec, ...] = tuple(CATALOGUE[t] for t in DEFAULT_TYPES)

# Distractors: small shapes from pybullet_data's random_urdfs, never annotated.
DISTRACTOR_MODELS = 1000  # random_urdfs/000 ... random_urdfs/999
DISTRACTOR_SCALE = 0.7


def distractor_urdf(index: int) -> str:
    return f"random_urdfs/{index:03d}/{index:03d}.urdf"


def objects_from_types(types: Iterable[str]) -> tuple[ObjectSpec, ...]:
    """The pool for a list of catalogue types (``--objects teddy,duck,mug``); unknown types are one clear error."""
    types = [t.strip() for t in types if t.strip()]
    unknown = [t for t in types if t not in CATALOGUE]
    if unknown:
        raise KpPerceptionError(
            f"unknown object type(s) {', '.join(unknown)}; the catalogue has {', '.join(CATALOGUE)}"
        )
    if not types:
        raise KpPerceptionError("--objects needs at least one object type")
    return tuple(CATALOGUE[t] for t in types)


def instance_names(types: Iterable[str]) -> list[str]:
    """Instance names for a pool of types in order: ``teddy, duck, teddy_2, teddy_3``."""
    seen: dict[str, int] = {}
    names = []
    for t in types:
        seen[t] = seen.get(t, 0) + 1
        names.append(t if seen[t] == 1 else f"{t}_{seen[t]}")
    return names


def object_type(name: str) -> str:
    """The type of an instance name (``teddy_2`` -> ``teddy``); also accepts ``teddy_2/centre``."""
    return _INSTANCE_SUFFIX.sub("", name.split("/", 1)[0])


def _check_catalogue() -> None:
    for name in CATALOGUE:
        if _INSTANCE_SUFFIX.search(name) or "/" in name:
            raise AssertionError(f"catalogue type {name!r} would be ambiguous as an instance name")


_check_catalogue()
