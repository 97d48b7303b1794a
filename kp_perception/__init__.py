"""kp_perception: the robot side of the keypoint perception stack.

Importing this package never imports torch, tensorrt or pycuda; those load only
when the backend that needs them is chosen.
"""

__version__ = "0.1.0"
