"""Where the package's data files are: parameter files, training configs, launch files, shipped models.

Why one function: the same code runs from a source checkout (``make setup``'s
editable install, tests), from a wheel installed with ``pip install .`` and
from a colcon/ament install. The data files are not Python packages, so they
are installed the ament way, under ``<prefix>/share/kp_perception/`` (see
``setup.py``'s ``data_files``), and found through the ament index:
``share/ament_index/resource_index/packages/kp_perception`` under a prefix in
``AMENT_PREFIX_PATH`` or under the running interpreter's ``sys.prefix``.
A source checkout (the folder above this package holds ``package.xml``) wins,
so an edited config in the checkout is the one used.
"""

from __future__ import annotations

import os
import sys
from functools import lru_cache
from pathlib import Path

from kp_perception.errors import KpPerceptionError

PACKAGE = "kp_perception"


def source_checkout() -> Path | None:
    """The repository root when running from a source checkout (editable install, tests), else None."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "package.xml").is_file() and (root / "config").is_dir() else None


def _installed_prefixes() -> list[Path]:
    prefixes = [Path(p) for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    prefixes.append(Path(sys.prefix))
    return prefixes


@lru_cache(maxsize=1)
def share_directory() -> Path:
    """The folder holding ``config/``, ``launch/`` and ``models/`` for this installation."""
    checkout = source_checkout()
    if checkout is not None:
        return checkout
    for prefix in _installed_prefixes():
        marker = prefix / "share" / "ament_index" / "resource_index" / "packages" / PACKAGE
        if marker.is_file():
            return prefix / "share" / PACKAGE
    raise KpPerceptionError(
        f"cannot find the {PACKAGE} data files (config/, launch/, models/): not a source checkout and no "
        f"share/{PACKAGE} under AMENT_PREFIX_PATH or {sys.prefix}; reinstall the package"
    )


def share_path(*parts: str) -> Path:
    """A path under :func:`share_directory`, e.g. ``share_path("config", "training")``."""
    return share_directory().joinpath(*parts)
