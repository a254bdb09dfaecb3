"""launch_testing: compressed input transport, and a bad parameter stopping the node with one line.
Runs where ROS 2 exists; skipped here."""
import io
import time
import unittest

import pytest

launch_testing = pytest.importorskip("launch_testing")
rclpy = pytest.importorskip("rclpy")

import launch  # noqa: E402
import launch_ros.actions  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image as PILImage  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402

from launch_helpers import tiny_model_yaml  # noqa: E402


@pytest.mark.launch_test
def generate_test_description():
    model = tiny_model_yaml()
    good = launch_ros.actions.Node(
        package="panoptic_node", executable="panoptic_node", name="panoptic_compressed", output="screen",
        parameters=[{"cameras": ["/cam_c"], "input_transport": "compressed", "model": model, "backend": "torch",
                     "max_age_ms": 0, "qos_reliability": "reliable"}])
    bad = launch_ros.actions.Node(
        package="panoptic_node", executable="panoptic_node", name="panoptic_bad_param", output="screen",
        parameters=[{"cameras": ["/cam_d"], "model": model, "threshold": 2.0}])
    # a misspelt name and a wrong type: rclpy alone would ignore the first and raise on the second
    misspelt = launch_ros.actions.Node(
        package="panoptic_node", executable="panoptic_node", name="panoptic_misspelt", output="screen",
        parameters=[{"cameras": ["/cam_e"], "model": model, "treshold": 0.5}])
    wrong_type = launch_ros.actions.Node(
        package="panoptic_node", executable="panoptic_node", name="panoptic_wrong_type", output="screen",
        parameters=[{"cameras": ["/cam_f"], "model": model, "qos_depth": "deep"}])
    # the onnxruntime backend pointed at a graph that is not there
    missing_onnx = launch_ros.actions.Node(
        package="panoptic_node", executable="panoptic_node", name="panoptic_missing_onnx", output="screen",
        parameters=[{"cameras": ["/cam_g"], "model": model, "backend": "onnxruntime", "onnx": "/nonexistent/m.onnx"}])
    return (launch.LaunchDescription([good, bad, misspelt, wrong_type, missing_onnx,
                                      launch_testing.actions.ReadyToTest()]),
            {"good": good, "bad": bad, "misspelt": misspelt, "wrong_type": wrong_type, "missing_onnx": missing_onnx})


class TestCompressed(unittest.TestCase):
    def test_compressed_png_frames(self):
        rclpy.init()
        node = rclpy.create_node("compressed_test")
        try:
            pub = node.create_publisher(CompressedImage, "/cam_c/image/compressed", 10)
            buf = io.BytesIO()
            PILImage.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(buf, "PNG")
            msg = CompressedImage(format="png", data=buf.getvalue())
            msg.header.stamp.sec, msg.header.frame_id = 1700000400, "cam_c"
            got = []
            node.create_subscription(Image, "/cam_c/panoptic/semantic", got.append, 10)
            end = time.time() + 30
            while time.time() < end and not got:
                pub.publish(msg)
                rclpy.spin_once(node, timeout_sec=0.2)
            self.assertTrue(got)
            self.assertEqual((got[0].height, got[0].width, got[0].header.frame_id), (40, 56, "cam_c"))
        finally:
            node.destroy_node()
            rclpy.shutdown()

    def test_bad_parameter_exits_with_one_line(self, proc_output, bad):
        proc_output.assertWaitFor("parameter 'threshold' = 2.0 is invalid", process=bad, timeout=30, stream="stderr")

    def test_misspelt_parameter_is_named(self, proc_output, misspelt):
        proc_output.assertWaitFor("unknown parameter 'treshold'", process=misspelt, timeout=30, stream="stderr")

    def test_wrong_type_is_one_line(self, proc_output, wrong_type):
        proc_output.assertWaitFor("parameter 'qos_depth' = 'deep' is invalid", process=wrong_type, timeout=30,
                                  stream="stderr")

    def test_missing_onnx_is_one_line(self, proc_output, missing_onnx):
        proc_output.assertWaitFor("ONNX file '/nonexistent/m.onnx' does not exist", process=missing_onnx, timeout=30,
                                  stream="stderr")


@launch_testing.post_shutdown_test()
class TestExit(unittest.TestCase):
    def test_bad_param_exit_code(self, proc_info, bad, misspelt, wrong_type, missing_onnx):
        for proc in (bad, misspelt, wrong_type, missing_onnx):
            launch_testing.asserts.assertExitCodes(proc_info, allowable_exit_codes=[1], process=proc)
