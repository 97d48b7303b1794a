"""TUSK quality vs training time on this machine: Tetrominoes and MNIST-hard (and tabletop purity).

For each dataset and each seed in ``--seeds``: simulate a training and a
held-out test folder with the project's simulators (data seed 1000 + seed and
900000 + seed, so that every seed also sees other images), then train with the
real ``kp-perception train tusk`` in ``--evals`` chunks of ``--max-minutes /
--evals`` minutes each (every chunk resumes the run from ``last.pt``), and
after each chunk evaluate ``last.pt`` on the held-out images with
``kp-perception eval``. Each metric is plotted against cumulative training
wall-clock minutes (process start-up included, eval excluded), one line per
seed, beside the paper's figure.

Stability is part of the result (issue 15): every final figure is reported as
mean ± std over the seeds (std with n − 1) with the per-seed values, and the
issue's goals are checked **on every seed**. The training processes' CPU time
(user + system, their data-loader workers included) is recorded per seed,
because the goals are budgets in CPU-minutes.

``--jobs N`` trains N (dataset, seed) runs side by side. Each run's torch uses
``OMP_NUM_THREADS`` (set it to 1 with ``--jobs 2`` on 2 cores), and its
wall-clock budget is only comparable while every run has a core to itself.

Outputs: JSON on stdout (and ``--json``), ``bench/results/tusk_quality.json``,
``bench/results/tusk_quality.png``, and the "TUSK" section of
``docs/results.md`` (replaced in place between its markers). ``--tag T`` marks
an arm (e.g. a prototype scheme under test): its results go to
``tusk_quality_T.json``/``.png`` only. Each run's log is
``<workdir>/logs/<dataset>_s<seed>.log``.

The budget is wall-clock on THIS machine: the figures depend on how much of
the CPU the run actually got, so the load average before and after is
recorded. ``--gpu-full`` switches to the paper's setting (112 px Tetrominoes,
batch 38; 80 px MNIST-hard, batch 120; on CUDA; long budget).

    python -m kp_perception_bench.tusk_quality --max-minutes 25 --evals 5
    OMP_NUM_THREADS=1 python -m kp_perception_bench.tusk_quality --datasets tetrominoes --seeds 0 1 2 --jobs 2
    python -m kp_perception_bench.tusk_quality --gpu-full --max-minutes 600
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kp_perception.errors import KpPerceptionError
from kp_perception_bench._outputs import results_dir, update_results_doc, work_dir

BEGIN, END = "<!-- TUSK results: begin (bench/tusk_quality.py) -->", "<!-- TUSK results: end -->"

# The paper's numbers (TUSK, NeurIPS 2022), in [0, 1].
PAPER = {
    "tetrominoes": {"foreground_ari": 0.997, "shape_accuracy": 0.913, "colour_accuracy": 1.0},
    "mnist-hard": {"localisation": 0.999, "classification": 0.921},
}
# Issue 15's goals: each metric at least this, on every seed, within the CPU-minute budget.
GOALS = {
    "tetrominoes": {"foreground_ari": 0.99, "shape_accuracy": 0.85, "colour_accuracy": 0.97},
    "mnist-hard": {"classification": 0.80, "localisation": 0.97},
    "tabletop": {"purity": 0.90, "detection_recall": 0.70},
}
GOAL_CPU_MINUTES = {"tetrominoes": 25.0, "mnist-hard": 60.0, "tabletop": 30.0}
CONFIGS = {"tetrominoes": "tusk_tetrominoes", "mnist-hard": "tusk_mnist_hard", "tabletop": "tusk_tabletop"}
GPU_FULL = {
    "tetrominoes": ["data.image_size=112", "model.nms_window=27", "decoder.rgba.sprite_px=67", "train.batch_size=38"],
    "mnist-hard": ["train.batch_size=120"],
    "tabletop": ["data.image_size=128", "model.nms_window=13", "decoder.rgba.sprite_px=33", "train.batch_size=32"],
}
METRICS = {
    "tetrominoes": ["foreground_ari", "shape_accuracy", "colour_accuracy"],
    "mnist-hard": ["localisation", "classification"],
    "tabletop": ["purity", "inverse_purity", "prototypes_used", "detection_recall"],
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--datasets", nargs="+", default=["tetrominoes", "mnist-hard"],
                        choices=sorted(CONFIGS), help="datasets to run (tabletop: prototype purity on video)")
    parser.add_argument("--max-minutes", type=float, default=25.0,
                        help="training budget per dataset and seed (wall clock)")
    parser.add_argument("--evals", type=int, default=5, help="evaluations spread evenly over the budget")
    parser.add_argument("--train-images", type=int, default=3000)
    parser.add_argument("--test-images", type=int, default=300, help="held-out images (different seed)")
    parser.add_argument("--tabletop-episodes", type=int, default=6)
    parser.add_argument("--tabletop-frames", type=int, default=80)
    parser.add_argument("--workdir", type=Path, default=None, help="data and runs (default: build/tusk_quality)")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="extra config overrides")
    parser.add_argument("--gpu-full", action="store_true", help="the paper's full setting on CUDA")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0],
                        help="training seeds; each also simulates its own data (default: 0; the goals want 0 1 2)")
    parser.add_argument("--jobs", type=int, default=1, help="(dataset, seed) runs trained side by side (default 1)")
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite docs/results.md")
    parser.add_argument("--tag", default=None,
                        help="an arm, not the presets: write tusk_quality_TAG.json/.png and leave "
                             "docs/results.md and tusk_quality.json alone")
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: recompute the summary, plot and table from the recorded results")
    parser.add_argument("--fresh", action="store_true",
                        help="drop the other datasets' results from bench/results/tusk_quality.json "
                             "(default: a run replaces only the datasets it ran)")


def _cli(*args: str, log: Path) -> float:
    """Run ``kp-perception ARGS`` with its output appended to ``log``; return its CPU seconds.

    The CPU time (user + system of the process and its reaped children, e.g.
    data-loader workers) comes from ``os.wait4``, so that runs side by side are
    each charged only their own.
    """
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "kp_perception.cli.main", *args]
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as out:
        out.write(f"$ kp-perception {' '.join(args)}\n")
        out.flush()
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        lines = [line for line in log.read_text().splitlines() if line.strip()]
        raise KpPerceptionError(f"kp-perception {' '.join(args[:2])} failed (exit {proc.returncode}): "
                                f"{lines[-1] if lines else '(no output)'}; the whole output is in {log}")
    return usage.ru_utime + usage.ru_stime


def _simulate(name: str, out: Path, num: int, seed: int, args: argparse.Namespace, log: Path) -> Path:
    if (out / "objects.csv").is_file() or (out / "annotations.csv").is_file():
        return out
    if name == "tabletop":
        _cli("sim", "tabletop", "--out", str(out), "--episodes", str(args.tabletop_episodes),
             "--frames", str(args.tabletop_frames), "--size", "128", "--seed", str(seed), log=log)
    else:
        _cli("sim", name, "--out", str(out), "--num", str(num), "--seed", str(seed), log=log)
    return out


def _steps_of(run: Path) -> int:
    import torch

    ckpt = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    return int(ckpt["training"]["step"])


def _overrides(name: str, args: argparse.Namespace) -> list[str]:
    """The config overrides a dataset's runs are trained with: the GPU setting's, then ``--set``."""
    return list(GPU_FULL[name] if args.gpu_full else []) + list(args.set)


def run_seed(name: str, seed: int, args: argparse.Namespace, work: Path, position: int = 0) -> dict[str, Any]:
    """Train one seed in chunks, evaluating the held-out set after each; return its curve."""
    from tqdm import tqdm

    log = work / "logs" / f"{name}_s{seed}.log"
    run = work / f"run_{name}_s{seed}"
    if (run / "last.pt").is_file():
        raise KpPerceptionError(f"{run} already holds a run: its budget would be trained twice. Delete it or "
                                "pass another --workdir")
    train = _simulate(name, work / f"{name}_train_s{seed}", args.train_images, 1000 + seed, args, log)
    test = _simulate(name, work / f"{name}_test_s{seed}", args.test_images, 900_000 + seed, args, log)
    overrides = _overrides(name, args)
    chunk = args.max_minutes / max(args.evals, 1)
    curve = []
    trained = cpu = 0.0
    load_before = round(os.getloadavg()[0], 1)
    for i in tqdm(range(args.evals), desc=f"tusk_quality {name} seed {seed}", unit="chunk", position=position):
        cmd = ["train", "tusk", "--data", str(train), "--out", str(run),
               "--max-minutes", f"{max(chunk * (i + 1) - trained, 0.1):.3f}", "--no-progress", "--seed", str(seed)]
        if args.gpu_full:
            cmd += ["--device", "cuda"]
        if not (run / "last.pt").is_file():  # a resumed run keeps its own config
            cmd += ["--config", CONFIGS[name]] + (["--set", *overrides] if overrides else [])
        t0 = time.perf_counter()
        cpu += _cli(*cmd, log=log)
        trained += (time.perf_counter() - t0) / 60.0
        # last.pt: the checkpoint after this chunk (best.pt may be older: chosen by validation loss every val_every steps).
        eval_args = ["eval", str(run), "--checkpoint", "last", "--data", str(test), "--json", str(run / f"eval_{i}.json")]
        if name == "tabletop":
            eval_args += ["--annotations", str(test / "annotations.csv")]
        _cli(*eval_args, log=log)
        metrics = json.loads((run / f"eval_{i}.json").read_text())
        flat = metrics.get("tabletop") or metrics.get(test.name) or {}
        if "detection" in flat:
            flat = {**flat, **{k: v for k, v in flat.pop("detection").items()}}
        curve.append({"minutes": round(trained, 2), "cpu_minutes": round(cpu / 60.0, 2), "step": _steps_of(run), **flat})
    return {"seed": seed, "curve": curve, "final": curve[-1] if curve else {}, "cpu_minutes": round(cpu / 60.0, 2),
            "load_before": load_before, "load_after": round(os.getloadavg()[0], 1)}


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def summarise(name: str, seeds: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean ± std (n − 1) of each final metric over the seeds, and the goal checked on every seed.

    A seed whose metric is missing or NaN (e.g. purity when no detection matched) fails that goal.
    """
    metrics = {}
    for m in METRICS[name]:
        values = [_number(s["final"].get(m)) for s in seeds]
        present = [v for v in values if v is not None]
        if not present:
            continue
        metrics[m] = {"mean": statistics.fmean(present),
                      "std": statistics.stdev(present) if len(present) > 1 else None,
                      "per_seed": values, "seeds_missing": len(values) - len(present)}
    thresholds = GOALS.get(name, {})
    met_per_seed = [all((v := _number(s["final"].get(m))) is not None and v >= t for m, t in thresholds.items())
                    for s in seeds]
    budget = GOAL_CPU_MINUTES.get(name)
    within = [s.get("cpu_minutes") is not None and budget is not None and s["cpu_minutes"] <= budget for s in seeds]
    goal = {"thresholds": thresholds, "cpu_minutes_budget": budget, "met_per_seed": met_per_seed,
            "within_cpu_budget_per_seed": within,
            "met": bool(seeds) and bool(thresholds) and all(met_per_seed) and all(within)}
    return {"metrics": metrics, "goal": goal}


def _with_summary(result: dict[str, Any]) -> dict[str, Any]:
    """A recorded result with its summary recomputed from its seeds (derived data, never trusted as stored).

    Results written before ``--seeds`` held one run (seed 0, CPU time not recorded): same shape as now.
    """
    if "seeds" in result:
        return {**result, **summarise(result["dataset"], result["seeds"])}
    seed = {"seed": 0, "curve": result.get("curve", []), "final": result.get("final", {}), "cpu_minutes": None,
            "load_before": result.get("load_before"), "load_after": result.get("load_after")}
    rest = {k: v for k, v in result.items() if k not in ("curve", "final", "load_before", "load_after")}
    return {**rest, "seeds": [seed], **summarise(result["dataset"], [seed])}


def _plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(r, m) for r in results for m in _metrics_of(r)]
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.0), squeeze=False)
    for ax, (r, metric) in zip(axes[0], panels, strict=True):
        for s in r["seeds"]:
            xs = [p["minutes"] for p in s["curve"]]
            ys = [p.get(metric) for p in s["curve"]]
            ax.plot(xs, ys, "o-", ms=3, label=f"seed {s['seed']} (this CPU)")
        if metric in r["paper"]:
            ax.axhline(r["paper"][metric], color="k", ls="--", lw=1, label="paper (GPU, 1000 epochs)")
        if metric in r["goal"]["thresholds"]:
            ax.axhline(r["goal"]["thresholds"][metric], color="tab:red", ls=":", lw=1, label="goal")
        ax.set_title(f"{r['dataset']}: {metric}", fontsize=9)
        ax.set_xlabel("training minutes")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _metrics_of(result: dict[str, Any]) -> list[str]:
    """The fraction metrics that the result has (prototypes in use is a count: table only)."""
    return [m for m in result["metrics"] if m != "prototypes_used"]


def _fmt(value: float | None, digits: int = 3) -> str:
    return "nan" if value is None else f"{value:.{digits}f}"


def _markdown(report: dict[str, Any]) -> str:
    lines = [BEGIN, "## TUSK", ""]
    for r in report["results"]:
        seeds = r["seeds"]
        cpu = ", ".join(f"s{s['seed']} {s['cpu_minutes']:.1f}" if s.get("cpu_minutes") is not None
                        else f"s{s['seed']} not recorded" for s in seeds)
        lines.append(
            f"- {r['dataset']} ({r.get('date', 'date not recorded')}): `{r.get('command', '')}`. Budget "
            f"{r.get('max_minutes')} min of training per seed (wall clock, {r.get('evals')} chunks), "
            f"seeds: {', '.join(str(s['seed']) for s in seeds)}; runs side by side: {r.get('jobs', 1)}; CPU minutes "
            f"of training per seed: {cpu}; load average {seeds[0].get('load_before')} before / "
            f"{seeds[-1].get('load_after')} after on {os.cpu_count()} cores."
        )
    lines += [
        "",
        "Held-out test images from a different seed. Mean ± std over seeds (n − 1); per-seed values in seed order; "
        "the goal must hold on every seed within its CPU-minute budget.",
        "",
        "| dataset | metric | ours, mean ± std | per seed | paper | goal | goal met on seeds | steps |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        goal = r["goal"]
        steps = "/".join(str(s["final"].get("step", "")) for s in r["seeds"])
        for m, v in r["metrics"].items():
            digits = 2 if m == "prototypes_used" else 3
            std = "" if v["std"] is None else f" ± {v['std']:.{digits}f}"
            per_seed = " / ".join(_fmt(x, digits) for x in v["per_seed"])
            paper = r["paper"].get(m)
            threshold = goal["thresholds"].get(m)
            met = (f"{sum(1 for s in r['seeds'] if (x := _number(s['final'].get(m))) is not None and x >= threshold)}"
                   f" of {len(r['seeds'])}") if threshold is not None else ""
            lines.append(
                f"| {r['dataset']} | {m} | {v['mean']:.{digits}f}{std} | {per_seed} | "
                f"{'' if paper is None else f'{paper:.3f}'} | {'' if threshold is None else f'≥ {threshold:.2f}'} | "
                f"{met} | {steps} |"
            )
    lines += [""]
    for r in report["results"]:
        goal = r["goal"]
        if goal["thresholds"]:
            lines.append(
                f"- **{r['dataset']} goal {'met' if goal['met'] else 'NOT met'}**: all thresholds on "
                f"{sum(goal['met_per_seed'])} of {len(goal['met_per_seed'])} seeds; within "
                f"{goal['cpu_minutes_budget']:.0f} CPU-min on {sum(goal['within_cpu_budget_per_seed'])} of "
                f"{len(goal['within_cpu_budget_per_seed'])}"
                f"{' (not recorded before `--seeds`)' if any(x.get('cpu_minutes') is None for x in r['seeds']) else ''}.")
    lines += ["", "Trend (metric after each chunk):", ""]
    for r in report["results"]:
        for m in _metrics_of(r):
            for s in r["seeds"]:
                pts = ", ".join(f"{p['minutes']:.0f} min: {_fmt(_number(p.get(m)))}" for p in s["curve"])
                lines.append(f"- {r['dataset']} {m}, seed {s['seed']}: {pts}")
    lines += ["", "![TUSK quality vs training time](../bench/results/tusk_quality.png)", "", END]
    return "\n".join(lines) + "\n"


def _command() -> str:
    if sys.argv[0].endswith("tusk_quality.py"):
        return "python -m kp_perception_bench.tusk_quality " + " ".join(sys.argv[1:])
    return "kp-perception bench tusk_quality " + " ".join(sys.argv[3:])


def _merge(previous: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Results by dataset: this run's replace earlier ones, the others are kept; in CONFIGS order."""
    by_name = {r["dataset"]: _with_summary(r) for r in previous} | {r["dataset"]: r for r in new}
    return [by_name[name] for name in CONFIGS if name in by_name]


def _write(report: dict[str, Any], stem: str, doc: bool) -> None:
    results_folder = results_dir()
    results_folder.mkdir(parents=True, exist_ok=True)
    (results_folder / f"{stem}.json").write_text(json.dumps(report, indent=2))
    _plot(report["results"], results_folder / f"{stem}.png")
    if doc:
        update_results_doc(BEGIN, END, _markdown(report))


def run(args: argparse.Namespace) -> dict[str, Any]:
    stem = f"tusk_quality_{args.tag}" if args.tag else "tusk_quality"
    path = results_dir() / f"{stem}.json"
    doc = not args.no_doc and not args.tag
    if args.report_only:
        if not path.is_file():
            raise KpPerceptionError(f"--report-only: no recorded results in {path}")
        report = {"benchmark": "tusk_quality", "tag": args.tag,
                  "results": _merge(json.loads(path.read_text()).get("results", []), [])}
        _write(report, stem, doc)
        return report
    if args.jobs < 1:
        raise KpPerceptionError("--jobs must be >= 1")
    if len(set(args.seeds)) != len(args.seeds):
        raise KpPerceptionError(f"--seeds repeats a seed: {args.seeds}")
    work = args.workdir or work_dir("tusk_quality")
    work.mkdir(parents=True, exist_ok=True)
    tasks = [(name, seed) for name in args.datasets for seed in args.seeds]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {task: pool.submit(run_seed, *task, args, work, i % args.jobs) for i, task in enumerate(tasks)}
        done = {task: future.result() for task, future in futures.items()}
    results = []
    for name in args.datasets:
        seeds = [done[(name, seed)] for seed in args.seeds]
        results.append({"dataset": name, "config": CONFIGS[name], "overrides": _overrides(name, args), "seeds": seeds,
                        **summarise(name, seeds), "paper": PAPER.get(name, {}), "command": _command(),
                        "max_minutes": args.max_minutes, "evals": args.evals, "jobs": args.jobs,
                        "gpu_full": args.gpu_full, "date": time.strftime("%Y-%m-%d")})
    previous = [] if args.fresh or not path.is_file() else json.loads(path.read_text()).get("results", [])
    report = {"benchmark": "tusk_quality", "tag": args.tag, "results": _merge(previous, results)}
    _write(report, stem, doc)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    from kp_perception_bench._entry import run_as_module

    run_as_module("tusk_quality")
