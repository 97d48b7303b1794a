"""A contact sheet of the tabletop scene presets: one row per preset, frames of two episodes and an id mask.

Made for docs/training_guide.md, so a user can see what each benchmark family looks like::

    python -m kp_perception_training.sim.preview docs/images/sim_presets.png [--size 96]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from kp_perception_training.sim.scenes import SCENE_PRESETS
from kp_perception_training.sim.tabletop import TabletopConfig, TabletopScene


def _id_colours(n: int = 64) -> np.ndarray:
    colours = np.random.default_rng(0).integers(60, 256, size=(n, 3)).astype(np.uint8)
    colours[0] = 0  # background black
    colours[1] = (0, 200, 255)  # the arm
    return colours


def preset_row(name: str, size: int, frame: int = 12) -> np.ndarray:
    """Frame ``frame`` of episodes 0 and 1 and the instance-id mask of episode 1, side by side (H×4W×3)."""
    config = TabletopConfig.from_scene(name, size=size, frames=frame + 1, seed=0)
    tiles = []
    for episode in (0, 1):
        scene = TabletopScene(config, episode)
        try:
            for _ in range(frame + 1):
                scene.step()
            views = scene.render_views()
            tiles.append(views.rgb)
            if episode == 1:
                tiles.append(_id_colours()[scene.instance_ids(views.seg) % 64])
                depth = scene.depth(views)
                finite = np.where(np.isfinite(depth), depth, np.nan)
                lo, hi = np.nanmin(finite), np.nanmax(finite)
                grey = np.nan_to_num(255 * (1 - (finite - lo) / max(hi - lo, 1e-6)), nan=0).astype(np.uint8)
                tiles.append(np.repeat(grey[..., None], 3, axis=2))
        finally:
            scene.close()
    return np.concatenate(tiles, axis=1)


def main(argv: list[str] | None = None) -> None:
    import cv2

    parser = argparse.ArgumentParser(prog="python -m kp_perception_training.sim.preview", description=__doc__)
    parser.add_argument("out", help="PNG to write")
    parser.add_argument("--size", type=int, default=96)
    args = parser.parse_args(argv)
    rows = []
    for name in SCENE_PRESETS:
        row = preset_row(name, args.size)
        label = np.full((18, row.shape[1], 3), 255, dtype=np.uint8)
        cv2.putText(label, name, (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        rows += [label, row]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.out), cv2.cvtColor(np.concatenate(rows, axis=0), cv2.COLOR_RGB2BGR))


if __name__ == "__main__":
    main()
