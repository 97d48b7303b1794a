"""Controllers that act on keypoint observations (numpy only, no torch, no ROS): robot side."""
