"""``kp-perception data inspect PATH... [--image-topic T]``: what the dataset reader finds, as JSON.

Shows, before a long training run, which sequences the reader will use:
name, kind, source, frame count, first-frame size, encoding, the chosen
topic and every image topic in each bag. Bad input (truncated bag, missing
database, no image topic, unreadable video, empty folder) exits 2 with one
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
                         help="image topic to read from bags with several (default: the only one)")
    inspect.set_defaults(func=run)


def describe(paths: list[str], image_topic: str | None = None) -> dict:
    """The JSON-able description of every sequence under ``paths``."""
    from tqdm import tqdm

    from kp_perception.sequences import open_sequences

    sequences = open_sequences(paths, image_topic)
    rows = []
    for seq in tqdm(sequences, desc="inspecting", unit="sequence", leave=False, disable=len(sequences) < 2):
        width, height = seq.frame_size
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
    return {"sequences": rows, "total_frames": sum(r["frames"] for r in rows)}


def run(args: argparse.Namespace) -> int:
    print(json.dumps(describe(args.paths, args.image_topic), indent=2))
    return 0
