"""Saying a caught exception in one line."""
import sys


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (libraries such as torch, onnx and ffmpeg write paragraphs),
    or its type's name when it has none."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# what provides a module the package imports, for the line that says this Python lacks it
EXTRA_OF = {"torch": "cpu", "onnx": "cpu", "onnxruntime": "cpu", "openvino": "cpu", "safetensors": "cpu",
            "ray": "fleet"}
ON_GPU_MACHINES = ("tensorrt", "torch_tensorrt")
ROS_MODULES = ("rclpy", "rcl_interfaces", "builtin_interfaces", "ament_index_python")


def missing_module(e: ModuleNotFoundError) -> str:
    """One line for a module this Python cannot import: which one, which Python, and what provides it.
    A ROS 2 module means the ROS 2 setup was not sourced; a dependency means it went into another Python
    (on a ROS 2 install: colcon run by a Python other than the venv's the package was pip-installed in)."""
    name = (e.name or "").split(".")[0]
    if name == "vision_msgs":
        fix = "install ROS 2's vision_msgs (sudo apt install ros-$ROS_DISTRO-vision-msgs) and source your ROS 2 setup"
    elif name in ROS_MODULES or name.endswith("_msgs"):
        fix = "source your ROS 2 install first (source /opt/ros/$ROS_DISTRO/setup.bash)"
    elif name in ON_GPU_MACHINES:
        fix = f"{name} comes with NVIDIA's TensorRT on a CUDA machine; choose another backend here"
    else:
        extra = f"[{EXTRA_OF[name]}]" if name in EXTRA_OF else ""
        fix = (f"pip install -e '.{extra}' in the package's folder puts it there (a node colcon built runs with the "
               f"Python that ran colcon: README, For ROS 2 users)")
    return f"no module named '{e.name}' for {sys.executable}: {fix}"
