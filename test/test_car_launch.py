"""car.launch.py's own logic, run here without ROS's `launch` (not on PyPI): the launch modules are
replaced by recorders, and the file's _node() is called with launch arguments as a user gives them. On a
ROS 2 install the launch_testing files start the node for real; this checks what reaches the node's and
the bag player's processes: the Fast DDS profile, the parameters and the remapping."""
import json
import os
import re
import sys
from pathlib import Path

import pytest

from conftest import run_without
from launch_stand_ins import declared_arguments, load_launch_file, stand_in_modules

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def car_launch(monkeypatch, tmp_path):
    for name, module in stand_in_modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    for var in ("FASTRTPS_DEFAULT_PROFILES_FILE", "FASTDDS_DEFAULT_PROFILES_FILE", "RMW_IMPLEMENTATION"):
        monkeypatch.delenv(var, raising=False)
    module = load_launch_file("car.launch.py")
    arguments = declared_arguments(module)

    def run(**given):
        context = {**arguments, **given}
        return module._node(context)

    run.defaults = arguments
    run.bag = str(tmp_path / "recorded")  # a bag folder that exists, for bag:=
    os.makedirs(run.bag, exist_ok=True)
    return run


def test_the_default_profile_is_auto_and_reaches_the_node_and_the_player(car_launch, monkeypatch):
    import panoptic_node.dds_profile as dds
    assert car_launch.defaults["dds_profile"] == "auto"
    for rmem, name in ((4 << 20, "fastdds_large_images.xml"), (212992, "fastdds_large_images_shm.xml")):
        monkeypatch.setattr(dds, "read_rmem_max", lambda rmem=rmem: rmem)
        log, node, player = car_launch(bag=car_launch.bag, cameras="['/cam/front', '/cam/rear']")
        expected = str(ROOT / "config" / name)
        assert node.kwargs["additional_env"] == {"FASTRTPS_DEFAULT_PROFILES_FILE": expected,
                                                 "FASTDDS_DEFAULT_PROFILES_FILE": expected,
                                                 "PANOPTIC_NODE_DDS_PROFILE": "auto"}
        assert player.kwargs["additional_env"] == node.kwargs["additional_env"]
        assert name.split(".")[0].replace("fastdds_", "") in log.kwargs["msg"]
        assert node.kwargs["parameters"][1] == {"cameras": ["/cam/front", "/cam/rear"], "use_sim_time": True}
        assert player.kwargs["cmd"][-3:] == ["--remap", "/camera/image_raw:=/cam/front/image",
                                             "/camera/camera_info:=/cam/front/camera_info"]


def test_none_and_a_users_own_profile_export_nothing(car_launch, monkeypatch):
    """Nothing exported but the launch's choice, which tells the node (that would take auto when started by
    hand) to leave Fast DDS as the launch left it."""
    log, node = car_launch(dds_profile="none")
    assert node.kwargs["additional_env"] == {"PANOPTIC_NODE_DDS_PROFILE": "none"} and "none" in log.kwargs["msg"]
    monkeypatch.setenv("FASTRTPS_DEFAULT_PROFILES_FILE", "/etc/my_dds.xml")
    log, node = car_launch()
    assert node.kwargs["additional_env"] == {"PANOPTIC_NODE_DDS_PROFILE": "auto"}
    assert "/etc/my_dds.xml" in log.kwargs["msg"]


def test_a_bad_profile_choice_stops_the_launch_with_one_line(car_launch):
    with pytest.raises(ValueError, match="dds_profile 'fast' is not a file"):
        car_launch(dds_profile="fast")


def _topics(rviz_file):
    import yaml
    doc = yaml.safe_load(Path(rviz_file).read_text())
    return [(d["Name"], d["Topic"]["Value"]) for d in doc["Visualization Manager"]["Displays"] if "Topic" in d]


def test_rviz_shows_the_cameras_this_node_serves(car_launch, tmp_path, monkeypatch):
    """config/panoptic.rviz names /camera/front: started for other cameras, RViz showed topics nobody
    publishes. The launch opens it on a copy for the cameras in use."""
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert len(car_launch()) == 2                                   # rviz:=false: no RViz
    *_, rviz = car_launch(rviz="true", cameras="['/cam/rear', '/cam/left']")
    assert rviz.kwargs["executable"] == "rviz2" and rviz.kwargs["arguments"][0] == "-d"
    assert _topics(rviz.kwargs["arguments"][1]) == [
        ("Camera", "/cam/rear/image"), ("Panoptic overlay /cam/rear", "/cam/rear/panoptic/overlay"),
        ("Panoptic overlay /cam/left", "/cam/left/panoptic/overlay"), ("Semantic labels", "/cam/rear/panoptic/semantic")]
    assert "/cam/rear" not in (ROOT / "config" / "panoptic.rviz").read_text()  # the shipped file is left alone


def test_rviz_config_for_a_converted_bag_shows_its_image_topic(tmp_path):
    """replay.launch.py: the node's camera is /camera, whose frames a converted bag holds as /camera/image_raw."""
    from panoptic_node.rviz_config import rviz_config
    path = rviz_config(ROOT / "config" / "panoptic.rviz", ["/camera"], "/camera/image_raw", out_dir=tmp_path)
    assert _topics(path) == [("Camera", "/camera/image_raw"), ("Panoptic overlay", "/camera/panoptic/overlay"),
                             ("Semantic labels", "/camera/panoptic/semantic")]
    assert rviz_config(ROOT / "config" / "panoptic.rviz", ["/camera"], "/camera/image_raw", out_dir=tmp_path) == path
    assert [p.name for p in tmp_path.iterdir()] == [path.name]   # one file per content, no partial left
    with pytest.raises(ValueError, match="no camera"):
        rviz_config(ROOT / "config" / "panoptic.rviz", [], out_dir=tmp_path)


@pytest.mark.parametrize("given, expected", [("", None), ("false", False), ("True", True), ("maybe", "maybe")])
def test_autostart_reaches_the_node_as_a_boolean(car_launch, given, expected):
    """autostart:=false makes a managed node wait for its lifecycle manager; a value that is neither true nor
    false reaches the node, which refuses it in one line (test_node_graph.py); unset, the config decides."""
    node = car_launch(autostart=given)[1]
    assert node.kwargs["parameters"][1].get("autostart") == expected


def test_the_cpu_budget_and_warmup_reach_the_node(car_launch):
    """num_threads:=1 inference_workers:=2 max_rate_hz:=10 warmup_sizes:=1280x720 arrive typed as the schema
    wants them; a value that is no number arrives as text, for the node's one-line refusal; unset, the config
    decides."""
    node = car_launch(num_threads="1", max_rate_hz="10", warmup_sizes="1280x720", inference_workers="2")[1]
    given = node.kwargs["parameters"][1]
    assert given["num_threads"] == 1 and given["max_rate_hz"] == 10.0 and given["warmup_sizes"] == "1280x720"
    assert type(given["num_threads"]) is int and type(given["max_rate_hz"]) is float
    assert given["inference_workers"] == 2 and type(given["inference_workers"]) is int
    assert car_launch(num_threads="many")[1].kwargs["parameters"][1]["num_threads"] == "many"
    assert not {"num_threads", "max_rate_hz", "warmup_sizes", "inference_workers"} & set(
        car_launch()[1].kwargs["parameters"][1])


def test_rviz_shows_the_cameras_the_node_takes_from_the_config(car_launch, tmp_path, monkeypatch):
    """With /** and the node's own entry both naming cameras, the node takes the later (rclpy's rule):
    RViz must show those, not the first entry's."""
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    config = tmp_path / "car.param.yaml"
    config.write_text("/panoptic_node:\n  ros__parameters: {cameras: [/cam/old]}\n"
                      "/**:\n  ros__parameters: {cameras: [/cam/new]}\n")
    *_, rviz = car_launch(rviz="true", config=str(config))
    assert _topics(rviz.kwargs["arguments"][1])[0] == ("Camera", "/cam/new/image")
    config.write_text("not: [a parameters file\n")  # the node refuses it in one line; RViz takes the default
    *_, rviz = car_launch(rviz="true", config=str(config))
    assert _topics(rviz.kwargs["arguments"][1])[0] == ("Camera", "/camera/front/image")


def test_a_namespace_moves_the_node_and_its_relative_cameras(car_launch, tmp_path, monkeypatch):
    """namespace:=car1, one launch per car: the node runs as /car1/panoptic_node, so the shipped relative
    camera (camera/front) is served at /car1/camera/front; the bag player and RViz are given those names."""
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert car_launch.defaults["namespace"] == ""
    log, node, player, rviz = car_launch(namespace="car1", bag=car_launch.bag, rviz="true")
    assert node.kwargs["namespace"] == "car1"  # relative: launch_ros puts it under any pushed namespace
    assert "/camera/image_raw:=/car1/camera/front/image" in player.kwargs["cmd"]
    assert ("Camera", "/car1/camera/front/image") in _topics(rviz.kwargs["arguments"][1])
    assert "namespace" not in car_launch()[1].kwargs  # none given: the root, as before
    assert "/camera/image_raw:=/camera/front/image" in car_launch(bag=car_launch.bag)[2].kwargs["cmd"]


def test_an_absolute_camera_under_a_namespace_is_said_at_launch(car_launch):
    """An absolute camera stays where it is under namespace:= (ROS's rule): the launch says so in one line,
    naming the relative spelling that would move it."""
    log, node, said = car_launch(namespace="/car2/", cameras="['/cam/front', 'cam/rear']")
    assert node.kwargs["namespace"] == "/car2"  # absolute, as given
    assert said.kwargs["msg"] == ("namespace /car2: camera /cam/front is absolute and stays where it is; name it "
                                  "relative (cam/front) to move its topics under /car2")
    assert len(car_launch(cameras="['cam/rear']", namespace="car2")) == 2  # nothing to say


def test_a_namespace_pushed_around_the_launch_is_where_the_cameras_are(car_launch):
    """car.launch.py included inside a user's launch file under PushRosNamespace('/fleet') (launch_ros keeps it
    as the ros_namespace launch configuration): the node lands in /fleet[/car1], and the bag player's remap
    names the topic there; an absolute namespace:= stands alone, as launch_ros places it."""
    cases = ((dict(namespace="car1"), "/fleet/car1/camera/front/image"), ({}, "/fleet/camera/front/image"),
             (dict(namespace="/car1"), "/car1/camera/front/image"), (dict(namespace="/"), "/camera/front/image"))
    for given, topic in cases:
        *_, player = car_launch(ros_namespace="/fleet", bag=car_launch.bag, **given)
        assert f"/camera/image_raw:={topic}" in player.kwargs["cmd"], given


def test_a_bad_namespace_stops_the_launch_with_one_line(car_launch):
    from panoptic_node.params import ParameterError
    with pytest.raises(ParameterError, match="launch argument namespace 'car 1' is not a ROS namespace"):
        car_launch(namespace="car 1")


def test_image_topics_remap_each_camera_onto_its_drivers_topic(car_launch, tmp_path, monkeypatch):
    """image_topics:= for a driver that publishes elsewhere (usb_cam's /image_raw): each camera's input is
    remapped onto it and its camera_info onto the driver's beside it, as `--ros-args -r` does for a node run
    by hand (ros2 launch passes no remaps to a node);
    the bag player and RViz are given the topic the node now reads. A relative topic resolves under the
    node's namespace; with input_transport compressed the compressed input is remapped."""
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert car_launch.defaults["image_topics"] == "" and car_launch()[1].kwargs["remappings"] == []
    log, node, player, rviz = car_launch(image_topics="['/usb_cam/image_raw']", bag=car_launch.bag, rviz="true")
    assert node.kwargs["remappings"] == [("/camera/front/image", "/usb_cam/image_raw"),
                                         ("/camera/front/camera_info", "/usb_cam/camera_info")]
    assert player.kwargs["cmd"][-3:] == ["--remap", "/camera/image_raw:=/usb_cam/image_raw",
                                         "/camera/camera_info:=/usb_cam/camera_info"]
    assert ("Camera", "/usb_cam/image_raw") in _topics(rviz.kwargs["arguments"][1])
    node = car_launch(namespace="car1", cameras="['cam/front', '/cam/rear']", image_topics="drv/front,/drv/rear")[1]
    assert node.kwargs["remappings"] == [("/car1/cam/front/image", "/car1/drv/front"),
                                         ("/car1/cam/front/camera_info", "/car1/drv/camera_info"),
                                         ("/cam/rear/image", "/drv/rear"),
                                         ("/cam/rear/camera_info", "/drv/camera_info")]
    config = tmp_path / "compressed.yaml"
    config.write_text("/**:\n  ros__parameters:\n    input_transport: compressed\n")
    node = car_launch(config=str(config), image_topics="['/usb_cam/image_raw/compressed']")[1]
    assert node.kwargs["remappings"] == [("/camera/front/image/compressed", "/usb_cam/image_raw/compressed"),
                                         ("/camera/front/camera_info", "/usb_cam/camera_info")]


def test_a_converted_bag_with_compressed_input_is_said_at_launch(car_launch, tmp_path):
    """bag:= plays a converted bag's raw /camera/image_raw into <camera>/image; a node reading compressed frames
    would hear nothing, and the launch says so in one line naming the setting (nothing to say for raw)."""
    config = tmp_path / "compressed.yaml"
    config.write_text("/**:\n  ros__parameters:\n    input_transport: compressed\n")
    said = [a.kwargs["msg"] for a in car_launch(config=str(config), bag=car_launch.bag) if "msg" in a.kwargs]
    assert said[-1] == ("bag:= plays /camera/image_raw (raw frames, as panoptic-node convert writes them) into "
                        "/camera/front/image, and with input_transport compressed the node reads "
                        "/camera/front/image/compressed: for such a bag use input_transport raw (a recording of "
                        "/camera/front/image/compressed plays into the node as it is)")
    assert not [a for a in car_launch(bag=car_launch.bag) if "bag:=" in a.kwargs.get("msg", "")]


@pytest.mark.parametrize("given, says", [
    (dict(image_topics="['/a', '/b']"), "launch argument image_topics names 2 topic(s) for 1 camera(s) (camera/front); "
                                        "expected one topic per camera, in the cameras' order"),
    (dict(image_topics="/usb cam/image_raw"), "launch argument image_topics: '/usb cam/image_raw' is not a ROS topic "
                                              "name: expected names of letters, digits and underscores"),
    (dict(image_topics="['/a']", cameras="['front', 'rear']"), "names 1 topic(s) for 2 camera(s) (front, rear)")])
def test_bad_image_topics_stop_the_launch_with_one_line(car_launch, given, says):
    from panoptic_node.params import ParameterError
    with pytest.raises(ParameterError, match=re.escape(says)):
        car_launch(**given)


ROS_PYTHON_HAS = ("yaml", "_yaml")   # PyYAML: a dependency of ROS 2's own Python packages (launch, rclpy)


def test_the_launch_files_run_in_a_python_without_our_dependencies(tmp_path):
    """`ros2 launch` runs a launch file in the ROS 2 install's own Python (/usr/bin/python3 on Ubuntu 24.04),
    which has PyYAML but not torch, numpy or jsonschema where those live in a virtual environment, the way
    ROS 2 adds pip packages on Ubuntu 24.04 and Debian 12 (the node itself runs in the venv: colcon gives it
    the venv's Python). car.launch.py read the parameters file through panoptic_node.params, whose import
    pulled in torch: the launch stopped with ModuleNotFoundError. Here both launch files run, RViz and a bag
    included, in this Python with every module outside the standard library and PyYAML unimportable (and a
    namespace, whose check reads the parameters' schema)."""
    config = tmp_path / "car.param.yaml"
    config.write_text("/**:\n  ros__parameters: {cameras: [cam/left, /cam/right]}\n")
    script = f"""
import json, sys, tempfile
sys.path.insert(0, {str(ROOT / "test")!r})
try:
    import torch
except ImportError as e:
    blocked = str(e)
from launch_stand_ins import declared_arguments, load_launch_file, stand_in_modules
sys.modules.update(stand_in_modules())
tempfile.tempdir = {str(tmp_path)!r}
car = load_launch_file("car.launch.py")
context = {{**declared_arguments(car), "config": {str(config)!r}, "rviz": "true", "bag": {str(tmp_path)!r},
           "namespace": "car9"}}
log, node, said, player, rviz = car._node(context)
replay = load_launch_file("replay.launch.py")
print(json.dumps({{"blocked": blocked, "parameters": node.kwargs["parameters"], "player": player.kwargs["cmd"],
                  "namespace": node.kwargs["namespace"], "said": said.kwargs["msg"],
                  "rviz": rviz.kwargs["arguments"][1], "replay_arguments": sorted(declared_arguments(replay))}}))
"""
    python_path = os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))
    run = run_without(ROS_PYTHON_HAS + ("panoptic_node", "launch_stand_ins"), script, tmp_path, all_but=True,
                      env={**os.environ, "PYTHONPATH": python_path})
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout)
    assert out["blocked"] == "No module named 'torch'"   # the blocker is in force
    assert out["parameters"] == [str(config), {"use_sim_time": True}]
    assert out["namespace"] == "car9" and "camera /cam/right is absolute" in out["said"]
    assert "/camera/image_raw:=/car9/cam/left/image" in out["player"]
    assert _topics(out["rviz"])[0] == ("Camera", "/car9/cam/left/image")
    assert "bag" in out["replay_arguments"]


def test_record_writes_what_the_node_read_and_said_into_a_new_bag(car_launch, tmp_path, monkeypatch):
    """record:=PATH starts ros2 bag record of each camera's frames and calibration (where image_topics:= takes
    them from), the node's maps as PNG twins, detections, label_info and /diagnostics, with the node's Fast
    DDS profile, on sim time beside bag:=; a folder that exists is refused before anything starts."""
    monkeypatch.delenv("ROS_DISTRO", raising=False)
    out = str(tmp_path / "drive")
    actions = car_launch(record=out, namespace="car1", cameras="['camera/front', '/rear']",
                         image_topics="['/usb_cam/image_raw', '/rear/image_raw']")
    node, recorder = actions[1], actions[-1]
    outputs = ["panoptic/semantic/compressed", "panoptic/instances/compressed", "panoptic/detections",
               "panoptic/label_info"]
    assert recorder.kwargs["cmd"] == [
        "ros2", "bag", "record", "-o", out, "--topics",
        "/usb_cam/image_raw", "/usb_cam/camera_info", *[f"/car1/camera/front/{o}" for o in outputs],
        "/rear/image_raw", "/rear/camera_info", *[f"/rear/{o}" for o in outputs], "/diagnostics", "/tf", "/tf_static"]
    assert recorder.kwargs["additional_env"] == node.kwargs["additional_env"]
    *_, player, recorder = car_launch(record=out, bag=car_launch.bag)
    assert player.kwargs["cmd"][:3] == ["ros2", "bag", "play"]
    assert recorder.kwargs["cmd"][5:8] == ["--use-sim-time", "--topics", "/camera/front/image"]
    monkeypatch.setenv("HOME", str(tmp_path))  # a shell leaves record:=~/drive unexpanded: the launch expands it
    assert car_launch(record="~/drive")[-1].kwargs["cmd"][4] == out
    monkeypatch.setenv("ROS_DISTRO", "humble")  # its ros2 bag record takes the topics as positional arguments
    assert car_launch(record=out)[-1].kwargs["cmd"][4:7] == [out, "/camera/front/image", "/camera/front/camera_info"]
    (tmp_path / "drive").mkdir()
    (tmp_path / "drive" / "mine.txt").write_text("the user's")
    from panoptic_node.params import ParameterError
    with pytest.raises(ParameterError, match=re.escape(f"launch argument record: '{out}' exists; expected a new "
                                                       f"folder for ros2 bag record to write")):
        car_launch(record=out)
    assert (tmp_path / "drive" / "mine.txt").read_text() == "the user's"


def test_paths_are_found_as_the_user_typed_them_or_refused_at_launch(car_launch, tmp_path, monkeypatch):
    """bag:=~/bags/monday reaches the launch unexpanded (no shell word): ros2 bag play was given a literal
    '~' and failed in its own process, leaving the node up with no frames. Both launch files expand it,
    car.launch.py its config:= and onnx:= too, and a path that does not exist is one line before anything
    starts."""
    from panoptic_node.params import ParameterError
    monkeypatch.setenv("HOME", str(tmp_path))
    replay = load_launch_file("replay.launch.py")
    player_of_replay = next(a for a in replay.generate_launch_description().args[0]
                            if a.kwargs.get("function") is replay._player)
    given = "~/" + Path(car_launch.bag).name
    assert car_launch(bag=given)[2].kwargs["cmd"][:4] == ["ros2", "bag", "play", car_launch.bag]
    assert player_of_replay.kwargs["function"]({"bag": given})[0].kwargs["cmd"][:4] == ["ros2", "bag", "play",
                                                                                       car_launch.bag]
    missing = str(tmp_path / "tuesday")
    expected = re.escape(f"launch argument bag: '{missing}' does not exist; expected a rosbag2 folder")
    with pytest.raises(ParameterError, match=expected):
        car_launch(bag="~/tuesday")
    with pytest.raises(ParameterError, match=expected):
        player_of_replay.kwargs["function"]({"bag": "~/tuesday"})
    (tmp_path / "my_car.param.yaml").write_text("/**:\n  ros__parameters: {cameras: [cam/left]}\n")
    (tmp_path / "street.onnx").write_bytes(b"a graph")
    node = car_launch(config="~/my_car.param.yaml", onnx="~/street.onnx")[1]
    assert node.kwargs["parameters"] == [str(tmp_path / "my_car.param.yaml"), {"onnx": str(tmp_path / "street.onnx")}]
    for argument in ("config", "onnx"):
        with pytest.raises(ParameterError, match=re.escape(f"launch argument {argument}: '{tmp_path}/nope' does "
                                                           f"not exist; expected a")):
            car_launch(**{argument: "~/nope"})


def test_several_parameters_files_reach_the_node_in_order_and_the_launch_reads_them_so(car_launch, tmp_path,
                                                                                       monkeypatch):
    """config:="['fleet.yaml', 'car1.yaml']": the node gets both, in order (a later file's values win, as
    rclpy reads them); the launch takes the cameras it remaps and records from them too, by the node's own
    name under its namespace (/car1/panoptic_node's entry in the car's file)."""
    monkeypatch.delenv("ROS_DISTRO", raising=False)
    fleet, car1 = tmp_path / "fleet.yaml", tmp_path / "car1.yaml"
    fleet.write_text("/**:\n  ros__parameters: {cameras: [camera/front]}\n")
    car1.write_text("/car1/panoptic_node:\n  ros__parameters: {cameras: [camera/front, camera/rear]}\n")
    out = str(tmp_path / "drive")
    actions = car_launch(config=f"['{fleet}', '{car1}']", namespace="car1", record=out)
    node, recorder = actions[1], actions[-1]
    assert node.kwargs["parameters"] == [str(fleet), str(car1), {}]
    recorded = recorder.kwargs["cmd"]
    assert "/car1/camera/rear/image" in recorded and "/car1/camera/rear/panoptic/detections" in recorded


def test_record_frames_chooses_the_frames_a_recording_keeps(car_launch, tmp_path, monkeypatch):
    """Raw 1280x720 frames at 30 Hz are about 83 MB/s: record_frames:=compressed records the driver's
    image_transport JPEG twin of each camera's frames instead (where image_topics:= takes them from, and said
    at launch: the driver must publish it), none records what the node said only; a node reading compressed
    frames records those whatever is asked. Another value is refused in one line before anything starts."""
    monkeypatch.delenv("ROS_DISTRO", raising=False)
    out = str(tmp_path / "drive")
    assert car_launch.defaults["record_frames"] == "input"
    outputs = ["panoptic/semantic/compressed", "panoptic/instances/compressed", "panoptic/detections",
               "panoptic/label_info"]
    *_, log, recorder = car_launch(record=out, record_frames="compressed", cameras="['/front', '/rear']",
                                   image_topics="['/usb_cam/image_raw', '/rear/image_raw']")
    assert recorder.kwargs["cmd"][6:] == [
        "/usb_cam/image_raw/compressed", "/usb_cam/camera_info", *[f"/front/{o}" for o in outputs],
        "/rear/image_raw/compressed", "/rear/camera_info", *[f"/rear/{o}" for o in outputs],
        "/diagnostics", "/tf", "/tf_static"]
    assert log.kwargs["msg"].startswith("record_frames:=compressed records /usb_cam/image_raw/compressed, "
                                        "/rear/image_raw/compressed: the camera driver's image_transport publishes")
    *_, recorder = car_launch(record=out, record_frames="none")
    assert recorder.kwargs["cmd"][6:] == ["/camera/front/camera_info", *[f"/camera/front/{o}" for o in outputs],
                                          "/diagnostics", "/tf", "/tf_static"]
    compressed = tmp_path / "compressed.param.yaml"
    compressed.write_text("/**:\n  ros__parameters:\n    input_transport: compressed\n")
    actions = car_launch(record=out, record_frames="compressed", config=str(compressed))
    assert actions[-1].kwargs["cmd"][6] == "/camera/front/image/compressed"  # what the node reads, once
    assert not any("record_frames" in str(a.kwargs.get("msg", "")) for a in actions)
    from panoptic_node.params import ParameterError
    with pytest.raises(ParameterError, match=re.escape("launch argument record_frames: 'jpeg' is not one of input, "
                                                       "compressed, none")):
        car_launch(record=out, record_frames="jpeg")
    assert not (tmp_path / "drive").exists()


def test_what_record_keeps_is_what_the_node_publishes():
    """Each output record:= asks ros2 bag record for is one of the node's topics (a misspelt name would record
    nothing, silently), and the maps it keeps are the lossless twins evaluate and replay read back."""
    from panoptic_node.params import RECORDED_OUTPUTS
    from panoptic_node.topic_qos import OUTPUTS
    assert set(RECORDED_OUTPUTS) <= set(OUTPUTS)
    assert {"semantic/compressed", "instances/compressed"} <= set(RECORDED_OUTPUTS)
