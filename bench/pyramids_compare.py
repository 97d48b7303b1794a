"""Compare recorded Keypoint Pyramids runs side by side, paired by scene family and seed.

Issue 20 asks for comparisons that a single ``pyramids_quality --families`` grid does not hold:
the same methods at other training lengths (item 3) and changed Pyramids settings chosen on one
family and validated on the others. Each of those runs as its own tagged grid; this reads their
JSONs (no training, no evaluation), takes one method of each as an *arm*, and reports on the
family × seed pairs that every arm ran:

- per family and arm: mean ± std of the flattened, level-1 and level-2 least-squares RMSE and
  the flattened ridge RMSE (pixels, as the grid scored them);
- per arm, the mean over the families, and the margin against ``--baseline`` on that mean
  (positive: the arm has the lower RMSE), least squares and ridge;
- paired wins against the baseline (an arm wins a pair when its flattened RMSE is lower on the
  same family's data and seed).

Writes ``bench/results/pyramids_compare_<name>.json`` and ``.md`` and, when docs/results.md holds
this comparison's markers, its block there.

Example (training length, family default):
``python -m kp_perception_bench.pyramids_compare --name training_length --families default
--baseline "Transporter-30, 600" --arm "Pyramids, 600=bench/results/pyramids_quality_families.json:pyramids"
--arm "Transporter-30, 600=bench/results/pyramids_quality_families.json:transporter30" ...``
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from kp_perception.errors import KpPerceptionError
from kp_perception_bench._outputs import docs_path, results_dir, update_results_doc

SETS = ("flattened", "level_1", "level_2")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", required=True, help="name of this comparison (result files, docs markers)")
    parser.add_argument("--arm", action="append", required=True, metavar="LABEL=JSON[,JSON...]:METHOD",
                        help="one arm: a label, pyramids_quality --families JSONs (families run by separate "
                        "processes) and the method in them")
    parser.add_argument("--baseline", required=True, help="the label of the arm the others are measured against")
    parser.add_argument("--families", required=True, help="comma list of the families to compare on")
    parser.add_argument("--seeds", default="", help="comma list of seeds (default: those every arm ran)")
    parser.add_argument("--note", default="", help="one line saying how the arms were chosen, kept in the outputs")


def parse_arm(text: str) -> tuple[str, Path, str]:
    """``LABEL=JSON:METHOD`` -> (label, path, method)."""
    label, sep, rest = text.rpartition("=")  # a label may hold "=", a path does not
    path, sep2, method = rest.rpartition(":")
    if not (sep and sep2 and label and path and method):
        raise KpPerceptionError(f"--arm {text!r}: expected LABEL=JSON:METHOD")
    return label.strip(), Path(path), method.strip()


def arm_runs(path: Path, method: str) -> dict[tuple[str, int], dict[str, Any]]:
    """The recorded runs of ``method`` in a families JSON, keyed by (family, seed)."""
    if not path.is_file():
        raise KpPerceptionError(f"no such result file: {path}")
    grid = json.loads(path.read_text())
    if "families_requested" not in grid.get("setting", {}):
        raise KpPerceptionError(f"{path} is not a pyramids_quality --families result")
    runs = {(r["family"], int(r["seed"])): r for r in grid["runs"] if r["method"] == method}
    if not runs:
        raise KpPerceptionError(f"{path} holds no run of method {method!r}")
    return {k: dict(r, steps=grid["setting"]["steps"]) for k, r in runs.items()}


def _stat(values: list[float]) -> dict[str, float]:
    """Mean and sample std (ddof 1, as the grid reports; 0 for one seed)."""
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return {"mean": float(np.mean(values)), "std": std, "n": len(values)}


def compare(arms: dict[str, dict[tuple[str, int], dict[str, Any]]], baseline: str, families: list[str],
            seeds: list[int] | None) -> dict[str, Any]:
    """Per-family and mean-over-families figures of every arm on the pairs all arms share."""
    if baseline not in arms:
        raise KpPerceptionError(f"--baseline {baseline!r} is not one of the arms ({', '.join(arms)})")
    pairs = sorted(set.intersection(*(set(runs) for runs in arms.values())))
    pairs = [p for p in pairs if p[0] in families and (seeds is None or p[1] in seeds)]
    if not pairs:
        raise KpPerceptionError("the arms share no family × seed pair among the ones asked for")
    missing = sorted({f for f in families} - {f for f, _ in pairs})
    per_family: dict[str, dict[str, Any]] = {}
    for family in sorted({f for f, _ in pairs}, key=families.index):
        keys = [p for p in pairs if p[0] == family]
        per_family[family] = {"seeds": [s for _, s in keys], "arms": {}}
        for label, runs in arms.items():
            cell: dict[str, Any] = {}
            for fit, key in (("least_squares", "rmse_px"), ("ridge", "rmse_px_ridge")):
                fitted = runs[keys[0]].get(key, {})
                levels = [s for s in SETS if s in fitted and (s == "flattened" or "level_2" in fitted)]
                cell[fit] = {s: _stat([runs[k][key][s] for k in keys]) for s in levels}
            cell["steps"] = sorted({runs[k]["steps"] for k in keys})
            per_family[family]["arms"][label] = cell
    summary: dict[str, Any] = {}
    for label, runs in arms.items():
        entry: dict[str, Any] = {}
        for fit in ("least_squares", "ridge"):
            fam_means = {s: [per_family[f]["arms"][label][fit][s]["mean"] for f in per_family
                             if s in per_family[f]["arms"][label][fit]] for s in SETS}
            entry[fit] = {s: float(np.mean(v)) for s, v in fam_means.items() if len(v) == len(per_family)}
            base = float(np.mean([per_family[f]["arms"][baseline][fit]["flattened"]["mean"] for f in per_family]))
            entry[fit]["margin_vs_baseline"] = (base - entry[fit]["flattened"]) / base
            key = "rmse_px" if fit == "least_squares" else "rmse_px_ridge"
            entry[fit]["paired_wins"] = sum(runs[p][key]["flattened"] < arms[baseline][p][key]["flattened"] for p in pairs)
        summary[label] = entry
    return {"pairs": [list(p) for p in pairs], "families_without_pairs": missing, "baseline": baseline,
            "per_family": per_family, "mean_over_families": summary}


def markdown(result: dict[str, Any]) -> str:
    """The comparison as Markdown tables."""
    n = len(result["pairs"])
    fams = ", ".join(f"{f} (seeds {', '.join(map(str, v['seeds']))})" for f, v in result["per_family"].items())
    lines = [f"Pairs compared: {fams}. RMSE in pixels of 64×64 frames, mean ± std over seeds; LS = least squares, "
             "ridge = the grid's CV ridge.", ""]
    if result.get("note"):
        lines += [result["note"], ""]
    lines += ["| family | arm | steps | level 1 LS | level 2 LS | flattened LS | flattened ridge |",
              "|---|---|---|---|---|---|---|"]
    for family, fam in result["per_family"].items():
        for label, cell in fam["arms"].items():
            ls, rg = cell["least_squares"], cell["ridge"]

            def c(d: dict, k: str) -> str:
                return f"{d[k]['mean']:.2f} ± {d[k]['std']:.2f}" if k in d else "—"
            lines.append(f"| {family} | {label} | {', '.join(map(str, cell['steps']))} | {c(ls, 'level_1')} | "
                         f"{c(ls, 'level_2')} | {c(ls, 'flattened')} | {c(rg, 'flattened')} |")
    lines += ["", f"Mean over the families, against {result['baseline']} (margin > 0: lower RMSE than it; "
              f"wins of {n} pairs):", "",
              "| arm | level 1 LS | level 2 LS | flattened LS | margin LS | wins LS | flattened ridge | margin ridge | wins ridge |",
              "|---|---|---|---|---|---|---|---|---|"]
    for label, e in result["mean_over_families"].items():
        ls, rg = e["least_squares"], e["ridge"]

        def v(d: dict, k: str) -> str:
            return f"{d[k]:.2f}" if k in d else "—"
        lines.append(f"| {label} | {v(ls, 'level_1')} | {v(ls, 'level_2')} | {v(ls, 'flattened')} | "
                     f"{100 * ls['margin_vs_baseline']:+.1f} % | {ls['paired_wins']} | {v(rg, 'flattened')} | "
                     f"{100 * rg['margin_vs_baseline']:+.1f} % | {rg['paired_wins']} |")
    return "\n".join(lines) + "\n"


def markers(name: str) -> tuple[str, str]:
    return (f"<!-- Pyramids compare {name}: begin (bench/pyramids_compare.py) -->",
            f"<!-- Pyramids compare {name}: end -->")


def run(args: argparse.Namespace) -> dict[str, Any]:
    arms: dict[str, dict[tuple[str, int], dict[str, Any]]] = {}
    sources = {}
    for text in args.arm:
        label, path, method = parse_arm(text)
        if label in arms:
            raise KpPerceptionError(f"two arms are labelled {label!r}")
        arms[label] = {}
        for part in str(path).split(","):
            arms[label].update(arm_runs(Path(part), method))
        sources[label] = {"json": str(path).split(","), "method": method}
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()] or None
    result = compare(arms, args.baseline, families, seeds)
    result.update(name=args.name, arms=sources, note=args.note)
    out = results_dir() / f"pyramids_compare_{args.name}"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    out.with_suffix(".md").write_text(text)
    begin, end = markers(args.name)
    doc = docs_path("results.md")
    if doc.is_file() and begin in doc.read_text():
        update_results_doc(begin, end, f"{begin}\n{text.rstrip()}\n{end}\n")
    return result


if __name__ == "__main__":
    from kp_perception_bench._entry import run_as_module

    run_as_module("pyramids_compare")
