"""``kp-perception data inspect PATH... [--image-topic T]``: what the dataset reader finds, as JSON.

Shows, before a long training run, which sequences the reader will use:
name, kind, source, frame count, first-frame size, encoding and topic. A bag
with several image topics is reported once per topic (training then needs
``--image-topic``). Every frame is decoded, so a corrupt image or message is
found here, not hours into training (``--quick`` reads only the first frame of
each sequence). Bad input (truncated bag, missing database, no image topic,
unreadable video or image, empty folder, a device or FIFO) exits 2 with one
line naming the file and the problem.
"""

from __future__ import annotations

import argparse
import json


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "data", help="inspect datasets (bags, videos, image folders)", description=__doc__.split("\n")[0]
    )
    actions = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    inspect = actions.add_parser(
        "inspect",
        help="print the sequences found under PATH... as JSON",
        description="Print, as JSON, the sequences (bags, videos, image folders) found under each PATH: "
        "frame counts, sizes, encodings and image topics.",
    )
    inspect.add_argument("paths", nargs="+", metavar="PATH",
                         help="rosbag2 directory or .mcap/.db3 file, video, image folder, or a folder of those")
    inspect.add_argument("--image-topic", default=None,
                         help="image topic to read from bags with several (default: report each of them)")
    inspect.add_argument("--quick", action="store_true",
                         help="decode only the first frame of each sequence (default: decode every frame)")
    inspect.set_defaults(func=run)


def describe(paths: list[str], image_topic: str | None = None, decode_all: bool = True) -> dict:
    """The JSON-able description of every sequence (every image topic of a bag) under ``paths``."""
    from tqdm import tqdm

    from kp_perception.errors import DataError
    from kp_perception.sequences import open_sequences

    sequences = open_sequences(paths, image_topic, every_image_topic=True)
    rows = []
    for seq in tqdm(sequences, desc="inspecting", unit="sequence", leave=False, disable=len(sequences) < 2):
        width, height = seq.frame_size
        if decode_all:
            label = f"{seq.name} {seq.topic}" if seq.topic else seq.name
            frames = tqdm(seq.iter_frames(), total=len(seq), desc=label, unit="frame", leave=False, disable=None)
            decoded = sum(1 for _ in frames)  # the bar only on a terminal (disable=None), cleared afterwards
            if decoded != len(seq):
                raise DataError(f"{seq.source}: {decoded} of {len(seq)} frames could be decoded")
        row = {
            "name": seq.name,
            "kind": seq.kind,
            "source": str(seq.source),
            "frames": len(seq),
            "width": width,
            "height": height,
            "encoding": seq.encoding,
            "topic": seq.topic,
        }
        if seq.kind == "rosbag2":
            row["image_topics"] = seq.image_topics
            row["topics"] = seq.all_topics
        rows.append(row)
    return {"sequences": rows, "total_frames": sum(r["frames"] for r in rows), "decoded": "all" if decode_all
            else "first frame"}


def run(args: argparse.Namespace) -> int:
    print(json.dumps(describe(args.paths, args.image_topic, decode_all=not args.quick), indent=2))
    return 0
