"""The node on a real ROS 2 graph (rclpy from the Jazzy wheels on PyPI here and in CI, or a ROS 2
install): the `panoptic_node` executable in a process of its own, driven from pytest through rclpy.

The whole topic contract, compressed input, several cameras (batched and not), the newest-frame rule
and max age on sim time, bad frames, bad parameters and shutdown. Each test starts its own node on
camera namespaces of its own, so no test hears another's outputs. launch / launch_testing are not on
PyPI: the launch files' own tests (test_node_launch.py) run on ROS 2 installs.
"""
import hashlib
import importlib.util
import io
import os
import platform
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image as PILImage

import panoptic_node
from launch_helpers import tiny_model_yaml
from panoptic_node.messages import compressed_to_rgb, image_array
from panoptic_node.params import absolute_namespace, image_remaps

if os.environ.get("CI"):  # CI installs ROS 2 from PyPI (make install-test): a skip there would hide breakage
    import rclpy
    importlib.import_module("vision_msgs")
else:
    rclpy = pytest.importorskip("rclpy", reason="no rclpy: `make test` installs ROS 2 Jazzy from PyPI")
    pytest.importorskip("vision_msgs", reason="no vision_msgs: `make test` builds the test-only one "
                                              "(test/ros_msgs/build.py)")

from builtin_interfaces.msg import Time  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.parameter_client import AsyncParameterClient  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from rosgraph_msgs.msg import Clock  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402
from vision_msgs.msg import Detection2DArray, LabelInfo  # noqa: E402

START_TIMEOUT = 60.0


@pytest.fixture(scope="module")
def graph():
    rclpy.init()
    node = rclpy.create_node(f"panoptic_test_{uuid.uuid4().hex[:8]}")
    yield node
    node.destroy_node()
    rclpy.shutdown()


@pytest.fixture(scope="module")
def model_yaml():
    return tiny_model_yaml()


def _hangup_as_in_a_terminal():
    """SIGHUP as a terminal's job has it, even where this suite runs under nohup (which ignores it, and an
    ignored signal stays ignored across exec)."""
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


class NodeProcess:
    """`panoptic_node` with a params file, in a process group of its own (as a terminal or launch runs it)."""

    def __init__(self, tmp_path: Path, params: dict, env: dict = None, namespace: str = None, remaps=(), prefix=()):
        self.log = tmp_path / f"node_{uuid.uuid4().hex[:6]}.log"
        params_file = tmp_path / f"params_{uuid.uuid4().hex[:6]}.yaml"
        params_file.write_text(yaml.safe_dump({"/**": {"ros__parameters": params}}))
        self.name = f"panoptic_{uuid.uuid4().hex[:8]}"
        self.proc = subprocess.Popen([*prefix, "panoptic_node", "--ros-args", "-r", f"__node:={self.name}",
                                      *(["-r", f"__ns:={namespace}"] if namespace else []),
                                      *[arg for rule in remaps for arg in ("-r", f"{rule[0]}:={rule[1]}")],
                                      "--params-file", str(params_file)],
                                     stdout=self.log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
                                     env={**os.environ, **(env or {})}, preexec_fn=_hangup_as_in_a_terminal)

    def output(self) -> str:
        return self.log.read_text()

    def signal(self, sig) -> None:
        os.killpg(self.proc.pid, sig)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def stop(self, wait: bool = True) -> None:
        """Ctrl-C first, as a terminal or launch stops it: a node killed outright leaves its Fast DDS
        shared-memory segment (35 MB with the large_images profile) in /dev/shm for good, and runs of the
        suite filled a 24 GB /dev/shm until Ray's workers were killed for want of memory. wait=False: only
        Ctrl-C; finish_stop() later (the interpreter's own exit, torch's and rclpy's modules, takes 0.6 s)."""
        if self.proc.poll() is None:
            self.signal(signal.SIGINT)
            if wait:
                self.finish_stop()

    def finish_stop(self) -> None:
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.proc.wait(10)


# nodes sent Ctrl-C when their test ended: they exit while the next test runs, and are waited for (or killed)
# at the end of the module at the latest
_exiting = []


@pytest.fixture(scope="module", autouse=True)
def every_node_has_exited():
    yield
    while _exiting:
        _exiting.pop().finish_stop()


@pytest.fixture
def start(tmp_path, graph, model_yaml):
    nodes = []

    def _start(cameras, wait=True, env=None, namespace=None, remaps=(), prefix=(), **params):
        full = {"cameras": cameras, "model": model_yaml, "backend": "torch", "threshold": 0.0,
                "qos_reliability": "reliable", "qos_depth": 10, "diagnostics_period": 0.2, **params}
        node = NodeProcess(tmp_path, full, env, namespace, remaps, prefix)
        nodes.append(node)
        if wait:
            first = absolute_namespace(cameras[0], namespace or "/")  # where the node serves it
            wait_for_publisher(graph, f"{first}/panoptic/semantic", node)
        return node

    yield _start
    for node in nodes:
        node.stop(wait=False)
    _exiting[:] = [node for node in _exiting + nodes if node.proc.poll() is None]


def wait_for_publisher(graph, topic, node, timeout=START_TIMEOUT):
    end = time.time() + timeout
    while time.time() < end:
        if graph.get_publishers_info_by_topic(topic):
            return
        if node.proc.poll() is not None:
            raise AssertionError(f"node exited {node.proc.returncode}: {node.output()}")
        rclpy.spin_once(graph, timeout_sec=0.1)
    raise AssertionError(f"no publisher on {topic} after {timeout} s: {node.output()}")


def stamp_of(msg) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


def rgb_frame(rng, h=48, w=64):
    return rng.integers(0, 255, (h, w, 3), dtype=np.uint8)


def image_msg(rgb, stamp: Time, frame_id: str, encoding="rgb8") -> Image:
    msg = Image()
    msg.header.stamp, msg.header.frame_id = stamp, frame_id
    msg.height, msg.width = rgb.shape[:2]
    msg.encoding, msg.step = encoding, rgb.shape[1] * 3
    msg.data = rgb.tobytes()
    return msg


SENSOR_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT)  # what the overlay offers


class Collector:
    """Subscriptions that keep every message, by topic (the overlay's best effort, the others reliable)."""

    def __init__(self, graph, topics: dict, qos=10):
        self.graph, self.got = graph, {t: [] for t in topics}
        self.subs = [graph.create_subscription(kind, t, self.got[t].append,
                                               SENSOR_QOS if t.endswith(("/overlay", "/overlay/compressed")) else qos)
                     for t, kind in topics.items()]

    def spin_until(self, done, publish=None, timeout=30.0, period=0.1):
        end = time.time() + timeout
        while time.time() < end and not done(self.got):
            if publish:
                publish()
            rclpy.spin_once(self.graph, timeout_sec=period)
        return done(self.got)

    def close(self):
        for s in self.subs:
            self.graph.destroy_subscription(s)


def served_camera(graph, ns, rng):
    """A camera `ns` served by a node under test: (its collector of maps and /diagnostics, the node's newest
    inference status (values, level, message), served(): publish frames until one more map comes back,
    publish(): one frame stamped now)."""
    c = Collector(graph, {f"{ns}/panoptic/semantic": Image, "/diagnostics": DiagnosticArray})
    pub = graph.create_publisher(Image, f"{ns}/image", 10)
    rgb = rgb_frame(rng)

    def inference():
        return node_diagnostics(c.got, ns).get("inference", {})

    def publish():
        pub.publish(image_msg(rgb, now(graph), "f"))

    def served():
        n = len(c.got[f"{ns}/panoptic/semantic"])
        return c.spin_until(lambda g: len(g[f"{ns}/panoptic/semantic"]) > n, publish=publish)
    return c, inference, served, publish


def short_sha(path) -> str:
    """A file's sha256 as /diagnostics gives it: its first 12 hex digits."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]


def now(graph) -> Time:
    return graph.get_clock().now().to_msg()


def node_diagnostics(g, ns):
    """The newest /diagnostics report of the node serving camera `ns`: {'inference': ..., 'camera': ...},
    each a status's values plus its level and message ({} while none came)."""
    for d in reversed(g["/diagnostics"]):
        if any(s.hardware_id == ns for s in d.status):
            out = {}
            for s in d.status:
                kind = "camera" if s.hardware_id == ns else "inference" if s.name.endswith(": inference") else None
                if kind:
                    out[kind] = {"name": s.name, "level": s.level[0], "message": s.message,
                                 **{v.key: v.value for v in s.values}}
            return out
    return {}


def test_the_whole_topic_contract(graph, start, rng, model_yaml):
    ns = f"/t{uuid.uuid4().hex[:6]}/front"
    node = start([ns], max_age_ms=0)
    topics = {f"{ns}/panoptic/{t}": Image for t in ("semantic", "instances", "panoptic", "overlay")}
    topics[f"{ns}/panoptic/detections"] = Detection2DArray
    topics[f"{ns}/panoptic/overlay/compressed"] = CompressedImage  # image_transport's JPEG of the overlay
    for twin in ("semantic", "instances"):  # and the maps' lossless PNG twins
        topics[f"{ns}/panoptic/{twin}/compressed"] = CompressedImage
    topics["/diagnostics"] = DiagnosticArray
    c = Collector(graph, topics)
    pub = graph.create_publisher(Image, f"{ns}/image", 10)
    rgb = rgb_frame(rng)
    stamp = Time(sec=1_700_000_000, nanosec=123)
    names = [t for t in topics if t != "/diagnostics"]
    ok = c.spin_until(lambda g: all(g[t] for t in names) and int(
        node_diagnostics(g, ns).get("camera", {}).get("published", 0)) > 0,
        publish=lambda: pub.publish(image_msg(rgb, stamp, "front_optical")))
    assert ok, {t: len(v) for t, v in c.got.items()}
    out = {t.split("/panoptic/", 1)[1].replace("overlay/compressed", "compressed"): c.got[t][0] for t in names}
    for name, enc in (("semantic", "mono8"), ("instances", "mono16"), ("panoptic", "32SC1"), ("overlay", "bgr8")):
        m = out[name]
        assert (m.encoding, m.height, m.width) == (enc, 48, 64), name
        assert (m.header.stamp.sec, m.header.stamp.nanosec, m.header.frame_id) == (1_700_000_000, 123, "front_optical")
    jpeg = out["compressed"]  # the same overlay as JPEG, as image_transport's compressed plugin names it
    assert jpeg.format == "bgr8; jpeg compressed bgr8" and stamp_of(jpeg) == stamp_of(out["overlay"])
    decoded, raw_overlay = compressed_to_rgb(jpeg), image_array(out["overlay"])[..., ::-1]
    err = lambda a: np.abs(decoded.astype(int) - a).mean()  # noqa: E731  (JPEG of a noise frame: lossy)
    assert decoded.shape == (48, 64, 3) and err(raw_overlay) < err(raw_overlay[..., ::-1])  # colours in order
    assert np.abs(decoded.mean((0, 1)) - raw_overlay.mean((0, 1))).max() < 4
    semantic, instance, panoptic = (image_array(out[n]) for n in ("semantic", "instances", "panoptic"))
    for name, raw in (("semantic", semantic), ("instances", instance)):  # each twin: the same map, exactly
        twin = out[f"{name}/compressed"]
        assert twin.format == f"{out[name].encoding}; png compressed " and stamp_of(twin) == stamp_of(out[name])
        with PILImage.open(io.BytesIO(bytes(twin.data))) as im:
            assert np.array_equal(np.asarray(im).astype(np.int64), raw.astype(np.int64)), name
    assert np.array_equal(np.where(panoptic >= 1000, panoptic // 1000, np.where(panoptic < 0, 255, panoptic)),
                          semantic)
    assert np.array_equal(np.where(panoptic >= 1000, panoptic % 1000, 0), instance)
    dets = out["detections"]
    assert dets.header.frame_id == "front_optical" and stamp_of(dets) == stamp_of(out["semantic"])
    assert sorted(int(d.id) for d in dets.detections) == sorted(set(np.unique(instance).tolist()) - {0})
    for d in dets.detections:
        ys, xs = np.nonzero(instance == int(d.id))
        assert d.bbox.size_x == xs.max() + 1 - xs.min() and d.bbox.size_y == ys.max() + 1 - ys.min()
        assert int(d.results[0].hypothesis.class_id) == int(semantic[ys[0], xs[0]])
    diagnostics = node_diagnostics(c.got, ns)
    kv = diagnostics["inference"]
    assert kv["backend"] == "torch" and kv["model"] == "tiny_lite0" and float(kv["latency total p50 (ms)"]) > 0
    # which weights and release ran, for a recording to keep: the file's name and the head of its sha256
    weights = Path(model_yaml).with_name("tiny.pth")
    assert kv["weights"] == f"tiny.pth, sha256 {hashlib.sha256(weights.read_bytes()).hexdigest()[:12]}"
    assert kv["version"] == panoptic_node.__version__
    assert kv["name"] == f"{node.name}: inference" and kv["level"] == 0  # the node's name (renamed here)
    camera = diagnostics["camera"]  # one status per camera, named as diagnostic_updater names them
    assert camera["name"] == f"{node.name}: camera {ns}" and camera["input topic"] == f"{ns}/image"
    assert camera["level"] == 0 and float(camera["input rate (Hz)"]) > 0
    c.close()
    # label_info, latched: a subscriber that comes late still gets it
    qos = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL, reliability=ReliabilityPolicy.RELIABLE)
    late = Collector(graph, {f"{ns}/panoptic/label_info": LabelInfo}, qos)
    assert late.spin_until(lambda g: g[f"{ns}/panoptic/label_info"], timeout=10)
    info = late.got[f"{ns}/panoptic/label_info"][0]
    assert [(v.class_id, v.class_name) for v in info.class_map][:3] == [(0, "sky"), (1, "building"), (2, "pole")]
    late.close()


def test_compressed_input(graph, start, rng):
    ns = f"/t{uuid.uuid4().hex[:6]}/front"
    node = start([ns], input_transport="compressed", max_age_ms=0)
    c = Collector(graph, {f"{ns}/panoptic/semantic": Image, "/diagnostics": DiagnosticArray})
    pub = graph.create_publisher(CompressedImage, f"{ns}/image/compressed", 10)
    wait_for_subscriber(graph, pub)
    # a few bytes of PNG declaring a 30000 x 30000 frame: Pillow's DecompressionBombError ended the worker
    # thread, and the node served nothing more; it is a bad frame now, counted, and the next one is served
    from conftest import png_declaring
    bomb = CompressedImage(format="png", data=png_declaring(30000, 30000).tobytes())
    pub.publish(bomb)
    assert c.spin_until(lambda g: int(node_diagnostics(g, ns).get("camera", {}).get("bad frames", 0)) >= 1)
    buf = io.BytesIO()
    PILImage.fromarray(rgb_frame(rng, 40, 56)).save(buf, format="PNG")
    msg = CompressedImage(format="png", data=buf.getvalue())
    msg.header.stamp, msg.header.frame_id = Time(sec=5, nanosec=7), "cam"
    assert c.spin_until(lambda g: g[f"{ns}/panoptic/semantic"], publish=lambda: pub.publish(msg))
    out = c.got[f"{ns}/panoptic/semantic"][0]
    assert (out.height, out.width, out.header.frame_id, stamp_of(out)) == (40, 56, "cam", 5_000_000_007)
    assert "declares more pixels than any camera's" in node.output()
    c.close()


@pytest.mark.parametrize("batch", [True, False])
def test_several_cameras_each_get_their_own_outputs(graph, start, rng, batch):
    base = f"/t{uuid.uuid4().hex[:6]}"
    cams = [f"{base}/a", f"{base}/b"]
    start(cams, batch_cameras=batch, max_age_ms=0)
    c = Collector(graph, {f"{cam}/panoptic/panoptic": Image for cam in cams})
    pubs = {cam: graph.create_publisher(Image, f"{cam}/image", 10) for cam in cams}
    shapes = {cams[0]: (48, 64), cams[1]: (36, 40)}

    def publish():
        for i, cam in enumerate(cams):
            pubs[cam].publish(image_msg(rgb_frame(rng, *shapes[cam]), Time(sec=100 + i), cam.rsplit("/", 1)[1]))

    assert c.spin_until(lambda g: all(g.values()), publish=publish)
    for i, cam in enumerate(cams):
        for m in c.got[f"{cam}/panoptic/panoptic"]:  # every output of a camera is its own frame's
            assert (m.header.frame_id, m.header.stamp.sec, (m.height, m.width)) == (cam.rsplit("/", 1)[1], 100 + i,
                                                                                     shapes[cam])
    c.close()


@pytest.mark.parametrize("profile", ["large_images", "large_images_shm"])
def test_the_shipped_dds_profiles_carry_full_frames_from_and_to_unconfigured_processes(graph, start, rng, profile):
    """The node under each profile car.launch.py may choose, this test's process on Fast DDS's defaults (as a
    driver and a driving stack nobody configured): two cameras' 480x360 rgb8 frames, published back to back
    from one process, each answered with full-size maps (the 32SC1 panoptic map is 691 KB)."""
    from panoptic_node.dds_profile import choose_profile, profile_env
    path, _ = choose_profile(profile, Path(__file__).resolve().parents[1] / "config", environ={})
    base = f"/t{uuid.uuid4().hex[:6]}"
    cams = [f"{base}/a", f"{base}/b"]
    node = start(cams, max_age_ms=0, env=profile_env(path))
    # the profile is the node's: its own shared-memory segment is the profile's 32 MiB (Fast DDS's is 512 KiB)
    mapped = set(re.findall(r"/dev/shm/fastrtps_\S+", Path(f"/proc/{node.proc.pid}/maps").read_text()))
    assert any(not m.rsplit("/", 1)[1].startswith("fastrtps_port") and os.stat(m).st_size >= 32 << 20
               for m in mapped), mapped
    c = Collector(graph, {f"{cam}/panoptic/panoptic": Image for cam in cams})
    pubs = {cam: graph.create_publisher(Image, f"{cam}/image", 10) for cam in cams}
    for pub in pubs.values():
        wait_for_subscriber(graph, pub)
    frames = {cam: [rgb_frame(rng, 360, 480) for _ in range(3)] for cam in cams}
    for k in range(3):
        sent = [0.0]

        def send_pair(k=k):  # again each second until answered: under large_images_shm an unconfigured
            if time.time() - sent[0] >= 1.0:  # process's two cameras lose frames (README), and one CI run lost a pair
                sent[0] = time.time()
                for i, cam in enumerate(cams):
                    pubs[cam].publish(image_msg(frames[cam][k], Time(sec=200 + k, nanosec=i), cam.rsplit("/", 1)[1]))

        assert c.spin_until(lambda g: all(any(m.header.stamp.sec == 200 + k for m in v) for v in g.values()),
                            publish=send_pair, timeout=30), {t: len(v) for t, v in c.got.items()}
    for i, cam in enumerate(cams):
        got = c.got[f"{cam}/panoptic/panoptic"]
        assert sorted({(m.header.stamp.sec, m.header.stamp.nanosec) for m in got}) == [(200 + k, i) for k in range(3)]
        assert all((m.encoding, m.height, m.width, len(m.data)) == ("32SC1", 360, 480, 360 * 480 * 4) for m in got)
    c.close()


def graph_shows(graph, condition, timeout=10.0) -> bool:
    """Whether `condition()` (a question to the test's view of the graph) holds within `timeout`: that view follows
    discovery, which lags what a node has just done (a deactivated node's subscription is gone when its answer
    arrives, but its discovery message may come after)."""
    end = time.time() + timeout
    while not condition() and time.time() < end:
        rclpy.spin_once(graph, timeout_sec=0.1)
    return condition()


def lifecycle_answers(graph, get_state, node) -> None:
    """get_state asked until it answers. Fast DDS can lose the answer to a service's first request: a matched
    request path does not mean the node's response writer has matched the client's reader yet ("failed to send
    response (timeout)", the service discovery race of ros2/rmw_fastrtps#842). get_state changes nothing, so it may
    be sent again; transitions, which must not be sent twice, are sent after it, once discovery has settled."""
    from lifecycle_msgs.srv import GetState
    for _ in range(6):
        future = get_state.call_async(GetState.Request())
        rclpy.spin_until_future_complete(graph, future, timeout_sec=5)
        if future.done():
            return
        get_state.remove_pending_request(future)
    raise AssertionError(f"get_state unanswered six times: {node.output()}")


def wait_for_subscriber(graph, pub, timeout=10.0):
    """A publisher's messages reach nobody until the subscription is matched."""
    assert graph_shows(graph, lambda: pub.get_subscription_count() > 0, timeout), f"nobody subscribes {pub.topic_name}"


def test_newest_frame_wins_and_old_frames_are_dropped_on_sim_time(graph, start, rng):
    ns = f"/t{uuid.uuid4().hex[:6]}/front"
    start([ns], max_age_ms=200, use_sim_time=True)
    clock = graph.create_publisher(Clock, "/clock", 10)
    pub = graph.create_publisher(Image, f"{ns}/image", 10)
    wait_for_subscriber(graph, clock)
    wait_for_subscriber(graph, pub)
    c = Collector(graph, {f"{ns}/panoptic/semantic": Image, "/diagnostics": DiagnosticArray})
    tick = lambda: clock.publish(Clock(clock=Time(sec=1000)))  # noqa: E731  sim time: 1000 s
    rgb = rgb_frame(rng)
    # before the stale frames: the node must run on sim time 1000 (its diagnostics are stamped with its
    # clock) and have matched our subscription (outputs are lazy): until both hold, a stale frame would
    # pass as fresh or be dropped unseen. A frame stamped at the sim clock proves the second.
    semantic = f"{ns}/panoptic/semantic"

    def warm(g):
        on_sim_time = any(d.header.stamp.sec == 1000 and any(s.hardware_id == ns for s in d.status)
                          for d in g["/diagnostics"])
        return on_sim_time and g[semantic]

    def tick_and_frame():
        tick()
        pub.publish(image_msg(rgb, Time(sec=1000), "f"))

    assert c.spin_until(warm, publish=tick_and_frame, timeout=30.0), "the node never ran on sim time 1000"
    c.spin_until(lambda g: False, publish=tick, timeout=0.5)  # the warm-up frames' outputs drain
    c.got[semantic].clear()
    c.got["/diagnostics"].clear()
    # a frame 1 s older than the sim clock is older than max_age_ms: dropped, counted, never published
    for _ in range(3):
        pub.publish(image_msg(rgb, Time(sec=999), "f"))
        c.spin_until(lambda g: False, publish=tick, timeout=0.3)
    assert not c.got[semantic]
    # a burst of fresh frames, faster than inference: the newest is published, the older ones dropped
    burst = [Time(sec=1000, nanosec=i) for i in range(1, 30)]
    for s in burst:
        pub.publish(image_msg(rgb, s, "f"))
    c.spin_until(lambda g: False, publish=tick, timeout=2.0)
    stamps = [m.header.stamp.nanosec for m in c.got[semantic]]
    assert stamps and stamps[-1] == burst[-1].nanosec and len(stamps) < len(burst), stamps
    kv = node_diagnostics(c.got, ns)["camera"]
    assert int(kv["dropped (older than max_age_ms)"]) == 3
    assert int(kv["dropped (newer frame)"]) >= 1
    assert any(s.hardware_id == ns and s.level == b"\x01" and "older than max_age_ms" in s.message
               for d in c.got["/diagnostics"] for s in d.status)
    c.close()


def one_camera(graph, start, rng, prefix=(), **params):
    """A node serving one fresh camera namespace, a collector of its semantic map and /diagnostics, and a
    camera publisher it has matched: (namespace, node, collector, publisher, a frame)."""
    ns = f"/t{uuid.uuid4().hex[:6]}/front"
    node = start([ns], prefix=prefix, **params)
    c = Collector(graph, {f"{ns}/panoptic/semantic": Image, "/diagnostics": DiagnosticArray})
    pub = graph.create_publisher(Image, f"{ns}/image", 10)
    wait_for_subscriber(graph, pub)
    return ns, node, c, pub, rgb_frame(rng)


def test_bad_frames_are_counted_and_skipped(graph, start, rng):
    ns, node, c, pub, rgb = one_camera(graph, start, rng, max_age_ms=0)
    wrong_encoding = image_msg(rgb, Time(sec=1), "f", encoding="32FC1")
    truncated = image_msg(rgb, Time(sec=2), "f")
    truncated.data = rgb.tobytes()[:100]
    good = image_msg(rgb, Time(sec=3), "f")

    def bad_frames(g) -> int:
        return int(node_diagnostics(g, ns).get("camera", {}).get("bad frames", 0))

    # one at a time, each decoded (and counted) before the next, so no frame replaces another
    for expected, msg in enumerate((wrong_encoding, truncated), start=1):
        pub.publish(msg)
        assert c.spin_until(lambda g: bad_frames(g) >= expected), (expected, node.output())
    assert c.spin_until(lambda g: g[f"{ns}/panoptic/semantic"], publish=lambda: pub.publish(good))
    assert {m.header.stamp.sec for m in c.got[f"{ns}/panoptic/semantic"]} == {3}
    assert node.proc.poll() is None and "32FC1" in node.output()
    # the report that counted them said WARN and why; once good frames flow again it says OK
    assert any(s.hardware_id == ns and s.level == b"\x01" and "undecodable frame(s)" in s.message
               for d in c.got["/diagnostics"] for s in d.status)
    assert c.spin_until(lambda g: node_diagnostics(g, ns)["camera"]["level"] == 0, publish=lambda: pub.publish(good))
    c.close()


def test_frames_without_a_stamp_are_served_and_reported(graph, start, rng):
    """A driver that leaves header.stamp at 0: the age check dropped every frame as stale (the camera looked
    dead); now they are served, said once in the log and counted as a warning on /diagnostics."""
    ns, node, c, pub, rgb = one_camera(graph, start, rng, max_age_ms=500)
    assert c.spin_until(lambda g: g[f"{ns}/panoptic/semantic"] and "without a header stamp" in
                        node_diagnostics(g, ns).get("camera", {}).get("message", ""),
                        publish=lambda: pub.publish(image_msg(rgb, Time(), "f")))
    assert stamp_of(c.got[f"{ns}/panoptic/semantic"][0]) == 0
    camera = node_diagnostics(c.got, ns)["camera"]
    assert camera["level"] == 1 and int(camera["unstamped frames"]) >= 1
    assert camera["dropped (older than max_age_ms)"] == "0"
    assert node.output().count("frames carry no header stamp (0)") == 1
    c.close()


def test_a_camera_two_nodes_publish_on_is_named_on_diagnostics(graph, start, rng):
    """A bag played while the camera driver runs: both on one topic, served as one camera; /diagnostics now
    names both nodes (the camera status said 'ok', or only that the bag's frames were stale)."""
    ns, node, c, pub, rgb = one_camera(graph, start, rng)
    second = rclpy.create_node(f"second_camera_{uuid.uuid4().hex[:6]}")
    other = second.create_publisher(Image, f"{ns}/image", 10)

    def named(g):
        return "2 nodes publish on" in node_diagnostics(g, ns).get("camera", {}).get("message", "")

    assert c.spin_until(named, publish=lambda: pub.publish(image_msg(rgb, now(graph), "f")), timeout=20), \
        node_diagnostics(c.got, ns)
    camera = node_diagnostics(c.got, ns)["camera"]
    assert camera["level"] == 1 and second.get_name() in camera["publishers"] and graph.get_name() in camera["publishers"]
    second.destroy_publisher(other)  # one publisher again: the note goes
    assert c.spin_until(lambda g: not named(g) and node_diagnostics(g, ns)["camera"]["level"] == 0,
                        publish=lambda: pub.publish(image_msg(rgb, now(graph), "f")), timeout=20)
    second.destroy_node()
    c.close()


def test_a_node_says_when_dev_shm_has_no_room_for_its_fast_dds_segment(graph, start, rng):
    """A machine whose /dev/shm killed nodes have filled: Fast DDS only says 'SHM Transport is not supported in
    the current platform' and falls back to UDP (under large_images_shm two cameras then lost most frames).
    The node says why, naming the segments a killed process left, and serves on. Run in a private 8 MB
    /dev/shm (`unshare -m`) that holds one such segment."""
    if subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode:
        pytest.skip("needs `unshare -m` (root or user namespaces) to give the node a small /dev/shm of its own")
    stale = "/dev/shm/fastrtps_00112233445566ff"  # a segment with its unlocked lock file: its process is gone
    setup = (f"mount -t tmpfs -o size=8m tmpfs /dev/shm && head -c 1000000 /dev/zero > {stale} && : > {stale}_el "
             f'&& exec "$@"')
    ns, node, c, pub, rgb = one_camera(graph, start, rng, prefix=["unshare", "-m", "sh", "-c", setup, "sh"])
    assert c.spin_until(lambda g: g[f"{ns}/panoptic/semantic"],
                        publish=lambda: pub.publish(image_msg(rgb, now(graph), "f")))
    warning = [line for line in node.output().splitlines() if "[WARN]" in line and "/dev/shm has" in line]
    assert len(warning) == 1, node.output()
    assert re.search(r"/dev/shm has [0-9]+ MB free and each Fast DDS process's shared-memory segment needs 35 MB: "
                     r".*; 1 segment left by killed or crashed Fast DDS processes holds 1 MB: `fastdds shm clean`",
                     warning[0]), warning[0]
    c.close()


def test_a_second_node_serving_the_same_camera_is_named_on_diagnostics(graph, start, rng):
    """car.launch.py started twice, or a node left running after its launch died: both serve the camera and a
    consumer gets their maps interleaved, while each node's status said 'ok'. Each now WARNs naming the other,
    until it is gone."""
    ns, node, c, pub, rgb = one_camera(graph, start, rng)
    second = start([ns])
    me, other = (f"/{n.name}" for n in (node, second))

    def statuses(g):  # the first node's camera status, whichever node's report came last
        for d in reversed(g["/diagnostics"]):
            for s in d.status:
                if s.hardware_id == ns and s.name.startswith(me[1:]):
                    return s
        return None

    def named_by_first(g):
        s = statuses(g)
        return s is not None and s.level[0] == 1 and s.message == (
            f"{other} also publishes {ns}/panoptic/semantic: two nodes serve this camera and their maps interleave "
            f"(started twice, or one left running? `ros2 node list`)")

    assert c.spin_until(named_by_first, publish=lambda: pub.publish(image_msg(rgb, now(graph), "f")), timeout=20), \
        node.output()
    assert f"{other} also publishes {ns}/panoptic/semantic" in node.output()  # logged once, as it began
    second.stop()
    c.got["/diagnostics"].clear()
    assert c.spin_until(lambda g: statuses(g) is not None and statuses(g).level[0] == 0,
                        publish=lambda: pub.publish(image_msg(rgb, now(graph), "f")), timeout=20)
    c.close()


def test_a_node_on_sim_time_without_a_clock_says_so(graph, start, rng):
    """use_sim_time left on for live cameras (or a bag played without --clock): the node's clock reads 0, so
    live frames are decades 'ahead'; the camera's WARN said to synchronise the clocks with chrony."""
    ns, node, c, pub, rgb = one_camera(graph, start, rng, use_sim_time=True)
    assert c.spin_until(lambda g: "no /clock has come" in node_diagnostics(g, ns).get("camera", {}).get("message", ""),
                        publish=lambda: pub.publish(image_msg(rgb, now(graph), "f"))), node.output()
    camera = node_diagnostics(c.got, ns)["camera"]
    assert camera["level"] == 1 and "ahead of the node's clock" in camera["message"]
    assert "chrony" not in camera["message"]
    c.close()


def test_the_cameras_calibration_comes_with_each_frames_maps(graph, start, rng):
    """<ns>/panoptic/camera_info: the camera's own CameraInfo (from <ns>/camera_info) stamped as each frame's
    maps, image_transport's sibling of every image there, so RViz's Camera display and a CameraSubscriber
    pair the overlay or a map with it; its size is in the camera's diagnostics ('none received' before)."""
    from sensor_msgs.msg import CameraInfo
    ns = f"/t{uuid.uuid4().hex[:6]}/front"
    node = start([ns], max_age_ms=0)
    c = Collector(graph, {f"{ns}/panoptic/camera_info": CameraInfo, f"{ns}/panoptic/semantic": Image,
                          "/diagnostics": DiagnosticArray})
    frames = graph.create_publisher(Image, f"{ns}/image", 10)
    calibration = graph.create_publisher(CameraInfo, f"{ns}/camera_info", 10)
    rgb = rgb_frame(rng)
    assert c.spin_until(lambda g: node_diagnostics(g, ns).get("camera", {}).get("camera info") == "none received",
                        publish=lambda: frames.publish(image_msg(rgb, now(graph), "front"))), node.output()
    info = CameraInfo(height=48, width=64, distortion_model="plumb_bob", d=[0.1, 0.0, 0.0, 0.0, 0.0],
                      k=[50.0, 0.0, 32.0, 0.0, 50.0, 24.0, 0.0, 0.0, 1.0])
    info.header.frame_id = "front"

    def publish():
        info.header.stamp = now(graph)
        calibration.publish(info)
        frames.publish(image_msg(rgb, now(graph), "front"))

    def stamps(g, topic):
        return {(m.header.stamp.sec, m.header.stamp.nanosec) for m in g[f"{ns}/panoptic/{topic}"]}

    # the first calibration's stamp is a frame's maps' (the two topics arrive in either order)
    assert c.spin_until(lambda g: g[f"{ns}/panoptic/camera_info"] and
                        stamps({k: v[:1] for k, v in g.items()}, "camera_info") <= stamps(g, "semantic"),
                        publish=publish), (stamps(c.got, "camera_info"), stamps(c.got, "semantic"), node.output())
    got = c.got[f"{ns}/panoptic/camera_info"][0]
    assert (got.width, got.height, got.distortion_model) == (64, 48, "plumb_bob") and got.header.frame_id == "front"
    assert list(got.k) == list(info.k) and list(got.d) == list(info.d)
    assert c.spin_until(lambda g: node_diagnostics(g, ns)["camera"]["camera info"] == "64x48", publish=publish)
    c.close()


def test_a_camera_that_cannot_reach_the_node_is_named_on_diagnostics(graph, start, rng):
    """A driver offering best effort to a reliable subscription delivers nothing; the camera's status said
    only 'no frame'. It now says why, and the log line too."""
    ns = f"/t{uuid.uuid4().hex[:6]}/front"
    node = start([ns], max_age_ms=0, qos_reliability="reliable", camera_timeout_s=60.0)
    c = Collector(graph, {"/diagnostics": DiagnosticArray})
    best_effort = graph.create_publisher(Image, f"{ns}/image", QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT))
    camera = lambda g: node_diagnostics(g, ns).get("camera", {})  # noqa: E731
    assert c.spin_until(lambda g: "incompatible" in camera(g).get("message", "")), node.output()
    assert camera(c.got)["message"] == (f"waiting for the first frame on {ns}/image; a publisher offers QoS incompatible "
                                        f"with this subscription (RELIABILITY; qos_reliability best_effort matches "
                                        f"every camera driver)")
    assert f"{ns}/image: a publisher offers QoS incompatible" in node.output()
    graph.destroy_publisher(best_effort)
    c.close()


def test_a_camera_topic_of_another_message_type_is_named_on_diagnostics(graph, start, rng):
    """A driver publishing CompressedImage where the node reads Image (or a remap onto a compressed topic)
    delivers nothing, and across processes DDS says nothing; the camera's status said only 'waiting for the
    first frame'. It now names the type, the publishing node and the setting that reads it, logs it once,
    and forgets it once that publisher is gone and frames of the right type come."""
    ns = f"/t{uuid.uuid4().hex[:6]}/front"
    node = start([ns], max_age_ms=0, camera_timeout_s=60.0)
    c = Collector(graph, {"/diagnostics": DiagnosticArray})
    wrong = graph.create_publisher(CompressedImage, f"{ns}/image", 10)
    camera = lambda g: node_diagnostics(g, ns).get("camera", {})  # noqa: E731
    assert c.spin_until(lambda g: "sends" in camera(g).get("message", "")), node.output()
    assert camera(c.got)["message"] == (
        f"waiting for the first frame on {ns}/image; a publisher sends sensor_msgs/msg/CompressedImage (from "
        f"{graph.get_name()}), not the sensor_msgs/msg/Image that input_transport raw reads: set input_transport: "
        f"compressed, or point the camera at the driver's raw topic")
    graph.destroy_publisher(wrong)
    right = graph.create_publisher(Image, f"{ns}/image", 10)
    rgb = rgb_frame(rng)
    assert c.spin_until(lambda g: camera(g).get("message") == "ok",
                        publish=lambda: right.publish(image_msg(rgb, now(graph), "f"))), node.output()
    assert node.output().count(f"{ns}/image: a publisher sends sensor_msgs/msg/CompressedImage") == 1
    c.close()


def test_a_camera_nobody_publishes_names_the_image_topics_that_exist(graph, start, rng):
    """The first thing that goes wrong with a new camera: its driver publishes `image_raw` where the node
    reads `image`, and the status said only 'waiting for the first frame'. With nothing on the node's topic
    and images elsewhere, it names them (those under the camera's namespace first) and how to point the
    camera there; not logged (a driver may start later) and gone once frames come."""
    ns = f"/t{uuid.uuid4().hex[:6]}/front"
    node = start([ns], max_age_ms=0, camera_timeout_s=60.0)
    c = Collector(graph, {"/diagnostics": DiagnosticArray})
    driver = graph.create_publisher(Image, f"{ns}/image_raw", 10)
    camera = lambda g: node_diagnostics(g, ns).get("camera", {})  # noqa: E731
    assert c.spin_until(lambda g: "no publisher" in camera(g).get("message", "")), node.output()
    assert camera(c.got)["message"].startswith(
        f"waiting for the first frame on {ns}/image; no publisher on it; sensor_msgs/msg/Image topics on the "
        f"graph: {ns}/image_raw")
    assert camera(c.got)["message"].endswith("(point the camera at its driver's with image_topics:= or a remap)")
    right = graph.create_publisher(Image, f"{ns}/image", 10)
    rgb = rgb_frame(rng)
    assert c.spin_until(lambda g: camera(g).get("message") == "ok",
                        publish=lambda: right.publish(image_msg(rgb, now(graph), "f"))), node.output()
    assert "no publisher" not in node.output()
    graph.destroy_publisher(driver)
    c.close()


def test_a_silent_camera_is_an_error_on_diagnostics_until_it_sends_again(graph, start, rng):
    """A camera that stops (a cable, a driver crash) must show as an ERROR naming its topic, not go on
    showing its last rate; frames arriving again bring it back to OK."""
    ns = f"/t{uuid.uuid4().hex[:6]}/front"
    node = start([ns], max_age_ms=0, camera_timeout_s=0.6)
    c = Collector(graph, {"/diagnostics": DiagnosticArray})
    camera = lambda g: node_diagnostics(g, ns).get("camera", {})  # noqa: E731
    assert c.spin_until(lambda g: camera(g).get("level") == 2), node.output()
    assert camera(c.got)["message"].startswith(f"no frame on {ns}/image since start-up (")
    assert camera(c.got)["seconds since last frame"] == "never"
    pub = graph.create_publisher(Image, f"{ns}/image", 10)
    rgb = rgb_frame(rng)
    assert c.spin_until(lambda g: camera(g).get("level") == 0 and int(camera(g)["published"]) > 0,
                        publish=lambda: pub.publish(image_msg(rgb, now(graph), "f")))
    assert float(camera(c.got)["input rate (Hz)"]) > 0
    # frames stamped as sent: their age when the outputs leave is wire + waiting + inference (seconds at most)
    assert 0 < float(camera(c.got)["frame age at publish p50 (ms)"]) < 5000
    c.got["/diagnostics"].clear()
    assert c.spin_until(lambda g: camera(g).get("level") == 2)  # it stops again
    assert camera(c.got)["message"].startswith(f"no frame on {ns}/image for ")
    assert node.proc.poll() is None
    c.close()


def test_an_ego_mask_makes_the_car_itself_void_in_every_output(graph, start, rng, tmp_path):
    """A camera that sees the car's own bonnet: its mask (0 there) makes those pixels void, so no 'car' at the
    bottom of every frame reaches the driving stack; a mask drawn at another size is scaled, said once."""
    ns = f"/t{uuid.uuid4().hex[:6]}/front"
    keep = np.full((24, 32), 255, np.uint8)
    keep[12:] = 0  # the lower half is the bonnet (drawn at half the camera's size)
    PILImage.fromarray(keep).save(tmp_path / f"{ns.strip('/').replace('/', '_')}.png")
    node = start([ns], max_age_ms=0, ego_mask_dir=str(tmp_path))
    c = Collector(graph, {f"{ns}/panoptic/{t}": Image for t in ("semantic", "instances", "panoptic")})
    pub = graph.create_publisher(Image, f"{ns}/image", 10)
    rgb = rgb_frame(rng)
    assert c.spin_until(lambda g: all(g.values()), publish=lambda: pub.publish(image_msg(rgb, now(graph), "f")))
    semantic, instances, panoptic = (image_array(c.got[f"{ns}/panoptic/{t}"][0]) for t in ("semantic", "instances",
                                                                                          "panoptic"))
    assert (semantic[24:] == 255).all() and (instances[24:] == 0).all() and (panoptic[24:] == -1).all()
    assert (semantic[:24] != 255).any()                                  # the street above is still there
    out = node.output()
    assert f"camera {ns}: ego mask {tmp_path}" in out and "50.0 % of its pixels void" in out
    assert out.count("ego mask is 32x24, its frames 64x48: the mask is scaled to them") == 1
    c.close()


def test_a_panorama_camera_is_named_once_and_still_served(graph, start, rng):
    ns = f"/t{uuid.uuid4().hex[:6]}/front"
    node = start([ns], max_age_ms=0)
    c = Collector(graph, {f"{ns}/panoptic/semantic": Image})
    pub = graph.create_publisher(Image, f"{ns}/image", 10)
    wide = rgb_frame(rng, 24, 400)  # the tiny model's max_size leaves it a few pixels high
    assert c.spin_until(lambda g: len(g[f"{ns}/panoptic/semantic"]) >= 3,
                        publish=lambda: pub.publish(image_msg(wide, now(graph), "f")))
    assert (c.got[f"{ns}/panoptic/semantic"][0].height, c.got[f"{ns}/panoptic/semantic"][0].width) == (24, 400)
    assert node.output().count("a 400x24 frame runs at") == 1
    c.close()


@pytest.mark.parametrize("params, expected", [
    ({"qos_depth": 0}, "parameter 'qos_depth' = 0 is invalid"),
    ({"backend": "cuda_magic"}, "parameter 'backend'"),
    ({"cameraz": ["/x"]}, "unknown parameter 'cameraz'"),
    ({"model": "/nonexistent/model.yaml"}, "model config '/nonexistent/model.yaml' not found"),
    ({"qos_overrides": {"/bad/cam/panoptic/semantic": {"publisher": {"reliability": "sometimes"}}}},
     "parameter 'qos_overrides./bad/cam/panoptic/semantic.publisher.reliability' = 'sometimes' is invalid"),
    ({"ego_mask_dir": "/nonexistent/masks"}, "ego mask folder '/nonexistent/masks' is not a folder"),
    ({"autostart": "maybe"}, "parameter 'autostart' = 'maybe' is invalid"),
    ({"num_threads": 100000}, "parameter 'num_threads' = 100000: expected a whole number from 0 (every core) to"),
    ({"num_threads": 1, "inference_workers": 2},
     "parameter 'inference_workers' = 2 is more than the 1 thread(s) the workers would share"),
])
def test_a_bad_parameter_exits_1_with_one_line(start, params, expected):
    node = start(["/bad/cam"], wait=False, **params)
    assert node.wait(START_TIMEOUT) == 1
    out = node.output()
    errors = [line for line in out.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and expected in errors[0], out
    assert "Traceback" not in out


def test_parameters_change_while_the_node_runs(graph, start, rng):
    """`ros2 param set`: a live parameter takes effect from the next frame; a start-up one or a bad value is
    refused with the reason, reads back unchanged, and the node keeps running."""
    ns = f"/t{uuid.uuid4().hex[:6]}/front"
    node = start([ns], max_age_ms=0, threshold=0)  # every query kept; an integer, as `threshold: 0` in a YAML
    client = AsyncParameterClient(graph, node.name)
    assert client.wait_for_services(timeout_sec=20)

    def call(future):
        rclpy.spin_until_future_complete(graph, future, timeout_sec=20)
        return future.result()

    def set_params(**values):
        return call(client.set_parameters([Parameter(k, value=v) for k, v in values.items()])).results

    def read(*names):
        return [v.double_value if v.type == 3 else v.string_value for v in call(client.get_parameters(list(names))).values]

    semantic, instances = f"{ns}/panoptic/semantic", f"{ns}/panoptic/instances"
    c = Collector(graph, {semantic: Image, instances: Image})
    pub = graph.create_publisher(Image, f"{ns}/image", 10)
    rgb = rgb_frame(rng)

    def output_of(sec):  # the semantic map of a frame stamped `sec`, sent until it comes back
        return c.spin_until(lambda g: any(m.header.stamp.sec == sec for m in g[semantic]),
                            publish=lambda: pub.publish(image_msg(rgb, Time(sec=sec), "f")))

    assert output_of(1)
    before = next(m for m in c.got[semantic] if m.header.stamp.sec == 1)
    assert (image_array(before) != 255).any()  # something kept at threshold 0
    # live: no query passes a threshold of 1, so the next frames' maps are all void. Given as an integer, as
    # `ros2 param set <node> threshold 1` gives it (rclpy refused that: "Wrong parameter type"); a double after
    assert all(r.successful for r in set_params(threshold=1, publish_instances=False))
    c.got[instances].clear()
    assert output_of(2)
    after = next(m for m in c.got[semantic] if m.header.stamp.sec == 2)
    assert (image_array(after) == 255).all()
    assert not [m for m in c.got[instances] if m.header.stamp.sec == 2]  # publish_instances off
    qos = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL, reliability=ReliabilityPolicy.RELIABLE)
    late = Collector(graph, {f"{ns}/panoptic/label_info": LabelInfo}, qos)  # says the threshold now in use
    assert late.spin_until(lambda g: g[f"{ns}/panoptic/label_info"], timeout=10)
    assert late.got[f"{ns}/panoptic/label_info"][-1].threshold == pytest.approx(1.0)
    late.close()
    diagnostics = Collector(graph, {"/diagnostics": DiagnosticArray})  # and so do the diagnostics
    assert diagnostics.spin_until(lambda g: node_diagnostics(g, ns).get("inference", {}).get("threshold") == "1",
                                  timeout=10)
    diagnostics.close()
    # `ros2 param describe` says what each one is, allows, and whether it changes live
    threshold, model_d = call(client.describe_parameters(["threshold", "model"])).descriptors
    assert "class probability" in threshold.description
    assert threshold.additional_constraints == "number >= -1.0 <= 1.0; changes while the node runs"
    assert model_d.additional_constraints.endswith("read at start-up only")
    # refused, with the reason; nothing changes
    model = read("model")[0]
    (r,) = set_params(model="street_lite0")
    assert not r.successful and "parameter 'model' is read at start-up only" in r.reason
    (r,) = set_params(threshold=1.5)
    assert not r.successful and "parameter 'threshold' = 1.5 is invalid" in r.reason
    # set atomically (ROS's all-or-nothing service), one refusal means none is applied
    r = call(client.set_parameters_atomically([Parameter("threshold", value=0.5),
                                               Parameter("backend", value="openvino")])).result
    assert not r.successful and "parameter 'backend' is read at start-up only" in r.reason
    assert read("model", "threshold") == [model, 1.0]
    # a misspelt name is refused naming the one meant (rclpy's own refusal named none), and is not kept; so
    # is a QoS override of a topic the node does not have (set now, it would never be read)
    (r,) = set_params(thresold=0.5)
    assert not r.successful and r.reason.startswith("unknown parameter 'thresold' (did you mean 'threshold'?)")
    (r,) = set_params(**{"qos_overrides./nope.publisher.depth": 3})
    assert not r.successful and "parameter 'qos_overrides./nope.publisher.depth' is read at start-up only" in r.reason
    names = call(client.list_parameters([], 0)).result.names
    assert "threshold" in names and "thresold" not in names and "qos_overrides./nope.publisher.depth" not in names
    assert node.proc.poll() is None
    c.close()


def test_qos_overrides_apply_to_the_topics_they_name(graph, start):
    """ROS 2's standard qos_overrides parameters reach the node's publishers and subscriptions."""
    ns = f"/t{uuid.uuid4().hex[:6]}/front"
    node = start([ns], qos_overrides={f"{ns}/panoptic/semantic": {"publisher": {"reliability": "best_effort",
                                                                                "depth": 3}},
                                      f"{ns}/image": {"subscription": {"reliability": "reliable"}}})
    offered = graph.get_publishers_info_by_topic(f"{ns}/panoptic/semantic")[0].qos_profile
    assert offered.reliability == ReliabilityPolicy.BEST_EFFORT  # (discovery does not carry the depth)
    wait_for_publisher(graph, f"{ns}/panoptic/instances", node)  # each topic is discovered on its own
    other = graph.get_publishers_info_by_topic(f"{ns}/panoptic/instances")[0].qos_profile
    assert other.reliability == ReliabilityPolicy.RELIABLE  # the contract's QoS where nothing is overridden
    assert graph_shows(graph, lambda: graph.get_subscriptions_info_by_topic(f"{ns}/image"))
    assert graph.get_subscriptions_info_by_topic(f"{ns}/image")[0].qos_profile.reliability == ReliabilityPolicy.RELIABLE
    client = AsyncParameterClient(graph, node.name)  # fixed once the topic exists: refused while running
    assert client.wait_for_services(timeout_sec=20)
    future = client.set_parameters([Parameter(f"qos_overrides.{ns}/panoptic/semantic.publisher.depth", value=5)])
    rclpy.spin_until_future_complete(graph, future, timeout_sec=20)
    (r,) = future.result().results
    assert not r.successful and "read at start-up only" in r.reason


def test_relative_cameras_follow_the_node_namespace(graph, start, rng):
    """One launch per car: under `-r __ns:=/carN` (car.launch.py's namespace:=) a relative camera name, the
    shipped default's kind, is served at /carN/<camera>, an absolute one where it says, and /diagnostics (global)
    names each camera by its resolved namespace and every status by the node's full name (diagnostic_updater's
    use_fqn, true in a namespace unless given), so two cars' statuses stay apart."""
    car = f"/car{uuid.uuid4().hex[:6]}"
    fixed = f"/t{uuid.uuid4().hex[:6]}/rear"
    node = start(["cam/front", fixed], namespace=car, max_age_ms=0)
    ours = f"{car}/cam/front"
    c = Collector(graph, {f"{ours}/panoptic/semantic": Image, f"{fixed}/panoptic/semantic": Image,
                          "/diagnostics": DiagnosticArray})
    pubs = [graph.create_publisher(Image, f"{ns}/image", 10) for ns in (ours, fixed)]
    rgb = rgb_frame(rng)

    def publish():
        for pub in pubs:
            pub.publish(image_msg(rgb, now(graph), "cam"))

    assert c.spin_until(lambda g: g[f"{ours}/panoptic/semantic"] and g[f"{fixed}/panoptic/semantic"]
                        and node_diagnostics(g, ours) and node_diagnostics(g, fixed), publish=publish), \
        ({t: len(v) for t, v in c.got.items()}, node.output())
    assert not graph.get_publishers_info_by_topic("/cam/front/panoptic/semantic")  # nothing at the root
    report = node_diagnostics(c.got, ours)
    camera = report["camera"]
    assert camera["name"] == f"{car}/{node.name}: camera {ours}" and camera["input topic"] == f"{ours}/image"
    assert report["inference"]["name"] == f"{car}/{node.name}: inference"
    assert node_diagnostics(c.got, fixed)["camera"]["input topic"] == f"{fixed}/image"
    c.close()
    # diagnostic_updater.use_fqn given false: the node's name alone, as diagnostic_updater's default
    short = start(["cam/front"], namespace=car + "b", max_age_ms=0, **{"diagnostic_updater.use_fqn": False})
    theirs = f"{car}b/cam/front"
    c = Collector(graph, {"/diagnostics": DiagnosticArray})
    assert c.spin_until(lambda g: node_diagnostics(g, theirs)), short.output()
    assert node_diagnostics(c.got, theirs)["camera"]["name"] == f"{short.name}: camera {theirs}"
    c.close()
    # two names for one namespace (relative and absolute): refused at start in one line
    twice = start(["cam/front", f"{car}/cam/front"], wait=False, namespace=car)
    assert twice.wait(START_TIMEOUT) == 1
    errors = [line for line in twice.output().splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and f"parameter 'cameras' names {ours} twice" in errors[0], twice.output()


def test_image_topics_remaps_reach_the_node_as_launch_gives_them(graph, start, rng):
    """car.launch.py image_topics:= gives launch_ros remap rules (params.image_remaps: each camera's input onto
    its driver's topic, its camera_info onto the driver's beside it, all resolved); passed as launch_ros passes
    them (`-r from:=to`), under a namespace, the node reads the drivers' topics, relative and absolute, serves
    each camera where it was, its diagnostics name the topic it reads, and the driver's calibration comes
    with the maps."""
    car = f"/car{uuid.uuid4().hex[:6]}"
    fixed = f"/t{uuid.uuid4().hex[:6]}/rear"
    cameras = ["cam/front", fixed]
    remaps = image_remaps(cameras, ["drv/image_raw", f"{fixed}_driver/image_raw"], car, "raw")
    assert remaps[0::2] == [(f"{car}/cam/front/image", f"{car}/drv/image_raw"),
                            (f"{fixed}/image", f"{fixed}_driver/image_raw")]
    assert remaps[1] == (f"{car}/cam/front/camera_info", f"{car}/drv/camera_info")
    node = start(cameras, namespace=car, remaps=remaps, max_age_ms=0)
    outputs = {f"{car}/cam/front/panoptic/semantic": Image, f"{fixed}/panoptic/semantic": Image}
    c = Collector(graph, {**outputs, "/diagnostics": DiagnosticArray})
    pubs = [graph.create_publisher(Image, driver, 10) for _, driver in remaps[0::2]]
    rgb = rgb_frame(rng)

    def publish():
        for pub in pubs:
            pub.publish(image_msg(rgb, now(graph), "cam"))

    assert c.spin_until(lambda g: all(g[t] for t in outputs) and node_diagnostics(g, f"{car}/cam/front")
                        and node_diagnostics(g, fixed), publish=publish), \
        ({t: len(v) for t, v in c.got.items()}, node.output())
    assert node_diagnostics(c.got, f"{car}/cam/front")["camera"]["input topic"] == f"{car}/drv/image_raw"
    assert node_diagnostics(c.got, fixed)["camera"]["input topic"] == f"{fixed}_driver/image_raw"
    assert not graph.get_subscriptions_info_by_topic(f"{car}/cam/front/image")  # read where the driver publishes
    assert [i.node_name for i in graph.get_subscriptions_info_by_topic(f"{car}/drv/image_raw")] == [node.name]
    c.close()
    # the driver's calibration beside its image reaches the camera's maps
    from sensor_msgs.msg import CameraInfo
    calibration = graph.create_publisher(CameraInfo, remaps[1][1], 10)
    c = Collector(graph, {f"{car}/cam/front/panoptic/camera_info": CameraInfo})

    def publish_both():
        calibration.publish(CameraInfo(height=48, width=64))
        publish()

    assert c.spin_until(lambda g: g[f"{car}/cam/front/panoptic/camera_info"], publish=publish_both), node.output()
    c.close()


def test_a_node_started_by_hand_runs_the_fast_dds_profile_the_launch_would_give_it(start, tmp_path, model_yaml):
    """ros2 run panoptic_node panoptic_node, no launch file: with Fast DDS's defaults a 1280x720 camera at 30 Hz
    reached it at 9.6 Hz (27.6 with the profile), so it takes car.launch.py's auto itself and says which; the
    launch's own choice (PANOPTIC_NODE_DDS_PROFILE) is kept, and a bad one stops it in one line."""
    for var in ("FASTRTPS_DEFAULT_PROFILES_FILE", "FASTDDS_DEFAULT_PROFILES_FILE", "PANOPTIC_NODE_DDS_PROFILE"):
        assert var not in os.environ  # the graph tests' nodes are started as by hand
    def said(node, pattern):  # the log reaches its file a moment after the node serves
        end = time.time() + 10
        while not re.search(pattern, node.output()) and time.time() < end:
            time.sleep(0.1)
        return re.search(pattern, node.output())

    ns = f"/t{uuid.uuid4().hex[:6]}/front"
    node = start([ns])
    assert said(node, r"Fast DDS profile large_images(_shm)?: receiving over"), node.output()
    none = start([f"{ns}2"], env={"PANOPTIC_NODE_DDS_PROFILE": "none"})
    assert said(none, re.escape("Fast DDS's own defaults (dds_profile:=none)")), none.output()
    bad = NodeProcess(tmp_path, {"cameras": [ns], "model": model_yaml}, env={"PANOPTIC_NODE_DDS_PROFILE": "fast"})
    assert bad.wait(START_TIMEOUT) == 1
    assert bad.output().strip() == ("[panoptic_node] error: dds_profile 'fast' is not a file; expected auto, none, "
                                    "large_images, large_images_shm or the path of a Fast DDS XML profile "
                                    "(PANOPTIC_NODE_DDS_PROFILE)")


@pytest.mark.parametrize("debug", [False, True])
def test_an_unexpected_start_up_error_is_one_line(debug):
    """Whatever fails while the node starts is one line and exit 1; the traceback only at --log-level debug."""
    code = ("import panoptic_node.ros.node as n\n"
            "def broken(): raise KeyError('boom')\n"
            "n.PanopticNode = broken\n"
            "n.main()\n")
    args = ["--ros-args", "--log-level", "debug"] if debug else []
    run = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert lines[0] == ("[panoptic_node] error: unexpected KeyError at start-up: 'boom' (run with --ros-args "
                        "--log-level debug for the traceback, and report it)")
    assert ("Traceback" in run.stderr) == debug and (len(lines) == 1) != debug


LAUNCH_SIGTERM_TIMEOUT_S = 5.0  # launch's ExecuteProcess default: how long it waits after SIGINT


@pytest.mark.parametrize("how", ["sigint_twice", "sigterm", "sighup"])
def test_the_node_stops_cleanly(graph, start, rng, how):
    """Ctrl-C in a terminal reaches the whole group (and launch forwards another): exit 0, no traceback,
    with frames in flight, before launch gives up on it (its sigterm_timeout, 5 s by default, then SIGTERM and
    SIGKILL: a node killed so leaves its Fast DDS segments in /dev/shm). The bound is launch's, not a speed
    target (a loaded CI machine took 2.02 s). So do SIGTERM and SIGHUP (`ros2 run` in an ssh session that drops: its
    default ended the node where it stood, leaving its Fast DDS segments in /dev/shm)."""
    ns = f"/t{uuid.uuid4().hex[:6]}/front"
    node = start([ns], max_age_ms=0)
    c = Collector(graph, {f"{ns}/panoptic/semantic": Image})
    pub = graph.create_publisher(Image, f"{ns}/image", 10)
    rgb = rgb_frame(rng)
    assert c.spin_until(lambda g: g[f"{ns}/panoptic/semantic"],
                        publish=lambda: pub.publish(image_msg(rgb, now(graph), "f")))
    for _ in range(5):
        pub.publish(image_msg(rgb, now(graph), "f"))
    t0 = time.time()
    if how == "sigint_twice":
        node.signal(signal.SIGINT)
        time.sleep(0.05)
        node.signal(signal.SIGINT)
    else:
        node.signal(signal.SIGTERM if how == "sigterm" else signal.SIGHUP)
    code = node.wait(10)
    took = time.time() - t0
    out = node.output()
    assert code == 0 and "Traceback" not in out and "KeyboardInterrupt" not in out, out
    assert took < LAUNCH_SIGTERM_TIMEOUT_S, took
    c.close()


def test_a_callback_that_raises_costs_that_callback_not_the_node(graph):
    """rclpy's change_state service raised for a transition the state lacked, and the exception, out of
    spin_once, ended the node. Whatever callback raises next (an rclpy service, a case nobody foresaw), the
    spin loop logs one line and keeps serving."""
    import threading
    from panoptic_node.ros.node import spin_until_stopped
    stop, calls, logged = threading.Event(), [], []

    class Executor:  # spin_once as rclpy's raises a callback's exception
        def spin_once(self, timeout_sec):
            calls.append(timeout_sec)
            if len(calls) == 1:
                raise RuntimeError("Failed to trigger lifecycle state machine transition\nat rcl_lifecycle.c:355")
            if len(calls) == 3:
                stop.set()  # Ctrl-C

    class Logger:
        def error(self, message, **kwargs):
            logged.append(message)

        def debug(self, message):
            assert "Traceback" in message

    spin_until_stopped(Executor(), stop, Logger())
    assert len(calls) == 3 and logged == [
        "a callback failed and was skipped (RuntimeError: Failed to trigger lifecycle state machine transition); "
        "the node keeps running (--log-level debug for the traceback)"]


def test_weights_copied_over_while_the_node_runs_are_named_and_a_reconfigure_runs_them(graph, start, rng,
                                                                                       model_yaml, tmp_path):
    """A deployment copied new weights over the file the node had loaded: the node goes on running what it
    loaded, and its /diagnostics says so (a WARN naming both sha256), while it keeps serving the camera;
    lifecycle deactivate, cleanup, configure, activate loads the new ones, and the warning goes."""
    import torch
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState, GetState
    weights = tmp_path / "deployed.pth"
    weights.write_bytes(Path(model_yaml).with_name("tiny.pth").read_bytes())
    ns = f"/t{uuid.uuid4().hex[:6]}/front"
    node = start([ns], weights=str(weights), max_age_ms=0)
    c, inference, served, publish = served_camera(graph, ns, rng)
    loaded = short_sha(weights)
    assert served() and c.spin_until(lambda g: inference().get("weights") == f"deployed.pth, sha256 {loaded}")
    assert inference()["level"] == 0
    checkpoint = torch.load(weights, map_location="cpu", weights_only=False)
    first = next(iter(checkpoint["model"]))
    checkpoint["model"][first] = checkpoint["model"][first] + 0.01
    torch.save(checkpoint, weights)  # the deployment's copy
    new = short_sha(weights)
    assert c.spin_until(lambda g: inference().get("weights on disk") == f"deployed.pth, sha256 {new}")
    status = inference()
    assert status["level"] == 1 and status["weights"] == f"deployed.pth, sha256 {loaded}"
    assert status["message"].startswith(f"deployed.pth changed on disk since the node loaded it (now sha256 {new}): "
                                        f"it runs the weights it loaded (deployed.pth, sha256 {loaded})")
    assert served()  # still serving, on the weights it loaded
    change = graph.create_client(ChangeState, f"/{node.name}/change_state")
    get_state = graph.create_client(GetState, f"/{node.name}/get_state")
    assert change.wait_for_service(timeout_sec=20) and get_state.wait_for_service(timeout_sec=20)
    lifecycle_answers(graph, get_state, node)  # before the first transition
    for t in (Transition.TRANSITION_DEACTIVATE, Transition.TRANSITION_CLEANUP, Transition.TRANSITION_CONFIGURE,
              Transition.TRANSITION_ACTIVATE):
        future = change.call_async(ChangeState.Request(transition=Transition(id=t)))
        rclpy.spin_until_future_complete(graph, future, timeout_sec=30)
        assert future.done() and future.result().success, (t, node.output())
    assert c.spin_until(lambda g: inference().get("weights") == f"deployed.pth, sha256 {new}" and
                        inference().get("message") == "ok",  # active again (inactive, it says so)
                        publish=publish)
    assert inference()["level"] == 0 and "weights on disk" not in inference() and served()
    c.close()
    graph.destroy_client(change)
    graph.destroy_client(get_state)


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64") or not importlib.util.find_spec("openvino"),
                    reason="an int8 node runs OpenVINO on x86 CPUs where it is installed")
def test_int8_scales_copied_over_while_an_int8_node_runs_are_named(graph, start, rng, tmp_path):
    """The scales its int8 graphs were made from, replaced on disk while the node runs (a deployment's new
    calibration): it goes on running the graphs it made, says so on /diagnostics (a WARN naming both sha256,
    under `int8 scales on disk`) and keeps serving the camera."""
    import json

    from conftest import write_frames
    from panoptic_node.cli import main
    for folder in ("model", "calib"):
        (tmp_path / folder).mkdir()
    yaml_path = Path(tiny_model_yaml(tmp_path / "model"))
    frames = write_frames(tmp_path / "calib", 4, (48, 64), seed=1)
    assert main(["calibrate", "--model", str(yaml_path), "--calib", str(frames), "--calib-frames", "4"]) == 0
    scales = yaml_path.with_name("tiny.int8.json")
    ns = f"/t{uuid.uuid4().hex[:6]}/front"
    start([ns], model=str(yaml_path), backend="openvino", precision="int8", max_age_ms=0)
    c, inference, served, _ = served_camera(graph, ns, rng)
    made_from = short_sha(scales)
    assert served() and c.spin_until(lambda g: inference().get("int8 scales") == f"tiny.int8.json, sha256 {made_from}")
    assert inference()["level"] == 0 and inference()["precision"] == "int8"
    body = json.loads(scales.read_text())
    first = next(iter(body["scales"]))
    body["scales"][first] *= 1.5
    scales.write_text(json.dumps(body))  # the deployment's new calibration
    new = short_sha(scales)
    assert c.spin_until(lambda g: inference().get("int8 scales on disk") == f"tiny.int8.json, sha256 {new}")
    status = inference()
    assert status["level"] == 1 and status["int8 scales"] == f"tiny.int8.json, sha256 {made_from}"
    assert "weights on disk" not in status and "tiny.int8.json" in status["message"]
    assert served()  # still serving, on the graphs it made
    c.close()


@pytest.mark.parametrize("workers, overlap", [(1, "auto"), (2, "auto"), (1, "always")],
                         ids=["one_worker", "two_workers", "overlapping_postprocessing"])
def test_a_managed_node_goes_through_its_lifecycle(graph, start, rng, model_yaml, workers, overlap):
    """`autostart: false`: the node waits unconfigured for a lifecycle manager. configure loads the model and
    opens the outputs (the label set is latched), activate subscribes and serves, deactivate unsubscribes,
    cleanup closes the outputs. A configure that fails (a model that is not there) is one line, leaves the
    node unconfigured and running, and after `ros2 param set` the next configure works: no restart. With
    two inference workers alike (each stopped and started again with the node), and with the post-processing on
    threads of their own (overlap_postprocessing)."""
    from lifecycle_msgs.msg import State, Transition
    from lifecycle_msgs.srv import ChangeState, GetState

    if workers > (os.cpu_count() or 1):
        pytest.skip("two inference workers need two CPUs (one thread each)")
    ns = f"/t{uuid.uuid4().hex[:6]}/front"
    node = start([ns], wait=False, autostart=False, max_age_ms=0, model="/nonexistent/model.yaml",
                 inference_workers=workers, overlap_postprocessing=overlap)
    get_state = graph.create_client(GetState, f"/{node.name}/get_state")
    change = graph.create_client(ChangeState, f"/{node.name}/change_state")
    params = AsyncParameterClient(graph, node.name)
    # every service this test calls, discovered before the first call (on a loaded machine get_state was not
    # yet matched when change_state was, and its first call went unanswered)
    assert change.wait_for_service(timeout_sec=START_TIMEOUT) and get_state.wait_for_service(timeout_sec=20)
    assert params.wait_for_services(timeout_sec=20)

    def call(future):
        rclpy.spin_until_future_complete(graph, future, timeout_sec=30)
        assert future.done(), f"no answer within 30 s: {node.output()}"
        return future.result()

    def state():
        return call(get_state.call_async(GetState.Request())).current_state.id

    def transition(t):
        return call(change.call_async(ChangeState.Request(transition=Transition(id=t)))).success

    lifecycle_answers(graph, get_state, node)  # before the first transition
    semantic, image = f"{ns}/panoptic/semantic", f"{ns}/image"
    assert state() == State.PRIMARY_STATE_UNCONFIGURED
    assert not graph.get_publishers_info_by_topic(semantic) and not graph.get_subscriptions_info_by_topic(image)
    # a transition this state does not have (as a lifecycle manager or `ros2 service call` may ask): refused
    # in one line, as rclcpp refuses it; rclpy raised out of its service and the node died with a traceback
    assert not transition(Transition.TRANSITION_ACTIVATE)
    assert state() == State.PRIMARY_STATE_UNCONFIGURED and node.proc.poll() is None
    assert ("lifecycle transition 'activate' is not possible from state 'unconfigured'; expected one of: "
            "configure, shutdown") in node.output()

    # the model does not exist: configure fails in one line, the node stays up and unconfigured
    assert not transition(Transition.TRANSITION_CONFIGURE)
    assert state() == State.PRIMARY_STATE_UNCONFIGURED and node.proc.poll() is None
    errors = [line for line in node.output().splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "configure failed: model config '/nonexistent/model.yaml' not found" in errors[0]
    assert "Traceback" not in node.output()
    # unconfigured, any parameter may change (a bad value is still refused); then configure works
    (bad,) = call(params.set_parameters([Parameter("qos_depth", value=0)])).results
    assert not bad.successful and "qos_depth" in bad.reason
    (ok,) = call(params.set_parameters([Parameter("model", value=model_yaml)])).results
    assert ok.successful, ok.reason
    assert transition(Transition.TRANSITION_CONFIGURE)
    assert state() == State.PRIMARY_STATE_INACTIVE

    # inactive: the outputs exist and the label set is latched; no camera is subscribed, diagnostics say why
    qos = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL, reliability=ReliabilityPolicy.RELIABLE)
    late = Collector(graph, {f"{ns}/panoptic/label_info": LabelInfo}, qos)
    assert late.spin_until(lambda g: g[f"{ns}/panoptic/label_info"], timeout=10)
    assert graph.get_publishers_info_by_topic(semantic) and not graph.get_subscriptions_info_by_topic(image)
    c = Collector(graph, {semantic: Image, "/diagnostics": DiagnosticArray})
    assert c.spin_until(lambda g: node_diagnostics(g, ns).get("camera"), timeout=10)
    camera = node_diagnostics(c.got, ns)["camera"]
    assert camera["level"] == 0 and camera["message"].startswith("inactive (lifecycle)")
    # a start-up parameter is refused while configured, and says how to change it
    (fixed,) = call(params.set_parameters([Parameter("model", value="street_lite0")])).results
    assert not fixed.successful and "ros2 lifecycle set" in fixed.reason

    pub = graph.create_publisher(Image, image, 10)
    rgb = rgb_frame(rng)

    def served(sec):
        return c.spin_until(lambda g: any(m.header.stamp.sec == sec for m in g[semantic]),
                            publish=lambda: pub.publish(image_msg(rgb, Time(sec=sec), "f")), timeout=3)

    assert not served(1)  # inactive: nothing is inferred
    assert transition(Transition.TRANSITION_ACTIVATE) and state() == State.PRIMARY_STATE_ACTIVE
    assert served(2)
    assert not transition(Transition.TRANSITION_CLEANUP) and state() == State.PRIMARY_STATE_ACTIVE  # not from active
    assert transition(Transition.TRANSITION_DEACTIVATE) and state() == State.PRIMARY_STATE_INACTIVE
    assert graph_shows(graph, lambda: not graph.get_subscriptions_info_by_topic(image)) and not served(3)
    assert transition(Transition.TRANSITION_ACTIVATE) and served(4)  # and again
    assert transition(Transition.TRANSITION_DEACTIVATE) and transition(Transition.TRANSITION_CLEANUP)
    assert state() == State.PRIMARY_STATE_UNCONFIGURED
    assert graph_shows(graph, lambda: not graph.get_publishers_info_by_topic(semantic))
    assert transition(Transition.TRANSITION_UNCONFIGURED_SHUTDOWN) and state() == State.PRIMARY_STATE_FINALIZED
    assert node.proc.poll() is None and "Traceback" not in node.output()
    for x in (c, late):
        x.close()
    graph.destroy_publisher(pub)
    for client in (get_state, change):
        graph.destroy_client(client)


def test_max_rate_caps_how_often_the_node_infers_and_changes_live(graph, start, rng):
    """max_rate_hz: at most that many inferences a second, each on the newest frame (the frames between are
    dropped and counted); read from the frames' own stamps, so a slow machine cannot make it pass falsely.
    `ros2 param set max_rate_hz 0` lifts the cap from the next frame."""
    ns, node, c, pub, rgb = one_camera(graph, start, rng, max_age_ms=0, max_rate_hz=2.0)
    semantic = f"{ns}/panoptic/semantic"
    client = AsyncParameterClient(graph, node.name)
    assert client.wait_for_services(timeout_sec=20)

    def stamps_over(seconds):
        c.got[semantic].clear()
        end = time.time() + seconds
        while time.time() < end:  # a 20 Hz camera
            pub.publish(image_msg(rgb, now(graph), "f"))
            rclpy.spin_once(graph, timeout_sec=0.05)
        return sorted(stamp_of(m) / 1e9 for m in c.got[semantic])

    capped = stamps_over(4.0)
    gaps = np.diff(capped)
    assert len(capped) >= 3 and gaps.min() >= 0.4, capped  # 2 Hz: half a second apart, less a camera period
    inference = node_diagnostics(c.got, ns)["inference"]  # what it runs under, on /diagnostics
    assert inference["max rate (Hz)"] == "2" and inference["threads"] == "every core"
    future = client.set_parameters([Parameter("max_rate_hz", value=0.0)])
    rclpy.spin_until_future_complete(graph, future, timeout_sec=20)
    assert future.result().results[0].successful
    free = stamps_over(4.0)
    assert len(free) > 2 * len(capped) and np.diff(free).min() < 0.3, (capped, free)
    diag = Collector(graph, {"/diagnostics": DiagnosticArray})
    assert diag.spin_until(lambda g: node_diagnostics(g, ns).get("camera"), timeout=10)
    assert int(node_diagnostics(diag.got, ns)["camera"]["dropped (newer frame)"]) > 0  # the capped frames, counted
    assert diag.spin_until(lambda g: node_diagnostics(g, ns)["inference"]["max rate (Hz)"] == "unlimited", timeout=10)
    for x in (c, diag):
        x.close()


def test_overlay_max_rate_caps_the_overlays_not_the_maps_and_changes_live(graph, start, rng):
    """overlay_max_rate_hz: each camera's overlay is drawn and sent at most that often (read from the overlays' own
    stamps), while the maps still go out for every frame; `ros2 param set overlay_max_rate_hz 0` gives an overlay
    with every map again."""
    ns, node, c, pub, rgb = one_camera(graph, start, rng, max_age_ms=0, overlay_max_rate_hz=2.0)
    semantic, overlay = f"{ns}/panoptic/semantic", f"{ns}/panoptic/overlay"
    seen = Collector(graph, {overlay: Image})  # RViz watching (best effort, as the overlay offers)
    client = AsyncParameterClient(graph, node.name)
    assert client.wait_for_services(timeout_sec=20)

    def over(seconds):
        c.got[semantic].clear()
        seen.got[overlay].clear()
        end = time.time() + seconds
        while time.time() < end:  # a 20 Hz camera
            pub.publish(image_msg(rgb, now(graph), "f"))
            rclpy.spin_once(graph, timeout_sec=0.05)
        maps = sorted(stamp_of(m) / 1e9 for m in c.got[semantic])
        return maps, sorted(stamp_of(m) / 1e9 for m in seen.got[overlay])

    maps, overlays = over(4.0)
    assert len(overlays) >= 3 and np.diff(overlays).min() >= 0.4, overlays  # 2 Hz: half a second apart, less a frame
    assert len(maps) > 2 * len(overlays) and set(overlays) <= set(maps), (maps, overlays)  # each of a published frame
    assert node_diagnostics(c.got, ns)["inference"]["overlay max rate (Hz)"] == "2"
    future = client.set_parameters([Parameter("overlay_max_rate_hz", value=0.0)])
    rclpy.spin_until_future_complete(graph, future, timeout_sec=20)
    assert future.result().results[0].successful
    maps, overlays = over(3.0)
    # best effort over the loopback: an overlay may be lost on the way, not skipped by the node
    assert len(overlays) >= 0.8 * len(maps) > 0 and set(overlays) <= set(maps), (maps, overlays)
    for x in (c, seen):
        x.close()


def test_warmup_sizes_are_ready_before_the_first_frame(graph, start, rng, tmp_path):
    """warmup_sizes: the graph for a camera size the model's canvas does not fit (a portrait camera here) is
    made at configure, so the first frame of that size finds it; without it the first frame waits for the
    export (seconds for a real model) and the frames behind it go stale."""
    ns = f"/t{uuid.uuid4().hex[:6]}/front"
    cache = tmp_path / "graphs"
    node = start([ns], backend="onnxruntime", warmup_sizes="48x64", max_age_ms=0,
                 env={"PANOPTIC_NODE_GRAPH_CACHE": str(cache)})

    def graphs():
        return sorted(p.name for p in cache.glob("*.onnx") if "mask" not in p.name)

    assert len(graphs()) == 2, graphs()  # the model's canvas and the portrait one, before any frame
    assert "ready for 48x64 frames" in node.output()
    made = graphs()
    c = Collector(graph, {f"{ns}/panoptic/semantic": Image})
    pub = graph.create_publisher(Image, f"{ns}/image", 10)
    portrait = rng.integers(0, 255, (64, 48, 3), dtype=np.uint8)
    assert c.spin_until(lambda g: g[f"{ns}/panoptic/semantic"],
                        publish=lambda: pub.publish(image_msg(portrait, now(graph), "f")))
    got = c.got[f"{ns}/panoptic/semantic"][0]
    assert (got.height, got.width) == (64, 48) and graphs() == made  # served by the graph made at configure
    c.close()
    graph.destroy_publisher(pub)


def test_a_call_that_keeps_the_outputs_waiting_is_named_on_diagnostics(graph, start, rng, tmp_path):
    """While one inference call runs longer than camera_timeout_s (here the first portrait frame, whose graph
    is made on it: about a second for the tiny model, minutes for a stalled runtime) the cameras still
    arrive; /diagnostics says the call has run that long and the camera has had no output since, and is ok
    again once outputs flow."""
    ns = f"/t{uuid.uuid4().hex[:6]}/front"
    start([ns], backend="onnxruntime", camera_timeout_s=0.3, diagnostics_period=0.1, max_age_ms=0,
          env={"PANOPTIC_NODE_GRAPH_CACHE": str(tmp_path / "graphs")})
    c = Collector(graph, {f"{ns}/panoptic/semantic": Image, "/diagnostics": DiagnosticArray})
    pub = graph.create_publisher(Image, f"{ns}/image", 10)
    portrait = rng.integers(0, 255, (64, 48, 3), dtype=np.uint8)

    def reports(g):
        return [r for r in (node_diagnostics({"/diagnostics": [d]}, ns) for d in g["/diagnostics"]) if r]

    def recovered(g):
        newest = (reports(g) or [None])[-1]
        return bool(g[f"{ns}/panoptic/semantic"]) and newest is not None and \
            newest["inference"]["level"] == 0 and newest["camera"]["level"] == 0
    assert c.spin_until(recovered, publish=lambda: pub.publish(image_msg(portrait, now(graph), "f")), timeout=60)
    waiting = [r for r in reports(c.got) if r["inference"]["level"] == 1]
    assert waiting, [r["inference"]["message"] for r in reports(c.got)]
    assert waiting[-1]["inference"]["message"].startswith("one inference call has run for ")
    assert float(waiting[-1]["inference"]["current call (s)"]) > 0.3
    cameras = [r["camera"]["message"] for r in waiting if r["camera"]["level"] == 1]
    assert cameras and cameras[-1].startswith(f"frames arrive on {ns}/image, and no output has left for "), cameras
    c.close()
    graph.destroy_publisher(pub)


def test_an_objects_instance_id_is_kept_from_frame_to_frame(graph, start, rng):
    """track_instances: a thing keeps its id over frames (vision_msgs: the same object has the same
    Detection2D.id in every message), in the detections and the instance map alike. The tiny model's things
    on one frame sent again are the same objects; hidden for longer than track_max_lost frames (no query
    passes a threshold of 1), they come back as new objects with new ids; per-frame numbering gives 1..N."""
    ns = f"/t{uuid.uuid4().hex[:6]}/front"
    node = start([ns], max_age_ms=0, track_max_lost=0)
    instances, dets = f"{ns}/panoptic/instances", f"{ns}/panoptic/detections"
    c = Collector(graph, {instances: Image, dets: Detection2DArray, "/diagnostics": DiagnosticArray})
    pub = graph.create_publisher(Image, f"{ns}/image", 10)
    client = AsyncParameterClient(graph, node.name)
    assert client.wait_for_services(timeout_sec=20)
    rgb = rgb_frame(rng)

    def set_params(**values):
        future = client.set_parameters([Parameter(k, value=v) for k, v in values.items()])
        rclpy.spin_until_future_complete(graph, future, timeout_sec=20)
        assert all(r.successful for r in future.result().results)

    def ids_of(sec):  # the detections' ids of the frame stamped `sec` (sent until it comes back)
        assert c.spin_until(lambda g: any(m.header.stamp.sec == sec for m in g[dets]) and
                            any(m.header.stamp.sec == sec for m in g[instances]),
                            publish=lambda: pub.publish(image_msg(rgb, Time(sec=sec), "f")))
        inst = image_array(next(m for m in c.got[instances] if m.header.stamp.sec == sec))
        ids = sorted(int(d.id) for d in next(m for m in c.got[dets] if m.header.stamp.sec == sec).detections)
        assert ids == sorted(set(np.unique(inst).tolist()) - {0})  # the detection's id is its value in the map
        return ids

    first = ids_of(1)
    assert first and first == list(range(1, len(first) + 1))
    assert ids_of(2) == first  # the same objects
    set_params(threshold=1.0)
    assert ids_of(3) == []  # every object unseen: with track_max_lost 0 their tracks end
    set_params(threshold=0.0)
    again = ids_of(4)
    assert len(again) == len(first) and not set(again) & set(first)  # new objects, ids not handed out at once
    assert node_diagnostics(c.got, ns)["inference"]["instance ids"] == "tracked (IoU >= 0.3, unseen <= 0 frames)"
    set_params(track_instances=False)
    assert ids_of(5) == first  # per frame: 1..N
    assert c.spin_until(lambda g: node_diagnostics(g, ns)["inference"]["instance ids"] == "per frame", timeout=10)
    c.close()
    graph.destroy_publisher(pub)


# the node with each frame's network call and post-processing written to a log as "<stage> <start> <end>" (and
# the post-processing slowed to 0.2 s, so that frames keep arriving while it runs); then the node's own main()
STAGES_LOGGED = """
import sys, time
import panoptic_node.inference.pipeline as pipeline
log = open(sys.argv[1], "a")
detect, decide = pipeline.Pipeline.detect_batch, pipeline.Pipeline.decide
def logged(stage, run, pause=0.0):
    def wrapped(self, *args):
        start = time.monotonic()
        time.sleep(pause)
        out = run(self, *args)
        log.write(f"{stage} {start} {time.monotonic()}\\n")
        log.flush()
        return out
    return wrapped
pipeline.Pipeline.detect_batch = logged("detect", detect)
pipeline.Pipeline.decide = logged("decide", decide, pause=0.2)
from panoptic_node.ros.node import main
sys.argv = sys.argv[2:]
main()
"""


@pytest.mark.parametrize("overlap", ["always", "auto"])
def test_the_next_frames_network_runs_while_a_frame_is_post_processed(graph, start, rng, tmp_path, overlap):
    """overlap_postprocessing always: a frame's post-processing and publishing run on a thread of their own while
    the network already runs the next frame; auto, the network on the CPU: one after the other. Either way every
    frame leaves in the order taken."""
    stages = tmp_path / f"stages_{overlap}.log"
    ns, node, c, pub, rgb = one_camera(graph, start, rng, prefix=[sys.executable, "-c", STAGES_LOGGED, str(stages)],
                                       max_age_ms=0, overlap_postprocessing=overlap)
    sent = iter(range(1, 100000))
    semantic = f"{ns}/panoptic/semantic"
    assert c.spin_until(lambda g: len(g[semantic]) >= 5, publish=lambda: pub.publish(
        image_msg(rgb, Time(sec=next(sent)), "f")), period=0.02, timeout=60), node.output()
    stamps = [m.header.stamp.sec for m in c.got[semantic]]
    assert stamps == sorted(set(stamps)), stamps
    runs = [line.split() for line in stages.read_text().splitlines()]
    detects = [(float(a), float(b)) for stage, a, b in runs if stage == "detect"]
    decides = [(float(a), float(b)) for stage, a, b in runs if stage == "decide"]
    assert len(decides) >= 5
    # a network call that began while a frame was being post-processed
    overlapping = [d for d in detects if any(start < d[0] < end for start, end in decides)]
    assert bool(overlapping) == (overlap == "always"), (detects, decides)
    kv = node_diagnostics(c.got, ns)["inference"]
    assert kv["post-processing"] == ("beside the next frame's network" if overlap == "always"
                                     else "after the network, one frame at a time")
    c.close()
    graph.destroy_publisher(pub)


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="two inference workers need two CPUs (one thread each)")
@pytest.mark.parametrize("overlap", ["auto", "always"])
def test_two_inference_workers_publish_in_order_and_share_live_settings(graph, start, rng, overlap):
    """inference_workers 2: two pipelines infer frames at once, and each frame's outputs leave in the order the
    frames were taken (stamps only rise, as a driving stack expects), an object keeps its id over frames the
    two workers inferred in turn, and a live threshold reaches both workers (otherwise every other frame would
    still show objects). With overlap_postprocessing always, four threads: each worker's network and its
    post-processing."""
    ns = f"/t{uuid.uuid4().hex[:6]}/front"
    node = start([ns], max_age_ms=0, inference_workers=2, overlap_postprocessing=overlap)
    dets = f"{ns}/panoptic/detections"
    c = Collector(graph, {dets: Detection2DArray, "/diagnostics": DiagnosticArray})
    pub = graph.create_publisher(Image, f"{ns}/image", 10)
    wait_for_subscriber(graph, pub)
    client = AsyncParameterClient(graph, node.name)
    assert client.wait_for_services(timeout_sec=20)
    rgb = rgb_frame(rng)
    sent = iter(range(1, 100000))

    def send():  # a frame each 10 ms, faster than the workers infer: both stay busy
        pub.publish(image_msg(rgb, Time(sec=next(sent)), "f"))

    assert c.spin_until(lambda g: len(g[dets]) >= 12, publish=send, period=0.01, timeout=60), node.output()
    stamps = [m.header.stamp.sec for m in c.got[dets]]
    assert stamps == sorted(set(stamps)), stamps
    ids = [sorted(int(d.id) for d in m.detections) for m in c.got[dets]]
    assert ids[0] and all(i == ids[0] for i in ids), ids  # tracked across both workers' frames
    assert node_diagnostics(c.got, ns)["inference"]["inference workers"] == "2"
    future = client.set_parameters([Parameter("threshold", value=1.0)])
    rclpy.spin_until_future_complete(graph, future, timeout_sec=20)
    assert all(r.successful for r in future.result().results)
    after = next(sent)  # frames from here on are taken after the change
    assert c.spin_until(lambda g: sum(m.header.stamp.sec > after for m in g[dets]) >= 6, publish=send,
                        period=0.01, timeout=60)
    assert all(not m.detections for m in c.got[dets] if m.header.stamp.sec > after)
    stamps = [m.header.stamp.sec for m in c.got[dets]]
    assert stamps == sorted(set(stamps)), stamps
    c.close()
    graph.destroy_publisher(pub)
