"""What the benchmarks that run the node on a ROS 2 graph (bench_node, bench_first_frame, bench_lifecycle) check
before they start: that this Python imports rclpy and every message package the node uses.

On a ROS 2 install they come from the sourced setup. Where ROS 2 comes from PyPI's wheels (`make install-test`),
vision_msgs is not among them: the test-only build in build/test_msgs/install provides it, on PYTHONPATH and
LD_LIBRARY_PATH, as `make test` puts it there for the tests. A benchmark started without those paths runs itself
again with them (and the node it starts inherits them), instead of failing minutes later, after its baseline, on
an import or on a node that never came up. Anything else missing is one line naming the module and what provides it.

Not a benchmark itself (bench_*.py are): the scripts import it from their own folder.
"""
import importlib.util
import os
import sys
from pathlib import Path

MODULES = ("rclpy", "sensor_msgs", "diagnostic_msgs", "lifecycle_msgs", "vision_msgs")
TEST_MSGS = Path(__file__).resolve().parents[1] / "build" / "test_msgs" / "install"
RERUN = "PANOPTIC_NODE_BENCH_TEST_MSGS"  # set in the second run, so that it never runs itself a third time


def with_test_msgs(env, install: Path = TEST_MSGS) -> dict:
    """env with the test-only message build's Python modules and libraries first on their paths."""
    env = dict(env)
    for var, folder in (("PYTHONPATH", install / "lib" / "python"), ("LD_LIBRARY_PATH", install / "lib")):
        env[var] = os.pathsep.join([str(folder)] + ([env[var]] if env.get(var) else []))
    env[RERUN] = "1"
    return env


def ensure_ros_graph(argv=None, modules=MODULES, install: Path = TEST_MSGS) -> None:
    """Returns when every module imports; otherwise runs `python argv...` again with the test-only message build
    on the paths when there is one (this process is replaced), or exits 2 with one line on stderr. argv: the
    script and its arguments, by default sys.argv (`python bench/bench_x.py ARGS` and `panoptic-node bench x ARGS`
    both leave them there)."""
    argv = sys.argv if argv is None else argv
    gone = [m for m in modules if importlib.util.find_spec(m) is None]
    if not gone:
        return
    if (install / "lib" / "python").is_dir() and RERUN not in os.environ:
        sys.stdout.flush(), sys.stderr.flush()  # exec does not flush what this run printed
        os.execve(sys.executable, [sys.executable, *argv], with_test_msgs(os.environ, install))
    from panoptic_node.errors import missing_module
    line = missing_module(ModuleNotFoundError(f"No module named '{gone[0]}'", name=gone[0]))
    print(f"error: {line} (or, without ROS 2: `make install-test` installs ROS 2 Jazzy's rclpy and messages from "
          f"PyPI and builds vision_msgs into {install}, which this benchmark then finds)", file=sys.stderr)
    sys.exit(2)
