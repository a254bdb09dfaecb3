"""launch_testing: `ros2 launch panoptic_node car.launch.py image_topics:=...` as a user runs it for a driver
that publishes elsewhere (usb_cam's image_raw): the frames are read from that topic and the outputs served at
the camera, under a namespace of its own so nothing else on the graph is touched. Runs where ROS 2 and this
package's colcon install exist; skipped here (test_car_launch.py checks the launch file's logic and
test_node_graph.py the same remap rules on a real rclpy graph)."""
import os
import time
import unittest

import pytest

launch_testing = pytest.importorskip("launch_testing")
rclpy = pytest.importorskip("rclpy")

import launch  # noqa: E402
from ament_index_python.packages import get_package_share_directory  # noqa: E402
from launch.launch_description_sources import PythonLaunchDescriptionSource  # noqa: E402
import numpy as np  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from launch_helpers import tiny_model_yaml  # noqa: E402

NAMESPACE = "car_image_topics_test"


@pytest.mark.launch_test
def generate_test_description():
    car = launch.actions.IncludeLaunchDescription(
        PythonLaunchDescriptionSource(os.path.join(get_package_share_directory("panoptic_node"), "launch",
                                                   "car.launch.py")),
        launch_arguments={"namespace": NAMESPACE, "image_topics": "['usb_cam/image_raw']",
                          "model": tiny_model_yaml(), "backend": "torch", "dds_profile": "none"}.items())
    return launch.LaunchDescription([car, launch_testing.actions.ReadyToTest()]), {}


class TestImageTopics(unittest.TestCase):
    def test_the_drivers_topic_is_read_and_the_camera_served(self):
        rclpy.init()
        node = rclpy.create_node("car_image_topics_test")
        try:
            driver = f"/{NAMESPACE}/usb_cam/image_raw"  # relative in the argument: under the namespace
            pub = node.create_publisher(Image, driver, 10)
            got = []
            node.create_subscription(Image, f"/{NAMESPACE}/camera/front/panoptic/semantic", got.append, 10)
            end = time.time() + 60
            while time.time() < end and not got:
                msg = Image(height=48, width=64, encoding="rgb8", step=64 * 3,
                            data=np.random.default_rng(0).integers(0, 255, 48 * 64 * 3, dtype=np.uint8).tobytes())
                msg.header.frame_id = "front"
                msg.header.stamp = node.get_clock().now().to_msg()  # car.param.yaml drops frames over 500 ms old
                pub.publish(msg)
                rclpy.spin_once(node, timeout_sec=0.2)
            self.assertTrue(got, f"nothing on /{NAMESPACE}/camera/front/panoptic/semantic from {driver}")
            self.assertEqual((got[0].height, got[0].width, got[0].encoding), (48, 64, "mono8"))
            readers = [i.node_name for i in node.get_subscriptions_info_by_topic(driver)]
            self.assertIn("panoptic_node", readers)
        finally:
            node.destroy_node()
            rclpy.shutdown()
