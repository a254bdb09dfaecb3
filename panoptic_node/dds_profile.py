"""Which Fast DDS profile the node's processes run with: car.launch.py's `dds_profile` argument.

auto (the default) takes config/fastdds_large_images.xml, where the node receives over UDP, when the
kernel lets a socket hold a burst of frames (net.core.rmem_max >= 2 MiB); otherwise
fastdds_large_images_shm.xml, where it receives over shared memory, and says how to raise the limit.
Measured with bench/bench_node.py (see the README): at 2 MiB and 4 MiB every frame of two cameras reached
the node; at Ubuntu's 208 KiB one camera over UDP reached it at 12 of 30 Hz.

A profile the user already exported, or another RMW than Fast DDS, is left alone. No ROS import here.

A node started without car.launch.py (`ros2 run panoptic_node panoptic_node`) chooses for itself, before
rclpy starts Fast DDS, as auto (or as PANOPTIC_NODE_DDS_PROFILE says, which the launch file sets to its own
choice): run by hand with Fast DDS's defaults, it received a 1280x720 camera at 9.6 of 30 Hz, with the
profile at 27.6.
"""
import os
from pathlib import Path
from typing import Mapping, Optional, Tuple

UDP_RECEIVE_MIN_BYTES = 2 * 1024 * 1024
CHOICE_ENV = "PANOPTIC_NODE_DDS_PROFILE"  # the node's own choice when started by hand; car.launch.py sets its own
SHIPPED = ("large_images", "large_images_shm")
RMEM_MAX = Path("/proc/sys/net/core/rmem_max")


def read_rmem_max(path: Optional[Path] = None) -> Optional[int]:
    """The kernel's cap on a socket's receive buffer, or None where it cannot be read (not Linux)."""
    try:
        return int(Path(path or RMEM_MAX).read_text().strip())
    except (OSError, ValueError):
        return None


def choose_profile(choice: str, config_dir: Path, environ: Mapping[str, str] = os.environ,
                   rmem_max: Optional[int] = None) -> Tuple[Optional[Path], str]:
    """-> (profile file to export, or None to export nothing; one line saying why).
    choice: '' or 'auto', 'none', a shipped profile's name, or a profile file."""
    choice = (choice or "auto").strip()
    rmw = environ.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    if rmw != "rmw_fastrtps_cpp":
        return None, f"RMW_IMPLEMENTATION is {rmw}: Fast DDS profiles do not apply"
    for var in ("FASTRTPS_DEFAULT_PROFILES_FILE", "FASTDDS_DEFAULT_PROFILES_FILE"):
        if environ.get(var):
            return None, f"Fast DDS profile from your environment ({var}={environ[var]})"
    if choice == "none":
        return None, "Fast DDS's own defaults (dds_profile:=none)"
    if choice == "auto":
        limit = read_rmem_max() if rmem_max is None else rmem_max
        if limit is not None and limit >= UDP_RECEIVE_MIN_BYTES:
            return Path(config_dir) / "fastdds_large_images.xml", \
                f"Fast DDS profile large_images: receiving over UDP (net.core.rmem_max {limit} bytes)"
        seen = "cannot be read" if limit is None else f"is {limit} bytes"
        return Path(config_dir) / "fastdds_large_images_shm.xml", (
            f"Fast DDS profile large_images_shm: receiving over shared memory, because net.core.rmem_max {seen} "
            f"and receiving frames over UDP needs {UDP_RECEIVE_MIN_BYTES}; a camera driver with Fast DDS's defaults "
            f"that publishes several cameras from one process will lose frames. To receive over UDP: "
            f"sudo sysctl -w net.core.rmem_max={UDP_RECEIVE_MIN_BYTES}")
    if choice in SHIPPED:
        return Path(config_dir) / f"fastdds_{choice}.xml", f"Fast DDS profile {choice} (dds_profile:={choice})"
    path = Path(choice).expanduser()
    if not path.is_file():
        raise ValueError(f"dds_profile '{choice}' is not a file; expected auto, none, {', '.join(SHIPPED)} "
                         f"or the path of a Fast DDS XML profile")
    return path, f"Fast DDS profile from {path}"


def profile_env(path: Optional[Path]) -> dict:
    """The environment that makes Fast DDS load `path` (both names: ROS 2 Jazzy's Fast DDS reads either)."""
    return {} if path is None else {"FASTRTPS_DEFAULT_PROFILES_FILE": str(path),
                                    "FASTDDS_DEFAULT_PROFILES_FILE": str(path)}


def profile_in_effect(environ: Mapping[str, str] = os.environ) -> Optional[Path]:
    """The Fast DDS profile file a participant started with this environment loads (None: Fast DDS's defaults)."""
    for var in ("FASTRTPS_DEFAULT_PROFILES_FILE", "FASTDDS_DEFAULT_PROFILES_FILE"):
        if environ.get(var):
            return Path(environ[var])
    return None


def node_environment(config_dir: Path, environ: Mapping[str, str] = os.environ) -> Tuple[dict, str]:
    """What the node adds to its environment before rclpy starts Fast DDS, and the line saying which profile it
    runs: PANOPTIC_NODE_DDS_PROFILE's choice (auto when unset, as car.launch.py's default), chosen as the launch
    chooses (a profile exported already, or another RMW, is left alone)."""
    path, why = choose_profile(environ.get(CHOICE_ENV, "auto"), config_dir, environ=environ)
    return profile_env(path), why
