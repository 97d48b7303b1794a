"""Start tusk_node: ``ros2 launch kp_perception tusk.launch.py model:=/path/tusk.onnx``.

Arguments: model, backend, image_topic (default /camera/image_raw), compressed,
namespace, debug, depth_topic, autostart (default true: the
lifecycle node configures and activates itself), params_file (default config/tusk.yaml). Sets
FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA (camera frames are lost without it).
The argument -> node mapping is kp_perception.nodes.launch_args, which the
tests use to start the node the same way.
"""

from kp_perception.nodes.launch_args import node_launch_description


def generate_launch_description():
    return node_launch_description("tusk")
