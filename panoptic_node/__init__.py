"""panoptic_node: DETR panoptic segmentation for ROS 2 cars, and offline validation on rosbags."""
__version__ = "0.1.0"
