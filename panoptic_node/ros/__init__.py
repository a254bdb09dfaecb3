"""The rclpy node: the only part of panoptic_node that imports ROS."""
