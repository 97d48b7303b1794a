"""launch/pyramids.launch.py and launch/tusk.launch.py run for real, through ``launch.LaunchService``.

``launch`` and ``launch_ros`` are pure Python but on no package registry; their
unmodified sources are vendored beside the repository for these tests
(``../shared/vendor/ros2_launch``, or the folder named by
``KP_ROS2_LAUNCH_SOURCES``). Absent (a user's clone), every test here skips
and says why. A session fixture builds, once, into ``build/ros2_launch_test/``:

- ``launch`` + ``launch_ros`` installed with ``pip --target`` (no dependencies;
  osrf-pycommon and lark come from requirements.txt);
- ``composition_interfaces`` (imported by launch_ros), built with the same
  cmake recipe as kp_perception_msgs into its own prefix;
- kp_perception installed by ``colcon build`` (ament index, ``lib/kp_perception``
  executables, ``share/kp_perception/{launch,config}``), so ``launch_ros``
  finds the node the way ``ros2 launch`` does on a robot.

The launch runs as its own process (test/ros_helpers/run_launch.py, what
``ros2 launch`` does), and this process is a second rclpy participant that
sends frames and receives the outputs. The helper-based tests in
test_nodes.py stay: they cover the parameters the launch files pass.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import threading
from pathlib import Path

import pytest

rclpy = pytest.importorskip("rclpy")

from lifecycle_msgs.msg import Transition  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402

from kp_perception_msgs.msg import KeypointPyramid, PrototypeDetectionArray  # noqa: E402
from test.test_lifecycle import Lifecycle  # noqa: E402
from test.test_nodes import (  # noqa: E402
    REPO,
    Peer,
    check_pyramid,
    compressed_msg,
    publish_until,
    raw_msg,
    wait_for,
)

pytestmark = pytest.mark.timeout(420)

VENDOR = Path(os.environ.get("KP_ROS2_LAUNCH_SOURCES") or REPO.parent / "shared" / "vendor" / "ros2_launch")
CACHE = REPO / "build" / "ros2_launch_test"
RUN_LAUNCH = REPO / "test" / "ros_helpers" / "run_launch.py"
CMAKE_FIX = REPO / "test" / "ros_helpers" / "wheel_python_includes.cmake"


def _run(cmd: list[str], log: Path, **kwargs) -> None:
    with open(log, "w") as out:
        result = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=600, **kwargs)
    if result.returncode != 0:
        pytest.fail(f"{' '.join(map(str, cmd[:4]))} ... failed ({result.returncode}); last lines of {log}:\n"
                    + "\n".join(log.read_text().splitlines()[-30:]))


def _digest(root: Path) -> str:
    h = hashlib.sha256(sys.executable.encode())
    for path in sorted(p for p in root.rglob("*") if p.is_file() and "build" not in p.parts
                       and ".egg-info" not in str(p) and "__pycache__" not in p.parts):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _build_vendored(prefix_env: dict[str, str]) -> None:
    """launch + launch_ros (pip --target) and composition_interfaces (cmake) into CACHE, if not there yet."""
    stamp = CACHE / "vendored.stamp"
    key = _digest(VENDOR) + hashlib.sha256(CMAKE_FIX.read_bytes()).hexdigest()[:8]
    if stamp.is_file() and stamp.read_text() == key:
        return
    for sub in ("src", "site", "prefix", "cmake_build"):
        shutil.rmtree(CACHE / sub, ignore_errors=True)
    src = CACHE / "src"
    for package in ("launch", "launch_ros"):  # copies: pip writes build/ and egg-info next to the sources
        shutil.copytree(VENDOR / package, src / package,
                        ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    _run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
          "--target", str(CACHE / "site"), str(src / "launch"), str(src / "launch_ros")], CACHE / "pip.log")
    build = CACHE / "cmake_build"
    build.mkdir()
    _run(["cmake", str(VENDOR / "composition_interfaces"), f"-DCMAKE_PROJECT_INCLUDE={CMAKE_FIX}",
          f"-DCMAKE_INSTALL_PREFIX={CACHE / 'prefix'}", f"-DPython3_EXECUTABLE={sys.executable}",
          "-DBUILD_TESTING=OFF"], CACHE / "cmake.log", cwd=build, env=prefix_env)
    _run(["make", "-j2", "install"], CACHE / "make.log", cwd=build, env=prefix_env)
    stamp.write_text(key)


@pytest.fixture(scope="session")
def launch_env() -> dict[str, str]:
    """The environment of a process that can ``ros2 launch kp_perception ...`` (built once per session)."""
    if not (VENDOR / "launch" / "setup.py").is_file() or not (VENDOR / "launch_ros" / "setup.py").is_file():
        pytest.skip(f"launch/launch_ros sources not found at {VENDOR} (they are on no package registry; "
                    "set KP_ROS2_LAUNCH_SOURCES to a folder holding launch/, launch_ros/ and composition_interfaces/)")
    if shutil.which("cmake") is None or shutil.which("make") is None:
        pytest.skip("cmake/make are needed to build composition_interfaces for launch_ros")
    pytest.importorskip("osrf_pycommon", reason="osrf-pycommon (requirements.txt) is needed by launch")
    pytest.importorskip("colcon_core", reason="colcon (requirements.txt) installs the package for launch_ros")
    CACHE.mkdir(parents=True, exist_ok=True)
    venv = os.environ.get("VIRTUAL_ENV") or sys.prefix
    prefix_env = {**os.environ, "CMAKE_PREFIX_PATH": venv, "AMENT_PREFIX_PATH": venv}
    with open(CACHE / ".lock", "w") as lock:  # one builder at a time (parallel sessions share the cache)
        fcntl.flock(lock, fcntl.LOCK_EX)
        _build_vendored(prefix_env)
        # kp_perception itself: always fresh (2-3 s), so the launch and config files are the working tree's.
        colcon = CACHE / "colcon"
        shutil.rmtree(colcon, ignore_errors=True)
        _run([sys.executable, "-m", "colcon", "--log-base", str(colcon / "log"), "build", "--base-paths", str(REPO),
              "--packages-select", "kp_perception", "--build-base", str(colcon / "build"),
              "--install-base", str(colcon / "install")], CACHE / "colcon.log", cwd=CACHE, env=prefix_env)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(CACHE / "prefix")})).relative_to(CACHE / "prefix")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(CACHE / "site"), str(CACHE / "prefix" / site),
                                       os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        "LD_LIBRARY_PATH": os.pathsep.join([str(CACHE / "prefix" / "lib"), os.environ.get("LD_LIBRARY_PATH", "")]),
        "AMENT_PREFIX_PATH": os.pathsep.join([str(colcon / "install" / "kp_perception"), venv]),
        "ROS_LOG_DIR": str(CACHE / "ros_log"),
        "PYTHONUNBUFFERED": "1",
        "RCUTILS_LOGGING_BUFFERED_STREAM": "0",
    }
    probe = subprocess.run([sys.executable, "-c", "import launch, launch_ros.actions, composition_interfaces.srv"],
                           env=env, capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr[-3000:]
    return env


class LaunchProcess:
    """``ros2 launch kp_perception FILE args...`` as a process; its output (launch's and the node's) by line."""

    def __init__(self, env: dict[str, str], launch_file: str | Path, **arguments: str) -> None:
        target = [str(launch_file)] if isinstance(launch_file, Path) else ["kp_perception", launch_file]
        cmd = [sys.executable, str(RUN_LAUNCH), *target, *(f"{k}:={v}" for k, v in arguments.items())]
        self.proc = subprocess.Popen(cmd, env=env, cwd=CACHE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def stderr(self) -> str:  # the name wait_for/publish_until use for "what the process said"
        return "\n".join(self.lines)

    def stop(self) -> int:
        """Ctrl-C, as a user ends ``ros2 launch``."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._reader.join(timeout=5)
        return self.proc.returncode


def send_until(peer, launch: LaunchProcess, msg_type, topic: str, make_msg, done, what: str, wait: float = 60):
    """Publish frames to the launched node, once it subscribes, until ``done()``; the stamps sent."""
    pub = peer.node.create_publisher(msg_type, topic, qos_profile_sensor_data)
    wait_for(lambda: pub.get_subscription_count() > 0, wait, what, launch)
    return publish_until(peer, pub, make_msg, done, launch)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    from test.model_fixtures import make_model

    out = tmp_path_factory.mktemp("launch_models")
    return {kind: make_model(kind, out, 64) for kind in ("pyramids", "tusk")}


@pytest.fixture(scope="module")
def peer():
    p = Peer()
    yield p
    p.close()


def test_pyramids_launch_file_frames_in_hierarchies_and_debug_image_out(launch_env, peer, models):
    ns = "lf_pyr"
    launch = LaunchProcess(launch_env, "pyramids.launch.py", model=str(models["pyramids"]), namespace=ns,
                           image_topic=f"/{ns}/camera/image_raw", debug="true")
    try:
        pyramids = peer.collect(KeypointPyramid, f"/{ns}/keypoints")
        debug = peer.collect(Image, f"/{ns}/debug_image")
        sent = send_until(peer, launch, Image, f"/{ns}/camera/image_raw", raw_msg, lambda: len(pyramids) >= 3 and debug,
                          "the launched node's image subscription")
        for msg in list(pyramids):
            assert (msg.header.stamp.sec, msg.header.stamp.nanosec) in sent
            check_pyramid(msg)
        # The installed files were used: the node's executable from the ament index, the params file from share/.
        wait_for(lambda: "active: input /lf_pyr/camera/image_raw" in launch.stderr(), 10, "the active line", launch)
        assert "pyramids_node-1" in launch.stderr()  # the process launch_ros started from the ament index
    finally:
        assert launch.stop() == 0, launch.stderr()
    assert "process has finished cleanly" in launch.stderr()


def test_tusk_launch_file_compressed_frames_in_detections_out(launch_env, peer, models):
    ns = "lf_tusk"
    launch = LaunchProcess(launch_env, "tusk.launch.py", model=str(models["tusk"]), namespace=ns,
                           image_topic=f"/{ns}/camera/image_raw", compressed="true")
    try:
        dets = peer.collect(PrototypeDetectionArray, f"/{ns}/detections")
        sent = send_until(peer, launch, CompressedImage, f"/{ns}/camera/image_raw/compressed", compressed_msg,
                          lambda: len(dets) >= 3, "the launched node's compressed subscription")
        for msg in list(dets):
            assert (msg.header.stamp.sec, msg.header.stamp.nanosec) in sent
            assert msg.num_prototypes > 0
            # config/tusk.yaml's score_threshold (0.3) reached the node through the launch file.
            assert all(d.score >= 0.3 for d in msg.detections)
    finally:
        assert launch.stop() == 0, launch.stderr()


def test_a_bad_model_path_ends_the_launch_with_the_nodes_one_line_error(launch_env, tmp_path):
    missing = tmp_path / "nope.onnx"
    launch = LaunchProcess(launch_env, "pyramids.launch.py", model=str(missing), namespace="lf_bad")
    try:
        launch.proc.wait(timeout=90)
    finally:
        code = launch.stop()
    assert code != 0, launch.stderr()
    node_errors = [ln for ln in launch.lines if ln.startswith("[pyramids_node-1] ") and "[ERROR]" in ln]
    assert len(node_errors) == 1, launch.stderr()
    assert f"model file {missing} does not exist" in node_errors[0]
    assert "Traceback" not in launch.stderr()
    assert "pyramids_node exited with status 1" in launch.stderr()


def test_launch_with_autostart_false_leaves_the_node_to_a_lifecycle_manager(launch_env, peer, models):
    ns = "lf_managed"
    launch = LaunchProcess(launch_env, "pyramids.launch.py", model=str(models["pyramids"]), namespace=ns,
                           image_topic=f"/{ns}/camera/image_raw", autostart="false")
    try:
        pyramids = peer.collect(KeypointPyramid, f"/{ns}/keypoints")
        launch.ns = f"/{ns}"  # what Lifecycle needs to find the services
        lc = Lifecycle(peer, launch)
        assert lc.state() == "unconfigured"
        assert peer.node.count_subscribers(f"/{ns}/camera/image_raw") == 0
        assert lc.transition(Transition.TRANSITION_CONFIGURE) and lc.transition(Transition.TRANSITION_ACTIVATE)
        send_until(peer, launch, Image, f"/{ns}/camera/image_raw", raw_msg, lambda: len(pyramids) >= 2,
                   "the image subscription after activate")
    finally:
        assert launch.stop() == 0, launch.stderr()


def test_the_robot_guides_lifecycle_launch_file_configures_then_activates_the_node(launch_env, peer, models, tmp_path):
    import re

    guide = (REPO / "docs" / "robot_guide.md").read_text()
    section = guide.split("### Lifecycle with a launch file", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    path = tmp_path / "my_robot.launch.py"
    path.write_text(code)
    launch = LaunchProcess(launch_env, path, model=str(models["pyramids"]))
    try:
        pyramids = peer.collect(KeypointPyramid, "/keypoints")
        send_until(peer, launch, Image, "/camera/image_raw", raw_msg, lambda: len(pyramids) >= 2,
                   "activation by the launch file's events", wait=90)
        # Configured by launch's ChangeState event, activated on the configuring -> inactive transition.
        wait_for(lambda: "active: input /camera/image_raw" in launch.stderr(), 10, "the active line", launch)
        out = launch.stderr()
        assert out.index("configured: model") < out.index("active: input /camera/image_raw")
    finally:
        assert launch.stop() == 0, launch.stderr()
