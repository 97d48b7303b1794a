"""Named tabletop scenes (benchmark families), table looks and light directions.

A preset fixes what a family of episodes looks like: the arm, the camera rig,
the object pool and how many objects each episode draws from it, the table,
the light and the distractors. Command-line options override single fields
of a preset. ``default`` is the original scene and must stay bit-identical.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from kp_perception_training.sim.catalogue import CATALOGUE, DEFAULT_TYPES

ALL_TYPES: tuple[str, ...] = tuple(CATALOGUE)


@dataclass(frozen=True)
class ScenePreset:
    """A benchmark family; field names match TabletopConfig's."""

    description: str
    arm: str = "panda"
    camera: str = "oblique"
    objects: tuple[str, ...] = DEFAULT_TYPES
    objects_per_episode: int = 0  # 0: every object of the pool in every episode
    table: str = "grey"
    light: str = "default"
    distractors: int = 0
    surface_points: str = "rendered"


SCENE_PRESETS: dict[str, ScenePreset] = {
    "default": ScenePreset(
        "the original scene: Panda, oblique camera, teddy, duck, mug, jenga, lego, grey table "
        "(ground truth as first released: surface points by collision ray casts)",
        surface_points="collision",
    ),
    "bo": ScenePreset(
        "B&O-like variety: Panda, camera jittered per episode, 5 objects per episode from the whole catalogue, "
        "table and light random per episode",
        camera="random", objects=ALL_TYPES, objects_per_episode=5, table="random", light="random",
    ),
    "topdown": ScenePreset(
        "Panda seen from straight above, 5 objects per episode from the catalogue, white table, light from above",
        camera="topdown", objects=ALL_TYPES, objects_per_episode=5, table="white", light="top",
    ),
    "side": ScenePreset(
        "Panda seen from the side, low camera, 5 objects per episode from the catalogue, dark table",
        camera="side", objects=ALL_TYPES, objects_per_episode=5, table="dark", light="front",
    ),
    "clutter": ScenePreset(
        "the default objects among 6 non-annotated distractors on a checker table, light from the left",
        table="checker", light="left", distractors=6,
    ),
    "kuka": ScenePreset(
        "KUKA iiwa arm, oblique camera, 5 objects per episode from the catalogue, wooden table",
        arm="kuka", objects=ALL_TYPES, objects_per_episode=5, table="wood", light="right",
    ),
    "xarm": ScenePreset(
        "xArm6 with gripper, oblique camera, 5 objects per episode from the catalogue, wooden table",
        arm="xarm6", objects=ALL_TYPES, objects_per_episode=5, table="wood", light="right",
    ),
}


@dataclass(frozen=True)
class TableStyle:
    """The table's look: a flat colour, or a pybullet_data texture tinted by it."""

    rgba: tuple[float, float, float, float]
    texture: str | None = None


TABLE_STYLES: dict[str, TableStyle] = {
    "grey": TableStyle((0.55, 0.55, 0.55, 1.0)),
    "wood": TableStyle((1.0, 1.0, 1.0, 1.0), "table/table.png"),
    "white": TableStyle((0.86, 0.86, 0.83, 1.0)),
    "dark": TableStyle((0.22, 0.22, 0.24, 1.0)),
    "checker": TableStyle((1.0, 1.0, 1.0, 1.0), "checker_grid.jpg"),
}
TABLE_CHOICES = (*TABLE_STYLES, "random")


def random_table(rng: np.random.Generator) -> TableStyle:
    """A per-episode table: a desaturated random colour, or the wood or checker texture tinted."""
    style = rng.choice(["colour", "colour", "wood", "checker"])
    grey = rng.uniform(0.25, 0.85)
    tint = np.clip(grey + rng.uniform(-0.08, 0.08, size=3), 0.0, 1.0)
    if style == "colour":
        return TableStyle((*map(float, tint), 1.0))
    texture = TABLE_STYLES[str(style)].texture
    return TableStyle((*map(float, np.clip(tint + 0.25, 0.0, 1.0)), 1.0), texture)


# Directions *towards* the light in the world frame (pybullet's lightDirection). As seen by the
# oblique camera: +y is image right, +x the near (camera) side, -x behind the arm.
LIGHTS: dict[str, tuple[float, float, float] | None] = {
    "default": None,  # pybullet's own light: not passed to the renderer at all
    "left": (0.0, -1.0, 0.8),
    "right": (0.0, 1.0, 0.8),
    "front": (1.0, 0.0, 0.8),
    "back": (-1.0, 0.0, 0.8),
    "top": (0.0, 0.0, 1.0),
}
LIGHT_CHOICES = (*LIGHTS, "random")


def random_light(rng: np.random.Generator) -> tuple[float, float, float]:
    """A light direction with uniform azimuth and 25-75 degrees elevation."""
    azimuth = rng.uniform(-math.pi, math.pi)
    elevation = math.radians(rng.uniform(25.0, 75.0))
    return (
        math.cos(elevation) * math.cos(azimuth),
        math.cos(elevation) * math.sin(azimuth),
        math.sin(elevation),
    )


def presets_help() -> str:
    """One line per preset, for ``--help``."""
    return "\n".join(f"  {name:<8} {preset.description}" for name, preset in SCENE_PRESETS.items())
