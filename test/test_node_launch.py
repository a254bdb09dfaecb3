"""launch_testing: the real node on a tiny CPU model, two raw cameras. Runs where ROS 2 exists
(Humble / Jazzy); skipped here, where rclpy cannot be installed."""
import time
import unittest

import pytest

launch_testing = pytest.importorskip("launch_testing")
rclpy = pytest.importorskip("rclpy")

import launch  # noqa: E402
import launch_ros.actions  # noqa: E402
import numpy as np  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from vision_msgs.msg import Detection2DArray, LabelInfo  # noqa: E402

from launch_helpers import tiny_model_yaml  # noqa: E402
from panoptic_node.messages import image_array  # noqa: E402

CAMERAS = ["/cam_a", "/cam_b"]


@pytest.mark.launch_test
def generate_test_description():
    node = launch_ros.actions.Node(
        package="panoptic_node", executable="panoptic_node", name="panoptic_node", output="screen",
        parameters=[{"cameras": CAMERAS, "model": tiny_model_yaml(), "backend": "torch", "threshold": 0.0,
                     "max_age_ms": 0, "diagnostics_period": 0.2, "qos_reliability": "reliable", "qos_depth": 10}])
    return launch.LaunchDescription([node, launch_testing.actions.ReadyToTest()]), {"node": node}


def rgb_msg(stamp_sec, frame_id, h=48, w=64, encoding="rgb8"):
    msg = Image()
    msg.header.stamp.sec, msg.header.stamp.nanosec = stamp_sec, 123
    msg.header.frame_id = frame_id
    msg.height, msg.width, msg.encoding, msg.step = h, w, encoding, w * 3
    msg.data = np.random.default_rng(stamp_sec).integers(0, 255, h * w * 3, dtype=np.uint8).tobytes()
    return msg


class TestPanopticNode(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        rclpy.init()
        cls.node = rclpy.create_node("panoptic_test")

    @classmethod
    def tearDownClass(cls):
        cls.node.destroy_node()
        rclpy.shutdown()

    def collect(self, topic, msg_type, count, publish=None, timeout=30.0, qos=10):
        got = []
        sub = self.node.create_subscription(msg_type, topic, got.append, qos)
        end = time.time() + timeout
        while time.time() < end and len(got) < count:
            if publish:
                publish()
            rclpy.spin_once(self.node, timeout_sec=0.2)
        self.node.destroy_subscription(sub)
        return got

    def test_outputs_keep_header_and_encodings(self):
        pub = self.node.create_publisher(Image, "/cam_a/image", 10)
        frame = rgb_msg(1700000000, "front_optical")
        topics = {"semantic": "mono8", "instances": "mono16", "panoptic": "32SC1"}
        outs = {}
        subs = [self.node.create_subscription(Image, f"/cam_a/panoptic/{t}", lambda m, t=t: outs.setdefault(t, m), 10)
                for t in topics]
        dets = []
        subs.append(self.node.create_subscription(Detection2DArray, "/cam_a/panoptic/detections", dets.append, 10))
        end = time.time() + 30
        while time.time() < end and (len(outs) < 3 or not dets):
            pub.publish(frame)
            rclpy.spin_once(self.node, timeout_sec=0.2)
        for name, enc in topics.items():
            m = outs[name]
            self.assertEqual((m.encoding, m.height, m.width), (enc, 48, 64))
            self.assertEqual((m.header.stamp.sec, m.header.stamp.nanosec, m.header.frame_id),
                             (1700000000, 123, "front_optical"))
        instance = image_array(outs["instances"])
        det = dets[-1]
        self.assertEqual(det.header.frame_id, "front_optical")
        self.assertEqual(sorted(int(d.id) for d in det.detections), sorted(set(np.unique(instance).tolist()) - {0}))
        for d in det.detections:
            ys, xs = np.nonzero(instance == int(d.id))
            self.assertEqual(d.bbox.size_x, xs.max() + 1 - xs.min())

    def test_label_info_reaches_a_late_subscriber(self):
        time.sleep(1.0)
        qos = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL, reliability=ReliabilityPolicy.RELIABLE)
        got = self.collect("/cam_b/panoptic/label_info", LabelInfo, 1, qos=qos, timeout=10)
        self.assertEqual(len(got), 1)
        self.assertEqual([c.class_name for c in got[0].class_map][:3], ["sky", "building", "pole"])

    def test_offered_qos_follow_the_contract(self):
        """The offers the node makes are topic_qos.py's table (the one replay bags record)."""
        from panoptic_node.topic_qos import OUTPUTS
        for name, want in OUTPUTS.items():
            topic, end, infos = f"/cam_a/panoptic/{name}", time.time() + 10, []
            while time.time() < end and not infos:
                infos = self.node.get_publishers_info_by_topic(topic)
                rclpy.spin_once(self.node, timeout_sec=0.1)
            self.assertTrue(infos, topic)
            qos = infos[0].qos_profile
            self.assertEqual(qos.reliability == ReliabilityPolicy.RELIABLE, want.reliable, topic)
            self.assertEqual(qos.durability == DurabilityPolicy.TRANSIENT_LOCAL, want.transient_local, topic)

    def test_bad_frame_does_not_stop_the_next_good_one(self):
        pub = self.node.create_publisher(Image, "/cam_b/image", 10)
        bad = rgb_msg(1700000100, "rear", encoding="32FC1")
        good = rgb_msg(1700000101, "rear")
        got = self.collect("/cam_b/panoptic/semantic", Image, 1,
                           publish=lambda: (pub.publish(bad), pub.publish(good)))
        self.assertTrue(got)
        self.assertEqual(got[0].header.stamp.sec, 1700000101)

    def test_two_cameras_two_output_sets(self):
        pubs = {c: self.node.create_publisher(Image, f"{c}/image", 10) for c in CAMERAS}
        got = {c: [] for c in CAMERAS}
        # only this test's frames: the node is shared, and an earlier test's outputs may still arrive
        keep = lambda m, c: got[c].append(m) if m.header.stamp.sec == 1700000200 else None  # noqa: E731
        subs = [self.node.create_subscription(Image, f"{c}/panoptic/semantic", lambda m, c=c: keep(m, c), 10)
                for c in CAMERAS]
        end = time.time() + 30
        while time.time() < end and not all(got.values()):
            for c, p in pubs.items():
                p.publish(rgb_msg(1700000200, c.strip("/")))
            rclpy.spin_once(self.node, timeout_sec=0.2)
        for s in subs:  # the test node lives on for the next tests
            self.node.destroy_subscription(s)
        for c in CAMERAS:
            self.assertTrue(got[c])
            self.assertEqual(got[c][0].header.frame_id, c.strip("/"))

    def test_overlay_only_while_subscribed(self):
        pub = self.node.create_publisher(Image, "/cam_a/image", 10)
        diags = self.collect("/diagnostics", DiagnosticArray, 3, publish=lambda: pub.publish(rgb_msg(1700000300, "a")))
        # one status per camera, its hardware_id the camera's namespace
        (cam_a,) = [s for s in diags[-1].status if s.hardware_id == "/cam_a"]
        before = {kv.key: kv.value for kv in cam_a.values}
        self.assertEqual(before["overlays"], "0")
        self.assertNotEqual(before["published"], "0")
        overlays = self.collect("/cam_a/panoptic/overlay", Image, 1,
                                publish=lambda: pub.publish(rgb_msg(1700000301, "a")),
                                qos=QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT))
        self.assertTrue(overlays)
        self.assertEqual(overlays[0].encoding, "bgr8")


@launch_testing.post_shutdown_test()
class TestShutdown(unittest.TestCase):
    def test_exit_code(self, proc_info):
        # launch stops the node with SIGINT: a clean stop is exit 0 (test_node_graph.py checks SIGINT twice
        # and SIGTERM on a real graph here)
        launch_testing.asserts.assertExitCodes(proc_info, allowable_exit_codes=[0])
