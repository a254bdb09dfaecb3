"""The QoS each output topic is offered with: one table for the live node (rclpy profiles) and for the
bags replay writes (the offered QoS recorded per topic, so `ros2 bag play` offers what the node does).

Without a recorded offer, `ros2 bag play` publishes every topic reliable and volatile; a late
subscriber asking for label_info with transient-local durability (the contract: the class map is
latched) would then be incompatible and never get it.
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class TopicQos:
    reliable: bool
    transient_local: bool
    depth: int


MAPS = TopicQos(reliable=True, transient_local=False, depth=10)        # semantic, instances, panoptic, detections
OVERLAY = TopicQos(reliable=False, transient_local=False, depth=5)     # for eyes only: sensor-data QoS
LABEL_INFO = TopicQos(reliable=True, transient_local=True, depth=1)    # latched for late subscribers
DIAGNOSTICS = TopicQos(reliable=True, transient_local=False, depth=10)

# the node's topics under <ns>/panoptic/. The /compressed twins are what image_transport's compressed plugin
# gives a C++ node's images: the maps' lossless PNG (about a thirtieth of the bytes, for recording and for
# links), the overlay's JPEG (a tenth, for RViz over a network); published by the node only (bags keep the
# raw topics). The 32SC1 panoptic map has no PNG form there (8 and 16 bits only). camera_info is the camera's
# own, stamped as each frame's maps: image_transport's sibling of every image here (RViz's Camera display
# and a CameraSubscriber pair <ns>/panoptic/<image> with <ns>/panoptic/camera_info).
OUTPUTS = {"semantic": MAPS, "semantic/compressed": MAPS, "instances": MAPS, "instances/compressed": MAPS,
           "panoptic": MAPS, "detections": MAPS, "overlay": OVERLAY, "overlay/compressed": OVERLAY,
           "label_info": LABEL_INFO, "camera_info": MAPS}
