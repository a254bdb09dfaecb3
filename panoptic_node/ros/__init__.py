"""The rclpy node: the only part of panoptic_node that imports ROS."""
import sys


def main(args=None):
    """The panoptic_node executable. The node's imports happen here, so that a Python where ROS 2 is not
    sourced, or without the package's dependencies, gets one line naming the module and what provides it
    instead of a traceback."""
    import importlib.util
    try:
        from .node import main as run_node
        for module in ("torch", "scipy"):  # the node imports them when it configures (quicker refusals): look now
            if importlib.util.find_spec(module) is None:
                raise ModuleNotFoundError(f"No module named '{module}'", name=module)
    except ModuleNotFoundError as e:
        from ..errors import missing_module
        print(f"[panoptic_node] error: {missing_module(e)}", file=sys.stderr)
        sys.exit(1)
    run_node(args)
