"""car.launch.py's own logic, run here without ROS's `launch` (not on PyPI): the launch modules are
replaced by recorders, and the file's _node() is called with launch arguments as a user gives them. On a
ROS 2 install the launch_testing files start the node for real; this checks what reaches the node's and
the bag player's processes: the Fast DDS profile, the parameters and the remapping."""
import importlib.util
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


class Recorded:
    """Stand-in for a launch action or substitution: keeps its arguments."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


@pytest.fixture
def car_launch(monkeypatch):
    arguments = {}

    class LaunchConfiguration(Recorded):
        def perform(self, context):
            return context.get(self.args[0], "")

    stand_ins = {
        "launch": dict(LaunchDescription=Recorded),
        "launch.actions": dict(DeclareLaunchArgument=Recorded, ExecuteProcess=Recorded, LogInfo=Recorded,
                               OpaqueFunction=Recorded),
        "launch.conditions": dict(IfCondition=Recorded),
        "launch.substitutions": dict(LaunchConfiguration=LaunchConfiguration),
        "launch_ros.actions": dict(Node=Recorded),
        "ament_index_python.packages": dict(get_package_share_directory=lambda name: str(ROOT)),
    }
    for name, attrs in stand_ins.items():
        monkeypatch.setitem(sys.modules, name, types.SimpleNamespace(**attrs))
    for var in ("FASTRTPS_DEFAULT_PROFILES_FILE", "FASTDDS_DEFAULT_PROFILES_FILE", "RMW_IMPLEMENTATION"):
        monkeypatch.delenv(var, raising=False)
    spec = importlib.util.spec_from_file_location("car_launch", ROOT / "launch" / "car.launch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for action in module.generate_launch_description().args[0]:
        if action.__class__ is Recorded and action.args and isinstance(action.args[0], str):
            arguments[action.args[0]] = action.kwargs.get("default_value")

    def run(**given):
        context = {**arguments, **given}
        return module._node(context)

    run.defaults = arguments
    return run


def test_the_default_profile_is_auto_and_reaches_the_node_and_the_player(car_launch, monkeypatch):
    import panoptic_node.dds_profile as dds
    assert car_launch.defaults["dds_profile"] == "auto"
    for rmem, name in ((4 << 20, "fastdds_large_images.xml"), (212992, "fastdds_large_images_shm.xml")):
        monkeypatch.setattr(dds, "read_rmem_max", lambda rmem=rmem: rmem)
        log, node, player = car_launch(bag="/data/drive.mcap", cameras="['/cam/front', '/cam/rear']")
        expected = str(ROOT / "config" / name)
        assert node.kwargs["additional_env"] == {"FASTRTPS_DEFAULT_PROFILES_FILE": expected,
                                                 "FASTDDS_DEFAULT_PROFILES_FILE": expected}
        assert player.kwargs["additional_env"] == node.kwargs["additional_env"]
        assert name.split(".")[0].replace("fastdds_", "") in log.kwargs["msg"]
        assert node.kwargs["parameters"][1] == {"cameras": ["/cam/front", "/cam/rear"], "use_sim_time": True}
        assert "/camera/image_raw:=/cam/front/image" in player.kwargs["cmd"]


def test_none_and_a_users_own_profile_export_nothing(car_launch, monkeypatch):
    log, node = car_launch(dds_profile="none")
    assert node.kwargs["additional_env"] == {} and "none" in log.kwargs["msg"]
    monkeypatch.setenv("FASTRTPS_DEFAULT_PROFILES_FILE", "/etc/my_dds.xml")
    log, node = car_launch()
    assert node.kwargs["additional_env"] == {} and "/etc/my_dds.xml" in log.kwargs["msg"]


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
    """num_threads:=1 max_rate_hz:=10 warmup_sizes:=1280x720 arrive typed as the schema wants them; a value
    that is no number arrives as text, for the node's one-line refusal; unset, the config decides."""
    node = car_launch(num_threads="1", max_rate_hz="10", warmup_sizes="1280x720")[1]
    given = node.kwargs["parameters"][1]
    assert given["num_threads"] == 1 and given["max_rate_hz"] == 10.0 and given["warmup_sizes"] == "1280x720"
    assert type(given["num_threads"]) is int and type(given["max_rate_hz"]) is float
    assert car_launch(num_threads="many")[1].kwargs["parameters"][1]["num_threads"] == "many"
    assert not {"num_threads", "max_rate_hz", "warmup_sizes"} & set(car_launch()[1].kwargs["parameters"][1])


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
