"""Does the flattened set lose to level 2 through regression overfitting? Landmark RMSE against ridge strength.

A post-hoc analysis of a ``pyramids_quality --families`` grid (issue 20, item 4), chosen after its
results were seen and reported as such; it changes no benchmark figure. For every recorded run
it re-fits the landmark regression of the benchmark (same frames, same fit/scored halves, same
seed) from the keypoints the evaluation saved (``landmark_keypoints.npz``), with least squares
and with ridge at each fixed strength of ALPHAS (standardised columns, no cross-validation), for
level 2 and flattened (Pyramids) and the flat baselines' keypoints. If flattened beats level 2 at
some fixed strength while losing under least squares, the extra level-1 columns carry information
that least squares overfits.

Writes ``bench/results/pyramids_fit_curve.json``. No training, seconds of CPU.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from kp_perception_bench._outputs import results_dir, work_dir
from kp_perception_bench.pyramids_quality import scored_dir

ALPHAS: tuple[float, ...] = (0.0, 0.1, 1.0, 10.0, 100.0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--grid", type=Path, default=results_dir() / "pyramids_quality_families.json",
                        help="the families JSON of pyramids_quality")
    parser.add_argument("--work", type=Path, default=work_dir("bench_pyramids"), help="the grid's --work")
    parser.add_argument("--tag", default="", help="the grid's --tag")


def fit_curve(npz: Path, annotations: Path, seed: int) -> dict[str, dict[str, float]]:
    """RMSE (px) per keypoint set and ridge strength ('0' = least squares) for one run."""
    from kp_perception_training.evaluation.landmarks import landmark_rmse
    from kp_perception_training.pyramids.evaluate import landmark_targets, split_halves
    from kp_perception_training.sim.annotations import read_annotations

    data = np.load(npz)
    frames = [(str(s), int(f)) for s, f in zip(data["sequences"], data["frames"], strict=True)]
    targets, visible = landmark_targets(read_annotations(annotations), frames)
    fit, test = split_halves(len(frames), seed)
    coords = data["keypoints_px"]  # the encoder's float32, as the benchmark fits them
    sizes = data["level_sizes"].tolist()
    sets = {"flattened": coords.reshape(len(frames), -1)}
    if len(sizes) > 1:
        sets["level_2"] = coords[:, sizes[0] : sizes[0] + sizes[1]].reshape(len(frames), -1)
    return {name: {f"{a:g}": landmark_rmse(x, targets, visible, fit, test, (a,)) for a in ALPHAS}
            for name, x in sets.items()}


def run(args: argparse.Namespace) -> dict[str, Any]:
    grid = json.loads(Path(args.grid).read_text())
    s = grid["setting"]
    suffix = f"{s['size']}px_{s['steps']}st{args.tag and '_' + args.tag}"
    runs = []
    for r in grid["runs"]:
        family_dir = Path(args.work) / r["family"]
        test_dir = family_dir / f"sim_test_{s['size']}_{s['test_episodes']}x{s['frames']}"
        run_dir = family_dir / "runs" / f"{r['method']}_s{r['seed']}_{suffix}"
        npz = scored_dir(run_dir, test_dir) / "landmark_keypoints.npz"
        ann = test_dir / "annotations.csv"
        runs.append({"family": r["family"], "method": r["method"], "seed": r["seed"],
                     "rmse_px": fit_curve(npz, ann, r["seed"])})
    mean: dict[str, Any] = {}
    for r in runs:
        for name, curve in r["rmse_px"].items():
            for a, v in curve.items():
                mean.setdefault(r["method"], {}).setdefault(name, {}).setdefault(a, []).append(v)
    summary = {m: {n: {a: float(np.mean(v)) for a, v in c.items()} for n, c in sets.items()} for m, sets in mean.items()}
    result = {"grid": str(args.grid), "alphas": list(ALPHAS), "families": sorted({r["family"] for r in runs}),
              "mean_over_runs_rmse_px": summary, "runs": runs,
              "note": "post-hoc analysis (chosen after the grid's results were seen); alpha 0 = least squares"}
    out = results_dir() / "pyramids_fit_curve.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    print(json.dumps(run(parser.parse_args())["mean_over_runs_rmse_px"], indent=2))
