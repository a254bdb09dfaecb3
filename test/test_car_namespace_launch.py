"""launch_testing: `ros2 launch panoptic_node car.launch.py namespace:=...` as a user runs it, the shipped
car.param.yaml included: its relative camera (camera/front) is served under the namespace. Runs where ROS 2
and this package's colcon install exist; skipped here (test_car_launch.py checks the launch file's logic)."""
import unittest

import pytest

launch_testing = pytest.importorskip("launch_testing")
rclpy = pytest.importorskip("rclpy")

from launch_helpers import frames_until_answered, include_car_launch, tiny_model_yaml  # noqa: E402

NAMESPACE = "car_launch_test"


@pytest.mark.launch_test
def generate_test_description():
    return include_car_launch(namespace=NAMESPACE, model=tiny_model_yaml(), backend="torch", dds_profile="none")


class TestNamespace(unittest.TestCase):
    def test_the_shipped_camera_is_served_under_the_namespace(self):
        rclpy.init()
        node = rclpy.create_node("car_namespace_test")
        try:
            camera = f"/{NAMESPACE}/camera/front"
            got = frames_until_answered(node, f"{camera}/image", f"{camera}/panoptic/semantic")
            self.assertTrue(got, f"nothing on {camera}/panoptic/semantic")
            self.assertEqual((got[0].height, got[0].width, got[0].encoding), (48, 64, "mono8"))
            names = dict(node.get_topic_names_and_types())
            self.assertNotIn("/camera/front/panoptic/semantic", names)  # nothing at the root
        finally:
            node.destroy_node()
            rclpy.shutdown()
