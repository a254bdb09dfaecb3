"""launch_testing: `ros2 launch panoptic_node car.launch.py image_topics:=...` as a user runs it for a driver
that publishes elsewhere (usb_cam's image_raw): the frames are read from that topic and the outputs served at
the camera, under a namespace of its own so nothing else on the graph is touched. Runs where ROS 2 and this
package's colcon install exist; skipped here (test_car_launch.py checks the launch file's logic and
test_node_graph.py the same remap rules on a real rclpy graph)."""
import unittest

import pytest

launch_testing = pytest.importorskip("launch_testing")
rclpy = pytest.importorskip("rclpy")

from launch_helpers import frames_until_answered, include_car_launch, tiny_model_yaml  # noqa: E402

NAMESPACE = "car_image_topics_test"


@pytest.mark.launch_test
def generate_test_description():
    return include_car_launch(namespace=NAMESPACE, image_topics="['usb_cam/image_raw']", model=tiny_model_yaml(),
                              backend="torch", dds_profile="none")


class TestImageTopics(unittest.TestCase):
    def test_the_drivers_topic_is_read_and_the_camera_served(self):
        rclpy.init()
        node = rclpy.create_node("car_image_topics_test")
        try:
            driver = f"/{NAMESPACE}/usb_cam/image_raw"  # relative in the argument: under the namespace
            got = frames_until_answered(node, driver, f"/{NAMESPACE}/camera/front/panoptic/semantic")
            self.assertTrue(got, f"nothing on /{NAMESPACE}/camera/front/panoptic/semantic from {driver}")
            self.assertEqual((got[0].height, got[0].width, got[0].encoding), (48, 64, "mono8"))
            readers = [i.node_name for i in node.get_subscriptions_info_by_topic(driver)]
            self.assertIn("panoptic_node", readers)
        finally:
            node.destroy_node()
            rclpy.shutdown()
