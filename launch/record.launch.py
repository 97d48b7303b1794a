"""Record camera topics for training: ``ros2 launch kp_perception record.launch.py output_dir:=bags/ep01``.

Runs ``ros2 bag record -s mcap -o <output_dir> <topics>``; the result is what
``kp-perception train --data`` reads. Arguments: output_dir (required; must
not exist yet), topics (space- or comma-separated; default the raw image and
camera_info), storage (mcap or sqlite3). Sets
FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA so full-size frames are not lost.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, OpaqueFunction, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration

from kp_perception.nodes.launch_args import LARGE_DATA_ENV, record_command


def _record(context, *_args, **_kwargs):
    cmd = record_command(
        LaunchConfiguration("output_dir").perform(context),
        LaunchConfiguration("topics").perform(context),
        LaunchConfiguration("storage").perform(context),
    )
    return [ExecuteProcess(cmd=cmd, output="screen")]


def generate_launch_description():
    return LaunchDescription(
        [
            DeclareLaunchArgument("output_dir", description="Bag directory to create (must not exist)"),
            DeclareLaunchArgument(
                "topics",
                default_value="/camera/image_raw /camera/camera_info",
                description="Topics to record, space- or comma-separated",
            ),
            DeclareLaunchArgument(
                "storage", default_value="mcap", choices=["mcap", "sqlite3"], description="rosbag2 storage"
            ),
            *[SetEnvironmentVariable(k, v) for k, v in LARGE_DATA_ENV.items()],
            OpaqueFunction(function=_record),
        ]
    )
