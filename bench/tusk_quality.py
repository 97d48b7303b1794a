"""TUSK quality vs training time on this machine: Tetrominoes and MNIST-hard (and tabletop purity).

For each dataset: simulate a training and a held-out test folder with the
project's simulators, then train with the real ``kp-perception train tusk``
in ``--evals`` chunks of ``--max-minutes / --evals`` minutes each (every chunk
resumes the run from ``last.pt``), and after each chunk evaluate ``last.pt`` on
the held-out images with ``kp-perception eval``. Each metric is plotted
against cumulative training wall-clock minutes (process start-up included,
eval excluded), beside the paper's figure.

Outputs: JSON on stdout (and ``--json``), ``bench/results/tusk_quality.json``,
``bench/results/tusk_quality.png``, and the "TUSK" section of
``docs/results.md`` (replaced in place between its markers).

The budget is wall-clock on THIS machine: the figures depend on how much of
the CPU the run actually got, so the load average before and after is
recorded. ``--gpu-full`` switches to the paper's setting (112 px Tetrominoes,
batch 38; 80 px MNIST-hard, batch 120; on CUDA; long budget).

    python -m kp_perception_bench.tusk_quality --max-minutes 25 --evals 5
    python -m kp_perception_bench.tusk_quality --datasets tetrominoes --max-minutes 25   # the ARI goal
    python -m kp_perception_bench.tusk_quality --gpu-full --max-minutes 600
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from kp_perception_bench._outputs import results_dir, update_results_doc, work_dir

BEGIN, END = "<!-- TUSK results: begin (bench/tusk_quality.py) -->", "<!-- TUSK results: end -->"

# The paper's numbers (TUSK, NeurIPS 2022), in [0, 1].
PAPER = {
    "tetrominoes": {"foreground_ari": 0.997, "shape_accuracy": 0.913, "colour_accuracy": 1.0},
    "mnist-hard": {"localisation": 0.999, "classification": 0.921},
}
CONFIGS = {"tetrominoes": "tusk_tetrominoes", "mnist-hard": "tusk_mnist_hard", "tabletop": "tusk_tabletop"}
GPU_FULL = {
    "tetrominoes": ["data.image_size=112", "model.nms_window=27", "decoder.rgba.sprite_px=67", "train.batch_size=38"],
    "mnist-hard": ["train.batch_size=120"],
    "tabletop": ["data.image_size=128", "model.nms_window=13", "decoder.rgba.sprite_px=33", "train.batch_size=32"],
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--datasets", nargs="+", default=["tetrominoes", "mnist-hard"],
                        choices=sorted(CONFIGS), help="datasets to run (tabletop: prototype purity on video)")
    parser.add_argument("--max-minutes", type=float, default=25.0, help="training budget per dataset (wall clock)")
    parser.add_argument("--evals", type=int, default=5, help="evaluations spread evenly over the budget")
    parser.add_argument("--train-images", type=int, default=3000)
    parser.add_argument("--test-images", type=int, default=300, help="held-out images (different seed)")
    parser.add_argument("--tabletop-episodes", type=int, default=6)
    parser.add_argument("--tabletop-frames", type=int, default=80)
    parser.add_argument("--workdir", type=Path, default=None, help="data and runs (default: build/tusk_quality)")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="extra config overrides")
    parser.add_argument("--gpu-full", action="store_true", help="the paper's full setting on CUDA")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite docs/results.md")
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--fresh", action="store_true",
                        help="drop the other datasets' results from bench/results/tusk_quality.json "
                             "(default: a run replaces only the datasets it ran)")


def _cli(*args: str, timeout: float | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "kp_perception.cli.main", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise RuntimeError(f"{' '.join(args[:2])} failed: {tail[0]}")
    return proc


def _simulate(name: str, out: Path, num: int, seed: int, args: argparse.Namespace) -> Path:
    if (out / "objects.csv").is_file() or (out / "annotations.csv").is_file():
        return out
    if name == "tabletop":
        _cli("sim", "tabletop", "--out", str(out), "--episodes", str(args.tabletop_episodes),
             "--frames", str(args.tabletop_frames), "--size", "128", "--seed", str(seed))
    else:
        _cli("sim", name, "--out", str(out), "--num", str(num), "--seed", str(seed))
    return out


def _steps_of(run: Path) -> int:
    import torch

    ckpt = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    return int(ckpt["training"]["step"])


def run_dataset(name: str, args: argparse.Namespace, work: Path) -> dict:
    """Train in chunks, evaluating the held-out set after each; return the curve."""
    from tqdm import tqdm

    train = _simulate(name, work / f"{name}_train", args.train_images, 1000 + args.seed, args)
    test = _simulate(name, work / f"{name}_test", args.test_images, 900_000 + args.seed, args)
    run = work / f"run_{name}"
    overrides = list(GPU_FULL[name] if args.gpu_full else []) + list(args.set)
    chunk = args.max_minutes / max(args.evals, 1)
    curve = []
    trained = 0.0
    for i in tqdm(range(args.evals), desc=f"tusk_quality {name}", unit="chunk"):
        cmd = ["train", "tusk", "--data", str(train), "--out", str(run),
               "--max-minutes", f"{max(chunk * (i + 1) - trained, 0.1):.3f}", "--no-progress", "--seed", str(args.seed)]
        if args.gpu_full:
            cmd += ["--device", "cuda"]
        if not (run / "last.pt").is_file():  # a resumed run keeps its own config
            cmd += ["--config", CONFIGS[name]] + (["--set", *overrides] if overrides else [])
        t0 = time.perf_counter()
        _cli(*cmd)
        trained += (time.perf_counter() - t0) / 60.0
        # last.pt: the checkpoint after this chunk (best.pt may be older: chosen by validation loss every val_every steps).
        eval_args = ["eval", str(run), "--checkpoint", "last", "--data", str(test), "--json", str(run / f"eval_{i}.json")]
        if name == "tabletop":
            eval_args += ["--annotations", str(test / "annotations.csv")]
        _cli(*eval_args)
        metrics = json.loads((run / f"eval_{i}.json").read_text())
        flat = metrics.get("tabletop") or metrics.get(test.name) or {}
        if "detection" in flat:
            flat = {**flat, **{k: v for k, v in flat.pop("detection").items()}}
        curve.append({"minutes": round(trained, 2), "step": _steps_of(run), **flat})
    return {"dataset": name, "config": CONFIGS[name], "overrides": overrides, "curve": curve,
            "final": curve[-1] if curve else {}, "paper": PAPER.get(name, {})}


def _plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(r["dataset"], m) for r in results for m in _metrics_of(r)]
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.0), squeeze=False)
    for ax, (name, metric) in zip(axes[0], panels, strict=True):
        r = next(x for x in results if x["dataset"] == name)
        xs = [p["minutes"] for p in r["curve"]]
        ys = [p.get(metric) for p in r["curve"]]
        ax.plot(xs, ys, "o-", label="ours (this CPU)")
        if metric in r["paper"]:
            ax.axhline(r["paper"][metric], color="k", ls="--", lw=1, label="paper (GPU, 1000 epochs)")
        ax.set_title(f"{name}: {metric}", fontsize=9)
        ax.set_xlabel("training minutes")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _metrics_of(result: dict) -> list[str]:
    wanted = {
        "tetrominoes": ["foreground_ari", "shape_accuracy", "colour_accuracy"],
        "mnist-hard": ["localisation", "classification"],
        "tabletop": ["purity", "inverse_purity", "detection_recall"],
    }[result["dataset"]]
    return [m for m in wanted if any(isinstance(p.get(m), int | float) for p in result["curve"])]


def _markdown(report: dict) -> str:
    lines = [BEGIN, "## TUSK", ""]
    for r in report["results"]:
        lines.append(
            f"- {r['dataset']} ({r.get('date', 'date not recorded')}): `{r.get('command', '')}`. Budget "
            f"{r.get('max_minutes')} min of training (wall clock, {r.get('evals')} chunks), CPU load average "
            f"{r.get('load_before')} before / {r.get('load_after')} after on {os.cpu_count()} cores."
        )
    lines += [
        "",
        "Held-out test images from a different seed.",
        "",
        "| dataset | metric | ours | paper | steps | minutes |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        final = r["final"]
        for m in _metrics_of(r):
            paper = r["paper"].get(m)
            lines.append(
                f"| {r['dataset']} | {m} | {final.get(m, float('nan')):.3f} | "
                f"{'' if paper is None else f'{paper:.3f}'} | {final.get('step', '')} | {final.get('minutes', '')} |"
            )
    lines += ["", "Trend (metric after each chunk):", ""]
    for r in report["results"]:
        for m in _metrics_of(r):
            pts = ", ".join(f"{p['minutes']:.0f} min: {p.get(m, float('nan')):.3f}" for p in r["curve"])
            lines.append(f"- {r['dataset']} {m}: {pts}")
    lines += ["", "![TUSK quality vs training time](../bench/results/tusk_quality.png)", "", END]
    return "\n".join(lines) + "\n"


def _command() -> str:
    if sys.argv[0].endswith("tusk_quality.py"):
        return "python -m kp_perception_bench.tusk_quality " + " ".join(sys.argv[1:])
    return "kp-perception bench tusk_quality " + " ".join(sys.argv[3:])


def _merge(previous: list[dict], new: list[dict]) -> list[dict]:
    """Results by dataset: this run's replace earlier ones, the others are kept; in CONFIGS order."""
    by_name = {r["dataset"]: r for r in previous} | {r["dataset"]: r for r in new}
    return [by_name[name] for name in CONFIGS if name in by_name]


def run(args: argparse.Namespace) -> dict:
    work = args.workdir or work_dir("tusk_quality")
    work.mkdir(parents=True, exist_ok=True)
    results = []
    for name in args.datasets:
        load_before = round(os.getloadavg()[0], 1)
        result = run_dataset(name, args, work)
        result |= {"command": _command(), "max_minutes": args.max_minutes, "evals": args.evals,
                   "gpu_full": args.gpu_full, "load_before": load_before,
                   "load_after": round(os.getloadavg()[0], 1), "date": time.strftime("%Y-%m-%d")}
        results.append(result)
    results_folder = results_dir()
    path = results_folder / "tusk_quality.json"
    previous = [] if args.fresh or not path.is_file() else json.loads(path.read_text()).get("results", [])
    report = {"benchmark": "tusk_quality", "results": _merge(previous, results)}
    results_folder.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    _plot(report["results"], results_folder / "tusk_quality.png")
    if not args.no_doc:
        update_results_doc(BEGIN, END, _markdown(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    from kp_perception_bench._entry import run_as_module

    run_as_module("tusk_quality")
