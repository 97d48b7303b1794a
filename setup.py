"""ament_python package ``kp_perception``; ``training`` and ``bench`` ship beside it for offline work."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "kp_perception"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=["kp_perception*", "training*", "bench*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
        (f"share/{PACKAGE}/config/training", glob("config/training/*.yaml")),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="kp_perception maintainers",
    description="Unsupervised keypoint perception: training, export and ROS 2 nodes.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "kp-perception = kp_perception.cli.main:main",
            "pyramids_node = kp_perception.nodes.pyramids_node:main",
            "tusk_node = kp_perception.nodes.tusk_node:main",
        ],
    },
)
