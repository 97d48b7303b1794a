"""ament_python package ``kp_perception``.

The robot-side package is ``kp_perception``. The offline parts ship beside it
under names of their own, so they never collide with a user's packages: the
``training/`` folder installs as ``kp_perception_training`` and ``bench/`` as
``kp_perception_bench``. Data files (parameter files, training configs, launch
files, shipped models, message definitions) go to ``share/kp_perception`` with
an ament index marker, where ``kp_perception.resources`` finds them.
"""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "kp_perception"
# Source folder -> installed import name.
RENAMED = {"training": "kp_perception_training", "bench": "kp_perception_bench"}


def _packages() -> tuple[list[str], dict[str, str]]:
    packages = find_packages(include=[PACKAGE, f"{PACKAGE}.*"])
    package_dir = {}
    for folder, name in RENAMED.items():
        packages.append(name)
        package_dir[name] = folder
        for sub in find_packages(where=folder):
            packages.append(f"{name}.{sub}")
            package_dir[f"{name}.{sub}"] = f"{folder}/{sub.replace('.', '/')}"
    return packages, package_dir


packages, package_dir = _packages()

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=packages,
    package_dir=package_dir,
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
        (f"share/{PACKAGE}/config/training", glob("config/training/*.yaml")),
        (f"share/{PACKAGE}/models", glob("models/*.onnx") + glob("models/*.json")),
        (f"share/{PACKAGE}/kp_perception_msgs/msg", glob("kp_perception_msgs/msg/*.msg")),
    ],
    install_requires=["setuptools"],
    zip_safe=False,
    maintainer="kp_perception maintainers",
    description="Unsupervised keypoint perception: training, export and ROS 2 nodes.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "kp-perception = kp_perception.cli.main:main",
            "pyramids_node = kp_perception.nodes.pyramids_node:main",
            "tusk_node = kp_perception.nodes.tusk_node:main",
            "servo_node = kp_perception.nodes.servo_node:main",
        ],
    },
)
