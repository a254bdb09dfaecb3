"""launch_testing: `ros2 launch panoptic_node car.launch.py record:=PATH` as a user runs it on the car: after the
launch stops, PATH is a bag holding the camera's frames, the node's maps as their PNG twins, its detections,
label_info and /diagnostics, and `replay --gt-topic .../semantic/compressed` with the model the node ran agrees
with the node (up to a pixel where two queries tie). Runs where ROS 2 (ros2 bag) and this package's colcon
install exist; skipped here (test_car_launch.py checks the recorder's command, test_recorded_maps.py the
scoring of such a recording)."""
import atexit
import shutil
import tempfile
import unittest
from pathlib import Path

import pytest

launch_testing = pytest.importorskip("launch_testing")
rclpy = pytest.importorskip("rclpy")

from launch_helpers import frames_until_answered, include_car_launch, tiny_model_yaml  # noqa: E402

NAMESPACE = "car_record_test"
MODEL = tiny_model_yaml()
BAG = Path(tempfile.mkdtemp(prefix="panoptic_record_")) / "drive"
atexit.register(shutil.rmtree, BAG.parent, ignore_errors=True)


@pytest.mark.launch_test
def generate_test_description():
    return include_car_launch(namespace=NAMESPACE, record=str(BAG), model=MODEL, backend="torch",
                              dds_profile="none")


class TestRecord(unittest.TestCase):
    def test_frames_reach_the_node_while_the_recorder_runs(self):
        rclpy.init()
        node = rclpy.create_node("car_record_test")
        try:
            camera = f"/{NAMESPACE}/camera/front"
            # frames for a few seconds after the first answer, so the recorder holds frames and maps
            got = frames_until_answered(node, f"{camera}/image", f"{camera}/panoptic/semantic", keep_on_s=3.0)
            self.assertTrue(got, f"nothing on {camera}/panoptic/semantic")
        finally:
            node.destroy_node()
            rclpy.shutdown()


@launch_testing.post_shutdown_test()
class TestRecording(unittest.TestCase):
    def test_the_recording_holds_what_the_node_read_and_said_and_replays(self):
        from panoptic_node.bag.reader import BagReader
        from panoptic_node.inference.pipeline import Pipeline
        from panoptic_node.replay import replay
        camera = f"/{NAMESPACE}/camera/front"
        with BagReader(BAG) as r:
            for topic in (f"{camera}/image", f"{camera}/panoptic/semantic/compressed",
                          f"{camera}/panoptic/instances/compressed", f"{camera}/panoptic/detections",
                          f"{camera}/panoptic/label_info", "/diagnostics"):
                self.assertIn(topic, r.topics)
        # the shipped car.param.yaml's threshold is the model's own (-1): the replay runs the same pipeline
        summary = replay(Pipeline.from_config(MODEL), BAG, image_topic=f"{camera}/image",
                         gt_topic=f"{camera}/panoptic/semantic/compressed")
        self.assertGreater(summary.evaluated, 0)
        # the same network; the node's threads may break a tie between two queries otherwise than this process's
        self.assertGreater(summary.metrics["miou"], 0.99)
        self.assertGreater(summary.metrics["pq"]["pq"], 0.99)
