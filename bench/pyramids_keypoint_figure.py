"""Fig.-6-style picture for docs/results.md: the keypoints each method drew on its last training batch.

Reads the ``images/keypoints/<step>.png`` grids that ``kp-perception train`` writes into the run
directories of ``bench/pyramids_quality.py`` (parents and children of a pyramid share a colour and
are linked) and stacks one row per method. Training frames, not held-out ones: it shows where the
keypoints sit, the RMSE table is the measurement.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from kp_perception.errors import KpPerceptionError
from kp_perception_bench._outputs import docs_path, work_dir

TITLES = {"pyramids": "Keypoint Pyramids (10+20)", "transporter30": "Transporter-30", "keynet30": "KeyNet-30"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", type=Path, default=work_dir("bench_pyramids") / "runs")
    parser.add_argument("--suffix", default="s0_64px_600st",
                        help="run directory name after '<method>_' (default: seed 0 of an untagged default bench run)")
    parser.add_argument("--out", type=Path, default=docs_path("images", "pyramids_vs_flat_keypoints.png"))


def run(args: argparse.Namespace) -> dict[str, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    rows = []
    for method, title in TITLES.items():
        run_dir = args.runs / f"{method}_{args.suffix}"
        grids = sorted((run_dir / "images" / "keypoints").glob("*.png"))
        if not grids:
            raise KpPerceptionError(f"no keypoint image in {run_dir}; run kp_perception_bench.pyramids_quality first")
        rows.append((title, grids[-1]))
    fig, axes = plt.subplots(len(rows), 1, figsize=(8, 2.3 * len(rows)), squeeze=False)
    for ax, (title, path) in zip(axes[:, 0], rows, strict=True):
        ax.imshow(Image.open(path), interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    plt.close(fig)
    return {"figure": str(args.out), "from": [str(path) for _, path in rows]}


if __name__ == "__main__":
    import json

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    print(json.dumps(run(parser.parse_args()), indent=2))
