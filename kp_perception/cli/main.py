"""The ``kp-perception`` entry point.

Each subcommand lives in its own module under ``kp_perception.cli`` and exposes
``add_parser(subparsers)``; the module must not import torch at import time,
so ``kp-perception --help`` and robot-side commands stay light. Any
``KpPerceptionError`` becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from kp_perception.errors import KpPerceptionError

# Subcommand name -> module under kp_perception.cli defining add_parser().
SUBCOMMANDS = {
    "sim": "sim",
    "data": "data",
    "train": "train",
    "eval": "evaluate",
    "export": "export",
    "infer": "infer",
    "bench": "bench",
    "demo": "demo",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kp-perception",
        description="Unsupervised keypoint perception: simulate, train, evaluate, export, infer, benchmark.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module in SUBCOMMANDS.items():
        try:
            mod = importlib.import_module(f"kp_perception.cli.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"kp_perception.cli.{module}":
                raise
            stub = sub.add_parser(name, help="(not implemented yet)")
            stub.set_defaults(func=_not_implemented(name))
            continue
        mod.add_parser(sub)
    return parser


def _not_implemented(name: str):
    def run(_args: argparse.Namespace) -> int:
        raise KpPerceptionError(f"'{name}' is not implemented yet")

    return run


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KpPerceptionError as exc:
        print(f"kp-perception {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"kp-perception {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `kp-perception data inspect DIR | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
