"""Validation on a converted bag: ros2 launch panoptic_node replay.launch.py bag:=camvid_val [rviz:=true]

The converters write /camera/image_raw, so this maps the node's camera to /camera with the
image topic remapped; everything else is car.launch.py.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, OpaqueFunction
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from panoptic_node.rviz_config import rviz_config


def _player(context):
    from panoptic_node.params import BAG_TO_PLAY, launch_path
    bag = launch_path("bag", LaunchConfiguration("bag").perform(context), BAG_TO_PLAY)
    return [ExecuteProcess(cmd=["ros2", "bag", "play", bag, "--clock"], output="screen")]


def generate_launch_description():
    share = get_package_share_directory("panoptic_node")
    return LaunchDescription([
        DeclareLaunchArgument("bag", description="a bag from `panoptic-node convert`"),
        DeclareLaunchArgument("rviz", default_value="false"),
        Node(package="panoptic_node", executable="panoptic_node", name="panoptic_node", output="screen",
             parameters=[os.path.join(share, "config", "car.param.yaml"),
                         {"cameras": ["/camera"], "use_sim_time": True, "max_age_ms": 0}],
             remappings=[("/camera/image", "/camera/image_raw")]),
        OpaqueFunction(function=_player),
        # RViz on this node's camera, /camera, whose frames the bag holds as /camera/image_raw
        Node(package="rviz2", executable="rviz2",
             arguments=["-d", str(rviz_config(os.path.join(share, "config", "panoptic.rviz"), ["/camera"],
                                              first_image_topic="/camera/image_raw"))],
             condition=IfCondition(LaunchConfiguration("rviz"))),
    ])
