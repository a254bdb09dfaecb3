"""ros2 launch panoptic_node car.launch.py [config:=FILE | config:="['FILE', ...]"] [namespace:=car1] [cameras:="['camera/front']"]
       [image_topics:="['/usb_cam/image_raw']"] [model:=NAME]
       [backend:=auto|torch|onnxruntime|openvino|tensorrt] [precision:=auto|fp32|int8] [onnx:=FILE] [bag:=PATH]
       [record:=PATH [record_frames:=input|compressed|none]] [rviz:=true|false] [autostart:=true|false]
       [num_threads:=N] [inference_workers:=N] [max_rate_hz:=R] [warmup_sizes:=WxH,...] [log_level:=info]

namespace:=car1 starts the node as /car1/panoptic_node (under any namespace a launch file including this one
pushed): the shipped camera name is relative (camera/front), so
its frames come from /car1/camera/front/image and its outputs go to /car1/camera/front/panoptic/*, one launch
per car or robot on one graph; an absolute camera name (/camera/front) stays where it is (said at launch).
/diagnostics stays global, as diagnostic aggregators expect; its statuses name the resolved cameras and,
in a namespace, the node's full name (/car1/panoptic_node: inference).

image_topics:="['/usb_cam/image_raw']" takes each camera's frames from the topic its driver publishes (one
per camera, in order): a remapping of <camera>/image, as `--ros-args -r` gives a node run by hand.

bag:=PATH plays a recorded (or converted CamVid / KITTI) bag with --clock and runs the node on
sim time: the validation setup, same node, same topics.

record:=PATH records, with ros2 bag record into that new folder, each camera's frames and camera_info and
what the node said of them (the maps as their lossless PNG twins, detections, label_info), /diagnostics and
/tf, /tf_static (where RViz finds each camera's frame):
`panoptic-node replay PATH --gt-topic /camera/front/panoptic/semantic/compressed` then scores another model
or setting against what the car's node said, on the car's own frames. record_frames:=compressed keeps the
driver's image_transport JPEG twin of the frames instead (<frames topic>/compressed: 7-14x smaller than raw
frames, 83 MB/s at 1280x720 and 30 Hz, at its default quality 95; the driver must publish it), none keeps no
frames.

With Fast DDS (ROS 2's default middleware) the node and the bag player run with a profile for large
images unless you export one of your own (dds_profile:=auto, the default; panoptic_node/dds_profile.py):
config/fastdds_large_images.xml, where the node receives over UDP and sends over shared memory, when
net.core.rmem_max >= 2 MiB, else config/fastdds_large_images_shm.xml (shared memory both ways), with a
line saying how to raise the limit. Fast DDS's default 512 KiB shared-memory segment holds less than one
480x360 rgb8 frame: a driver publishing two cameras from one process lost most of one camera's frames on
the way to a node listening on shared memory (9-13 of 30 Hz; 20-23 Hz out per camera over UDP).
dds_profile:=none runs Fast DDS's defaults; large_images, large_images_shm or a file choose by hand.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, LogInfo, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def _in_file(configs, name, node):
    """A parameter the node `node` (its fully qualified name: /car1/panoptic_node under namespace:=car1) takes
    from the parameters files, by rclpy's rule (every entry that applies to it in each file's order, the files
    in theirs: /**, its own name, the later winning); None when they say none, or cannot be read (the node
    then says why in one line)."""
    from panoptic_node.params import ParameterError, file_parameters
    try:
        return file_parameters(configs, node).get(name)
    except ParameterError:
        return None


def _list_argument(text):
    """A launch argument holding a list, as a user types it: "['camera/front', 'camera/rear']" or a,b."""
    return [c.strip(" '\"") for c in text.strip("[]").split(",") if c.strip(" '\"")]


def _dds_env(context, share):
    """The environment of our processes for the chosen Fast DDS profile, and a line saying which and why."""
    from panoptic_node.dds_profile import CHOICE_ENV, choose_profile, profile_env
    choice = LaunchConfiguration("dds_profile").perform(context)
    path, why = choose_profile(choice, os.path.join(share, "config"))
    # the node, which would choose auto for itself when started by hand, is told the launch's choice
    return {**profile_env(path), CHOICE_ENV: choice}, why


def _recorder(path, topics, sim_time, env):
    """`ros2 bag record` of what the node read and said (params.record_topics) into a new bag folder; one that
    exists is refused before anything starts (ros2 bag record would refuse it too, after the node started)."""
    from panoptic_node.params import ParameterError
    path = os.path.expanduser(path)  # record:=~/bags/x reaches the launch unexpanded (not a shell assignment)
    if os.path.exists(path):
        raise ParameterError(f"launch argument record: '{path}' exists; expected a new folder for ros2 bag record "
                             f"to write (nothing of yours is overwritten)")
    # Humble's ros2 bag record takes the topics as positional arguments only; later releases take --topics
    listed = topics if os.environ.get("ROS_DISTRO") == "humble" else ["--topics", *topics]
    return ExecuteProcess(cmd=["ros2", "bag", "record", "-o", path, *(["--use-sim-time"] if sim_time else []),
                               *listed], output="screen", additional_env=env)


def _node(context):
    from panoptic_node.params import (BAG_TO_PLAY, absolute_namespace, defaults, image_remaps, input_topic,
                                      launch_path, node_namespace, record_topics)
    share = get_package_share_directory("panoptic_node")
    given_ns = node_namespace(LaunchConfiguration("namespace").perform(context))  # checked: '' when none
    # where the node will be: launch_ros puts a relative namespace (and none) under what a PushRosNamespace
    # around this launch pushed; an absolute one stands alone
    pushed = LaunchConfiguration("ros_namespace", default="").perform(context) or "/"
    namespace = absolute_namespace(given_ns, pushed) if given_ns else pushed
    env, why = _dds_env(context, share)
    # one parameters file or several, read in order (a fleet's shared file, then a car's own)
    configs = [launch_path("config", c, "a ROS 2 parameters file")
               for c in _list_argument(LaunchConfiguration("config").perform(context))] or [
        os.path.join(share, "config", "car.param.yaml")]
    overrides = {}
    for name in ("model", "backend", "precision", "onnx"):
        value = LaunchConfiguration(name).perform(context)
        if value:
            overrides[name] = launch_path(name, value, "an ONNX graph `panoptic-node export` wrote") if (
                name == "onnx") else value
    cameras = LaunchConfiguration("cameras").perform(context)
    if cameras:
        overrides["cameras"] = _list_argument(cameras)
    for name, kind in (("num_threads", int), ("inference_workers", int), ("max_rate_hz", float)):
        value = LaunchConfiguration(name).perform(context)
        if value:  # a value that is not a number reaches the node as text, which it refuses in one line
            try:
                overrides[name] = kind(value)
            except ValueError:
                overrides[name] = value
    warmup = LaunchConfiguration("warmup_sizes").perform(context)
    if warmup:
        overrides["warmup_sizes"] = warmup
    autostart = LaunchConfiguration("autostart").perform(context)
    if autostart:  # anything but true / false reaches the node, which refuses it in one line
        overrides["autostart"] = {"true": True, "false": False}.get(autostart.lower(), autostart)
    bag = LaunchConfiguration("bag").perform(context)
    if bag:
        bag = launch_path("bag", bag, BAG_TO_PLAY)
        overrides["use_sim_time"] = True
    node_name = namespace.rstrip("/") + "/panoptic_node"
    given = overrides.get("cameras") or _in_file(configs, "cameras", node_name) or defaults()["cameras"]
    cameras = [absolute_namespace(c, namespace) for c in given]  # where the node will serve them
    # each camera's input remapped onto the topic its driver publishes (usb_cam's /image_raw, say)
    image_topics = _list_argument(LaunchConfiguration("image_topics").perform(context))
    transport = _in_file(configs, "input_transport", node_name) or defaults()["input_transport"]
    remaps = image_remaps(given, image_topics, namespace, transport) if image_topics else []
    actions = [LogInfo(msg=why),
               Node(package="panoptic_node", executable="panoptic_node", name="panoptic_node", output="screen",
                    parameters=[*configs, overrides], remappings=remaps, additional_env=env,
                    arguments=["--ros-args", "--log-level", LaunchConfiguration("log_level").perform(context)],
                    **({"namespace": given_ns} if given_ns else {}))]
    fixed = [c for c in given if c.startswith("/")]
    if namespace != "/" and fixed:
        actions.append(LogInfo(msg=f"namespace {namespace}: camera {', '.join(fixed)} is absolute and stays where it "
                                   f"is; name it relative ({fixed[0].lstrip('/')}) to move its topics under "
                                   f"{namespace}"))
    # where the first camera's frames and calibration come from (a bag is played into them)
    remapped = dict(remaps)
    first_input = remapped.get(input_topic(cameras[0], transport), f"{cameras[0]}/image")
    first_info = remapped.get(f"{cameras[0]}/camera_info", f"{cameras[0]}/camera_info")
    if bag:
        if transport == "compressed" and not remaps:
            actions.append(LogInfo(msg=f"bag:= plays /camera/image_raw (raw frames, as panoptic-node convert writes "
                                       f"them) into {first_input}, and with input_transport compressed the node "
                                       f"reads {cameras[0]}/image/compressed: for such a bag use input_transport raw "
                                       f"(a recording of {cameras[0]}/image/compressed plays into the node as it is)"))
        # converted bags (panoptic-node convert) carry /camera/image_raw and /camera/camera_info: feed them to
        # the first camera (its calibration comes out with its maps)
        actions.append(ExecuteProcess(cmd=["ros2", "bag", "play", bag, "--clock", "--remap",
                                           f"/camera/image_raw:={first_input}", f"/camera/camera_info:={first_info}"],
                                      output="screen", additional_env=env))
    record = LaunchConfiguration("record").perform(context)
    if record:
        frames = LaunchConfiguration("record_frames").perform(context)
        topics = record_topics(cameras, transport, remaps, frames)
        if frames == "compressed" and transport != "compressed":
            twins = [t for t in topics if t.endswith("/compressed") and "/panoptic/" not in t]
            actions.append(LogInfo(msg=f"record_frames:=compressed records {', '.join(twins)}: the camera driver's "
                                       f"image_transport publishes it (ros2 topic hz to check; ros2 bag record waits "
                                       f"for a topic nobody publishes); a replay runs on these JPEG frames, not on "
                                       f"the raw ones the node saw"))
        actions.append(_recorder(record, topics, bool(bag), env))
    if LaunchConfiguration("rviz").perform(context).lower() in ("true", "1"):
        # RViz shows the cameras this node serves (config/panoptic.rviz names /camera/front)
        from panoptic_node.rviz_config import rviz_config
        view = rviz_config(os.path.join(share, "config", "panoptic.rviz"), cameras,
                           first_image_topic=remapped.get(input_topic(cameras[0], transport)))
        actions.append(Node(package="rviz2", executable="rviz2", name="rviz2", output="screen",
                            arguments=["-d", str(view)], additional_env=env))
    return actions


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument("config", default_value="", description="parameters file (default: "
                              "config/car.param.yaml), or several, read in order: \"['fleet.yaml', 'car1.yaml']\""),
        DeclareLaunchArgument("namespace", default_value="",
                              description="node namespace, e.g. car1: relative camera names (the shipped camera/front) "
                                          "and their topics move under it (/car1/camera/front/...)"),
        DeclareLaunchArgument("cameras", default_value="",
                              description="camera namespaces, e.g. \"['camera/front', 'camera/rear']\" (relative: "
                                          "under namespace:=; absolute: where they say)"),
        DeclareLaunchArgument("image_topics", default_value="",
                              description="the topics the cameras' drivers publish, one per camera in order, e.g. "
                                          "\"['/usb_cam/image_raw']\": each is remapped onto its camera's input "
                                          "(<camera>/image; <camera>/image/compressed with input_transport "
                                          "compressed, then name the driver's compressed topic)"),
        DeclareLaunchArgument("model", default_value="", description="model name or YAML (default from config)"),
        DeclareLaunchArgument("backend", default_value="", description="auto|torch|onnxruntime|openvino|tensorrt"),
        DeclareLaunchArgument("precision", default_value="", description="auto|fp32|int8 (auto: int8 on OpenVINO "
                                                                         "when the weights ship int8 scales)"),
        DeclareLaunchArgument("onnx", default_value="", description="exported graph for onnxruntime / openvino / tensorrt"),
        DeclareLaunchArgument("bag", default_value="", description="play this bag with --clock and use sim time"),
        DeclareLaunchArgument("record", default_value="",
                              description="record the cameras' frames and camera_info, the node's maps (lossless "
                                          "PNG twins), detections, label_info, /diagnostics and /tf into this new bag "
                                          "folder with ros2 bag record (replay and score it later)"),
        DeclareLaunchArgument("record_frames", default_value="input",
                              description="which frames record:= keeps: input (those the node reads), compressed "
                                          "(the driver's image_transport JPEG twin, <frames topic>/compressed: "
                                          "7-14x smaller) or none (what the node said only)"),
        DeclareLaunchArgument("rviz", default_value="false", description="open RViz with config/panoptic.rviz"),
        DeclareLaunchArgument("num_threads", default_value="",
                              description="CPU threads for the network and post-processing (0: every core)"),
        DeclareLaunchArgument("inference_workers", default_value="",
                              description="frames inferred at once, each worker on its share of the threads: "
                                          "more frames a second where one cannot keep up, each later"),
        DeclareLaunchArgument("max_rate_hz", default_value="", description="infer at most this often (0: no limit)"),
        DeclareLaunchArgument("warmup_sizes", default_value="",
                              description="camera frame sizes to prepare at configure, e.g. 1280x720,640x480"),
        DeclareLaunchArgument("autostart", default_value="",
                              description="true: the node configures and activates itself (the default); false: "
                                          "it waits unconfigured for a lifecycle manager or `ros2 lifecycle set`"),
        DeclareLaunchArgument("log_level", default_value="info"),
        DeclareLaunchArgument("dds_profile", default_value="auto",
                              description="Fast DDS profile for the node and bag player: auto (large_images when "
                                          "net.core.rmem_max >= 2 MiB, else large_images_shm), large_images "
                                          "(receive over UDP, send over shared memory), large_images_shm (shared "
                                          "memory both ways), none (Fast DDS's own defaults) or a file"),
        OpaqueFunction(function=_node),
    ])
