"""Test-wide environment: isolated ROS domain, Fast DDS large-data transport, headless rendering."""

import os
import random
import sys

# Each pytest session gets its own DDS domain so parallel runs never see each other's topics.
os.environ.setdefault("ROS_DOMAIN_ID", str(random.Random(os.getpid()).randint(1, 100)))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
# 640x480 frames are lost between processes with Fast DDS's default transports (docs/troubleshooting.md).
os.environ.setdefault("FASTDDS_BUILTIN_TRANSPORTS", "LARGE_DATA")
os.environ.setdefault("MPLBACKEND", "Agg")

# Tests start console scripts (kp-perception, pyramids_node) as a user would. `make test` runs
# .venv/bin/python without activating the venv, so put the interpreter's bin folder on PATH.
_BIN = os.path.dirname(sys.executable)
if _BIN not in os.environ.get("PATH", "").split(os.pathsep):
    os.environ["PATH"] = _BIN + os.pathsep + os.environ.get("PATH", "")
