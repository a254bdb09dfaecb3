"""The network (torch) and its configuration (no torch).

The network's names load on first use: `ros2 launch` runs our launch files in the ROS 2 install's own
Python, which reads parameters files through this package's config code but has no torch where torch lives
in a virtual environment (the way ROS 2 adds pip packages on Ubuntu 24.04 / Debian 12)."""
from .config import ModelConfig, load_config, DEFAULT_MODEL

__all__ = ["ModelConfig", "load_config", "DEFAULT_MODEL", "PanopticDETR", "DetectOutput", "build_model"]


def __getattr__(name):
    if name in ("PanopticDETR", "DetectOutput", "build_model"):
        from . import detr
        return getattr(detr, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
