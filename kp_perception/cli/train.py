"""``kp-perception train {pyramids,tusk,keynet,transporter}``: train a model into a run directory.

The loop is ``kp_perception_training.trainer.train`` (imported inside :func:`run`, so
``kp-perception --help`` imports no torch). Running the same command on the
same ``--out`` again resumes from ``RUN/last.pt``; under ``torchrun`` every
rank runs this command and rank 0 writes the run directory.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from kp_perception.kinds import KIND_NAMES


def add_parser(subparsers) -> None:
    sub = subparsers.add_parser(
        "train",
        help="train Keypoint Pyramids, TUSK or a flat KeyNet/Transporter baseline",
        description=(
            "Train a model on bags, videos, image folders or multi-object folders. RUN/ receives config.yaml "
            "(resolved), last.pt, best.pt (lowest val loss, or lowest training-loss EMA without a val split) "
            "tb/ (TensorBoard scalars and images) and images/ (the example images as PNG). Running it again on the same RUN resumes exactly from "
            "last.pt; only --steps, --max-minutes and logging settings may change then. Ctrl-C/SIGTERM "
            "stop cleanly with a checkpoint and exit with 130/143 (128 + the signal number; 0 when the run "
            "finished or --max-minutes ran out). Multi-process: torchrun --nproc_per_node N $(which kp-perception) "
            "train ... (gloo on CPU, NCCL on GPU)."
        ),
    )
    sub.add_argument("kind", choices=KIND_NAMES, help="method to train")
    sub.add_argument("--data", nargs="+", metavar="PATH", help="training data sources (required to train)")
    sub.add_argument("--out", type=Path, metavar="RUN", help="run directory, resumed if it holds last.pt "
                     "(required to train)")
    sub.add_argument(
        "--config", metavar="YAML",
        help="config file or name in config/training/ (default: the kind's; on resume: the run's own config)",
    )
    sub.add_argument("--steps", type=int, metavar="N", help="total training steps (train.steps)")
    sub.add_argument(
        "--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
        help="override a config value, e.g. --set optim.lr=1e-3 model.keypoints_per_level=[10,20] (repeatable)",
    )
    sub.add_argument(
        "--max-minutes", type=float, metavar="M",
        help="stop cleanly (checkpoint written) after M minutes of training in this invocation, "
        "setup and frame caching excluded (train.max_minutes)",
    )
    sub.add_argument("--seed", type=int, metavar="K", help="random seed (train.seed)")
    sub.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available, else cpu")
    sub.add_argument("--no-progress", action="store_true", help="no progress bar (e.g. in logs)")
    sub.add_argument(
        "--print-config", action="store_true",
        help="print the resolved config (every key, with --config and --set applied) as YAML and exit",
    )
    sub.add_argument(
        "--write-rank-hashes", action="store_true",
        help="each rank writes RUN/rank_<r>_params.sha256 at the end (checks DDP replicas agree)",
    )
    sub.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kp_perception.errors import ConfigError

    if args.steps is not None and args.steps < 1:
        raise ConfigError(f"--steps {args.steps}: expected >= 1")
    if args.max_minutes is not None and args.max_minutes < 0:
        raise ConfigError(f"--max-minutes {args.max_minutes}: expected >= 0")
    overrides = list(args.set)
    if args.steps is not None:
        overrides.append(f"train.steps={args.steps}")
    if args.max_minutes is not None:
        overrides.append(f"train.max_minutes={args.max_minutes}")
    if args.seed is not None:
        overrides.append(f"train.seed={args.seed}")

    from kp_perception_training.config import config_yaml, load_config
    from kp_perception_training.trainer import resolve_run_config, summary_line, train

    if args.print_config:  # with --out: what a resumed run would use
        if args.out is not None:
            config = resolve_run_config(args.kind, args.out, args.config, overrides)
        else:
            config = load_config(args.kind, args.config, overrides)
        print(config_yaml(config), end="")
        return 0
    missing = [flag for flag, value in (("--data", args.data), ("--out", args.out)) if not value]
    if missing:
        raise ConfigError(f"{' and '.join(missing)} {'are' if len(missing) > 1 else 'is'} required to train")
    config = resolve_run_config(args.kind, args.out, args.config, overrides)
    summary = train(
        args.kind, config, args.data, args.out, device=args.device,
        progress=not args.no_progress, write_rank_hashes=args.write_rank_hashes,
    )
    if summary["rank"] == 0:  # under torchrun, one summary line
        print(summary_line(summary))
    return exit_status(summary["stopped"])


def exit_status(stopped: str) -> int:
    """0 for a finished run or a spent --max-minutes budget; 128 + the signal's number for SIGINT/SIGTERM.

    A script can then tell a run that was stopped (130, 143: the shell's convention
    for a process ended by that signal) from one that reached its end; both leave
    ``last.pt`` written, and rerunning the command resumes.
    """
    import signal

    if not stopped.startswith("signal "):
        return 0
    name = stopped.split()[1]
    return 128 + (signal.Signals[name].value if name in signal.Signals.__members__ else signal.SIGTERM.value)
