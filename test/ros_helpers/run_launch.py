"""``ros2 launch PACKAGE FILE [name:=value ...]`` without ros2cli: what the launch tests run as a process.

Finds FILE in the package's share/launch through the ament index (as
``ros2 launch`` does), or takes a path to a ``*.launch.py`` as the first
argument (``ros2 launch PATH``), includes it with the arguments and runs it
in ``launch.LaunchService``; the exit status is the launch's.
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    from ament_index_python.packages import get_package_share_directory
    from launch import LaunchDescription, LaunchService
    from launch.actions import IncludeLaunchDescription
    from launch.launch_description_sources import PythonLaunchDescriptionSource

    if argv[0].endswith(".launch.py") and Path(argv[0]).is_file():
        path, arguments = Path(argv[0]), argv[1:]
    else:
        package, launch_file, *arguments = argv
        path = Path(get_package_share_directory(package)) / "launch" / launch_file
    pairs = [tuple(a.split(":=", 1)) for a in arguments]
    service = LaunchService(argv=arguments)
    service.include_launch_description(
        LaunchDescription([IncludeLaunchDescription(PythonLaunchDescriptionSource(str(path)), launch_arguments=pairs)])
    )
    return service.run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
