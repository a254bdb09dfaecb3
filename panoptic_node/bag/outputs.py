"""Write PanopticResults to a bag with exactly the live node's topics and types (DESIGN.md)."""
from dataclasses import replace
from typing import Dict, Optional

import numpy as np

from ..inference.result import PanopticResult
from ..messages import detections, image_fields, label_info
from ..params import PUBLISH_SWITCHES
from ..render import overlay
from ..taxonomy import Taxonomy
from ..topic_qos import LABEL_INFO, MAPS, OVERLAY
from .writer import BagWriter, detection_array_msg, image_msg, label_info_msg

OUTPUT_TOPICS = {  # relative to the camera namespace
    "panoptic/semantic": "sensor_msgs/msg/Image",
    "panoptic/instances": "sensor_msgs/msg/Image",
    "panoptic/panoptic": "sensor_msgs/msg/Image",
    "panoptic/detections": "vision_msgs/msg/Detection2DArray",
    "panoptic/label_info": "vision_msgs/msg/LabelInfo",
    "panoptic/overlay": "sensor_msgs/msg/Image",
    "panoptic/camera_info": "sensor_msgs/msg/CameraInfo",  # the camera's own, where the bag has it
}


class ResultBagWriter:
    """One camera's results as the node's topics under its namespace. publish: the node's publish_* switches
    ({'overlay': False, ...}; every topic by default), so a replay with the car's parameters writes what the
    car publishes; label_info is always written (the node latches it whatever the switches say)."""

    def __init__(self, writer: BagWriter, namespace: str, taxonomy: Taxonomy, threshold: float,
                 publish: Optional[Dict[str, bool]] = None, overlay_labels: bool = True):
        self.w, self.ns, self.taxonomy = writer, namespace, taxonomy
        self.threshold, self.overlay_labels = threshold, overlay_labels
        self.publish = {name: True for name in PUBLISH_SWITCHES} | dict(publish or {})
        self.label_info_written = False

    def topic(self, name: str) -> str:
        return f"{self.ns}/{name}"

    def add(self, hdr, stamp: int, result: PanopticResult, rgb: np.ndarray,
            drawn: Optional[np.ndarray] = None, camera_info=None) -> None:
        """drawn: the frame's overlay if the caller already rendered it (replay's video uses it too);
        camera_info: the camera's newest CameraInfo in the bag, written stamped as this frame's maps."""
        if not self.label_info_written:
            self.w.write(self.topic("panoptic/label_info"), label_info_msg(hdr, label_info(self.taxonomy),
                                                                            self.threshold), stamp, LABEL_INFO)
            self.label_info_written = True
        if self.publish["semantic"]:
            self.w.write(self.topic("panoptic/semantic"), image_msg(hdr, image_fields(result.semantic, "mono8")),
                         stamp, MAPS)
        if self.publish["instances"]:
            self.w.write(self.topic("panoptic/instances"), image_msg(hdr, image_fields(result.instance, "mono16")),
                         stamp, MAPS)
        if self.publish["panoptic"]:
            self.w.write(self.topic("panoptic/panoptic"), image_msg(hdr, image_fields(result.panoptic, "32SC1")),
                         stamp, MAPS)
        if self.publish["detections"]:
            self.w.write(self.topic("panoptic/detections"),
                         detection_array_msg(hdr, detections(result, self.taxonomy)), stamp, MAPS)
        if self.publish["overlay"]:
            drawn = overlay(rgb, result, self.taxonomy, labels=self.overlay_labels) if drawn is None else drawn
            bgr = drawn[..., ::-1]
            self.w.write(self.topic("panoptic/overlay"), image_msg(hdr, image_fields(bgr, "bgr8")), stamp, OVERLAY)
        if camera_info is not None:
            self.w.write(self.topic("panoptic/camera_info"), replace(camera_info, header=hdr), stamp, MAPS)
