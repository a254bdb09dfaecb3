"""The RViz configuration the launch files open, for the cameras the node actually serves (ROS-free).

config/panoptic.rviz names the default camera's topics (/camera/front); a node started for other cameras
(`cameras:=...`, replay.launch.py's /camera) left RViz subscribed to topics nobody publishes. The launch
files write a copy for the cameras in use: the first camera's frames and semantic labels, and every
camera's overlay.
"""
import copy
import hashlib
import tempfile
from pathlib import Path
from typing import List, Optional

import yaml

from .atomic import atomic_path

TEMPLATE_CAMERA = "/camera/front"


def rviz_config(template: Path, cameras: List[str], first_image_topic: Optional[str] = None,
                out_dir: Optional[Path] = None) -> Path:
    """A copy of `template` for `cameras` (namespaces); `first_image_topic`: where the first camera's frames
    can be seen when it is not `<ns>/image` (a bag's /camera/image_raw remapped into the node). Written
    once per content under `out_dir` (default: the system's temporary folder) and its path returned."""
    if not cameras:
        raise ValueError("rviz_config: no camera to show")
    doc = yaml.safe_load(Path(template).read_text())
    displays = doc["Visualization Manager"]["Displays"]
    first = cameras[0].rstrip("/")
    out = []
    for display in displays:
        topic = display.get("Topic", {}).get("Value", "")
        if not topic.startswith(TEMPLATE_CAMERA + "/"):
            out.append(display)
            continue
        suffix = topic[len(TEMPLATE_CAMERA):]
        if suffix == "/panoptic/overlay":  # one overlay per camera
            for cam in cameras:
                ns = cam.rstrip("/")
                each = copy.deepcopy(display)
                each["Topic"]["Value"] = ns + suffix
                if len(cameras) > 1:
                    each["Name"] = f"{display['Name']} {ns}"
                out.append(each)
        else:
            display["Topic"]["Value"] = first_image_topic if suffix == "/image" and first_image_topic else first + suffix
            out.append(display)
    doc["Visualization Manager"]["Displays"] = out
    text = yaml.safe_dump(doc, sort_keys=False)
    folder = Path(out_dir) if out_dir else Path(tempfile.gettempdir()) / "panoptic_node_rviz"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"panoptic_{hashlib.sha256(text.encode()).hexdigest()[:12]}.rviz"
    if not path.exists():  # named after its content: an existing file is this one
        with atomic_path(path) as tmp:
            tmp.write_text(text)
    return path
