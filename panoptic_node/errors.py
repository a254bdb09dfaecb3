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


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n < 1e8 else f"{n / 1e9:.1f} GB"


def _size(path) -> int:
    from pathlib import Path
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def no_space(e: OSError, outputs) -> str:
    """One line for a disk that filled while outputs were written (errno ENOSPC, which by itself names
    neither the disk nor what was left): where, how full, and which unfinished outputs hold space."""
    import os
    from pathlib import Path

    from .atomic import partial_path
    outputs = [Path(p) for p in outputs if isinstance(p, (str, os.PathLike)) and p]  # fleet --video is a switch
    where = Path(e.filename) if e.filename else (outputs[0] if outputs else Path.cwd())
    folder = where.absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    line = f"no space left on the disk holding '{where}'"
    try:
        st = os.statvfs(folder)
        line += f" ({_mb(st.f_bavail * st.f_frsize)} free of {_mb(st.f_blocks * st.f_frsize)})"
    except OSError:
        pass
    line += ": free space there or write the outputs elsewhere"
    # a folder's and a file's .partial name (one name when the output has no suffix)
    partials = dict.fromkeys(p for out in outputs for p in (out.with_name(out.name + ".partial"), partial_path(out)))
    left = [p for p in partials if p.exists()]
    if left:
        line += ("; unfinished, left under their .partial names: "
                 + ", ".join(f"{p} ({_mb(_size(p))})" for p in left) + " (remove them to get their space back)")
    return line
