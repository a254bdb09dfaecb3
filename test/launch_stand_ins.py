"""ROS's `launch` modules (not on PyPI) replaced by recorders, so that a launch file of ours runs here and
what it would start can be read. Standard library only: the test that the launch files need nothing but
what a ROS 2 install's own Python has runs this in a Python where everything else is unimportable."""
import importlib.util
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class Recorded:
    """Stand-in for a launch action or substitution: keeps its arguments."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


class LaunchConfiguration(Recorded):
    def perform(self, context):
        return context.get(self.args[0], "")


def stand_in_modules(share=ROOT):
    """The launch modules our launch files import, by name, with the package's share folder at `share`."""
    stand_ins = {
        "launch": dict(LaunchDescription=Recorded),
        "launch.actions": dict(DeclareLaunchArgument=Recorded, ExecuteProcess=Recorded, LogInfo=Recorded,
                               OpaqueFunction=Recorded),
        "launch.conditions": dict(IfCondition=Recorded),
        "launch.substitutions": dict(LaunchConfiguration=LaunchConfiguration),
        "launch_ros.actions": dict(Node=Recorded),
        "ament_index_python.packages": dict(get_package_share_directory=lambda name: str(share)),
    }
    return {name: types.SimpleNamespace(**attrs) for name, attrs in stand_ins.items()}


def load_launch_file(name):
    """launch/<name> as a module (the stand-ins must be in sys.modules first)."""
    spec = importlib.util.spec_from_file_location(name.replace(".", "_"), ROOT / "launch" / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def declared_arguments(module):
    """A launch file's arguments and their defaults, as generate_launch_description declares them."""
    return {action.args[0]: action.kwargs.get("default_value")
            for action in module.generate_launch_description().args[0]
            if action.__class__ is Recorded and action.args and isinstance(action.args[0], str)}
