"""Where benchmarks keep their work, write their results and which docs they may update.

From a source checkout the benchmarks write what the repository commits: work
folders under ``build/``, results under ``bench/results/`` and their tables
into ``docs/results.md``. Installed with ``pip install .`` there is no
repository to write into (``Path(__file__).parent.parent`` would be
site-packages), so work and results go under ``./kp_perception_bench/`` in the
current directory and no documentation is touched; a line on stderr says so.
"""

from __future__ import annotations

import sys
from pathlib import Path

from kp_perception.resources import source_checkout
from kp_perception_bench._doc_block import write_block

INSTALLED_ROOT = Path("kp_perception_bench")  # relative to the current directory


def work_dir(name: str) -> Path:
    """A benchmark's scratch folder (data, runs, caches): ``build/<name>`` of the checkout."""
    root = source_checkout()
    return root / "build" / name if root is not None else INSTALLED_ROOT / "work" / name


def results_dir() -> Path:
    """Where result files go: ``bench/results`` of the checkout."""
    root = source_checkout()
    return root / "bench" / "results" if root is not None else INSTALLED_ROOT / "results"


def docs_path(*parts: str) -> Path:
    """A file under the checkout's ``docs/`` (figures); installed: under the results folder."""
    root = source_checkout()
    return root.joinpath("docs", *parts) if root is not None else results_dir().joinpath(*parts)


def update_results_doc(begin: str, end: str, text: str) -> None:
    """Replace the marked block of the checkout's ``docs/results.md``; installed, say that nothing was updated."""
    root = source_checkout()
    if root is None:
        print("bench: not a source checkout, docs/results.md not updated (results are in "
              f"{results_dir().resolve()})", file=sys.stderr)
        return
    write_block(root / "docs" / "results.md", begin, end, text)
