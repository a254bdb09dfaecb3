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
