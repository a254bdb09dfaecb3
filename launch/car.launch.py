"""ros2 launch panoptic_node car.launch.py [config:=FILE] [cameras:="['/camera/front']"] [model:=NAME]
       [backend:=auto|torch|onnxruntime|openvino|tensorrt] [precision:=auto|fp32|int8] [onnx:=FILE] [bag:=PATH] [rviz:=true|false] [log_level:=info]

bag:=PATH plays a recorded (or converted CamVid / KITTI) bag with --clock and runs the node on
sim time: the validation setup, same node, same topics.

With Fast DDS (ROS 2's default middleware) the node and the bag player run with
config/fastdds_large_images.xml unless you name a profile of your own: the default 512 KiB shared-memory
segment holds less than one 480x360 rgb8 frame, so frames fall back to fragmented UDP and a burst of
two cameras loses frames (measured: 5 of 30 frames/s for one of two cameras; 30 of 30 with the profile).
Camera drivers publishing such frames want the same profile (see the README). dds_profile:=none turns it off;
dds_profile:=udp_receive is for a driver you cannot configure that publishes several cameras from one process
(config/fastdds_udp_receive.xml says when, and what the kernel must allow).
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, OpaqueFunction
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def _cameras_in(config):
    import yaml
    with open(config) as f:
        doc = yaml.safe_load(f) or {}
    for section in doc.values():
        cameras = (section or {}).get("ros__parameters", {}).get("cameras")
        if cameras:
            return cameras
    return None


def _dds_env(context, share):
    """The large-images Fast DDS profile for our processes, unless the user chose a profile or another RMW."""
    choice = LaunchConfiguration("dds_profile").perform(context)
    if choice == "none" or os.environ.get("FASTRTPS_DEFAULT_PROFILES_FILE") or \
            os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE") or \
            os.environ.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp") != "rmw_fastrtps_cpp":
        return {}
    # the shipped profiles by name: large_images (the default) and udp_receive (see its file)
    shipped = {name: os.path.join(share, "config", f"fastdds_{name}.xml") for name in ("large_images", "udp_receive")}
    path = shipped.get(choice or "large_images", choice)
    return {"FASTRTPS_DEFAULT_PROFILES_FILE": path, "FASTDDS_DEFAULT_PROFILES_FILE": path}


def _node(context):
    share = get_package_share_directory("panoptic_node")
    env = _dds_env(context, share)
    config = LaunchConfiguration("config").perform(context) or os.path.join(share, "config", "car.param.yaml")
    overrides = {}
    for name in ("model", "backend", "precision", "onnx"):
        value = LaunchConfiguration(name).perform(context)
        if value:
            overrides[name] = value
    cameras = LaunchConfiguration("cameras").perform(context)
    if cameras:
        overrides["cameras"] = [c.strip(" '\"") for c in cameras.strip("[]").split(",") if c.strip(" '\"")]
    bag = LaunchConfiguration("bag").perform(context)
    if bag:
        overrides["use_sim_time"] = True
    actions = [Node(package="panoptic_node", executable="panoptic_node", name="panoptic_node", output="screen",
                    parameters=[config, overrides], additional_env=env,
                    arguments=["--ros-args", "--log-level", LaunchConfiguration("log_level").perform(context)])]
    if bag:
        # converted bags (panoptic-node convert) carry /camera/image_raw: feed it to the first camera
        first = (overrides.get("cameras") or _cameras_in(config) or ["/camera/front"])[0].rstrip("/")
        actions.append(ExecuteProcess(cmd=["ros2", "bag", "play", bag, "--clock",
                                           "--remap", f"/camera/image_raw:={first}/image"], output="screen",
                                      additional_env=env))
    return actions


def generate_launch_description():
    share = get_package_share_directory("panoptic_node")
    return LaunchDescription([
        DeclareLaunchArgument("config", default_value="", description="parameter file (default: config/car.param.yaml)"),
        DeclareLaunchArgument("cameras", default_value="", description="camera namespaces, e.g. \"['/camera/front']\""),
        DeclareLaunchArgument("model", default_value="", description="model name or YAML (default from config)"),
        DeclareLaunchArgument("backend", default_value="", description="auto|torch|onnxruntime|openvino|tensorrt"),
        DeclareLaunchArgument("precision", default_value="", description="auto|fp32|int8 (auto: int8 on OpenVINO "
                                                                         "when the weights ship int8 scales)"),
        DeclareLaunchArgument("onnx", default_value="", description="exported graph for onnxruntime / openvino / tensorrt"),
        DeclareLaunchArgument("bag", default_value="", description="play this bag with --clock and use sim time"),
        DeclareLaunchArgument("rviz", default_value="false", description="open RViz with config/panoptic.rviz"),
        DeclareLaunchArgument("log_level", default_value="info"),
        DeclareLaunchArgument("dds_profile", default_value="",
                              description="Fast DDS profile for the node and bag player: large_images (default, "
                                          "config/fastdds_large_images.xml), udp_receive (a multi-camera driver "
                                          "you cannot configure; see its file), none (Fast DDS's own defaults) "
                                          "or a file"),
        OpaqueFunction(function=_node),
        Node(package="rviz2", executable="rviz2", name="rviz2", output="screen",
             arguments=["-d", os.path.join(share, "config", "panoptic.rviz")],
             condition=IfCondition(LaunchConfiguration("rviz"))),
    ])
