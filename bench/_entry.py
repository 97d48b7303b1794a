"""``python -m kp_perception_bench.NAME`` runs exactly what ``kp-perception bench NAME`` runs.

One entry for every benchmark module, so that both spellings parse the same options (``--json``
included), print the same JSON and turn a ``KpPerceptionError`` into the same one-line error.
"""

from __future__ import annotations

import sys
from typing import NoReturn


def run_as_module(name: str) -> NoReturn:
    """Exit with ``kp-perception bench NAME ARGS...`` run on this process's command line."""
    from kp_perception.cli.main import main

    sys.exit(main(["bench", name, *sys.argv[1:]]))
