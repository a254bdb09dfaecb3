"""panoptic_node: the ROS 2 node, a thin shell over Pipeline (see DESIGN.md, topic contract).

Callbacks only decode nothing and store the newest message per camera; one worker thread takes
the newest frame of every camera, infers them together, and publishes every output with the input
header (with overlap_postprocessing a second thread post-processes and publishes them while the first
runs the network on the next frames). Bad frames are logged (throttled), counted and skipped; the node
keeps running.
"""
import array
import contextlib
import os
import queue
import signal
import sys
import threading
import time
import traceback
from typing import Any, List, NamedTuple, Optional

import numpy as np
import rclpy
from rclpy.clock import Clock, ClockType
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from lifecycle_msgs.msg import Transition
from rcl_interfaces.msg import SetParametersResult
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy
from rclpy.parameter import Parameter
from rclpy.signals import SignalHandlerOptions
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSPolicyKind, QoSProfile, ReliabilityPolicy
from rclpy.qos_overriding_options import QoSOverridingOptions
try:
    from rclpy.event_handler import SubscriptionEventCallbacks
except ImportError:  # Humble names the module qos_event
    from rclpy.qos_event import SubscriptionEventCallbacks
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from vision_msgs.msg import (BoundingBox2D, Detection2D, Detection2DArray, LabelInfo, ObjectHypothesis,
                             ObjectHypothesisWithPose, VisionClass)

from .. import __version__
from ..ending_signals import ending_signals
from ..frame_buffer import LatestFrameBuffer
from ..in_order import InOrder
from ..inference.weights_watch import WeightsWatch
from ..int8_scales import default_scales_path
from ..messages import (FrameError, compressed_to_rgb, detections, image_fields, image_to_rgb, jpeg_fields, label_info,
                        png_fields, stamp_ns)
from ..node_stats import (NO_PUBLISHER, UNKNOWN_NODE, WRONG_TYPE, NodeStats, clock_advice, inactive_statuses,
                          no_publisher_why, publishing_nodes, rival_why, what_ran, wrong_type_why)
from ..params import (DIAGNOSTIC_FQN, PUBLISH_SWITCHES, ROS_BUILTIN_PREFIXES, ParameterError, check_qos_overrides,
                      defaults, descriptions, frame_sizes, input_topic, make_node_pipelines, overlaps_postprocessing,
                      unknown_parameter, updated, user_parameters, validate)
from ..render import overlay
from ..topic_qos import DIAGNOSTICS, OUTPUTS, TopicQos


# lifecycle_msgs' transition ids -> the labels `ros2 lifecycle set` takes (TRANSITION_ACTIVATE = 3 -> 'activate')
TRANSITION_NAMES = {getattr(Transition, k): k[len("TRANSITION_"):].lower() for k in dir(Transition)
                    if k.startswith("TRANSITION_") and isinstance(getattr(Transition, k), int)}

# ROS 2's QoS overrides (`qos_overrides./camera/front/panoptic/semantic.publisher.reliability: best_effort` in
# the params file) apply to every topic of the node: history, depth and reliability, fixed at start-up
OVERRIDABLE = QoSOverridingOptions.with_default_policies()


def qos_profile(qos: TopicQos) -> QoSProfile:
    return QoSProfile(depth=qos.depth, history=HistoryPolicy.KEEP_LAST,
                      reliability=ReliabilityPolicy.RELIABLE if qos.reliable else ReliabilityPolicy.BEST_EFFORT,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL if qos.transient_local else DurabilityPolicy.VOLATILE)


def _message_bytes(buffer) -> array.array:
    """A message's uint8[] data: an array.array('B') is taken as is, while bytes would be checked element by
    element by the generated setter (~0.1 s for a 32SC1 frame). Filled from the buffer: one copy."""
    data = array.array("B")
    data.frombytes(memoryview(buffer))
    return data


def _compressed(header, fields):
    return CompressedImage(header=header, format=fields["format"], data=_message_bytes(fields["data"]))


def _camera_info(header, info):
    """The camera's calibration stamped as one frame's maps (they are at the frame's resolution)."""
    return CameraInfo(header=header, height=info.height, width=info.width, distortion_model=info.distortion_model,
                      d=info.d, k=info.k, r=info.r, p=info.p, binning_x=info.binning_x, binning_y=info.binning_y,
                      roi=info.roi)


def _image(header, pixels, encoding):
    fields = image_fields(pixels, encoding)
    fields["data"] = _message_bytes(np.ascontiguousarray(fields["data"]))
    msg = Image(**fields)
    msg.header = header
    return msg


class Inferred(NamedTuple):
    """A worker's frames whose network has run, on their way to post-processing and publication."""
    frames: List[tuple]      # (camera, message, RGB frame) each
    detected: List[Any]      # Pipeline.detect_batch's answer, one per frame
    ticket: int              # their turn to be published (InOrder)
    call: Optional[int]      # NodeStats' call in flight


class PanopticNode(LifecycleNode):
    """A managed (lifecycle) node: configure loads the model and opens the output topics, activate subscribes
    to the cameras and starts inference, deactivate stops both, cleanup frees the model. With `autostart`
    (the default) main() takes it to active at once, as a plain node; `autostart: false` leaves the
    transitions to a lifecycle manager or `ros2 lifecycle set`."""

    def __init__(self):
        # every override is declared (with the type it was given), so validate() sees misspelt names
        # and wrong types and reports them in one line instead of rclpy raising on a type mismatch.
        # Undeclared names are let through to _on_set_parameters, which refuses them naming the nearest
        # one: rclpy's own refusal of `ros2 param set <node> treshold 0.5` read "Invalid access to
        # undeclared parameter(s): []" (its list is an exhausted generator)
        super().__init__("panoptic_node", automatically_declare_parameters_from_overrides=True,
                         allow_undeclared_parameters=True)
        for name, value in defaults().items():
            if not self.has_parameter(name):
                if name == DIAGNOSTIC_FQN:  # two cars' nodes, each in its namespace, must not share status names
                    value = self.get_namespace() != "/"
                self.declare_parameter(name, value)
        # the QoS overrides the user gave (rclpy declares more of them, one per topic it creates)
        self.qos_given = {k: v for k, v in self._declared().items() if k.startswith("qos_overrides.")}
        self._describe_parameters()
        self.params = None            # validated at configure; None while unconfigured
        self.pipeline = None          # the first worker's pipeline: what the node says it runs
        self.pipelines = []           # one per inference worker (inference_workers)
        self.overlap = False          # post-processing beside the network's next frame (overlap_postprocessing)
        self.pubs, self._subs, self.input_topics, self.cameras = {}, [], {}, {}
        self.diag_pub = self._diag_timer = None
        self.workers = []             # inference threads (and their post-processing threads)
        self.handoffs = []            # per worker, with overlap_postprocessing: frames its network has run
        self._running = False
        self.configure_error = None   # what the last configure failed on (main() prints it under autostart)
        self._opening_topics = False
        self.autostart = validate({"autostart": self.get_parameter("autostart").value})["autostart"]
        if hasattr(self, "add_pre_set_parameters_callback"):  # Iron on; Humble keeps rclpy's type refusal
            self.add_pre_set_parameters_callback(self._numbers_as_doubles)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._refuse_impossible_transitions()

    def _refuse_impossible_transitions(self):
        """A change_state request for a transition the current state does not have (activate while unconfigured:
        an id `ros2 lifecycle set` checks first, but a lifecycle manager or `ros2 service call` sends as asked)
        raised out of rclpy's service callback and ended the node with a traceback. Refused now as rclcpp
        refuses it: success false, and one line naming the transitions the state has."""
        service = getattr(self, "_service_change_state", None)
        if service is None:
            return
        change_state = service.callback

        def refused_when_impossible(request, response):
            try:
                return change_state(request, response)
            except _rclpy.RCLError:
                state_id, state = self._state_machine.current_state
                possible = [label for _, label, start, *_ in self._state_machine.available_transitions
                            if start == state_id]
                asked = request.transition.label or TRANSITION_NAMES.get(request.transition.id,
                                                                         f"id {request.transition.id}")
                self.get_logger().warn(f"lifecycle transition '{asked}' is not possible from state '{state}'; "
                                       f"expected one of: {', '.join(possible)}")
                response.success = False
                return response

        service.callback = refused_when_impossible

    @contextlib.contextmanager
    def _creating_topics(self):
        """While the node opens its topics, rclpy declares a QoS override parameter per topic: those are not a
        user's `ros2 param set` (which runs on the same executor thread, so never meanwhile)."""
        self._opening_topics = True
        try:
            yield
        finally:
            self._opening_topics = False

    def _declared(self):
        return {name: param.value for name, param in self.get_parameters_by_prefix("").items()}

    # --- lifecycle transitions -----------------------------------------------------------------------
    def on_configure(self, state) -> TransitionCallbackReturn:
        try:
            with self._creating_topics():
                self._configure()
        except Exception as e:  # a bad parameter, missing weights: one line, and the node stays unconfigured
            self.configure_error = e
            self._release()
            if not self.autostart:  # under autostart main() prints it and exits 1
                self.get_logger().error(f"configure failed: {start_up_error(e)[0]}; the node stays unconfigured "
                                        f"(correct it with `ros2 param set`, then configure again)")
            return TransitionCallbackReturn.FAILURE
        self.configure_error = None
        return TransitionCallbackReturn.SUCCESS

    def _configure(self):
        self.params = validate(user_parameters(self._declared()))
        self.cameras = self._resolved_cameras()
        check_qos_overrides(self.qos_given, self._topics())
        p = self.params
        self.pipelines = make_node_pipelines(p, log=self.get_logger().info, warn=self.get_logger().warn)
        self.pipeline = self.pipelines[0]
        self.overlap = overlaps_postprocessing(p, self.pipeline.backend.name)
        self.taxonomy = (self.pipeline.mapping.target if self.pipeline.mapping else self.pipeline.taxonomy)
        self.get_logger().info(f"model {self.pipeline.cfg.name} ({self.pipeline.weights_id}) on backend "
                               f"{self.pipeline.backend.name} ({self.pipeline.backend.precision}), labels "
                               f"{self.taxonomy.name}; panoptic_node {__version__}")
        # the file it loaded, looked at each report: replaced while the node runs, /diagnostics says so
        self.weights_watch = WeightsWatch(self.pipeline.weights_path, self.pipeline.weights_id)
        self.scales_watch = (WeightsWatch(default_scales_path(self.pipeline.weights_path), self.pipeline.scales_id)
                             if self.pipeline.scales_id else None)
        self._warm_up(frame_sizes(p["warmup_sizes"]))
        self.ego_masks, self._fitted_notes = self._ego_masks(), set()
        # imported here, not with the module: they bring torch and scipy (2.5 s on a slow CPU), which a node
        # refusing a bad parameter never needs, so its one-line error comes at once
        from ..inference.preprocess import OffScaleNotes
        from ..inference.tracking import InstanceTracker
        self.trackers = {cam: InstanceTracker() for cam in self.cameras}
        self.off_scale = OffScaleNotes(self.pipeline.cfg.input)
        self._fresh_counters()  # a buffer already, for a live max_age_ms change while inactive
        for ns in self.cameras:
            types = {"detections": Detection2DArray, "label_info": LabelInfo, "camera_info": CameraInfo}
            pubs = {name: self.create_publisher(types.get(name, CompressedImage if name.endswith("/compressed") else Image),
                                                f"{ns}/panoptic/{name}", qos_profile(qos),
                                                qos_overriding_options=OVERRIDABLE)
                    for name, qos in OUTPUTS.items()}
            self.pubs[ns] = pubs
            self.input_topics[ns] = self.resolve_topic_name(input_topic(ns, p["input_transport"]))  # remapped too
            self._publish_label_info(pubs)  # transient local: the label set is known from configure on
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", qos_profile(DIAGNOSTICS),
                                              qos_overriding_options=OVERRIDABLE)
        # on the steady clock: with use_sim_time a paused bag would otherwise silence the node's health
        self._diag_timer = self.create_timer(p["diagnostics_period"], self._publish_diagnostics,
                                             clock=Clock(clock_type=ClockType.STEADY_TIME))

    def _warm_up(self, sizes):
        """A black frame of each size the cameras will send, so that its graph is made or compiled now and
        the first real frame is served at full speed (else it waits seconds, and the frames behind it go stale)."""
        for w, h in sizes:
            started = time.monotonic()
            for pipeline in self.pipelines:  # each worker compiles its own graphs
                pipeline(np.zeros((h, w, 3), np.uint8))
            self.get_logger().info(f"ready for {w}x{h} frames ({time.monotonic() - started:.1f} s)")

    def _fresh_counters(self):
        """Frames and rates are counted per activation: a node activated again starts from nothing."""
        self.buffer = LatestFrameBuffer(lambda: self.get_clock().now().nanoseconds, self.params["max_age_ms"])
        self.in_order = InOrder()  # frames are tracked and published in the order the workers took them
        self._taking = threading.Lock()  # one worker at a time takes frames (and waits out max_rate_hz)
        self._last_start = -float("inf")  # when the last inference began, by any worker (max_rate_hz)
        self.stats = NodeStats()
        self.camera_infos = {}  # camera -> its newest CameraInfo
        self._last_overlay = {}  # camera -> when its last overlay was drawn (steady clock; overlay_max_rate_hz)

    def on_activate(self, state) -> TransitionCallbackReturn:
        try:
            with self._creating_topics():
                self._activate()
        except Exception as e:  # rclpy would turn it into a silent ERROR transition
            self._stop_serving()
            self.get_logger().error(f"activate failed: {start_up_error(e)[0]}; the node stays inactive")
            return TransitionCallbackReturn.FAILURE
        return TransitionCallbackReturn.SUCCESS

    def _activate(self):
        p = self.params
        self._fresh_counters()
        for tracker in self.trackers.values():  # frames after a pause are a new stream: no object carried over
            tracker.reset()
        qos_in = QoSProfile(depth=p["qos_depth"], history=HistoryPolicy.KEEP_LAST,
                            reliability=(ReliabilityPolicy.BEST_EFFORT if p["qos_reliability"] == "best_effort"
                                         else ReliabilityPolicy.RELIABLE))
        compressed = p["input_transport"] == "compressed"
        for cam in self.cameras:
            self._subs.append(self.create_subscription(CompressedImage if compressed else Image,
                                                       input_topic(cam, p["input_transport"]),
                                                       lambda msg, c=cam: self._on_frame(c, msg), qos_in,
                                                       qos_overriding_options=OVERRIDABLE,
                                                       event_callbacks=self._mismatch_events(cam)))
            # the camera's calibration, passed on stamped as each frame's maps (best effort takes any driver's)
            self._subs.append(self.create_subscription(
                CameraInfo, f"{cam}/camera_info", lambda msg, c=cam: self._on_camera_info(c, msg),
                QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.BEST_EFFORT)))
            self.get_logger().info(f"camera {cam}: {self.input_topics[cam]} -> {cam}/panoptic/*")
        self._running = True
        self.workers, self.handoffs = [], []
        for i, pipeline in enumerate(self.pipelines):
            handoff = None
            if self.overlap:  # this worker's frames, their network done, to its post-processing thread
                handoff = queue.Queue(maxsize=1)
                self.handoffs.append(handoff)
                self.workers.append(threading.Thread(target=self._work, args=(self._finish_handed, pipeline, handoff),
                                                     name=f"panoptic_postprocess_{i}", daemon=True))
            self.workers.append(threading.Thread(target=self._work, args=(self._serve, pipeline, handoff),
                                                 name=f"panoptic_inference_{i}", daemon=True))
        for worker in self.workers:
            worker.start()

    def on_deactivate(self, state) -> TransitionCallbackReturn:
        self._stop_serving()
        self.get_logger().info("inactive: cameras unsubscribed, inference stopped")
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state) -> TransitionCallbackReturn:
        self._release()
        self.get_logger().info("unconfigured: model released, output topics closed")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state) -> TransitionCallbackReturn:
        # a transition that raised (ours catch what they expect): back to unconfigured, clean
        self.get_logger().error(f"a lifecycle transition failed unexpectedly from '{state.label}'; "
                                f"the node is unconfigured again")
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def _stop_serving(self):
        """No camera subscribed, no frame in flight (the frame being inferred is finished or dropped)."""
        self._running = False
        if self.workers:
            self.buffer.close()
            for worker in self.workers:
                worker.join(timeout=10.0)
            self.workers = []
            for handoff in self.handoffs:  # frames handed over and never finished: their calls are over
                while not handoff.empty():
                    work = handoff.get_nowait()
                    self._drop(work.ticket, work.call)
            self.handoffs = []
        for sub in self._subs:
            self.destroy_subscription(sub)
        self._subs = []

    def _release(self):
        """Back to nothing but the parameters (and the lifecycle services)."""
        self._stop_serving()
        for pub in [pub for pubs in self.pubs.values() for pub in pubs.values()] + [self.diag_pub]:
            if pub is not None:
                self.destroy_publisher(pub)
        if self._diag_timer is not None:
            self.destroy_timer(self._diag_timer)
        self.pubs, self.input_topics, self.cameras, self.diag_pub, self._diag_timer = {}, {}, {}, None, None
        self.pipeline, self.pipelines, self.params = None, [], None

    def _ego_masks(self):
        """Each camera's ego mask from ego_mask_dir (inference/ego_mask.py); a folder or a mask that cannot
        be read stops the node at start-up with one line, as a bad parameter does."""
        folder = self.params["ego_mask_dir"]
        if not folder:
            return {}
        from ..inference.ego_mask import describe, masks_for
        # named after the camera as the parameters file gives it: one file per car, whatever its namespace
        masks = masks_for(folder, list(self.cameras.values()))
        for ns, keep in masks.items():
            self.get_logger().info(describe(folder, ns, keep))
        return {cam: masks[given] for cam, given in self.cameras.items() if masks[given] is not None}

    def _resolved_cameras(self):
        """{resolved camera namespace: the name the parameter gives}: a relative name ('camera/front', the
        shipped default) lies under the node's namespace (`-r __ns:=/car1`, car.launch.py's namespace:=), an
        absolute one where it says. Outputs, subscriptions, logs and /diagnostics use the resolved name, so
        the statuses of two cars' nodes stay apart. Two names for one namespace are refused in one line."""
        cameras = {}
        for given in self.params["cameras"]:
            resolved = self.resolve_topic_name(given.rstrip("/"), only_expand=True)  # a namespace: not remapped
            if resolved in cameras:
                raise ParameterError(f"parameter 'cameras' names {resolved} twice ({cameras[resolved]!r} and "
                                     f"{given!r} in node namespace {self.get_namespace()}): expected each camera once")
            cameras[resolved] = given.rstrip("/")
        return cameras

    def _mismatch_events(self, camera):
        """A publisher whose QoS cannot reach this subscription (best effort to reliable) delivers nothing:
        logged as rclpy does, and said in the camera's /diagnostics status, which otherwise reads 'no frame'."""
        def incompatible_qos(info):
            try:
                policy = QoSPolicyKind(info.last_policy_kind).name
            except ValueError:
                policy = str(info.last_policy_kind)
            self._mismatch(camera, f"a publisher offers QoS incompatible with this subscription ({policy}; "
                                   f"qos_reliability best_effort matches every camera driver)")

        return SubscriptionEventCallbacks(incompatible_qos=incompatible_qos)

    def _on_camera_info(self, camera, msg):
        self.camera_infos[camera] = msg
        self.stats.camera_info_arrived(camera, msg)

    def _mismatch(self, camera, why):
        self.stats.mismatch[camera] = why
        self.get_logger().warn(f"{self.input_topics.get(camera, camera)}: {why}; no frames are received from it")

    def _check_rivals(self):
        """Another node publishing a camera's maps (the launch started twice, or a node left running after a crash):
        said in the camera's status while it lasts, and logged once when it starts."""
        me = f"{self.get_namespace().rstrip('/')}/{self.get_name()}"
        for camera, pubs in self.pubs.items():
            topic = pubs["semantic"].topic_name
            others = [n for n in publishing_nodes(self.get_publishers_info_by_topic(topic), "sensor_msgs/msg/Image")
                      if n != me]
            if others and self.stats.rivals.get(camera, (None, []))[1] != others:
                self.get_logger().warn(rival_why(topic, others))
            if others:
                self.stats.rivals[camera] = (topic, others)
            else:
                self.stats.rivals.pop(camera, None)

    def _check_inputs(self):
        """Why a camera may receive nothing, found in the graph at each report and said in its status: a
        publisher of another message type on its topic (logged once), or no publisher while image topics of
        its type exist elsewhere (not logged: a driver may start later). Forgotten once it no longer holds."""
        transport = self.params["input_transport"]
        want = f"sensor_msgs/msg/{(CompressedImage if transport == 'compressed' else Image).__name__}"
        graph = None
        self._check_rivals()
        for camera, topic in self.input_topics.items():
            publishers = self.get_publishers_info_by_topic(topic)
            if any(i.node_name == UNKNOWN_NODE for i in publishers):
                continue  # a publisher discovered before its node: judged at the next report, once named
            known = self.stats.mismatch.get(camera, "")
            nodes = publishing_nodes(publishers, want)
            if len(nodes) > 1:  # two sources interleaved on one camera: a bag played while the driver runs
                self.stats.publishers[camera] = nodes
            else:
                self.stats.publishers.pop(camera, None)
            others = {(i.topic_type, i.node_name) for i in publishers if i.topic_type != want}
            if others:
                why = wrong_type_why(want, transport, others)
                if why != known:
                    self._mismatch(camera, why)
                continue
            if not publishers:
                graph = graph if graph is not None else self.get_topic_names_and_types()
                why = no_publisher_why(camera, want, graph, set(self.input_topics.values()))
                if why:
                    self.stats.mismatch[camera] = why
                    continue
            if known.startswith((WRONG_TYPE, NO_PUBLISHER)):
                del self.stats.mismatch[camera]

    def _describe_parameters(self):
        """What `ros2 param describe` shows (description, constraints, live or not), and numbers as doubles."""
        for name, text in descriptions().items():
            descriptor = self.describe_parameter(name)
            descriptor.description, descriptor.additional_constraints = text["description"], text["constraints"]
            value = self.get_parameter(name).value
            if text["type"] == "number" and isinstance(value, int) and not isinstance(value, bool):
                # `threshold: 1` in a params file declares an integer, and rclpy would then refuse
                # `ros2 param set threshold 0.5` as the wrong type: a number is a double
                self.undeclare_parameter(name)
                self.declare_parameter(name, float(value), descriptor, ignore_override=True)
            else:
                self.set_descriptor(name, descriptor)

    def _topics(self):
        """Every topic this node will have, resolved -> 'publisher' / 'subscription' (rclpy's own included)."""
        p = self.params
        topics = {"/diagnostics": "publisher", "/parameter_events": "publisher", "/rosout": "publisher"}
        for ns in self.cameras:
            topics[input_topic(ns, p["input_transport"])] = "subscription"
            topics.update({f"{ns}/panoptic/{name}": "publisher" for name in OUTPUTS})
        return {self.resolve_topic_name(t): kind for t, kind in topics.items()}

    def _publish_label_info(self, pubs):
        info = LabelInfo()
        info.header.stamp = self.get_clock().now().to_msg()
        info.class_map = [VisionClass(class_id=c["class_id"], class_name=c["class_name"])
                          for c in label_info(self.taxonomy)]
        info.threshold = float(self.pipeline.threshold)
        pubs["label_info"].publish(info)

    @staticmethod
    def _numbers_as_doubles(params):
        """`ros2 param set <node> threshold 1` (or `ros2 param load` of `threshold: 1`) gives an integer, and
        rclpy refused it for a double parameter ("Wrong parameter type"): a number is a double, as at start-up."""
        numbers = {name for name, text in descriptions().items() if text["type"] == "number"}
        return [Parameter(p.name, Parameter.Type.DOUBLE, float(p.value))
                if p.name in numbers and p.type_ == Parameter.Type.INTEGER else p for p in params]

    def _on_set_parameters(self, params):
        """`ros2 param set` while the node runs: the live parameters take effect from the next frame; a
        start-up one, an unknown name or a bad value is refused with the reason, and nothing changes."""
        # the overrides the user gave; rclpy declares the others (read only) as it creates each topic, and an
        # override of a topic the node does not have, set now, would be kept and never read
        fixed = [p.name for p in params if p.name in self.qos_given
                 or (p.name.startswith(ROS_BUILTIN_PREFIXES) and not self.has_parameter(p.name)
                     and not self._opening_topics)]
        if fixed:
            return SetParametersResult(successful=False, reason=f"parameter '{fixed[0]}' is read at start-up only "
                                                                f"(a topic's QoS); restart the node to change it")
        changes = user_parameters({p.name: p.value for p in params})  # use_sim_time etc. are rclpy's
        unknown = [name for name in changes if not self.has_parameter(name)]
        if unknown:  # not one of ours (a misspelt name): nothing is declared
            return SetParametersResult(successful=False, reason=unknown_parameter(unknown[0], defaults()))
        if not changes:
            return SetParametersResult(successful=True)
        if self.params is None:  # unconfigured: any value that is valid in itself; configure checks them together
            try:
                validate(changes)
            except ParameterError as e:
                return SetParametersResult(successful=False, reason=str(e))
            return SetParametersResult(successful=True)
        try:
            new = updated(self.params, changes)
        except ParameterError as e:
            return SetParametersResult(successful=False, reason=str(e))
        self.buffer.max_age_ns = new["max_age_ms"] * 1_000_000
        threshold = self.pipeline.cfg.postprocess.threshold if new["threshold"] < 0 else float(new["threshold"])
        self.params = new
        if threshold != self.pipeline.threshold:
            for pipeline in self.pipelines:
                pipeline.threshold = threshold
            for pubs in self.pubs.values():  # late subscribers get the threshold in use (transient local)
                self._publish_label_info(pubs)
        self.get_logger().info("parameters changed: " + ", ".join(f"{k} = {v!r}" for k, v in changes.items()))
        return SetParametersResult(successful=True)

    # --- callbacks: store only -------------------------------------------------------------------
    def _on_frame(self, camera, msg):
        self.stats.frame_arrived(camera)
        stamp = stamp_ns(msg.header)
        if not stamp and not self.buffer.unstamped[camera]:  # said once; /diagnostics counts them
            self.get_logger().warn(f"{self.input_topics[camera]}: frames carry no header stamp (0): served, but their "
                                   f"age is unknown (max_age_ms cannot drop them) and their outputs carry stamp 0; "
                                   f"the camera driver should stamp them")
        self.buffer.put(camera, msg, stamp)

    # --- worker thread ---------------------------------------------------------------------------
    def _decode(self, camera, msg):
        try:
            rgb = compressed_to_rgb(msg) if isinstance(msg, CompressedImage) else image_to_rgb(msg)
            note = self.off_scale.first(*rgb.shape[:2])
            if note:  # runs anyway; said once per frame size
                self.get_logger().warn(f"{camera}: {note}")
            return rgb
        except Exception as e:  # FrameError says what was wrong; anything else must not end the worker thread
            self.stats.bad_frames[camera] += 1
            why = e if isinstance(e, FrameError) else f"frame does not decode ({type(e).__name__}: {e})"
            self.get_logger().warn(f"{self.input_topics[camera]}: {why}", throttle_duration_sec=5.0)
            return None

    def _wait_for_rate(self) -> None:
        """With max_rate_hz, wait until a period has passed since the last inference began (on the steady
        clock: a budget of CPU, not of sim time); frames arriving meanwhile replace each other in the buffer."""
        while self._running and self.params["max_rate_hz"] > 0:
            left = self._last_start + 1.0 / self.params["max_rate_hz"] - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.05))  # in short steps: deactivate and a live change are seen at once

    def _work(self, loop, *args):
        try:
            loop(*args)
        except Exception as e:  # a bug nobody foresaw: the node hears its cameras and publishes nothing more,
            # so /diagnostics says so at once (an ERROR naming it) instead of reporting cameras that are ok
            if not (self._running and rclpy.ok()):  # stopping: what failed on the way out is no fault
                return
            why = f"{type(e).__name__}: {e}".splitlines()[0]
            self.stats.worker_stopped(why)
            self.get_logger().error(f"the inference thread stopped: {why}")
            self.get_logger().debug(traceback.format_exc())

    def _take(self):
        """The newest frame of every camera, and its ticket in the order of publication (None: nothing came)."""
        with self._taking:
            self._wait_for_rate()
            pending = self.buffer.take(timeout=0.2)
            if not pending:
                return None, None
            self._last_start = time.monotonic()
            return pending, self.in_order.ticket()

    def _serve(self, pipeline, handoff):
        """Take the newest frames and run the network on them; the rest (_finish) follows here, or with
        overlap_postprocessing on this worker's post-processing thread while the network takes the next frames
        (with the network on a GPU, the CPU post-processes the frames before meanwhile)."""
        while self._running and rclpy.ok():
            pending, ticket = self._take()
            if pending is None:
                continue
            call = work = None
            try:
                frames = [(cam, p.msg, self._decode(cam, p.msg)) for cam, p in pending.items()]
                frames = [f for f in frames if f[2] is not None]
                if frames:  # a call that never ends (a stalled runtime) shows on /diagnostics
                    call = self.stats.call_started()
                    detected = self._detect(pipeline, frames)
                    if detected is not None:
                        work = Inferred(frames, detected, ticket, call)
            finally:
                if work is None:  # nothing to finish: the frames taken later go on
                    self._drop(ticket, call)
            if work is None:
                continue
            if handoff is None:
                self._finish(pipeline, work)
            else:
                self._hand_over(handoff, work)

    def _hand_over(self, handoff, work):
        while self._running:
            try:
                handoff.put(work, timeout=0.2)
                return
            except queue.Full:  # the frames before are still being post-processed
                continue
        self._drop(work.ticket, work.call)  # stopping: dropped

    def _finish_handed(self, pipeline, handoff):
        """The post-processing thread of a worker (overlap_postprocessing): each frame its network has run."""
        while self._running and rclpy.ok():
            try:
                work = handoff.get(timeout=0.2)
            except queue.Empty:
                continue
            self._finish(pipeline, work)

    def _drop(self, ticket, call):
        """The frames of `ticket` are done with (published, failed or dropped): their call is over, and the
        frames taken after them go on."""
        if call is not None:
            self.stats.call_ended(call)
        self.in_order.finish(ticket)

    def _detect(self, pipeline, frames):
        """The network's half of each frame (Pipeline.detect_batch); None when it failed (said and counted)."""
        try:
            if self.params["batch_cameras"]:
                return pipeline.detect_batch([rgb for _, _, rgb in frames])
            return [d for _, _, rgb in frames for d in pipeline.detect_batch([rgb])]
        except Exception as e:  # keep serving the next frames; say what failed (log and /diagnostics)
            self._inference_failed(e)
            return None

    def _finish(self, pipeline, work: Inferred):
        """Post-processing, ego masks, then in the order the frames were taken tracking and publishing."""
        try:
            results = self._decided(pipeline, work.frames, work.detected)
            # tracks continue from the frame before: tracked and published in the order taken
            if results is not None and self.in_order.wait(work.ticket, lambda: self._running):
                self._track_and_publish(work.frames, results)
        finally:
            self._drop(work.ticket, work.call)

    def _decided(self, pipeline, frames, detected):
        """Each frame's result with its ego mask applied; None when post-processing failed (said and counted)."""
        try:
            return [self._masked(cam, pipeline.decide(d)) for (cam, _, _), d in zip(frames, detected)]
        except Exception as e:
            self._inference_failed(e)
            return None

    def _inference_failed(self, e: Exception) -> None:
        self.stats.inference_failed(f"{type(e).__name__}: {e}".splitlines()[0])
        self.get_logger().error(f"inference failed: {e}", throttle_duration_sec=5.0)
        self.get_logger().debug(traceback.format_exc())

    def _track_and_publish(self, frames, results):
        try:
            results = [self._tracked(cam, result) for (cam, _, _), result in zip(frames, results)]
        except Exception as e:
            self._inference_failed(e)
            return
        self.stats.inference_done([result.timings for result in results])
        try:
            for (cam, msg, rgb), result in zip(frames, results):
                self._publish(cam, msg.header, rgb, result)
        except Exception as e:
            if not (self._running and rclpy.ok()):  # stopping (Ctrl-C, SIGTERM): the frame in flight is dropped
                return
            self.stats.publish_failed(f"{type(e).__name__}: {e}".splitlines()[0])
            self.get_logger().error(f"publishing failed: {e}", throttle_duration_sec=5.0)

    def _masked(self, camera, result):
        """The camera's result with its ego mask applied (a mask drawn at another size is fitted, said once)."""
        keep = self.ego_masks.get(camera)
        if keep is None:
            return result
        from ..inference.ego_mask import apply_ego_mask, fit_note
        if keep.shape != result.shape and (camera, result.shape) not in self._fitted_notes:
            self._fitted_notes.add((camera, result.shape))
            self.get_logger().warn(fit_note(camera, keep, *result.shape))
        return apply_ego_mask(result, keep, self.taxonomy.thing_lut)

    def _tracked(self, camera, result):
        """The camera's result with its things numbered by track id (inference/tracking.py), as
        track_instances and its two settings say at this frame."""
        tracker = self.trackers[camera]
        if not self.params["track_instances"]:
            tracker.reset()  # switched on again later, it must not continue tracks from before the gap
            return result
        tracker.min_iou, tracker.max_lost = self.params["track_min_iou"], self.params["track_max_lost"]
        return tracker.update(result)

    def _wanted(self, pubs, name) -> bool:
        """An output is built and sent only while someone subscribes (a recorder counts): converting and
        serializing a 32SC1 map nobody reads costs the camera rate."""
        kind = name.split("/")[0]  # a /compressed twin: its raw topic's switch; camera_info has none
        switched_on = kind not in PUBLISH_SWITCHES or self.params[f"publish_{kind}"]
        return switched_on and pubs[name].get_subscription_count() > 0

    def _overlay_due(self, camera) -> bool:
        """overlay_max_rate_hz: whether a period has passed since the camera's last overlay (then it is drawn now).
        The overlay is for eyes; on a small CPU, drawing and sending one for every frame costs the maps' rate."""
        rate, now = self.params["overlay_max_rate_hz"], time.monotonic()
        if rate > 0 and now - self._last_overlay.get(camera, -float("inf")) < 1.0 / rate:
            return False
        self._last_overlay[camera] = now
        return True

    def _publish(self, camera, header, rgb, result):
        pubs = self.pubs[camera]
        for name, labels, encoding in (("semantic", result.semantic, "mono8"), ("instances", result.instance, "mono16")):
            if self._wanted(pubs, name):
                pubs[name].publish(_image(header, labels, encoding))
            if self._wanted(pubs, f"{name}/compressed"):  # lossless PNG, as image_transport's compressed plugin
                pubs[f"{name}/compressed"].publish(_compressed(header, png_fields(labels, encoding)))
        if self._wanted(pubs, "panoptic"):
            pubs["panoptic"].publish(_image(header, result.panoptic, "32SC1"))
        if self._wanted(pubs, "detections"):
            out = Detection2DArray(header=header)
            for d in detections(result, self.taxonomy):
                det = Detection2D(header=header, id=d["id"])
                det.results = [ObjectHypothesisWithPose(hypothesis=ObjectHypothesis(class_id=d["class_id"],
                                                                                    score=d["score"]))]
                det.bbox = BoundingBox2D()
                det.bbox.center.position.x, det.bbox.center.position.y = d["center_x"], d["center_y"]
                det.bbox.size_x, det.bbox.size_y = d["size_x"], d["size_y"]
                out.detections.append(det)
            pubs["detections"].publish(out)
        # the overlay costs a full-frame blend on top (drawn once for its raw and its JPEG topic)
        raw, jpeg = self._wanted(pubs, "overlay"), self._wanted(pubs, "overlay/compressed")
        if (raw or jpeg) and self._overlay_due(camera):
            drawn = overlay(rgb, result, self.taxonomy, labels=self.params["overlay_labels"])
            if raw:
                pubs["overlay"].publish(_image(header, drawn[..., ::-1], "bgr8"))
            if jpeg:
                pubs["overlay/compressed"].publish(_compressed(header, jpeg_fields(drawn)))
            self.stats.overlays[camera] += 1
        info = self.camera_infos.get(camera)
        if info is not None and self._wanted(pubs, "camera_info"):
            pubs["camera_info"].publish(_camera_info(header, info))
        stamp = stamp_ns(header)
        self.stats.frame_published(camera, (self.get_clock().now().nanoseconds - stamp) / 1e6 if stamp else None,
                                   (result.shape[1], result.shape[0]))

    def _publish_diagnostics(self):
        """One status for inference and one per camera, named as diagnostic_updater names them
        ('<node name>: <task>', the fully qualified name with diagnostic_updater.use_fqn), so an aggregator or
        rqt_runtime_monitor shows which node and which camera is at fault."""
        p = self.params
        info = {**what_ran(self.pipeline),
                "threshold": f"{self.pipeline.threshold:g}",  # it can change while the node runs
                "max rate (Hz)": f"{p['max_rate_hz']:g}" if p["max_rate_hz"] else "unlimited",
                "overlay max rate (Hz)": f"{p['overlay_max_rate_hz']:g}" if p["overlay_max_rate_hz"] else "every frame",
                "threads": str(p["num_threads"]) if p["num_threads"] else "every core",
                "inference workers": str(p["inference_workers"]),
                "post-processing": ("beside the next frame's network" if self.overlap
                                    else "after the network, one frame at a time"),
                "instance ids": (f"tracked (IoU >= {p['track_min_iou']:g}, unseen <= {p['track_max_lost']} frames)"
                                 if p["track_instances"] else "per frame")}
        arr = DiagnosticArray()
        arr.header.stamp = self.get_clock().now().to_msg()
        try:
            if self._running:
                self._check_inputs()
                self.stats.clock_advice = clock_advice(self.get_parameter("use_sim_time").value,
                                                       self.get_clock().now().nanoseconds)
                self.stats.weights_on_disk = self.weights_watch.changed()
                self.stats.scales_on_disk = self.scales_watch.changed() if self.scales_watch else None
                statuses = self.stats.statuses(self.buffer, self.input_topics, p["camera_timeout_s"], info,
                                               p["max_rate_hz"])
            else:
                statuses = inactive_statuses(self.input_topics, info,
                                             f"ros2 lifecycle set {self.get_fully_qualified_name()} activate")
        except Exception as e:  # a timer callback that raises would end the executor's spin, and the node
            self.get_logger().error(f"diagnostics failed: {e}", throttle_duration_sec=5.0)
            return
        node = self.get_fully_qualified_name() if p[DIAGNOSTIC_FQN] else self.get_name()
        for s in statuses:
            arr.status.append(DiagnosticStatus(level=bytes([s.level]), name=f"{node}: {s.name}",
                                               message=s.message, hardware_id=s.hardware_id,
                                               values=[KeyValue(key=k, value=v) for k, v in s.values.items()]))
        self.diag_pub.publish(arr)

    def destroy_node(self):
        self._stop_serving()
        return super().destroy_node()


def start_up_error(e: Exception):
    """The one line a failed start-up (or configure) gives, and whether its traceback is worth showing."""
    if isinstance(e, (ParameterError, FileNotFoundError, ValueError, RuntimeError)):  # said what was wrong
        return str(e), False
    return (f"unexpected {type(e).__name__} at start-up: {e} (run with --ros-args --log-level debug for the "
            f"traceback, and report it)"), True


def spin_until_stopped(executor, stop: threading.Event, logger) -> None:
    """Serve callbacks until Ctrl-C / SIGTERM (`stop`) or ROS shuts down. A callback that raises, ours or one
    of rclpy's services (its change_state raised for a transition the state lacks, which ended the node),
    costs that callback and one logged line, not the node: the cameras keep being served."""
    while not stop.is_set() and rclpy.ok():
        try:
            executor.spin_once(timeout_sec=0.1)
        except ExternalShutdownException:
            return
        except Exception as e:
            logger.error(f"a callback failed and was skipped ({type(e).__name__}: {str(e).strip().splitlines()[0]}); "
                         f"the node keeps running (--log-level debug for the traceback)", throttle_duration_sec=5.0)
            logger.debug(traceback.format_exc())


def shared_memory_line():
    """The warning when /dev/shm has no room for this process's Fast DDS segment, or None. Never stops the node:
    an unreadable profile is Fast DDS's to report."""
    from ..dds_profile import profile_in_effect
    from ..shared_memory import shared_memory_problem
    try:
        return shared_memory_problem(profile_in_effect(os.environ))
    except (OSError, ValueError, SyntaxError):  # ElementTree's ParseError is a SyntaxError
        return None


def main(args=None):
    # the Fast DDS profile, chosen before rclpy starts Fast DDS: started by hand (ros2 run), the node takes the
    # one car.launch.py would give it (with Fast DDS's defaults a 1280x720 camera arrived at 9.6 of 30 Hz)
    from ..dds_profile import node_environment
    from ..model.config import share_dir
    try:
        env, dds_why = node_environment(share_dir("config"))
    except ValueError as e:
        print(f"[panoptic_node] error: {e} (PANOPTIC_NODE_DDS_PROFILE)", file=sys.stderr)
        sys.exit(1)
    os.environ.update(env)
    shm_line = shared_memory_line()  # before rclpy makes this process's own segment
    # Ctrl-C, SIGTERM and SIGHUP (unless nohup ignores it) only set a flag, read by the spin loop below: rclpy's
    # own handlers raise KeyboardInterrupt wherever the main thread happens to be (a second Ctrl-C, which a
    # terminal and launch both send, landed in destroy_node() or inside rclpy's message conversion)
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()
    stopping = [signal.SIGINT] + ending_signals()
    for sig in stopping:
        signal.signal(sig, lambda *_: stop.set())
    try:
        node = PanopticNode()
        node.get_logger().info(dds_why)
        if shm_line:
            node.get_logger().warn(shm_line)
        if node.autostart and node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            raise node.configure_error
    except Exception as e:
        # a bad parameter or missing weights: one line, non-zero exit (launch shows it); anything else is one
        # line too, its traceback at --log-level debug
        line, unexpected = start_up_error(e)
        print(f"[panoptic_node] error: {line}", file=sys.stderr)
        if unexpected and rclpy.logging.get_logger("panoptic_node").is_enabled_for(rclpy.logging.LoggingSeverity.DEBUG):
            traceback.print_exception(e)
        rclpy.try_shutdown()
        sys.exit(1)
    if node.autostart and node.trigger_activate() != TransitionCallbackReturn.SUCCESS:
        node.destroy_node()
        rclpy.try_shutdown()
        sys.exit(1)  # activate said why
    if not node.autostart:
        node.get_logger().info(f"autostart is false: unconfigured, waiting for `ros2 lifecycle set "
                               f"{node.get_fully_qualified_name()} configure` (or a lifecycle manager)")
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        spin_until_stopped(executor, stop, node.get_logger())
    finally:
        # stopping now: further signals are ignored. A handler of ours would be reset to the default
        # by Python's own finalization, and a late second Ctrl-C would then kill the exiting node (-2)
        for sig in stopping:
            signal.signal(sig, signal.SIG_IGN)
        node.destroy_node()  # the frame in flight is finished or dropped (see _work)
        executor.shutdown()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
