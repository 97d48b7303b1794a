"""colcon (from PyPI) builds both packages from a clean copy of the repository.

This is how a robot builds the project: a workspace, ``colcon build`` naming
the nested interface package (colcon's crawler stops at the root
package.xml, see README.md, "Building on a robot"), then ``source install/setup.bash``. The
built packages must then be what Python imports: modules and shared
libraries from the install space, not the copies ``make setup`` put in .venv.

Slow (about 20-70 s on 2 shared cores), hence one module-scoped build.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BUILD_TIMEOUT = 300

pytestmark = pytest.mark.timeout(BUILD_TIMEOUT + 60)

if importlib.util.find_spec("colcon_core") is None or shutil.which("cmake") is None:
    pytest.skip("colcon (colcon-common-extensions) or cmake is not installed", allow_module_level=True)

_SKIP_DIRS = {".git", ".venv", "build", "install", "log", "__pycache__", ".pytest_cache", ".ruff_cache"}


def copy_repository(dest: Path) -> None:
    """A clean copy: the files git tracks (as they are in the working tree), else all but build output."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True,
                                timeout=30).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):
        listed = []
    files = [f for f in listed if f and (REPO / f).is_file()]
    if files:
        for rel in files:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dest / rel)
    else:
        shutil.copytree(REPO, dest, ignore=lambda _d, names: [n for n in names if n in _SKIP_DIRS],
                        dirs_exist_ok=True)


def _venv_prefix() -> str:
    return os.environ.get("VIRTUAL_ENV") or sys.prefix


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    ws = tmp_path_factory.mktemp("colcon_ws")
    src = ws / "src"
    src.mkdir()
    copy_repository(src)
    assert (src / "package.xml").is_file() and (src / "kp_perception_msgs" / "package.xml").is_file()
    prefix = _venv_prefix()
    env = dict(os.environ, CMAKE_PREFIX_PATH=prefix, AMENT_PREFIX_PATH=prefix)
    cmd = [
        sys.executable, "-m", "colcon", "--log-base", str(ws / "log"), "build",
        "--base-paths", str(src), str(src / "kp_perception_msgs"),
        "--build-base", str(ws / "build"), "--install-base", str(ws / "install"),
        "--event-handlers", "console_cohesion+",
        "--cmake-args", f"-DPython3_EXECUTABLE={sys.executable}", "-DBUILD_TESTING=OFF",
    ]
    result = subprocess.run(cmd, cwd=ws, env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    assert result.returncode == 0, f"colcon build failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    assert "2 packages finished" in result.stdout, result.stdout[-2000:]
    return ws


def run_in_install_space(ws: Path, code: str) -> dict:
    """Run ``code`` in a fresh Python after ``source install/setup.bash``; it prints one JSON line."""
    script = f'source "{ws}/install/setup.bash" && exec "{sys.executable}" -c "$0"'
    result = subprocess.run(["bash", "-c", script, code], cwd=ws, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_built_messages_import_and_serialize_from_the_install_space(workspace):
    code = """
import json, kp_perception_msgs
from kp_perception_msgs.msg import KeypointPyramid, Keypoint, PrototypeDetectionArray, PrototypeDetection
from rclpy.serialization import deserialize_message, serialize_message
msg = KeypointPyramid(level_sizes=[1, 2], keypoints=[Keypoint(x=1.5, parent=-1)])
back = deserialize_message(serialize_message(msg), KeypointPyramid)
det = PrototypeDetectionArray(detections=[PrototypeDetection(descriptor=[0.25, -0.5])])
det_back = deserialize_message(serialize_message(det), PrototypeDetectionArray)
libs = sorted({l.split()[-1] for l in open('/proc/self/maps') if 'libkp_perception_msgs' in l})
print(json.dumps({"file": kp_perception_msgs.__file__, "libs": libs,
                  "level_sizes": list(back.level_sizes), "x": back.keypoints[0].x,
                  "parent": back.keypoints[0].parent,
                  "descriptor": list(det_back.detections[0].descriptor)}))
"""
    out = run_in_install_space(workspace, code)
    install = str(workspace / "install" / "kp_perception_msgs")
    assert out["file"].startswith(install), out["file"]
    # The C type support loaded is the freshly built one, not .venv's copy.
    assert out["libs"] and all(lib.startswith(install) for lib in out["libs"]), out["libs"]
    assert out["level_sizes"] == [1, 2] and out["x"] == 1.5 and out["parent"] == -1
    assert out["descriptor"] == [0.25, -0.5]


def test_kp_perception_is_installed_as_an_ament_python_package(workspace):
    install = workspace / "install" / "kp_perception"
    assert (install / "share" / "ament_index" / "resource_index" / "packages" / "kp_perception").is_file()
    assert (install / "share" / "kp_perception" / "package.xml").is_file()
    # `ros2 run kp_perception <node>` looks for executables in lib/<package>/.
    for script in ("kp-perception", "pyramids_node", "tusk_node"):
        path = install / "lib" / "kp_perception" / script
        assert path.is_file() and os.access(path, os.X_OK), path
    out = run_in_install_space(workspace, "import json, kp_perception; print(json.dumps(kp_perception.__file__))")
    assert out.startswith(str(install)), out
    result = subprocess.run(
        ["bash", "-c", f'source "{workspace}/install/setup.bash" && "{install}/lib/kp_perception/kp-perception" --help'],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0 and "usage: kp-perception" in result.stdout, result.stderr[-2000:]
