"""``kp-perception bench NAME [ARGS...]``: run one benchmark module from the ``bench`` package.

Each benchmark is a module ``bench.<name>`` with ``add_arguments(parser)`` and
``run(args) -> dict``. Only the chosen module is imported, so listing the
benchmarks never pulls in torch. The figures are printed as JSON and, with
``--json FILE``, also written to a file.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys
from pathlib import Path

from kp_perception.errors import KpPerceptionError


def available() -> list[str]:
    try:
        import kp_perception_bench as bench
    except ImportError:
        return []
    return sorted(m.name for m in pkgutil.iter_modules(bench.__path__) if not m.name.startswith("_"))


def add_parser(sub: argparse._SubParsersAction) -> None:
    names = available()
    p = sub.add_parser(
        "bench",
        help="run a benchmark and print its figures as JSON",
        description="Benchmarks: " + (", ".join(names) if names else "(the bench package is not installed)")
        + ". Run `kp-perception bench NAME --help` for a benchmark's options.",
    )
    p.add_argument("name", help="benchmark name: " + ", ".join(names))
    p.add_argument("args", nargs=argparse.REMAINDER, help="the benchmark's own options")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    names = available()
    if args.name not in names:
        raise KpPerceptionError(f"unknown benchmark {args.name!r}; available: {', '.join(names)}")
    module = importlib.import_module(f"kp_perception_bench.{args.name}")
    parser = argparse.ArgumentParser(prog=f"kp-perception bench {args.name}", description=module.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_arguments(parser)
    if not any(a.dest == "json" for a in parser._actions):
        parser.add_argument("--json", help="also write the figures to this file")
    bench_args = parser.parse_args(args.args)
    figures = module.run(bench_args)
    text = json.dumps(figures, indent=2, default=float)
    print(text)
    if getattr(bench_args, "json", None):
        out = Path(bench_args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
        print(f"bench {args.name}: figures written to {out}", file=sys.stderr)
    return 0
