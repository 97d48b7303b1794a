"""Placeholder until the ROS 2 nodes issue lands."""

import sys


def main() -> int:
    print("pyramids_node: not implemented yet", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
