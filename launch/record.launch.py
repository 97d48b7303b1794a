"""Record for training and policy learning: ``ros2 launch kp_perception record.launch.py output_dir:=bags/ep01``.

Runs ``ros2 bag record`` (built by ``kp_perception.nodes.launch_args.record_command``);
the result is what ``kp-perception train --data`` reads. By default it records
the colour image, its camera_info, the aligned depth image, /joint_states, /tf
and /tf_static (a topic nobody publishes is simply absent from the bag).

Arguments: output_dir (required; must not exist yet); topics (space- or
comma-separated; replaces the default list); extra_topics (added to it);
storage (mcap or sqlite3); max_bag_size (bytes) and max_bag_duration (s) to
split into several files (0 = one file); compression ('' or zstd). Sets
FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA so full-size frames are not lost.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, OpaqueFunction, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration

from kp_perception.nodes.launch_args import DEFAULT_RECORD_TOPICS, LARGE_DATA_ENV, record_command


def _record(context, *_args, **_kwargs):
    value = {name: LaunchConfiguration(name).perform(context) for name in
             ("output_dir", "topics", "extra_topics", "storage", "max_bag_size", "max_bag_duration", "compression")}
    cmd = record_command(
        value["output_dir"],
        value["topics"],
        value["storage"],
        extra_topics=value["extra_topics"],
        max_bag_size=value["max_bag_size"],
        max_bag_duration=value["max_bag_duration"],
        compression=value["compression"],
    )
    return [ExecuteProcess(cmd=cmd, output="screen")]


def generate_launch_description():
    return LaunchDescription(
        [
            DeclareLaunchArgument("output_dir", description="Bag directory to create (must not exist)"),
            DeclareLaunchArgument(
                "topics",
                default_value=" ".join(DEFAULT_RECORD_TOPICS),
                description="Topics to record, space- or comma-separated (replaces the default list)",
            ),
            DeclareLaunchArgument("extra_topics", default_value="",
                                  description="Topics recorded in addition to 'topics'"),
            DeclareLaunchArgument(
                "storage", default_value="mcap", choices=["mcap", "sqlite3"], description="rosbag2 storage"
            ),
            DeclareLaunchArgument("max_bag_size", default_value="0",
                                  description="Split into a new file after this many bytes (0 = never)"),
            DeclareLaunchArgument("max_bag_duration", default_value="0",
                                  description="Split into a new file after this many seconds (0 = never)"),
            DeclareLaunchArgument("compression", default_value="", choices=["", "zstd"],
                                  description="zstd: compressed MCAP chunks (sqlite3: compressed files)"),
            *[SetEnvironmentVariable(k, v) for k, v in LARGE_DATA_ENV.items()],
            OpaqueFunction(function=_record),
        ]
    )
