"""Keypoint Pyramids vs flat KeyNet and Transporter (10/20/30 keypoints): landmark regression RMSE, Table-1 style.

One command: simulate tabletop data with ``kp-perception sim tabletop`` (train and a
disjoint test set with ground-truth annotations), then for every method and seed run
``kp-perception train`` with the same data, steps and seed and ``kp-perception eval``
on the test set. Writes mean ± std RMSE (pixels of the simulated frames) per level and
flattened as JSON and Markdown into bench/results/ and the "Keypoint Pyramids" section
of docs/results.md, and checks the issue's goal:

- flattened Pyramids RMSE beats the best 30-keypoint flat baseline by ≥ 7 %;
- level 1 > level 2 > flattened for Pyramids;
both on the mean over seeds.

Default (CPU): 64×64 images, 40 train + 20 test episodes of 30 frames, the CPU model
preset documented in training/pyramids/config.py, lr 1e-3 for every method, 600 steps,
3 seeds, one torch thread per run. Every method's FPN keeps the paper's map sizes
(finest 32×32, so level 1 of the pyramid is 16×16) whatever the image size:
``model.finest_stride`` = size / 32, i.e. 2 at 64 px, the YAML's 4 at 128 px
(``--set model.finest_stride=4`` gives the coarser 8×8 / 16×16 maps at 64 px).
``--paper``: 128×128, 450 episodes (360 train, 90 test),
the paper's model sizes and Adam 1e-4, on a GPU (set --steps to what the GPU budget allows).
The wall-clock time actually used is part of the JSON.

``--int8`` (issue 18): every run is also exported (``kp-perception export
--int8``, calibrated on frames of the train set) and the float32 and int8
ONNX models are scored by ``kp-perception eval --onnx`` on the same test set
and split; the JSON holds both RMSEs, the int8/fp32 ratios and the keypoint
deviation int8 vs float32 on test frames (model-input pixels).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from kp_perception.errors import KpPerceptionError
from kp_perception_bench._outputs import docs_path, results_dir, update_results_doc, work_dir

SECTION = "## Keypoint Pyramids"
BEGIN, END = "<!-- Pyramids table: begin (bench/pyramids_quality.py) -->", "<!-- Pyramids table: end -->"

# The CPU preset (documented in training/pyramids/config.py); --paper keeps the paper's sizes.
CPU_PRESET = [
    "model.width=16",
    "model.fpn_channels=32",
    "model.head_channels=32",
    "decoder.decoder_width=32",
    "decoder.appearance_width=16",
    "decoder.feature_hidden=32",
]
# name -> (kind, keypoints_per_level)
METHODS: dict[str, tuple[str, list[int]]] = {
    "pyramids": ("pyramids", [10, 20]),
    "keynet10": ("keynet", [10]),
    "keynet20": ("keynet", [20]),
    "keynet30": ("keynet", [30]),
    "transporter10": ("transporter", [10]),
    "transporter20": ("transporter", [20]),
    "transporter30": ("transporter", [30]),
}


PAPER_FINEST_MAP = 32  # the paper's finest FPN map (and the baselines' keypoint map), 32×32


def paper_finest_stride(size: int) -> int:
    """The largest power-of-two stride whose finest map is at least the paper's 32 cells (1 for small images).

    At 64 px the CPU preset's default stride 4 gives 8×8 and 16×16 maps; on 8×8 the σ = 0.1
    heatmaps are narrower than a cell (0.35 cells), and Keypoint Pyramids scored far worse there
    against Transporter than on the paper's maps (docs/results.md, side by side).
    """
    stride = 1
    while size // (stride * 2) >= PAPER_FINEST_MAP:
        stride *= 2
    return stride


def preset_for(kind: str) -> list[str]:
    """The CPU preset restricted to the keys the kind's config has (KeyNet has no feature encoder, ...)."""
    from kp_perception_training.config import config_class, flatten

    keys = flatten(config_class(kind)().to_dict())
    return [item for item in CPU_PRESET if item.split("=")[0] in keys]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--work", type=Path, default=work_dir("bench_pyramids"),
                        help="data, runs and caches go here; existing data and finished runs are reused")
    parser.add_argument("--paper", action="store_true", help="paper setting: 128x128, 450 episodes, paper model, lr 1e-4 (GPU)")
    parser.add_argument("--architecture", choices=("cpu", "paper"), default=None,
                        help="model widths: 'cpu' = the CPU preset (default), 'paper' = the paper's widths "
                        "(training/pyramids/config.py defaults) with the CPU setting otherwise; --paper implies paper")
    parser.add_argument("--size", type=int, help="image size (default 64, --paper 128)")
    parser.add_argument("--episodes", type=int, help="train episodes (default 40, --paper 360)")
    parser.add_argument("--test-episodes", type=int, help="test episodes (default 20, --paper 90)")
    parser.add_argument("--frames", type=int, default=30, help="frames per episode (B&O: 30)")
    parser.add_argument("--steps", type=int, help="training steps per run (default 600, --paper 20000)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, help="Adam learning rate for every method (default 1e-3, --paper 1e-4)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per method (>= 3 for the table)")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma list out of {', '.join(METHODS)}")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="extra config overrides for every run (e.g. ablation.no_spring=true applies to pyramids only)")
    parser.add_argument("--max-minutes", type=float, help="optional wall-clock cap per run (train.max_minutes)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per run (1: on a shared 2-core CPU more threads thrash; 0 = torch default)")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: the trainer's choice")
    parser.add_argument("--no-doc", action="store_true", help="do not update docs/results.md")
    parser.add_argument("--tag", default="", help="suffix of the result files, e.g. ablation_no_spring "
                        "(bench/results/pyramids_quality_<tag>.json)")
    parser.add_argument("--int8", action="store_true",
                        help="also export every run to int8 (calibrated on the train set) and score it beside float32")
    parser.add_argument("--int8-calibration-frames", type=int, default=64)
    parser.add_argument("--merge", nargs="+", type=Path, metavar="JSON",
                        help="no training: combine the runs of earlier result JSONs (e.g. one process per method)")


def _cli(args: list[str], env: dict[str, str], log: Path) -> str:
    cmd = [sys.executable, "-m", "kp_perception.cli.main", *args]
    with open(log, "a") as f:
        f.write("$ kp-perception " + " ".join(args) + "\n")
        proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=f, text=True)
        f.write(proc.stdout)
    if proc.returncode != 0:
        raise KpPerceptionError(f"kp-perception {args[0]} failed (exit {proc.returncode}); see {log}")
    return proc.stdout


def _simulate(out: Path, episodes: int, frames: int, size: int, seed: int, env: dict, log: Path) -> None:
    if (out / "annotations.csv").is_file():
        return
    _cli(["sim", "tabletop", "--out", str(out), "--episodes", str(episodes), "--frames", str(frames),
          "--size", str(size), "--seed", str(seed), "--overwrite"], env, log)


def _summary(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=float)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0, "n": len(arr)}


def _merge(args: argparse.Namespace) -> dict[str, Any]:
    parts = [json.loads(Path(p).read_text()) for p in args.merge]
    runs = [r for part in parts for r in part["runs"]]
    setting = dict(parts[0]["setting"])
    setting["seeds"] = min(len({r["seed"] for r in runs if r["method"] == m}) for m in {r["method"] for r in runs})
    walls = [part["wall_clock_seconds"] for part in parts]
    result = {
        "setting": setting,
        "table_rmse_px": _table(runs),
        "runs": runs,
        "wall_clock_seconds": {
            "total": round(sum(w["total"] for w in walls), 1), "simulation": round(sum(w["simulation"] for w in walls), 1),
            "per_run_mean": round(float(np.mean([r["train_seconds"] + r["eval_seconds"] for r in runs])), 1),
            "processes": len(parts), "longest_process": round(max(w["total"] for w in walls), 1),
        },
        "merged_from": [str(p) for p in args.merge],
    }
    result["goal"] = _goal(result["table_rmse_px"])
    return _write(result, args)


def _table(runs: list[dict]) -> dict[str, dict[str, dict[str, float]]]:
    table: dict[str, dict[str, dict[str, float]]] = {}
    for name in METHODS:
        rows = [r for r in runs if r["method"] == name]
        if rows:
            table[name] = {k: _summary([r["rmse_px"][k] for r in rows]) for k in rows[0]["rmse_px"]}
    return table


def _write(result: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    int8 = _int8_summary(result["runs"])
    if int8 is not None:
        result["int8"] = int8
    tag = f"_{args.tag}" if args.tag else ""
    results = results_dir()
    results.mkdir(parents=True, exist_ok=True)
    (results / f"pyramids_quality{tag}.json").write_text(json.dumps(result, indent=2) + "\n")
    markdown = _markdown(result)
    (results / f"pyramids_quality{tag}.md").write_text(markdown)
    if not args.no_doc:
        _update_doc(markdown)
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.merge:
        return _merge(args)
    size = args.size or (128 if args.paper else 64)
    episodes = args.episodes or (360 if args.paper else 40)
    test_episodes = args.test_episodes or (90 if args.paper else 20)
    steps = args.steps or (20000 if args.paper else 600)
    lr = args.lr or (1e-4 if args.paper else 1e-3)
    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in names if m not in METHODS]
    if unknown:
        raise KpPerceptionError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    if args.seeds < 1:
        raise KpPerceptionError("--seeds must be >= 1")

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    log = work / "bench.log"
    env = dict(os.environ, KP_PERCEPTION_CACHE=str(work / "cache"), MPLBACKEND="Agg")
    if args.threads > 0:
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    started = time.monotonic()
    train_dir = work / f"sim_train_{size}_{episodes}x{args.frames}"
    test_dir = work / f"sim_test_{size}_{test_episodes}x{args.frames}"
    _simulate(train_dir, episodes, args.frames, size, 1, env, log)
    _simulate(test_dir, test_episodes, args.frames, size, 100_000, env, log)
    sim_seconds = time.monotonic() - started

    finest_stride = paper_finest_stride(size)
    for item in args.set:  # an explicit --set model.finest_stride=... wins, and the JSON says so
        if item.startswith("model.finest_stride="):
            finest_stride = int(item.split("=", 1)[1])
    common = [f"data.image_size={size}", f"model.finest_stride={finest_stride}", f"optim.lr={lr}",
              f"train.batch_size={args.batch_size}",
              "train.num_workers=0", f"train.checkpoint_every={max(steps, 1)}", f"train.image_every={max(steps, 1)}"]
    paper_widths = args.paper or args.architecture == "paper"
    presets = {} if paper_widths else {kind: preset_for(kind) for kind, _ in METHODS.values()}
    runs: list[dict[str, Any]] = []
    for name in names:
        kind, sizes = METHODS[name]
        extra = [s for s in args.set if kind == "pyramids" or not s.startswith(("ablation.", "loss.transport", "loss.spring"))]
        for seed in range(args.seeds):
            run_dir = work / "runs" / f"{name}_s{seed}_{size}px_{steps}st{args.tag and '_' + args.tag}"
            t0 = time.monotonic()
            train_args = ["train", kind, "--data", str(train_dir), "--out", str(run_dir), "--steps", str(steps),
                          "--seed", str(seed), "--no-progress", "--set", *common, *presets.get(kind, []),
                          f"model.keypoints_per_level={json.dumps(sizes)}", *extra]
            if args.max_minutes:
                train_args += ["--max-minutes", str(args.max_minutes)]
            if args.device:
                train_args += ["--device", args.device]
            summary_line = _cli(train_args, env, log).strip().splitlines()[-1]
            train_summary = json.loads(summary_line)
            t1 = time.monotonic()
            metrics_file = run_dir / "landmarks_test.json"
            _cli(["eval", str(run_dir), "--data", str(test_dir), "--annotations", str(test_dir / "annotations.csv"),
                  "--checkpoint", "last", "--seed", str(seed), "--json", str(metrics_file)], env, log)
            metrics = json.loads(metrics_file.read_text())
            runs.append({
                "method": name, "seed": seed, "rmse_px": metrics["rmse_px"],
                "rmse_px_intercept_only": metrics.get("rmse_px_intercept_only"),
                "static_keypoints": metrics.get("static_keypoints"),
                "keypoint_motion_px": metrics.get("keypoint_motion_px"),
                "final_loss_ema": train_summary.get("loss_ema"), "steps": train_summary.get("step"),
                "images_per_second": train_summary.get("images_per_second"),
                "train_seconds": round(t1 - t0, 1), "eval_seconds": round(time.monotonic() - t1, 1),
            })
            if args.int8:
                runs[-1]["int8"] = _int8_scores(run_dir, train_dir, test_dir, seed, args.int8_calibration_frames,
                                                metrics["rmse_px"], env, log)
            print(f"{name} seed {seed}: {metrics['rmse_px']}", file=sys.stderr)

    table = _table(runs)
    result: dict[str, Any] = {
        "setting": {"size": size, "train_episodes": episodes, "test_episodes": test_episodes, "frames": args.frames,
                    "steps": steps, "batch_size": args.batch_size, "lr": lr, "seeds": args.seeds,
                    "paper": bool(args.paper), "cpu_preset": None if paper_widths else CPU_PRESET,
                    "finest_stride": finest_stride,
                    "threads": args.threads, "extra_overrides": args.set},
        "table_rmse_px": table,
        "runs": runs,
        "wall_clock_seconds": {"total": round(time.monotonic() - started, 1), "simulation": round(sim_seconds, 1),
                               "per_run_mean": round(float(np.mean([r["train_seconds"] + r["eval_seconds"] for r in runs])), 1)},
    }
    result["goal"] = _goal(table)
    return _write(result, args)


def _int8_summary(runs: list[dict]) -> dict[str, Any] | None:
    """Issue 18's int8 goals over the runs that have int8 scores: RMSE within 3 %, median deviation <= 1 px."""
    int8_runs = [r for r in runs if "int8" in r]
    if not int8_runs:
        return None
    ratios = [r["int8"]["int8_over_fp32"]["flattened"] for r in int8_runs]
    medians = [r["int8"]["keypoint_deviation_from_fp32_model_px"]["median"] for r in int8_runs]
    return {
        "flattened_rmse_int8_over_fp32": {"mean": float(np.mean(ratios)), "max": float(np.max(ratios)),
                                          "n": len(ratios)},
        "keypoint_deviation_median_px": {"mean": float(np.mean(medians)), "max": float(np.max(medians))},
        "goal_rmse_within_3pct": bool(max(abs(r - 1.0) for r in ratios) <= 0.03),
        "goal_median_deviation_le_1px": bool(max(medians) <= 1.0),
    }


def _int8_scores(run_dir: Path, train_dir: Path, test_dir: Path, seed: int, frames: int,
                 torch_rmse: dict[str, float], env: dict, log: Path) -> dict[str, Any]:
    """Export the run to float32 + int8 ONNX, score both with ``eval --onnx``, compare keypoints on test frames."""
    from kp_perception.sidecar import read_sidecar, sidecar_path
    from kp_perception_training.quantization import cpu_session, int8_path, keypoint_deviation, sample_frames

    onnx = run_dir / "export" / "model.onnx"
    _cli(["export", str(run_dir), "--onnx", str(onnx), "--checkpoint", "last", "--int8", "--calibration",
          str(train_dir), "--calibration-frames", str(frames)], env, log)
    rmse = {}
    for label, model in (("onnx_fp32", onnx), ("int8", int8_path(onnx))):
        out = run_dir / f"landmarks_test_{label}.json"
        _cli(["eval", str(run_dir), "--data", str(test_dir), "--annotations", str(test_dir / "annotations.csv"),
              "--checkpoint", "last", "--seed", str(seed), "--onnx", str(model), "--json", str(out)], env, log)
        rmse[label] = json.loads(out.read_text())["rmse_px"]
    side = read_sidecar(sidecar_path(onnx))
    test_frames = sample_frames([test_dir], side.input_width, side.input_height, 128)
    deviation = keypoint_deviation(cpu_session(onnx), cpu_session(int8_path(onnx)), side.input_name, test_frames)
    return {
        "rmse_px": rmse["int8"],
        "rmse_px_onnx_fp32": rmse["onnx_fp32"],
        "int8_over_fp32": {k: rmse["int8"][k] / rmse["onnx_fp32"][k] for k in rmse["int8"]},
        "int8_over_torch": {k: rmse["int8"][k] / torch_rmse[k] for k in rmse["int8"] if k in torch_rmse},
        "keypoint_deviation_from_fp32_model_px": {**deviation, "test_frames": len(test_frames)},
        "quantization": read_sidecar(sidecar_path(int8_path(onnx))).extra.get("quantization", {}),
    }


def _goal(table: dict) -> dict[str, Any]:
    goal: dict[str, Any] = {}
    p = table.get("pyramids")
    flat30 = {m: table[m]["flattened"]["mean"] for m in ("keynet30", "transporter30") if m in table}
    if p and flat30:
        best_name = min(flat30, key=flat30.get)
        margin = 1.0 - p["flattened"]["mean"] / flat30[best_name]
        goal["best_flat30"] = best_name
        goal["margin_vs_best_flat30"] = margin
        goal["beats_best_flat30_by_7pct"] = bool(margin >= 0.07)
    if p and "level_2" in p:
        l1, l2, fl = p["level_1"]["mean"], p["level_2"]["mean"], p["flattened"]["mean"]
        goal["levels_progress_l1_gt_l2_gt_flat"] = bool(l1 > l2 > fl)
    return goal


def _fmt(cell: dict | None) -> str:
    return "—" if cell is None else f"{cell['mean']:.2f} ± {cell['std']:.2f}"


def _maps(setting: dict) -> str:
    """', FPN maps 16×16 and 32×32' for the two-level FPN of a setting (results before the key existed: '')."""
    stride = setting.get("finest_stride")
    if not stride:
        return ""
    fine = setting["size"] // stride
    return f", FPN maps {fine // 2}×{fine // 2} and {fine}×{fine}"


def _markdown(result: dict) -> str:
    s = result["setting"]
    t = result["table_rmse_px"]
    lines = [
        f"Landmark regression RMSE (pixels of {s['size']}×{s['size']} simulated tabletop frames; lower is better), "
        f"mean ± std over {s['seeds']} seeds. {s['train_episodes']} train / {s['test_episodes']} test episodes of "
        f"{s['frames']} frames, {s['steps']} steps, batch {s['batch_size']}, Adam {s['lr']:g}"
        + (", CPU model preset" if s["cpu_preset"] else ", paper model") + _maps(s)
        + ". Same data, steps and seeds for every method.",
        "",
        "| method | level 1 | level 2 | flattened |",
        "|---|---|---|---|",
    ]
    for name, cells in t.items():
        if name == "pyramids":
            lines.append(f"| Keypoint Pyramids (10+20) | {_fmt(cells.get('level_1'))} | {_fmt(cells.get('level_2'))} | "
                         f"{_fmt(cells.get('flattened'))} |")
        else:
            lines.append(f"| {name} (flat) | — | — | {_fmt(cells.get('flattened'))} |")
    ref = [r["rmse_px_intercept_only"] for r in result["runs"] if r.get("rmse_px_intercept_only") is not None]
    if ref:
        lines.append(f"| no keypoints (intercept only, reference) | — | — | {np.mean(ref):.2f} |")
    if result.get("int8"):
        q = result["int8"]
        lines += ["", f"int8 (ONNX Runtime static QDQ, calibrated on the train set, scored by `eval --onnx` on the "
                  f"same test split): flattened RMSE int8 / float32 ONNX = {q['flattened_rmse_int8_over_fp32']['mean']:.4f} "
                  f"(max {q['flattened_rmse_int8_over_fp32']['max']:.4f}); median keypoint deviation from float32 "
                  f"{q['keypoint_deviation_median_px']['mean']:.3f} px (model input)."]
    g = result["goal"]
    w = result["wall_clock_seconds"]
    lines += ["", f"Wall clock: {w['total'] / 60:.1f} min in all ({w['simulation'] / 60:.1f} min simulation, "
              f"{w['per_run_mean']:.0f} s per train+eval run, torch threads per run: {s['threads']})."]
    if g:
        lines.append("")
        if "margin_vs_best_flat30" in g:
            lines.append(f"- Goal, flattened Pyramids vs best 30-keypoint flat baseline ({g['best_flat30']}): "
                         f"margin {100 * g['margin_vs_best_flat30']:.1f} % (needs ≥ 7 %): "
                         f"{'met' if g['beats_best_flat30_by_7pct'] else 'NOT met'}.")
        if "levels_progress_l1_gt_l2_gt_flat" in g:
            lines.append(f"- Goal, level 1 > level 2 > flattened: "
                         f"{'met' if g['levels_progress_l1_gt_l2_gt_flat'] else 'NOT met'}.")
    return "\n".join(lines) + "\n"


def _update_doc(markdown: str) -> None:
    """Replace the generated table between the markers in docs/results.md; the prose around it stays."""
    doc = docs_path("results.md")
    heading = "" if doc.is_file() and BEGIN in doc.read_text() else f"{SECTION}\n\n"
    update_results_doc(BEGIN, END, f"{BEGIN}\n{heading}{markdown.rstrip()}\n{END}\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    print(json.dumps(run(parser.parse_args()), indent=2))
