"""launch_testing: the node as launch_ros's LifecycleNode, `autostart: false`, taken to active by launch's own
lifecycle events (configure at start, activate when it reaches inactive), the way a launch file drives
managed nodes. Runs where ROS 2 exists; skipped here (test_node_graph.py drives the same transitions
through the lifecycle services on the PyPI rclpy)."""
import time
import unittest

import pytest

launch_testing = pytest.importorskip("launch_testing")
rclpy = pytest.importorskip("rclpy")

import launch  # noqa: E402
import launch.actions  # noqa: E402
import launch.events  # noqa: E402
import launch_ros.actions  # noqa: E402
import launch_ros.event_handlers  # noqa: E402
import launch_ros.events.lifecycle  # noqa: E402
import lifecycle_msgs.msg  # noqa: E402
import numpy as np  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from launch_helpers import tiny_model_yaml  # noqa: E402


def _transition(node, transition_id):
    return launch.actions.EmitEvent(event=launch_ros.events.lifecycle.ChangeState(
        lifecycle_node_matcher=launch.events.matches_action(node), transition_id=transition_id))


@pytest.mark.launch_test
def generate_test_description():
    node = launch_ros.actions.LifecycleNode(
        package="panoptic_node", executable="panoptic_node", name="panoptic_managed", namespace="", output="screen",
        parameters=[{"cameras": ["/cam_l"], "model": tiny_model_yaml(), "backend": "torch", "autostart": False,
                     "max_age_ms": 0, "qos_reliability": "reliable"}])
    activate_when_inactive = launch.actions.RegisterEventHandler(launch_ros.event_handlers.OnStateTransition(
        target_lifecycle_node=node, goal_state="inactive",
        entities=[_transition(node, lifecycle_msgs.msg.Transition.TRANSITION_ACTIVATE)]))
    return (launch.LaunchDescription([node, activate_when_inactive,
                                      _transition(node, lifecycle_msgs.msg.Transition.TRANSITION_CONFIGURE),
                                      launch_testing.actions.ReadyToTest()]),
            {"managed": node})


class TestManaged(unittest.TestCase):
    def test_waits_unconfigured_then_serves_once_launch_activates_it(self, proc_output, managed):
        proc_output.assertWaitFor("autostart is false", process=managed, timeout=30)
        rclpy.init()
        node = rclpy.create_node("lifecycle_test")
        try:
            pub = node.create_publisher(Image, "/cam_l/image", 10)
            rgb = np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)
            msg = Image(height=40, width=56, encoding="rgb8", step=56 * 3, data=rgb.tobytes())
            msg.header.stamp.sec, msg.header.frame_id = 1700000500, "cam_l"
            got = []
            node.create_subscription(Image, "/cam_l/panoptic/semantic", got.append, 10)
            end = time.time() + 60
            while time.time() < end and not got:
                pub.publish(msg)
                rclpy.spin_once(node, timeout_sec=0.2)
            self.assertTrue(got)
            self.assertEqual((got[0].height, got[0].width, got[0].header.frame_id), (40, 56, "cam_l"))
        finally:
            node.destroy_node()
            rclpy.shutdown()


@launch_testing.post_shutdown_test()
class TestExit(unittest.TestCase):
    def test_exit_code(self, proc_info, managed):
        launch_testing.asserts.assertExitCodes(proc_info, process=managed)
