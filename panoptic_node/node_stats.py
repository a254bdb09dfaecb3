"""What the node reports on /diagnostics: one status for inference, one per camera (ROS-free, tested here).

Each status is judged on what happened since the previous report, not since start-up: one bad frame an
hour ago must not keep a camera at WARN for the rest of the drive, and a camera that went silent must not
go on showing the rate it had. Times are on the steady clock (a paused bag or sim time does not stop it).
"""
import itertools
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

from .inference.weights_watch import MISSING
from .messages import calibrated_size, calibration_misfit

OK, WARN, ERROR = 0, 1, 2  # diagnostic_msgs/DiagnosticStatus levels
RATE_WINDOW_S = 5.0        # input and output rates are counted over the last few seconds
CLOCK_AHEAD_MS = 50.0      # frames stamped further ahead of the node's clock than this: the clocks differ
STALLED_S = 30.0           # one inference call running this long is a stalled runtime, not a slow one


@dataclass
class Status:
    """One DiagnosticStatus, before the node prefixes its name with the node's."""
    name: str
    hardware_id: str
    level: int
    message: str
    values: Dict[str, str] = field(default_factory=dict)


CLOCK_BEHIND_S = 10.0      # stale frames this far behind the node's clock are another clock, not a slow wire


def what_ran(pipeline) -> Dict[str, str]:
    """What the node runs, in its inference status's values: what a recording keeps of which weights, arithmetic
    and release ran on the car (replay compares its own, recorded_health.RAN_KEYS; doctor --listen shows them)."""
    from . import __version__
    backend = pipeline.backend
    bits = getattr(backend, "int8_weight_bits", 0)
    products = getattr(backend, "int8_matrix_products", "")
    return {"backend": backend.name, "model": pipeline.cfg.name, "precision": backend.precision,
            "weights": pipeline.weights_id, "version": __version__,
            **({"int8 scales": pipeline.scales_id} if pipeline.scales_id else {}),
            # 7 on a CPU whose int8 kernels overflow 8-bit weights (cpu_features.py): a replay elsewhere may run 8
            **({"int8 weight bits": str(bits)} if bits else {}),
            # float where int8 matrix products run slower (no VNNI): the transformer's numbers differ from int8 ones
            **({"int8 matrix products": products} if products else {})}


WALL_CLOCK_ADVICE = "synchronise the clocks, e.g. with chrony or PTP"


def clock_advice(sim_time: bool, clock_ns: int) -> str:
    """What to do about frames stamped on another clock than the node's, which depends on what the node's
    clock is: on sim time it is /clock's (a bag's), and before any /clock has come it reads 0, so every
    live frame looks decades ahead; then the advice to synchronise with chrony misleads."""
    if not sim_time:
        return WALL_CLOCK_ADVICE
    if clock_ns == 0:
        return ("the node runs on sim time (use_sim_time) and no /clock has come: play the bag with --clock, "
                "or set use_sim_time false for live cameras")
    return ("the node runs on sim time (use_sim_time): its clock is /clock's, e.g. a bag's, which live frames "
            "do not share; set use_sim_time false for live cameras")


def _stale_why(age_ns, advice: str = WALL_CLOCK_ADVICE) -> str:
    """How old the last stale frame was, and what an age of seconds or more means."""
    if age_ns is None:
        return ""
    age = age_ns / 1e9
    if age >= CLOCK_BEHIND_S:
        return (f" (the last {age:.0f} s behind the node's clock: the camera does not stamp with the node's clock, "
                f"e.g. time since boot; {advice}, or set max_age_ms: 0)")
    return f" (the last {1000 * age:.0f} ms old)"


def publishing_nodes(publishers, want: str) -> List[str]:
    """The nodes (fully qualified) publishing `want` among a topic's publishers (get_publishers_info_by_topic;
    one discovered before its node's name is left out)."""
    return sorted({f"{i.node_namespace.rstrip('/')}/{i.node_name}" for i in publishers
                   if i.topic_type == want and i.node_name != UNKNOWN_NODE})


def rival_why(topic: str, nodes: List[str]) -> str:
    """Another node publishing this camera's maps: two nodes serve one camera and their maps interleave."""
    return (f"{', '.join(nodes)} also publish{'es' if len(nodes) == 1 else ''} {topic}: two nodes serve this camera "
            f"and their maps interleave (started twice, or one left running? `ros2 node list`)")


def shared_topic_why(topic: str, nodes: List[str]) -> str:
    """Two sources interleaved as one camera, as the node's status and doctor --listen say it."""
    return (f"{len(nodes)} nodes publish on {topic} ({', '.join(nodes)}): their frames are served as one camera's "
            f"(a bag playing beside the live driver?)")


def _with_warning(level: int, message: str, why: str) -> Tuple[int, str]:
    """A status at least WARN, `why` said after whatever else its message says ('ok' gives way)."""
    return max(level, WARN), why if level == OK else f"{message}; {why}"


# why a camera receives nothing, as its status says it (found in the ROS graph by the node)
WRONG_TYPE = "a publisher sends"      # its topic carries another message type
NO_PUBLISHER = "no publisher on it"   # nothing publishes on it while image topics of its type exist elsewhere
UNKNOWN_NODE = "_NODE_NAME_UNKNOWN_"  # the ROS graph's name for a node whose endpoints came before its name


def wrong_type_why(want: str, transport: str, others) -> str:
    """`others`: (message type, node) of the publishers on a camera's topic whose type is not `want`, which
    deliver nothing (and across processes DDS says nothing of it)."""
    types = sorted({t for t, _ in others})
    hint = ("set input_transport: compressed, or point the camera at the driver's raw topic"
            if types == ["sensor_msgs/msg/CompressedImage"] else
            "set input_transport: raw, or point the camera at the driver's compressed topic"
            if types == ["sensor_msgs/msg/Image"] else "point the camera at the driver's image topic")
    return (f"{WRONG_TYPE} {', '.join(types)} (from {', '.join(sorted({n for _, n in others}))}), not the {want} "
            f"that input_transport {transport} reads: {hint}")


def no_publisher_why(camera: str, want: str, graph, inputs, how: str = "image_topics:= or a remap") -> Optional[str]:
    """For a camera whose topic nobody publishes: up to three topics of its type on the graph (`graph`: (topic,
    types) pairs) it may have been meant to read, those under its own namespace first, not an output of this
    package nor another camera's input; None when there is none (its driver may simply not be up yet). `how`:
    the way to point a camera elsewhere where this is said (the launch's argument; doctor's own option)."""
    found = [t for t, types in graph if want in types and "/panoptic/" not in t and t not in inputs]
    found = sorted(found, key=lambda t: (not t.startswith(camera.rstrip("/") + "/"), t))[:3]
    return (f"{NO_PUBLISHER}; {want} topics on the graph: {', '.join(found)} (point the camera at its driver's "
            f"with {how})") if found else None


RELOAD = "restart it, or lifecycle deactivate, cleanup, configure, activate, to run the new ones"


def weights_changed_why(loaded: str, on_disk: str) -> str:
    return _changed_why(loaded, on_disk, "the weights file", "loaded it", "the weights it loaded", "would find none")


def scales_changed_why(loaded: str, on_disk: str) -> str:
    """The int8 scales beside the weights, recalibrated (or removed) after the node made its graphs from them."""
    return _changed_why(loaded, on_disk, "the int8 scales", "made its int8 graphs from it",
                        "int8 graphs made from the scales it loaded",
                        "would run fp32 (precision auto) or refuse (precision int8)")


def _changed_why(loaded: str, on_disk: str, unnamed: str, since: str, runs: str, restart: str) -> str:
    """A file the node read at configure (`loaded`: its name and sha256), now `on_disk` (the same, or MISSING)."""
    name = loaded.split(",")[0] or unnamed
    if on_disk == MISSING:
        return f"{name} is no longer on disk: the node runs {runs} ({loaded}), and a restart {restart}"
    return (f"{name} changed on disk since the node {since} (now {on_disk.split(', ')[-1]}): it runs {runs} "
            f"({loaded}); {RELOAD}")


class NodeStats:
    def __init__(self, clock=time.monotonic, latency_window: int = 200):
        self.clock = clock
        self.started = clock()
        self.clock_advice = WALL_CLOCK_ADVICE  # the node sets it from its clock at each report (clock_advice())
        self.arrivals = defaultdict(lambda: deque(maxlen=4096))
        self.publications = defaultdict(lambda: deque(maxlen=4096))
        self.latency_ms = defaultdict(lambda: deque(maxlen=latency_window))
        self.age_ms = defaultdict(lambda: deque(maxlen=latency_window))  # per camera: node clock - stamp at publish
        self.bad_frames = defaultdict(int)
        self.published = defaultdict(int)
        self.overlays = defaultdict(int)
        self.mismatch = {}          # camera -> why nothing reaches it (a publisher's QoS or type, or none)
        self.publishers = {}        # camera -> the nodes publishing its frames, when more than one does
        self.rivals = {}            # camera -> (its semantic map topic, the other nodes publishing there)
        self.camera_info = {}       # camera -> the size its newest CameraInfo gives (passed on with the maps)
        self.calibrated = {}        # camera -> (w, h) of the frames that CameraInfo describes (roi and binning)
        self.frame_size = {}        # camera -> (w, h) of its newest published frame
        self.batches = 0            # network calls that gave results
        self.inference_failures = 0
        self.last_failure = ""
        self.publish_failures = 0
        self.last_publish_failure = ""
        self._calls = {}            # call (call_started) -> when it began; ended calls are taken out
        self._call_ids = itertools.count()
        self.worker_error = None    # why the inference thread stopped, once it did
        self.weights_on_disk = None  # what the loaded weights' file holds now, once it changed (WeightsWatch)
        self.scales_on_disk = None   # likewise for the int8 scales its graphs were made from
        self.first_arrival = {}     # camera -> its first frame's arrival
        self._reported = {}         # counters at the previous report, to judge what happened since

    # --- events ------------------------------------------------------------------------------------
    def camera_info_arrived(self, camera: str, info) -> None:
        self.camera_info[camera] = f"{info.width}x{info.height}"
        self.calibrated[camera] = calibrated_size(info)

    def frame_arrived(self, camera: str) -> None:
        now = self.clock()
        self.arrivals[camera].append(now)
        self.first_arrival.setdefault(camera, now)

    def call_started(self) -> int:
        """A call (a frame's network, post-processing and publishing) begins; what call_ended takes when it is over,
        on whichever thread finishes it (with overlap_postprocessing, not the one that began it)."""
        call = next(self._call_ids)
        self._calls[call] = self.clock()
        return call

    def call_ended(self, call: int) -> None:
        self._calls.pop(call, None)

    @property
    def busy_since(self) -> Optional[float]:
        """When the oldest call in flight began (None between calls), of any inference worker."""
        return min(list(self._calls.values()), default=None)  # a copy in one step: workers change it meanwhile

    def worker_stopped(self, error: str) -> None:
        """The inference thread ended on an error nobody expected: the node still runs and hears its cameras,
        and publishes nothing more; its report must say so rather than show cameras that are ok."""
        self.worker_error = error

    def publish_failed(self, error: str) -> None:
        self.publish_failures += 1
        self.last_publish_failure = error

    def frame_published(self, camera: str, age_ms: Optional[float], size: Optional[Tuple[int, int]] = None) -> None:
        """`age_ms`: the node clock minus the frame's header stamp as its outputs leave, i.e. transport,
        waiting and inference together (what the driving stack sees; a camera whose clock is not the
        node's shows here as an age far from the pipeline's latency). `size`: the frame's (w, h)."""
        if size is not None:
            self.frame_size[camera] = size
        self.published[camera] += 1
        self.publications[camera].append(self.clock())
        if age_ms is not None:  # None: the frame had no stamp
            self.age_ms[camera].append(age_ms)

    def inference_done(self, timings_per_frame: List[Dict[str, float]]) -> None:
        self.batches += 1
        for timings in timings_per_frame:
            self.add_timings(timings)

    def inference_failed(self, error: str) -> None:
        self.inference_failures += 1
        self.last_failure = error

    def add_timings(self, timings: Dict[str, float]) -> None:
        total = 0.0
        for stage, sec in timings.items():
            self.latency_ms[stage].append(1000 * sec)
            total += sec
        self.latency_ms["total"].append(1000 * total)

    # --- derived -----------------------------------------------------------------------------------
    def rate_hz(self, camera: str, times=None) -> float:
        """Events per second over the last RATE_WINDOW_S (or since start-up, when shorter): falls to 0
        within the window once a camera stops."""
        # a copy: the worker thread appends while the diagnostics timer counts (a deque changed during a
        # Python-level iteration raises)
        times = tuple(self.arrivals[camera] if times is None else times)
        now = self.clock()
        span = min(RATE_WINDOW_S, now - self.started)
        if span <= 0:
            return 0.0
        return sum(1 for t in times if t > now - span) / span

    def percentiles(self) -> Dict[str, Dict[str, float]]:
        return {stage: {"p50": float(np.percentile(v, 50)), "p99": float(np.percentile(v, 99))}
                for stage, v in ((stage, tuple(v)) for stage, v in list(self.latency_ms.items())) if v}

    def _since_report(self, key: str, value: int) -> int:
        """How much a counter grew since the previous report; marks its value as reported."""
        grown, self._reported[key] = value - self._reported.get(key, 0), value
        return grown

    def statuses(self, buffer, cameras: Dict[str, str], timeout_s: float, info: Dict[str, str],
                 max_rate_hz: float = 0.0) -> List[Status]:
        """The report: inference first, then every configured camera (`cameras`: namespace -> input topic),
        including one that never sent a frame. A camera silent for `timeout_s` is an ERROR; undecodable,
        stale or unstamped frames since the previous report a WARN, and so are frames that arrive while no
        output has left for `timeout_s` (or three times the slowest recent frame, if longer, plus the gap
        `max_rate_hz` puts between calls): a node that hears its cameras and publishes nothing is not ok. Call
        once per report (it marks what was seen)."""
        # a model that is slow on this machine is not a fault: a call is long past camera_timeout_s and past
        # three times the slowest recent frame (the p99 of their total latency)
        totals = tuple(self.latency_ms.get("total", ()))
        long_call = max(timeout_s, 3 * float(np.percentile(totals, 99)) / 1000 if totals else 0.0)
        out_timeout = long_call + (1.0 / max_rate_hz if max_rate_hz > 0 else 0.0)
        inference = self._inference_status(info, long_call)
        return [inference] + [self._camera_status(buffer, cam, topic, timeout_s, out_timeout, inference)
                              for cam, topic in cameras.items()]

    def _camera_status(self, buffer, cam: str, topic: str, timeout_s: float, out_timeout: float,
                       inference: Status) -> Status:
        values = {"input topic": topic,
                  "input rate (Hz)": f"{self.rate_hz(cam):.2f}",
                  "output rate (Hz)": f"{self.rate_hz(cam, self.publications[cam]):.2f}",
                  "received": str(buffer.received[cam]),
                  "dropped (newer frame)": str(buffer.dropped[cam]),
                  "dropped (older than max_age_ms)": str(buffer.stale[cam]),
                  "unstamped frames": str(buffer.unstamped[cam]),
                  "bad frames": str(self.bad_frames[cam]),
                  "published": str(self.published[cam]),
                  "camera info": self.camera_info.get(cam, "none received"),
                  "overlays": str(self.overlays[cam])}
        ages = tuple(self.age_ms[cam])
        age_p50 = float(np.percentile(ages, 50)) if ages else None
        if ages:
            values["frame age at publish p50 (ms)"] = f"{age_p50:.1f}"
            values["frame age at publish p99 (ms)"] = f"{np.percentile(ages, 99):.1f}"
        last = self.arrivals[cam][-1] if self.arrivals[cam] else None
        silent = self.clock() - (self.started if last is None else last)
        values["seconds since last frame"] = "never" if last is None else f"{silent:.1f}"
        bad = self._since_report(f"{cam} bad", self.bad_frames[cam])
        stale = self._since_report(f"{cam} stale", buffer.stale[cam])
        unstamped = self._since_report(f"{cam} unstamped", buffer.unstamped[cam])
        why = f"; {self.mismatch[cam]}" if cam in self.mismatch else ""
        misfit = self._calibration_misfit(cam)
        if silent > timeout_s:
            level = ERROR
            message = (f"no frame on {topic} since start-up ({silent:.1f} s)" if last is None
                       else f"no frame on {topic} for {silent:.1f} s") + why
        elif last is None:
            level, message = WARN, f"waiting for the first frame on {topic}{why}"
        elif age_p50 is not None and age_p50 < -CLOCK_AHEAD_MS:
            level = WARN
            message = (f"frames on {topic} are stamped {-age_p50:.0f} ms ahead of "
                       f"the node's clock (median): the camera's clock is not the node's (max_age_ms cannot "
                       f"judge them; {self.clock_advice})")
        elif bad or stale or unstamped:
            level = WARN
            message = ", ".join(part for part in (
                f"{bad} undecodable frame(s)" if bad else "",
                f"{stale} frame(s) older than max_age_ms"
                f"{_stale_why(buffer.stale_age_ns.get(cam), self.clock_advice)}" if stale else "",
                f"{unstamped} frame(s) without a header stamp (0: their age is unknown, and their outputs "
                f"carry stamp 0)" if unstamped else "") if part) + " since the last report"
        elif self._output_waited(cam) > out_timeout:
            level = WARN
            cause = inference.message if inference.level != OK else "see inference"
            message = (f"frames arrive on {topic}, and no output has left for {self._output_waited(cam):.1f} s "
                       f"({cause})")
        elif misfit:
            level, message = WARN, misfit
        else:
            level, message = OK, "ok"
        if cam in self.publishers:  # said whatever else is wrong: it is often the cause (a bag's frames are stale)
            values["publishers"] = ", ".join(self.publishers[cam])
            level, message = _with_warning(level, message, shared_topic_why(topic, self.publishers[cam]))
        if cam in self.rivals:  # whatever else is said: a consumer of these maps gets two nodes' frames
            values["other nodes publishing its maps"] = ", ".join(self.rivals[cam][1])
            level, message = _with_warning(level, message, rival_why(*self.rivals[cam]))
        return Status(f"camera {cam}", cam, level, message, values)

    def _calibration_misfit(self, cam: str) -> str:
        """Why the camera_info passed on with the maps does not fit them ('' when it does, or is unknown)."""
        calibrated, frames = self.calibrated.get(cam), self.frame_size.get(cam)
        return "" if calibrated is None or frames is None else calibration_misfit(calibrated, frames)

    def _output_waited(self, cam: str) -> float:
        """Seconds since the camera's last output left (since its first frame came, before any did)."""
        last = self.publications[cam][-1] if self.publications[cam] else self.first_arrival.get(cam)
        return 0.0 if last is None else self.clock() - last

    def _inference_status(self, info: Dict[str, str], long_call_s: float) -> Status:
        failures = self._since_report("failures", self.inference_failures)
        batches = self._since_report("batches", self.batches)
        publish_failures = self._since_report("publish failures", self.publish_failures)
        busy_since = self.busy_since  # read once: the worker threads set it
        busy = 0.0 if busy_since is None else self.clock() - busy_since
        values = {**info, "inference failures": str(self.inference_failures),
                  "publish failures": str(self.publish_failures), "current call (s)": f"{busy:.1f}"}
        for stage, p in self.percentiles().items():
            values[f"latency {stage} p50 (ms)"] = f"{p['p50']:.1f}"
            values[f"latency {stage} p99 (ms)"] = f"{p['p99']:.1f}"
        if self.worker_error is not None:
            level = ERROR
            message = (f"the inference thread stopped ({self.worker_error}): nothing more is published; "
                       f"deactivate and activate the node (ros2 lifecycle set) or restart it")
        elif busy > STALLED_S:
            level = ERROR
            message = f"one inference call has run for {busy:.0f} s: the runtime is stalled, nothing is published"
        elif busy > long_call_s:
            level = WARN
            message = (f"one inference call has run for {busy:.1f} s (the first frame of a new size makes its "
                       f"graph: warmup_sizes makes it at configure)")
        elif failures:
            level = WARN if batches else ERROR
            message = (f"{failures} inference call(s) failed since the last report"
                       f"{'' if batches else ', none succeeded'}: {self.last_failure}")
        elif publish_failures:
            level = WARN
            message = f"{publish_failures} publication(s) failed since the last report: {self.last_publish_failure}"
        else:
            level, message = OK, "ok"
        if self.weights_on_disk:  # the file was replaced (or removed) while the node runs what it loaded
            values["weights on disk"] = self.weights_on_disk
            if level == OK:
                level, message = WARN, weights_changed_why(info.get("weights", ""), self.weights_on_disk)
        if self.scales_on_disk:
            values["int8 scales on disk"] = self.scales_on_disk
            if level == OK:
                level, message = WARN, scales_changed_why(info.get("int8 scales", ""), self.scales_on_disk)
        return Status("inference", info.get("model", ""), level, message, values)


def inactive_statuses(cameras: Dict[str, str], info: Dict[str, str], how_to_activate: str) -> List[Status]:
    """The report of a node that is configured but not active (ROS 2 lifecycle 'inactive'): it subscribes to
    no camera and infers nothing on purpose, which is not a fault (OK), and the message says so, so that a
    monitor does not read a camera's silence as a broken driver."""
    message = f"inactive (lifecycle): not subscribed, nothing published; {how_to_activate}"
    return ([Status("inference", info.get("model", ""), OK, message, dict(info))]
            + [Status(f"camera {cam}", cam, OK, message, {"input topic": topic}) for cam, topic in cameras.items()])
