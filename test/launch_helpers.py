"""A tiny random-weight model on disk for the launch tests (CPU, quick to start)."""
import atexit
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch
import yaml

from panoptic_node.model.checkpoint import save_checkpoint
from panoptic_node.model.detr import build_model

from conftest import compact_config


def tiny_model_yaml(folder=None) -> str:
    """The compact model's YAML config path, its checkpoint beside it, in `folder`; without one, in a temporary
    folder this process removes when it exits (13 MB a call: the suite left gigabytes in /tmp before)."""
    if folder is None:
        folder = tempfile.mkdtemp(prefix="panoptic_launch_")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
    d = Path(folder)
    cfg = compact_config()
    torch.manual_seed(0)
    save_checkpoint(build_model(cfg, pretrained_backbone=True), d / "tiny.pth")
    data = asdict(cfg)
    data["weights"] = "tiny.pth"
    (d / "tiny.yaml").write_text(yaml.safe_dump(data))
    return str(d / "tiny.yaml")


def include_car_launch(**arguments):
    """A launch_testing description: the installed car.launch.py with these launch arguments, then ReadyToTest
    (imported here, where launch exists: the launch_testing files skip before this on a machine without it)."""
    import os

    import launch
    import launch_testing.actions
    from ament_index_python.packages import get_package_share_directory
    from launch.launch_description_sources import PythonLaunchDescriptionSource
    car = launch.actions.IncludeLaunchDescription(
        PythonLaunchDescriptionSource(os.path.join(get_package_share_directory("panoptic_node"), "launch",
                                                   "car.launch.py")),
        launch_arguments={key: str(value) for key, value in arguments.items()}.items())
    return launch.LaunchDescription([car, launch_testing.actions.ReadyToTest()]), {}


def frames_until_answered(node, image_topic: str, answer_topic: str, timeout: float = 60.0,
                          keep_on_s: float = 0.0) -> list:
    """Publishes 64x48 rgb8 frames, stamped now (car.param.yaml drops frames over 500 ms old), on `image_topic`
    from rclpy node `node` until the semantic map comes back on `answer_topic` (or `timeout` passes), and
    `keep_on_s` seconds more once it did: the maps received."""
    import time

    import numpy as np
    import rclpy
    from sensor_msgs.msg import Image
    pub = node.create_publisher(Image, image_topic, 10)
    got = []
    sub = node.create_subscription(Image, answer_topic, got.append, 10)
    data = np.random.default_rng(0).integers(0, 255, 48 * 64 * 3, dtype=np.uint8).tobytes()
    end, answered, next_frame = time.time() + timeout, None, 0.0
    while time.time() < (end if answered is None else answered + keep_on_s):
        if time.time() >= next_frame:  # a 5 Hz camera
            msg = Image(height=48, width=64, encoding="rgb8", step=64 * 3, data=data)
            msg.header.frame_id = "front"
            msg.header.stamp = node.get_clock().now().to_msg()
            pub.publish(msg)
            next_frame = time.time() + 0.2
        rclpy.spin_once(node, timeout_sec=max(0.0, next_frame - time.time()))
        if got and answered is None:
            answered = time.time()
    node.destroy_subscription(sub)
    node.destroy_publisher(pub)
    return got
