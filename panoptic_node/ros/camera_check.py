"""`doctor --listen`: the cameras a node would read, seen on the live ROS 2 graph before it starts.

For each camera's input topic, for a few seconds, as the node would subscribe to it (its message type and
reliability): who publishes there, with which type and QoS, the rate, one frame's size and encoding (decoded
as the node decodes it) and how old the frames' stamps are by this machine's clock. What would leave the node
with nothing, or with every frame dropped, is said before the car drives: the same words as the node's
/diagnostics where the two meet (node_stats). A panoptic node already running is heard on /diagnostics: what
it runs (model, weights by sha256, backend, release) and how it fares.
"""
import os
import time
from typing import Dict, List, Optional, Tuple

import numpy as np
import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from diagnostic_msgs.msg import DiagnosticArray
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from ..bag.recorded_health import DIAGNOSTICS, INFERENCE, is_node_status
from ..messages import FrameError, calibrated_size, compressed_to_rgb, image_to_rgb, stamp_ns
from ..node_stats import (CLOCK_AHEAD_MS, UNKNOWN_NODE, clock_advice, no_publisher_why, publishing_nodes,
                          shared_topic_why, wrong_type_why)
from ..topic_qos import DIAGNOSTICS as DIAGNOSTICS_QOS

# what a new participant may take to see the others' endpoints: Fast DDS announces it a few times at once, then
# every 3 s, so one that missed the first announcements on a loaded machine waits for the next
DISCOVERY_S = 5.0

# a node already running: its name -> its latest inference status (level, message, values)
RunningNodes = Dict[str, Tuple[int, str, Dict[str, str]]]


class _Heard:
    """What one camera topic delivered while listening."""

    def __init__(self):
        self.arrivals: List[float] = []
        self.ages_ms: List[float] = []
        self.unstamped = 0
        self.before_clock = 0  # frames that came on sim time while no /clock had come
        self.first = None

    def rate_hz(self) -> Optional[float]:
        if len(self.arrivals) < 2:
            return None
        return (len(self.arrivals) - 1) / max(self.arrivals[-1] - self.arrivals[0], 1e-9)


def listen(cameras: Dict[str, str], transport: str, reliability: str, max_age_ms: float, seconds: float,
           info_topics: Optional[Dict[str, str]] = None, sim_time: bool = False
           ) -> Tuple[List[Tuple[str, bool, str, Optional[np.ndarray], Optional[float]]], RunningNodes]:
    """cameras: namespace -> input topic (resolved); info_topics: namespace -> its camera_info topic (default
    <namespace>/camera_info). Returns per camera (camera, is_problem, finding, one frame it sent decoded to RGB
    or None, its rate in Hz or None): the frames let doctor time the node's pipeline on what the cameras
    really send; and the panoptic nodes heard on /diagnostics, each with its latest inference status.
    sim_time: the node's use_sim_time; the stamps are then judged by /clock, as the node judges them (a bag
    played with --clock is not 'behind' by the hours since it was recorded)."""
    info_topics = {c: (info_topics or {}).get(c, f"{c}/camera_info") for c in cameras}
    msg_type = CompressedImage if transport == "compressed" else Image
    want = f"sensor_msgs/msg/{msg_type.__name__}"
    qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5,
                     reliability=ReliabilityPolicy.RELIABLE if reliability == "reliable"
                     else ReliabilityPolicy.BEST_EFFORT)
    context = Context()
    rclpy.init(context=context)
    try:
        node = rclpy.create_node(f"panoptic_node_doctor_{os.getpid()}", context=context,
                                 parameter_overrides=[Parameter("use_sim_time", value=sim_time)])
        heard = {topic: _Heard() for topic in cameras.values()}

        def on_frame(topic):
            def callback(msg):
                h = heard[topic]
                h.arrivals.append(time.monotonic())
                stamp, now = stamp_ns(msg.header), node.get_clock().now().nanoseconds
                if not stamp:
                    h.unstamped += 1
                elif now == 0:  # on sim time, before any /clock: the node's clock reads 0
                    h.before_clock += 1
                else:
                    h.ages_ms.append((now - stamp) / 1e6)
                h.first = h.first or msg
            return callback

        for topic in heard:
            node.create_subscription(msg_type, topic, on_frame(topic), qos)
        infos = {}  # camera -> its first CameraInfo, which the node passes on with the maps
        for camera in cameras:
            node.create_subscription(CameraInfo, info_topics[camera],
                                     lambda msg, c=camera: infos.setdefault(c, msg),
                                     QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT))  # as the node
        running: RunningNodes = {}

        def on_diagnostics(msg):
            for s in msg.status:
                if s.name.endswith(INFERENCE) and is_node_status(s):
                    level = s.level[0] if isinstance(s.level, bytes) else int(s.level)
                    running[s.name[:-len(INFERENCE)]] = (level, s.message, {kv.key: kv.value for kv in s.values})
        node.create_subscription(DiagnosticArray, DIAGNOSTICS, on_diagnostics,
                                 QoSProfile(depth=DIAGNOSTICS_QOS.depth, reliability=ReliabilityPolicy.RELIABLE))
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        def all_heard():  # each camera's driver found, two frames (a rate), and its calibration if it has any
            return all(len(heard[t].arrivals) > 1 and node.count_publishers(t) and (
                c in infos or not node.count_publishers(info_topics[c])) for c, t in cameras.items())
        start = time.monotonic()
        while True:
            executor.spin_once(timeout_sec=0.05)
            elapsed = time.monotonic() - start
            # a short listen on a busy machine can end before discovery has brought the drivers, their frames and
            # calibration: what was not heard is said missing only once the graph has had DISCOVERY_S
            if elapsed >= seconds and (elapsed >= DISCOVERY_S or all_heard()):
                break
        seconds = elapsed
        graph = node.get_topic_names_and_types()
        inputs = set(cameras.values())
        out = []
        for camera, topic in cameras.items():
            publishers = [i for i in node.get_publishers_info_by_topic(topic) if i.node_name != node.get_name()]
            elsewhere = no_publisher_why(camera, want, graph, inputs, "--image-topics")  # doctor's own option
            problem, finding, rgb = _verdict(topic, publishers, heard[topic], want, transport, reliability,
                                             max_age_ms, seconds, elsewhere, sim_time)
            if rgb is not None:
                finding += _calibration(info_topics[camera], infos.get(camera), rgb)
            nodes = publishing_nodes(publishers, want)
            if len(nodes) > 1:  # as the node's /diagnostics says it: two sources interleaved as one camera
                problem, finding = True, f"{finding}; {shared_topic_why('it', nodes)}"
            maps = f"{camera.rstrip('/')}/panoptic/semantic"  # a node already serving this camera
            serving = publishing_nodes(node.get_publishers_info_by_topic(maps), "sensor_msgs/msg/Image")
            if serving:
                verb = "publishes" if len(serving) == 1 else "publish"
                problem, finding = True, (f"{finding}; {', '.join(serving)} already {verb} {maps}: a node started "
                                          f"now would serve this camera beside it, their maps interleaved (stop it "
                                          f"first, or give this one other cameras)")
            out.append((camera, problem, finding, rgb, heard[topic].rate_hz() if rgb is not None else None))
        executor.shutdown()
        node.destroy_node()
        return out, running
    finally:
        rclpy.shutdown(context=context)


def _calibration(topic: str, info, rgb: np.ndarray) -> str:
    """What the camera's camera_info (`topic`; passed on as <camera>/panoptic/camera_info) says beside its
    frames."""
    if info is None:
        return f"; no {topic} heard (the maps go out without calibration)"
    w, h = calibrated_size(info)  # its roi over its binning, as the node judges it
    fits = (w, h) == (rgb.shape[1], rgb.shape[0])
    described = "" if (w, h) == (info.width, info.height) else f" (describing {w}x{h} frames)"
    return f"; camera_info {info.width}x{info.height}{described}" + (
        "" if fits else f", not the frames' {rgb.shape[1]}x{rgb.shape[0]}")


def _duration(ms: float) -> str:
    return f"{ms / 1000:.0f} s" if ms >= 10_000 else f"{ms:.0f} ms"


def _verdict(topic, publishers, h: _Heard, want, transport, reliability, max_age_ms, seconds,
             elsewhere, sim_time: bool = False) -> Tuple[bool, str, Optional[np.ndarray]]:
    """(is_problem, finding, the first frame decoded or None) for one camera topic from what the graph showed
    and what arrived."""
    others = {(i.topic_type, i.node_name) for i in publishers if i.topic_type != want}
    if others:
        return True, f"{topic}: {wrong_type_why(want, transport, others)}", None
    if not publishers:
        return True, f"{topic}: {elsewhere or 'no publisher on it (is the camera driver running?)'}", None
    names = ", ".join(sorted({i.node_name if i.node_name != UNKNOWN_NODE else "a node" for i in publishers}))
    best_effort = [i for i in publishers if i.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT]
    if reliability == "reliable" and best_effort:
        return True, (f"{topic}: {names} publishes best effort, which a reliable subscription never receives: "
                      f"set qos_reliability: best_effort (it takes every camera driver)"), None
    if h.first is None:
        return True, (f"{topic}: published by {names}, but no frame arrived in {seconds:g} s (a driver that "
                      f"has not started streaming, or frames too large for the middleware's defaults: "
                      f"car.launch.py's dds_profile)"), None
    try:
        rgb = compressed_to_rgb(h.first) if isinstance(h.first, CompressedImage) else image_to_rgb(h.first)
    except FrameError as e:
        return True, f"{topic}: {names} sends frames the node cannot read: {e}", None
    kind = getattr(h.first, "encoding", None) or getattr(h.first, "format", "")
    rate = h.rate_hz()
    found = (f"{topic}: {f'{rate:.1f} Hz' if rate else 'one frame'} from {names}, {rgb.shape[1]}x{rgb.shape[0]} "
             f"{kind}")
    if not h.ages_ms and h.before_clock:
        return False, f"{found}; {clock_advice(True, 0)}", rgb
    if not h.ages_ms:
        return False, (f"{found}; frames without a header stamp (0): their age is unknown, max_age_ms cannot "
                       f"judge them"), rgb
    age = float(np.median(h.ages_ms))
    clock = "/clock's time (use_sim_time)" if sim_time else "this machine's clock"
    if max_age_ms and age > max_age_ms:
        fix = (clock_advice(True, 1) if sim_time else "synchronise the camera's clock with this one (chrony, PTP)")
        return True, (f"{found}; stamps {_duration(age)} behind {clock} (median), so max_age_ms {max_age_ms:g} drops "
                      f"every frame: {fix}, or set max_age_ms: 0"), rgb
    if age < -CLOCK_AHEAD_MS:
        return False, (f"{found}; stamps {_duration(-age)} ahead of {clock} (median): the clocks differ, and "
                       f"max_age_ms cannot judge such frames"), rgb
    by = f" by {clock}" if sim_time else ""  # the machine's clock goes without saying
    return False, f"{found}, stamps {age:.0f} ms old{by} (median)", rgb
