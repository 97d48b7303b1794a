"""Launch arguments -> what the node is started with: one pure helper for the launch files and the tests.

Why: ``launch``/``launch_ros`` are on no package registry, so most tests start
the node as a plain process. Both the launch files (inside an
``OpaqueFunction``) and those tests call :func:`node_launch_config`, so the
node they start has exactly the parameter file, overrides, remaps and
namespace that ``ros2 launch kp_perception pyramids.launch.py`` gives it.
Where ``launch``/``launch_ros`` sources are at hand, test/test_launch_files.py
also runs the launch files themselves through ``launch.LaunchService``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from kp_perception.errors import ConfigError
from kp_perception.kinds import NODES as NODE_FAMILIES
from kp_perception.resources import share_directory

NODES = {node.name: node.executable for node in NODE_FAMILIES.values()}  # launch name -> executable
DEFAULT_IMAGE_TOPIC = "/camera/image_raw"
LARGE_DATA_ENV = {"FASTDDS_BUILTIN_TRANSPORTS": "LARGE_DATA"}


@dataclass(frozen=True)
class NodeLaunchConfig:
    """Everything a launch_ros ``Node`` action needs, as plain values."""

    executable: str
    params_file: str
    parameters: dict[str, object]
    remappings: list[tuple[str, str]]
    namespace: str = ""
    env: dict[str, str] = field(default_factory=lambda: dict(LARGE_DATA_ENV))

    def ros_arguments(self) -> list[str]:
        """The node's command-line tail: ``--ros-args [-r __ns:=NS] --params-file F -p k:=v -r a:=b``."""
        args = ["--ros-args"]
        if self.namespace:
            args += ["-r", f"__ns:={self.namespace}"]
        args += ["--params-file", self.params_file]
        for key, value in self.parameters.items():
            args += ["-p", f"{key}:={_param_text(value)}"]
        for src, dst in self.remappings:
            args += ["-r", f"{src}:={dst}"]
        return args


def node_command(cfg: NodeLaunchConfig) -> list[str]:
    """The full command line: the installed console script (as ``ros2 run``/launch use), else ``python -m``."""
    script = Path(sys.executable).parent / cfg.executable
    head = [str(script)] if script.exists() else [sys.executable, "-m", f"kp_perception.nodes.{cfg.executable}"]
    return [*head, *cfg.ros_arguments()]


def parse_bool(text: str | bool, name: str) -> bool:
    """'true'/'false' (any case, also 1/0/yes/no) -> bool; anything else is a ConfigError naming the argument."""
    if isinstance(text, bool):
        return text
    value = str(text).strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise ConfigError(f"launch argument '{name}' must be true or false, got {text!r}")


def default_params_file(node: str, share_dir: str | Path | None = None) -> str:
    """``config/<node>.yaml`` from the installed package share, else from the source tree."""
    if share_dir is None:
        share_dir = share_directory()
    return str(Path(share_dir) / "config" / f"{node}.yaml")


def node_launch_config(
    node: str,
    *,
    params_file: str,
    model: str = "",
    backend: str = "",
    image_topic: str = DEFAULT_IMAGE_TOPIC,
    compressed: str | bool = False,
    namespace: str = "",
    debug: str | bool = False,
    depth_topic: str = "",
    autostart: str | bool = True,
) -> NodeLaunchConfig:
    """Launch arguments (strings, as LaunchConfiguration gives them) -> the node's start-up configuration.

    Empty ``model``/``backend`` leave the parameter file's values alone.
    ``image`` and ``image/compressed`` are both remapped, so ``compressed``
    only flips the ``compressed_input`` parameter. camera_info needs no
    argument: the node finds it beside the remapped image topic
    (image_transport's rule). A non-empty ``depth_topic`` remaps ``depth``
    to it and turns ``use_depth`` on. ``autostart`` false leaves the
    (lifecycle) node unconfigured for a lifecycle manager.
    """
    if node not in NODES:
        raise ConfigError(f"unknown node '{node}'; expected one of {', '.join(NODES)}")
    parameters: dict[str, object] = {}
    if model:
        parameters["model_file_path"] = str(model)
    if backend:
        parameters["backend"] = str(backend)
    parameters["compressed_input"] = parse_bool(compressed, "compressed")
    parameters["publish_debug_image"] = parse_bool(debug, "debug")
    parameters["autostart"] = parse_bool(autostart, "autostart")
    topic = str(image_topic).rstrip("/") or DEFAULT_IMAGE_TOPIC
    remappings = [("image", topic), ("image/compressed", f"{topic}/compressed")]
    depth = str(depth_topic).strip().rstrip("/")
    if depth:
        parameters["use_depth"] = True
        remappings.append(("depth", depth))
    return NodeLaunchConfig(
        executable=NODES[node],
        params_file=str(params_file),
        parameters=parameters,
        remappings=remappings,
        namespace=str(namespace).strip("/") and "/" + str(namespace).strip("/"),
    )


#: What record.launch.py records by default: what training and policy learning need from a robot.
DEFAULT_RECORD_TOPICS = (
    "/camera/image_raw",
    "/camera/camera_info",
    "/camera/depth/image_raw",
    "/joint_states",
    "/tf",
    "/tf_static",
)


def record_command(
    output_dir: str,
    topics: list[str] | str = DEFAULT_RECORD_TOPICS,
    storage: str = "mcap",
    *,
    extra_topics: list[str] | str = (),
    max_bag_size: int | str = 0,
    max_bag_duration: int | str = 0,
    compression: str = "",
) -> list[str]:
    """``ros2 bag record`` command line for data collection (record.launch.py runs it).

    ``topics`` replaces the default list, ``extra_topics`` adds to it (space- or
    comma-separated strings or lists). A topic with no publisher is simply not
    recorded, so the default depth topic costs nothing on a camera without depth.
    ``max_bag_size`` (bytes) / ``max_bag_duration`` (s) split the bag into files
    (0 = one file). ``compression`` ``zstd`` compresses inside the MCAP chunks
    (``--storage-preset-profile zstd_fast``: Foxglove and rosbags read it) or,
    with sqlite3, each split file (``--compression-mode file``); rosbag2's
    message-level mode is not offered, as MCAP readers such as Foxglove cannot
    read it (ros2/rosbag2#1533).
    """
    topics = _topic_list(topics) + [t for t in _topic_list(extra_topics) if t not in _topic_list(topics)]
    if not topics:
        raise ConfigError("launch argument 'topics' is empty: name at least one topic to record")
    if not output_dir:
        raise ConfigError("launch argument 'output_dir' is empty: name the bag directory to create")
    cmd = ["ros2", "bag", "record", "-s", storage, "-o", str(output_dir)]
    for flag, value in (("--max-bag-size", max_bag_size), ("--max-bag-duration", max_bag_duration)):
        try:
            number = int(str(value).strip() or 0)
        except ValueError:
            raise ConfigError(f"launch argument {flag.lstrip('-').replace('-', '_')} must be an integer, "
                              f"got {value!r}") from None
        if number < 0:
            raise ConfigError(f"launch argument {flag.lstrip('-').replace('-', '_')} must be >= 0, got {number}")
        if number:
            cmd += [flag, str(number)]
    compression = str(compression).strip()
    if compression == "zstd":
        if storage == "mcap":
            cmd += ["--storage-preset-profile", "zstd_fast"]
        else:
            cmd += ["--compression-mode", "file", "--compression-format", "zstd"]
    elif compression:
        raise ConfigError(f"launch argument 'compression' is {compression!r}; expected '' (none) or zstd")
    return [*cmd, *topics]


def _topic_list(topics: list[str] | tuple[str, ...] | str) -> list[str]:
    if isinstance(topics, str):
        topics = topics.replace(",", " ").split()
    return [str(t) for t in topics]


def _param_text(value: object) -> str:
    # -p values are parsed as YAML by rcl: booleans must be lower case, strings stay as they are.
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def node_launch_description(node: str):
    """The LaunchDescription of ``<node>.launch.py`` (launch/launch_ros imported here, on a ROS install only).

    Arguments: model, backend, image_topic, compressed, namespace, debug,
    params_file, depth_topic, autostart. An OpaqueFunction resolves them to strings and hands them to
    :func:`node_launch_config`, the same helper the tests use. The node is a
    ``launch_ros`` ``LifecycleNode`` (so an including launch file can react to
    its state transitions or emit ``ChangeState``); it configures and
    activates itself unless ``autostart:=false``. If it exits with an error
    (a bad model path, a bad parameter) the launch ends too, with a non-zero
    status, after the node's own one-line error.
    """
    from ament_index_python.packages import get_package_share_directory
    from launch import LaunchDescription
    from launch.actions import (
        DeclareLaunchArgument,
        OpaqueFunction,
        RegisterEventHandler,
        SetEnvironmentVariable,
    )
    from launch.event_handlers import OnProcessExit
    from launch.substitutions import LaunchConfiguration
    from launch_ros.actions import LifecycleNode

    share = get_package_share_directory("kp_perception")
    arguments = [
        DeclareLaunchArgument("model", default_value="", description="Exported model (.onnx/.engine/.pt); "
                              "empty = model_file_path from the parameter file"),
        DeclareLaunchArgument("backend", default_value="", description="onnxruntime, tensorrt or torch; "
                              "empty = by the model's extension"),
        DeclareLaunchArgument("image_topic", default_value=DEFAULT_IMAGE_TOPIC,
                              description="Camera image topic (raw); '<topic>/compressed' with compressed:=true"),
        DeclareLaunchArgument("compressed", default_value="false", choices=["true", "false"],
                              description="Subscribe to sensor_msgs/CompressedImage on '<image_topic>/compressed'"),
        DeclareLaunchArgument("namespace", default_value="", description="Namespace of the node and its topics"),
        DeclareLaunchArgument("debug", default_value="false", choices=["true", "false"],
                              description="Publish the debug image with the results drawn"),
        DeclareLaunchArgument("params_file", default_value=default_params_file(node, share),
                              description="ROS parameter file of the node"),
        DeclareLaunchArgument("depth_topic", default_value="", description="Aligned depth image topic "
                              "(16UC1 mm or 32FC1 m); empty = no depth. camera_info is found beside image_topic"),
        DeclareLaunchArgument("autostart", default_value="true", choices=["true", "false"],
                              description="Configure and activate the lifecycle node at start; false = wait "
                              "for a lifecycle manager (or `ros2 lifecycle set`)"),
    ]

    def fail_launch(event, context):
        # A node that dies on its own (not at Ctrl-C) ends the launch with an error status.
        if event.returncode != 0 and not context.is_shutdown:
            raise RuntimeError(f"{Path(event.cmd[0]).name} exited with status {event.returncode} "
                               "(its error is the line above)")

    def make_node(context, *_args, **_kwargs):
        value = {a.name: LaunchConfiguration(a.name).perform(context) for a in arguments}
        cfg = node_launch_config(
            node,
            params_file=value["params_file"],
            model=value["model"],
            backend=value["backend"],
            image_topic=value["image_topic"],
            compressed=value["compressed"],
            namespace=value["namespace"],
            debug=value["debug"],
            depth_topic=value["depth_topic"],
            autostart=value["autostart"],
        )
        node_action = LifecycleNode(
            package="kp_perception",
            executable=cfg.executable,
            name=cfg.executable,  # the node's own name: pyramids_node / tusk_node
            namespace=cfg.namespace,
            parameters=[cfg.params_file, cfg.parameters],
            remappings=cfg.remappings,
            output="screen",
        )
        return [node_action, RegisterEventHandler(OnProcessExit(target_action=node_action, on_exit=fail_launch))]

    env = [SetEnvironmentVariable(k, v) for k, v in LARGE_DATA_ENV.items()]
    return LaunchDescription([*arguments, *env, OpaqueFunction(function=make_node)])
