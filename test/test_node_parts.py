"""What the ROS node is made of, tested without rclpy: parameter schema and the shipped YAML, the
newest-frame-wins buffer with drop counting (fake clock), diagnostics statistics, the overlay."""
import importlib.util
import re
import sys
import threading
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import run_without
from panoptic_node.frame_buffer import LatestFrameBuffer
from panoptic_node.in_order import InOrder, PipelinesInOrder
from panoptic_node.inference.result import result_from_segments
from panoptic_node.model.config import share_dir
from panoptic_node.node_stats import NodeStats, clock_advice
from panoptic_node.params import (DIAGNOSTIC_FQN, LIVE_PARAMETERS, ParameterError, check_qos_overrides, defaults,
                                  descriptions, overlaps_postprocessing, updated, user_parameters, validate,
                                  validate_file, worker_threads)
from panoptic_node.render import overlay
from panoptic_node.taxonomy import get_taxonomy


def test_shipped_yaml_is_valid_and_complete():
    doc = yaml.safe_load((share_dir("config") / "car.param.yaml").read_text())
    validate_file(doc)
    params = doc["/**"]["ros__parameters"]
    assert set(params) == set(defaults()) - {DIAGNOSTIC_FQN}  # its default depends on the node's namespace
    assert validate(params)["qos_reliability"] == "best_effort" and params["qos_depth"] == 1


@pytest.mark.parametrize("name,value,expected", [
    ("threshold", 1.5, "parameter 'threshold' = 1.5 is invalid: allowed number >= -1.0 <= 1.0"),
    ("backend", "tflite", "one of auto, torch, onnxruntime, openvino, tensorrt"),
    ("qos_depth", 0, "parameter 'qos_depth' = 0"),
    ("cameras", [], "non-empty list"),
    ("input_transport", "theora", "one of raw, compressed"),
    ("max_age_ms", -5, "max_age_ms"),
    ("diagnostics_period", 0, ">= 0.1"),
    # a period of a microsecond published 44,533 reports in 20 s and left the node 5 frames
    ("diagnostics_period", 1e-6, "parameter 'diagnostics_period' = 1e-06 is invalid: allowed number >= 0.1 <= 60"),
    # NaN passes every schema bound (comparisons with it are false): named instead of reaching the node
    ("threshold", float("nan"), "parameter 'threshold' = nan is invalid: allowed a finite number >= -1.0 <= 1.0"),
    ("diagnostics_period", float("nan"), "allowed a finite number >= 0.1"),
    # rclpy would refuse these topic names only when subscribing, in its own words
    ("cameras", ["/front/"], "parameter 'cameras' = ['/front/'] is invalid: allowed a non-empty list of ROS namespaces"),
    ("cameras", ["/car//front"], "no trailing slash), each once"),
    ("cameras", ["/car/2front"], "not starting with a digit"),
    ("cameras", ["/front", "/rear", "/front"], "each once"),  # outputs published twice
    ("num_threads", -1, "parameter 'num_threads' = -1 is invalid: allowed integer >= 0"),
    # 0 is no cap; a rate so low that the node would look dead (one frame a month) is refused
    ("max_rate_hz", 1e-9, "parameter 'max_rate_hz' = 1e-09 is invalid: allowed 0 or number >= 0.01"),
    ("max_rate_hz", -2.0, "parameter 'max_rate_hz' = -2.0 is invalid: allowed 0 or number >= 0.01"),
    ("overlay_max_rate_hz", -1.0, "parameter 'overlay_max_rate_hz' = -1.0 is invalid: allowed 0 or number >= 0.01"),
    ("autostart", "yes", "parameter 'autostart' = 'yes' is invalid: allowed boolean"),
    ("track_min_iou", 0.0, "parameter 'track_min_iou' = 0.0 is invalid: allowed number > 0 <= 1"),
    ("track_min_iou", float("nan"), "allowed a finite number > 0 <= 1"),
    ("track_max_lost", -1, "parameter 'track_max_lost' = -1 is invalid: allowed integer >= 0 <= 1000"),
    ("track_instances", 1, "parameter 'track_instances' = 1 is invalid: allowed boolean"),
    ("diagnostic_updater.use_fqn", "yes", "parameter 'diagnostic_updater.use_fqn' = 'yes' is invalid: allowed boolean"),
])
def test_bad_values_name_parameter_value_and_allowed(name, value, expected):
    with pytest.raises(ParameterError) as e:
        validate({name: value})
    assert expected in str(e.value) and "\n" not in str(e.value)


def test_ros_builtin_parameters_are_not_ours_but_typos_are():
    declared = {**defaults(), "use_sim_time": True, "start_type_description_service": True,
                "qos_overrides./parameter_events.publisher.depth": 1000, "treshold": 0.5}
    mine = user_parameters(declared)
    assert set(mine) == set(defaults()) | {"treshold"}
    with pytest.raises(ParameterError, match="unknown parameter 'treshold'"):
        validate(mine)


def test_paths_in_a_parameters_file_may_start_from_home(monkeypatch):
    """A YAML value is no shell word: `onnx: ~/graphs/street.onnx` reached the loader as written."""
    monkeypatch.setenv("HOME", "/home/driver")
    p = validate({"onnx": "~/graphs/street.onnx", "ego_mask_dir": "~/masks", "weights": "", "model": "street_lite0"})
    assert (p["onnx"], p["ego_mask_dir"], p["weights"], p["model"]) == (
        "/home/driver/graphs/street.onnx", "/home/driver/masks", "", "street_lite0")
    # the same file loaded again while the node runs (ros2 param load) changes nothing read at start-up
    assert updated(p, {"onnx": "~/graphs/street.onnx", "threshold": 0.6})["threshold"] == 0.6
    with pytest.raises(ParameterError, match="'onnx' is read at start-up only"):
        updated(p, {"onnx": "~/graphs/other.onnx"})


def test_wrong_type_is_named():
    with pytest.raises(ParameterError, match="parameter 'qos_depth' = 'deep' is invalid: allowed integer"):
        validate({"qos_depth": "deep"})


def test_unknown_parameter_names_the_nearest_known_one():
    with pytest.raises(ParameterError, match=r"unknown parameter 'treshold' \(did you mean 'threshold'\?\); allowed: "
                                             r"autostart, backend, "):
        validate({"treshold": 0.5})
    with pytest.raises(ParameterError) as e:  # nothing near: no guess
        validate({"zzz": 1})
    assert "did you mean" not in str(e.value) and "unknown parameter 'zzz'; allowed: " in str(e.value)


def test_live_parameters_change_and_start_up_ones_are_refused():
    """What `ros2 param set` may change while the node runs (ros/node.py applies it)."""
    current = validate({"threshold": 0.4})
    new = updated(current, {"threshold": 0.7, "publish_overlay": False, "max_age_ms": 100})
    assert (new["threshold"], new["publish_overlay"], new["max_age_ms"]) == (0.7, False, 100)
    assert current["threshold"] == 0.4  # the node's parameters are replaced, not edited in place
    assert updated(current, {"model": current["model"], "cameras": current["cameras"]}) == current  # unchanged: fine
    for name in set(defaults()) - set(LIVE_PARAMETERS):  # every start-up parameter, changed
        other = {"cameras": ["/x"], "qos_depth": 3, "diagnostics_period": 2.0}.get(name, "other")
        with pytest.raises(ParameterError, match=f"parameter '{name}' is read at start-up only"):
            updated(current, {name: other})
    with pytest.raises(ParameterError, match="parameter 'threshold' = 1.5 is invalid"):
        updated(current, {"threshold": 1.5})
    with pytest.raises(ParameterError, match="unknown parameter 'treshold'"):
        updated(current, {"treshold": 0.5})
    assert set(LIVE_PARAMETERS) < set(defaults())
    docs = descriptions()  # what `ros2 param describe` shows
    assert set(docs) == set(defaults()) and all(d["description"] for d in docs.values())
    assert docs["qos_depth"]["constraints"] == "integer >= 1 <= 100; read at start-up only"


@pytest.mark.parametrize("name, value, expected", [
    ("qos_overrides./cam/panoptic/semantic.publisher.reliability", "sometimes",
     "= 'sometimes' is invalid: allowed one of reliable, best_effort"),
    ("qos_overrides./cam/panoptic/semantic.publisher.reliability", 3, "= 3 is invalid"),
    ("qos_overrides./cam/panoptic/semantic.publisher.depth", 0, "= 0 is invalid: allowed an integer >= 1"),
    ("qos_overrides./cam/panoptic/semantic.publisher.depth", "deep", "= 'deep' is invalid"),
    ("qos_overrides./cam/panoptic/semantic.publisher.durability", "volatile", "not 'durability'"),
    ("qos_overrides./cam/panoptic/semantics.publisher.depth", 5, "overrides no topic of this node"),
    ("qos_overrides./cam/image.publisher.depth", 5, "overrides no topic of this node"),  # it subscribes there
])
def test_qos_overrides_are_checked_before_rclpy_reads_them(name, value, expected):
    topics = {"/cam/image": "subscription", "/cam/panoptic/semantic": "publisher", "/parameter_events": "publisher"}
    good = {"qos_overrides./cam/panoptic/semantic.publisher.reliability": "best_effort",
            "qos_overrides./cam/panoptic/semantic.publisher.depth": 3,
            "qos_overrides./cam/image.subscription.history": "keep_last",
            "qos_overrides./parameter_events.publisher.depth": 1000, "threshold": 0.5}
    check_qos_overrides(good, topics)
    with pytest.raises(ParameterError) as e:
        check_qos_overrides({**good, name: value}, topics)
    assert f"parameter '{name}'" in str(e.value) and expected in str(e.value)


def test_yaml_with_extra_key_fails_schema():
    doc = {"/**": {"ros__parameters": {**defaults(), "colour": "red"}}}
    with pytest.raises(ParameterError, match="colour"):
        validate_file(doc)


def test_a_params_file_may_hold_qos_overrides_and_the_schema_checks_them():
    good = {"/camera/front/panoptic/semantic": {"publisher": {"reliability": "best_effort", "depth": 3}},
            "/camera/front/image": {"subscription": {"history": "keep_last"}}}
    validate_file({"/**": {"ros__parameters": {**defaults(), "qos_overrides": good}}})
    assert "qos_overrides" not in defaults()  # rclpy declares them per topic, not the node
    for bad in ({"/camera/front/image": {"subscriber": {"depth": 3}}},
                {"/camera/front/image": {"subscription": {"depth": 0}}},
                {"/camera/front/image": {"subscription": {"durability": "volatile"}}}):
        with pytest.raises(ParameterError, match="qos_overrides"):
            validate_file({"/**": {"ros__parameters": {**defaults(), "qos_overrides": bad}}})


class FakeClock:
    def __init__(self):
        self.now = 0

    def __call__(self):
        return self.now


def test_newest_frame_wins_and_drops_are_counted():
    clock = FakeClock()
    buf = LatestFrameBuffer(clock, max_age_ms=0)
    for i in range(5):
        buf.put("front", f"f{i}", i)
    buf.put("rear", "r0", 0)
    taken = buf.take(timeout=0)
    assert taken["front"].msg == "f4" and taken["rear"].msg == "r0"
    assert buf.received["front"] == 5 and buf.dropped["front"] == 4 and buf.dropped["rear"] == 0
    assert buf.take(timeout=0) == {}


def test_stale_frames_are_dropped_by_node_clock():
    clock = FakeClock()
    buf = LatestFrameBuffer(clock, max_age_ms=100)
    clock.now = 1_000_000_000
    buf.put("front", "old", 800_000_000)   # 200 ms old
    buf.put("rear", "new", 950_000_000)    # 50 ms old
    taken = buf.take(timeout=0)
    assert list(taken) == ["rear"] and buf.stale["front"] == 1


def test_unstamped_frames_are_served_and_counted_not_dropped_as_stale():
    """A driver that leaves header.stamp at 0 sent frames the age check dropped one after another: the
    camera looked dead with nothing saying why."""
    clock = FakeClock()
    buf = LatestFrameBuffer(clock, max_age_ms=100)
    clock.now = 1_000_000_000_000
    buf.put("front", "unstamped", 0)
    assert list(buf.take(timeout=0)) == ["front"] and buf.stale["front"] == 0 and buf.unstamped["front"] == 1


def test_take_blocks_until_a_frame_arrives():
    buf = LatestFrameBuffer(FakeClock())
    got = []
    t = threading.Thread(target=lambda: got.append(buf.take(timeout=5)))
    t.start()
    buf.put("front", "x", 0)
    t.join(timeout=5)
    assert got and got[0]["front"].msg == "x"


def test_stats_percentiles():
    stats = NodeStats(clock=lambda: 0.0)
    for ms in range(1, 101):
        stats.add_timings({"detect": ms / 1000})
    p = stats.percentiles()
    assert p["detect"]["p50"] == pytest.approx(50.5) and p["total"]["p99"] == pytest.approx(99.01)


def _report(stats, buf, timeout_s=2.0):
    """statuses() for one camera 'front' -> (inference status, the camera's status)."""
    inference, camera = stats.statuses(buf, {"front": "/front/image"}, timeout_s, {"model": "street_lite0",
                                                                                    "backend": "torch"})
    return inference, camera


def test_rate_is_over_the_last_seconds_and_falls_to_zero_when_the_camera_stops():
    t = [0.0]
    stats = NodeStats(clock=lambda: t[0])
    for i in range(1, 101):          # 10 Hz for 10 s
        t[0] = i * 0.1
        stats.frame_arrived("front")
    assert stats.rate_hz("front") == pytest.approx(10.0)
    t[0] = 12.5                      # silent for 2.5 s: half the window holds frames
    assert stats.rate_hz("front") == pytest.approx(25 / 5.0)
    t[0] = 15.01                     # a rate kept from the last frames would still say 10 Hz
    assert stats.rate_hz("front") == 0.0
    early = NodeStats(clock=lambda: t[0])  # 1 s after start-up: counted over that second, not 5
    t[0] += 1.0
    for _ in range(20):
        early.frame_arrived("front")
    assert early.rate_hz("front") == pytest.approx(20.0)


@pytest.mark.parametrize("info, frames, fits", [
    ((1280, 720, 0, 0, 0, 0), (1280, 720), True),
    ((1280, 720, 0, 0, 0, 0), (640, 360), False),     # calibrated at full resolution, the driver now sends half
    ((1280, 720, 2, 2, 0, 0), (640, 360), True),      # binning 2 says so
    ((1280, 720, 1, 1, 640, 360), (640, 360), True),  # a region of interest says so
    ((1280, 720, 2, 2, 640, 360), (640, 360), False)])
def test_a_calibration_that_does_not_fit_the_frames_is_a_warning(info, frames, fits):
    """The node passes each camera's camera_info on with its maps; intrinsics of another resolution would
    misplace every pixel a consumer projects. Its roi and binning are read as image_geometry reads them."""
    t = [0.0]
    stats = NodeStats(clock=lambda: t[0])
    buf = LatestFrameBuffer(FakeClock())
    for _ in range(5):
        t[0] += 0.1
        stats.frame_arrived("front")
        stats.frame_published("front", age_ms=30.0, size=frames)
    assert [s.level for s in _report(stats, buf)] == [0, 0]  # no camera_info yet: nothing to judge
    width, height, binning_x, binning_y, roi_width, roi_height = info
    stats.camera_info_arrived("front", SimpleNamespace(width=width, height=height, binning_x=binning_x,
                                                       binning_y=binning_y,
                                                       roi=SimpleNamespace(width=roi_width, height=roi_height)))
    cam = _report(stats, buf)[1]
    assert cam.values["camera info"] == "1280x720"
    if fits:
        assert (cam.level, cam.message) == (0, "ok")
    else:
        calibrated = f"{info[4] or 1280}x{info[5] or 720}" if not info[2] else "320x180"
        assert cam.level == 1 and cam.message.startswith(
            f"camera_info describes {calibrated} frames (after its roi and binning), the frames are "
            f"{frames[0]}x{frames[1]}: the maps go out with a calibration that does not fit them"), cam.message


def test_a_node_that_hears_its_cameras_and_publishes_nothing_is_not_ok():
    """A call that never ends (a stalled runtime), an inference thread that died, failed publications: the
    cameras still arrive, so without these the report would say ok while nothing leaves the node."""
    t = [0.0]
    stats = NodeStats(clock=lambda: t[0])
    buf = LatestFrameBuffer(FakeClock())

    def frames_until(end, publish=True):  # 10 Hz frames, each served at once unless publish is False
        while t[0] < end - 1e-9:
            t[0] = round(t[0] + 0.1, 6)
            stats.frame_arrived("front")
            if publish:
                call = stats.call_started()
                stats.frame_published("front", age_ms=30.0)
                stats.call_ended(call)

    frames_until(1.0)
    assert [s.level for s in _report(stats, buf)] == [0, 0]
    stuck = stats.call_started()      # a call that does not end, frames still arriving
    frames_until(2.5, publish=False)
    inference, cam = _report(stats, buf)
    assert (inference.level, cam.level) == (0, 0)  # 1.5 s: within camera_timeout_s (2 s)
    frames_until(4.0, publish=False)
    inference, cam = _report(stats, buf)
    assert (inference.level, inference.message) == (1, "one inference call has run for 3.0 s (the first frame of "
                                                       "a new size makes its graph: warmup_sizes makes it at "
                                                       "configure)")
    assert inference.values["current call (s)"] == "3.0"
    assert (cam.level, cam.message) == (1, f"frames arrive on /front/image, and no output has left for 3.0 s "
                                           f"({inference.message})")
    frames_until(32.0, publish=False)
    inference, cam = _report(stats, buf)
    assert (inference.level, inference.message) == (2, "one inference call has run for 31 s: the runtime is "
                                                       "stalled, nothing is published")
    stats.call_ended(stuck)
    frames_until(33.0)                # it came back: ok again
    assert [s.level for s in _report(stats, buf)] == [0, 0]
    stats.worker_stopped("IndexError: list index out of range")
    frames_until(36.0, publish=False)
    inference, cam = _report(stats, buf)
    assert (inference.level, inference.message) == (2, "the inference thread stopped (IndexError: list index out "
                                                       "of range): nothing more is published; deactivate and "
                                                       "activate the node (ros2 lifecycle set) or restart it")
    assert cam.level == 1 and cam.message.startswith("frames arrive on /front/image, and no output has left for 3.0 s")

    fresh = NodeStats(clock=lambda: t[0])  # no output since the first frame, and a max_rate_hz gap allowed
    fresh.frame_arrived("front")
    t[0] += 2.5
    fresh.frame_arrived("front")
    _, cam = fresh.statuses(buf, {"front": "/front/image"}, 2.0, {}, max_rate_hz=0.25)  # a call every 4 s
    assert cam.level == 0
    _, cam = fresh.statuses(buf, {"front": "/front/image"}, 2.0, {})
    assert cam.level == 1 and "no output has left for 2.5 s (see inference)" in cam.message
    slow = NodeStats(clock=lambda: t[0])  # a model that takes 2.5 s a frame here: slow, not stalled
    for _ in range(5):
        slow.add_timings({"detect": 2.5})
    slow.frame_arrived("front")
    slow.frame_published("front", age_ms=2600.0)
    slow.call_started()
    t[0] += 4.0
    slow.frame_arrived("front")
    assert [s.level for s in slow.statuses(buf, {"front": "/front/image"}, 2.0, {})] == [0, 0]
    t[0] += 4.0                       # 8 s: past three times its slowest frame
    slow.frame_arrived("front")
    inference, cam = slow.statuses(buf, {"front": "/front/image"}, 2.0, {})
    assert (inference.level, cam.level) == (1, 1) and "has run for 8.0 s" in inference.message
    fresh.publish_failed("ValueError: bad header")
    inference, _ = fresh.statuses(buf, {"front": "/front/image"}, 2.0, {})
    assert (inference.level, inference.message) == (1, "1 publication(s) failed since the last report: "
                                                       "ValueError: bad header")
    assert inference.values["publish failures"] == "1"


def test_camera_status_levels_follow_what_happened_since_the_last_report():
    t = [0.0]
    stats = NodeStats(clock=lambda: t[0])
    buf = LatestFrameBuffer(FakeClock())
    _, cam = _report(stats, buf)
    assert (cam.level, cam.message) == (1, "waiting for the first frame on /front/image")
    assert cam.values["seconds since last frame"] == "never" and cam.hardware_id == "front"
    t[0] = 3.0
    _, cam = _report(stats, buf)
    assert (cam.level, cam.message) == (2, "no frame on /front/image since start-up (3.0 s)")
    for i in range(10):
        t[0] = 3.0 + i * 0.1
        stats.frame_arrived("front")
        buf.put("front", "x", 1 + i)
        stats.frame_published("front", age_ms=40.0 + i)
    _, cam = _report(stats, buf)
    assert (cam.level, cam.message) == (0, "ok")
    assert cam.values["frame age at publish p50 (ms)"] == "44.5" and cam.values["frame age at publish p99 (ms)"] == "48.9"
    assert cam.values["received"] == "10" and cam.values["published"] == "10"
    assert cam.values["output rate (Hz)"] == f"{10 / 3.9:.2f}"  # over the 3.9 s since start-up
    stats.bad_frames["front"] += 2
    buf.stale["front"] += 1
    _, cam = _report(stats, buf)
    assert cam.level == 1 and cam.message == ("2 undecodable frame(s), 1 frame(s) older than max_age_ms since "
                                              "the last report")
    assert cam.values["bad frames"] == "2"
    _, cam = _report(stats, buf)  # nothing new since: back to OK (a bad frame an hour ago is history)
    assert (cam.level, cam.message) == (0, "ok") and cam.values["bad frames"] == "2"
    t[0] = 3.9 + 2.5              # the camera stops
    _, cam = _report(stats, buf)
    assert (cam.level, cam.message) == (2, "no frame on /front/image for 2.5 s")
    _, cam = _report(stats, buf, timeout_s=5.0)  # camera_timeout_s is the user's
    assert cam.level == 0


def test_unstamped_frames_and_a_camera_clock_ahead_are_warnings_that_say_so():
    t = [0.0]
    stats = NodeStats(clock=lambda: t[0])
    buf = LatestFrameBuffer(FakeClock())
    t[0] = 1.0
    stats.frame_arrived("front")
    buf.put("front", "x", 0)
    stats.frame_published("front", age_ms=None)  # no stamp: no age either
    _, cam = _report(stats, buf)
    assert cam.level == 1 and cam.message.startswith("1 frame(s) without a header stamp (0: their age is unknown")
    assert cam.values["unstamped frames"] == "1" and "frame age at publish p50 (ms)" not in cam.values
    for age in (-400.0, -390.0, -410.0):  # stamped 0.4 s in the node's future
        stats.frame_arrived("front")
        stats.frame_published("front", age_ms=age)
    _, cam = _report(stats, buf)
    assert cam.level == 1 and cam.message.startswith("frames on /front/image are stamped 400 ms ahead of the "
                                                     "node's clock (median)")
    assert cam.message.endswith("synchronise the clocks, e.g. with chrony or PTP)")


def test_a_camera_topic_two_nodes_publish_on_is_named_whatever_else_is_said():
    """`ros2 bag play` beside the running driver: two sources interleaved as one camera, the bag's frames dropped
    as stale ('synchronise the clocks'), with nothing naming the second publisher."""
    stats = NodeStats(clock=lambda: 1.0)
    buf = LatestFrameBuffer(FakeClock())
    stats.frame_arrived("front")
    stats.frame_published("front", age_ms=20.0)
    _, cam = _report(stats, buf)
    assert cam.level == 0
    stats.publishers["front"] = ["/rosbag2_player", "/usb_cam"]
    _, cam = _report(stats, buf)
    assert (cam.level, cam.message) == (1, "2 nodes publish on /front/image (/rosbag2_player, /usb_cam): their "
                                           "frames are served as one camera's (a bag playing beside the live driver?)")
    assert cam.values["publishers"] == "/rosbag2_player, /usb_cam"
    t = [0.0]
    silent = NodeStats(clock=lambda: t[0])  # an ERROR keeps its level and its words, the note after them
    t[0] = 10.0
    silent.publishers["front"] = ["/a", "/b"]
    _, cam = _report(silent, buf)
    assert cam.level == 2 and cam.message.startswith("no frame on /front/image since start-up")
    assert cam.message.endswith("; 2 nodes publish on /front/image (/a, /b): their frames are served as one "
                                "camera's (a bag playing beside the live driver?)")
    del stats.publishers["front"]  # gone once only one publishes again
    _, cam = _report(stats, buf)
    assert cam.level == 0 and "publishers" not in cam.values


def test_the_advice_for_another_clock_follows_the_nodes_clock():
    """On sim time with no /clock the node's clock reads 0 and every live frame is decades 'ahead': the advice
    to synchronise with chrony misled (the node should not be on sim time, or the bag wants --clock)."""
    assert clock_advice(False, 123) == "synchronise the clocks, e.g. with chrony or PTP"
    assert "no /clock has come: play the bag with --clock, or set use_sim_time false" in clock_advice(True, 0)
    assert "its clock is /clock's" in clock_advice(True, 5 * 10**9)
    stats = NodeStats(clock=lambda: 1.0)
    buf = LatestFrameBuffer(FakeClock())
    stats.frame_arrived("front")
    stats.frame_published("front", age_ms=-1.8e12)
    stats.clock_advice = clock_advice(True, 0)  # as the node sets it at each report
    _, cam = _report(stats, buf)
    assert cam.level == 1 and cam.message.endswith("(max_age_ms cannot judge them; the node runs on sim time "
                                                   "(use_sim_time) and no /clock has come: play the bag with "
                                                   "--clock, or set use_sim_time false for live cameras)")
    clock = FakeClock()  # and for frames far behind it (a bag's /clock years before a live camera's stamps)
    buf = LatestFrameBuffer(clock, max_age_ms=100)
    stats = NodeStats(clock=lambda: 1.0)
    stats.frame_arrived("front")
    clock.now = 3600 * 10**9
    buf.put("front", "live", 10**9)
    buf.take(timeout=0)
    stats.clock_advice = clock_advice(True, clock.now)
    _, cam = _report(stats, buf)
    assert "behind the node's clock: the camera does not stamp with the node's clock, e.g. time since boot; the " \
           "node runs on sim time (use_sim_time): its clock is /clock's" in cam.message


def test_stale_frames_say_how_old_and_a_camera_on_another_clock_is_named():
    """A driver stamping with time since boot sends frames hours 'old' by the node's clock: every one was
    dropped as stale with nothing saying why."""
    clock = FakeClock()
    buf = LatestFrameBuffer(clock, max_age_ms=100)
    stats = NodeStats(clock=lambda: 0.0)
    stats.frame_arrived("front")
    clock.now = 3600 * 10**9 + 5 * 10**9
    buf.put("front", "boot time", 5 * 10**9)  # stamped 5 s after the camera booted
    buf.take(timeout=0)
    _, cam = _report(stats, buf)
    assert cam.level == 1 and "1 frame(s) older than max_age_ms (the last 3600 s behind the node's clock: the " \
                              "camera does not stamp with the node's clock" in cam.message
    buf.put("front", "late", clock.now - 200 * 10**6)  # 200 ms: a slow wire, not another clock
    buf.take(timeout=0)
    _, cam = _report(stats, buf)
    assert "1 frame(s) older than max_age_ms (the last 200 ms old)" in cam.message


def test_inference_status_reports_failures_since_the_last_report():
    stats = NodeStats(clock=lambda: 0.0)
    buf = LatestFrameBuffer(FakeClock())
    stats.inference_done([{"detect": 0.010}, {"detect": 0.020}])  # a batch of two cameras' frames
    inference, _ = _report(stats, buf)
    assert (inference.level, inference.message, inference.hardware_id) == (0, "ok", "street_lite0")
    assert inference.values["backend"] == "torch" and inference.values["latency detect p50 (ms)"] == "15.0"
    stats.inference_failed("RuntimeError: graph export failed")
    inference, _ = _report(stats, buf)
    assert inference.level == 2 and inference.message == ("1 inference call(s) failed since the last report, "
                                                          "none succeeded: RuntimeError: graph export failed")
    stats.inference_failed("RuntimeError: again")
    stats.inference_done([{"detect": 0.010}])
    inference, _ = _report(stats, buf)
    assert inference.level == 1 and inference.message.startswith("1 inference call(s) failed since the last report:")
    assert inference.values["inference failures"] == "2"
    inference, _ = _report(stats, buf)
    assert inference.level == 0


def test_overlay_names_each_thing_and_large_stuff_regions():
    """Colours alone do not say which class is which: a thing gets a tag of its class colour (darkened) with
    white text just above its box, a large stuff region its name inside it; nothing else changes."""
    camvid = get_taxonomy("camvid")
    ids = np.zeros((120, 160), np.int64)
    ids[:60] = 1                 # sky: half the frame
    ids[70:110, 100:150] = 2     # a car
    ids[0:30, 0:20] = 3          # a car at the top-left corner: its tag goes inside the frame
    r = result_from_segments(ids, np.array([0, 8, 8]), np.array([0.9, 0.8, 0.7]), camvid.thing_lut, "camvid")
    rgb = np.full((120, 160, 3), 100, np.uint8)
    plain, named = overlay(rgb, r, camvid, labels=False), overlay(rgb, r, camvid)
    changed = (plain != named).any(-1)
    car_tag = camvid.color_lut[8] // 2
    rows = np.nonzero(changed[60:, :].any(1))[0] + 60    # below the sky: the tag above the lower car only
    assert rows.max() == 69 and (named[69, 100] == car_tag).all()
    tag = named[rows.min():70, 100:]
    assert (tag == 255).all(-1).any()                    # white text on it
    cols = np.nonzero(changed[60:70].any(0))[0]           # at the box's corner, or moved left just enough
    assert cols.min() == min(100, 160 - (cols.max() - cols.min() + 1))   # to end at the frame's edge
    assert not changed[60:, :cols.min()].any()           # nothing else below the sky
    assert (named[0, 0] == car_tag).all()                # the corner car's tag starts at (0, 0), inside the frame
    assert changed[:60, 20:].any()                       # the sky's name
    small = result_from_segments(ids[:95], np.array([0, 8, 8]), np.array([0.9, 0.8, 0.7]), camvid.thing_lut, "camvid")
    assert np.array_equal(overlay(rgb[:95], small, camvid), overlay(rgb[:95], small, camvid, labels=False))  # no room


def test_overlay_labels_with_an_old_pillows_bitmap_font(monkeypatch):
    """Pillow 9.0 (Ubuntu 22.04's apt Pillow, a Jetson's) as the overlay meets it: load_default takes no size
    and gives a bitmap font, which takes no outline, textbbox measures TrueType fonts only ("Only supported
    for TrueType fonts": `make demo` stopped there on the first frame with Ubuntu 22.04's packages, and the
    node could publish no overlay), and the bitmap font measures text with getsize (gone in Pillow 10).
    The overlay must still be labelled."""
    from PIL import ImageDraw, ImageFont

    from panoptic_node import render

    bitmap_font = getattr(ImageFont, "load_default_imagefont", None)
    if bitmap_font is None:   # Pillow 10.1 and 10.2 have sizes but no bitmap loader of its own to stand in with
        pytest.skip("this Pillow has no ImageFont.load_default_imagefont (Pillow >= 10.3) to play an old Pillow")

    def old_load_default(**kwargs):
        if kwargs:
            raise TypeError("load_default() got an unexpected keyword argument 'size'")
        return bitmap_font()

    new_textbbox = ImageDraw.ImageDraw.textbbox

    def old_textbbox(self, xy, text, font=None, **kwargs):
        if not isinstance(font, ImageFont.FreeTypeFont):
            raise ValueError("Only supported for TrueType fonts")
        return new_textbbox(self, xy, text, font=font, **kwargs)

    def old_getsize(self, text):
        x0, y0, x1, y1 = self.getbbox(text)
        return x1, y1

    monkeypatch.setattr(ImageFont, "load_default", old_load_default)
    monkeypatch.setattr(ImageDraw.ImageDraw, "textbbox", old_textbbox)
    monkeypatch.setattr(ImageFont.ImageFont, "getsize", old_getsize, raising=False)
    render._font.cache_clear()
    try:
        camvid = get_taxonomy("camvid")
        ids = np.zeros((120, 160), np.int64)
        ids[:60], ids[70:110, 100:150] = 1, 2
        r = result_from_segments(ids, np.array([0, 8]), np.array([0.9, 0.8]), camvid.thing_lut, "camvid")
        rgb = np.full((120, 160, 3), 100, np.uint8)
        named, plain = overlay(rgb, r, camvid), overlay(rgb, r, camvid, labels=False)
        assert not hasattr(render._font(12), "size")                  # the bitmap font was the one used
        assert (named != plain).any(-1)[:60].any() and (named[69, 100] == camvid.color_lut[8] // 2).all()
        car = next(s for s in r.segments if s.is_thing)
        text_width = old_getsize(render._font(12), f"{camvid.name_of(8)} #{car.instance} {car.score:.2f}")[0]
        rows, cols = np.nonzero((named[:70] == camvid.color_lut[8] // 2).all(-1))   # the car's tag above it
        assert rows.max() == 69 and cols.max() - cols.min() + 1 == text_width + 4     # sized by getsize
    finally:
        render._font.cache_clear()


def test_overlay_renderer():
    camvid = get_taxonomy("camvid")
    ids = np.zeros((20, 30), np.int64)
    ids[:10] = 1
    ids[10:, :15] = 2
    r = result_from_segments(ids, np.array([0, 8]), np.array([0.9, 0.8]), camvid.thing_lut, "camvid")
    rgb = np.full((20, 30, 3), 100, np.uint8)
    out = overlay(rgb, r, camvid)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out[15, 25], rgb[15, 25])          # void keeps the frame
    assert (out[2, 5] == (114, 114, 114)).all()                       # sky: half grey 128 over 100
    assert (out[10, 5] == 255).all() and (out[12, 15] == 255).all()   # boundaries drawn
    with pytest.raises(ValueError, match="differ in size"):
        overlay(rgb[:10], r, camvid)


def test_colorize_equals_colouring_each_pixel():
    # per pixel: the class colour, a thing instance shaded by (instance * 37) % 61 - 30, clipped
    from panoptic_node.render import colorize
    camvid = get_taxonomy("camvid")
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 7, (16, 24))
    labels = np.array([0, 8, 8, 9, 3, 8])  # sky, three cars, a pedestrian, road
    r = result_from_segments(ids, labels, np.full(6, 0.9), camvid.thing_lut, "camvid")
    expected = camvid.color_lut[r.semantic].astype(int)
    shade = np.where(r.instance > 0, (r.instance.astype(int) * 37) % 61 - 30, 0)
    expected = np.clip(expected + shade[..., None], 0, 255)
    got = colorize(r, camvid)
    assert len({int(i) for i in np.unique(r.instance)} - {0}) == 4
    np.testing.assert_array_equal(got[r.segment_ids > 0], expected[r.segment_ids > 0])


def test_overlay_blends_each_pixel_as_written_out_by_hand():
    """Without labels: a segment's pixel is (frame x (256 - a) + colour x a) >> 8 with a = alpha x 256, a void
    pixel keeps the frame, a boundary pixel is white; checked pixel by pixel in Python integers."""
    from panoptic_node.render import boundaries, colorize
    camvid = get_taxonomy("camvid")
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 5, (12, 18))
    r = result_from_segments(ids, np.array([3, 8, 8, 0]), np.full(4, 0.9), camvid.thing_lut, "camvid")
    rgb = rng.integers(0, 256, (12, 18, 3), dtype=np.uint8)
    colours, edge = colorize(r, camvid), boundaries(r.segment_ids)
    assert (r.segment_ids == 0).any() and not edge.all()
    for alpha in (0.5, 0.3):
        a = round(alpha * 256)
        out = overlay(rgb, r, camvid, alpha=alpha, labels=False)
        for y, x in np.ndindex(ids.shape):
            if edge[y, x]:
                want = [255, 255, 255]
            elif r.segment_ids[y, x] == 0:
                want = [int(v) for v in rgb[y, x]]
            else:
                want = [(int(f) * (256 - a) + int(c) * a) >> 8 for f, c in zip(rgb[y, x], colours[y, x])]
            assert out[y, x].tolist() == want, (y, x)


def test_side_by_side_fits_each_camera_into_one_tile_size():
    """A video frame of constant size whatever the cameras: each image scaled to fit the tile with its
    aspect kept and centred on black; a camera without a frame yet is a black tile."""
    from panoptic_node.render import side_by_side
    wide = np.full((40, 80, 3), 200, np.uint8)    # fits 48 x 64 as 32 x 64, rows 8..40
    tall = np.full((100, 50, 3), 100, np.uint8)   # fits as 48 x 24, columns 20..44
    row = side_by_side([wide, tall, None], 48, 64)
    assert row.shape == (48, 192, 3) and row.dtype == np.uint8
    expected = np.zeros((48, 192, 3), np.uint8)
    expected[8:40, 0:64] = 200
    expected[:, 64 + 20:64 + 44] = 100
    np.testing.assert_array_equal(row, expected)
    assert side_by_side([np.full((48, 64, 3), 7, np.uint8)], 48, 64).tolist() == np.full((48, 64, 3), 7).tolist()


def test_the_node_pipeline_runs_on_num_threads(monkeypatch):
    """num_threads reaches make_pipeline, which gives it to every runtime (test_graph_cache.py)."""
    import panoptic_node.inference.backends as backends
    from panoptic_node.params import make_node_pipeline
    asked = {}
    monkeypatch.setattr(backends, "make_pipeline", lambda *args, **kwargs: asked.update(kwargs))
    make_node_pipeline(validate({"num_threads": 1}))
    assert asked["threads"] == 1


def test_a_missing_module_is_one_line_naming_what_provides_it():
    from panoptic_node.errors import missing_module
    said = {name: missing_module(ModuleNotFoundError(f"No module named '{name}'", name=name))
            for name in ("torch", "ray", "rclpy", "sensor_msgs", "vision_msgs", "tensorrt", "scipy")}
    assert all(line.startswith(f"no module named '{name}' for {sys.executable}: ") and "\n" not in line
               for name, line in said.items())
    assert "pip install -e '.[cpu]'" in said["torch"] and "pip install -e '.[fleet]'" in said["ray"]
    assert "pip install -e '.'" in said["scipy"]
    assert "source /opt/ros/$ROS_DISTRO/setup.bash" in said["rclpy"] and "source" in said["sensor_msgs"]
    assert "ros-$ROS_DISTRO-vision-msgs" in said["vision_msgs"] and "another backend" in said["tensorrt"]


def test_the_node_executable_says_in_one_line_what_its_python_lacks(tmp_path):
    """Started where ROS 2 is not sourced, or by a Python that lacks torch (colcon run by a Python other than
    the one the package was pip-installed in), the executable printed an import traceback."""
    run = run_without(["rclpy"], "from panoptic_node.ros import main\nmain()", tmp_path)
    assert run.returncode == 1 and run.stdout == ""
    assert run.stderr.splitlines() == [
        f"[panoptic_node] error: no module named 'rclpy' for {sys.executable}: source your ROS 2 install first "
        f"(source /opt/ros/$ROS_DISTRO/setup.bash)"]
    run = run_without(["torch"], "from panoptic_node.ros import main\nmain()", tmp_path)
    lines = run.stderr.splitlines()
    assert run.returncode == 1 and len(lines) == 1 and lines[0].startswith("[panoptic_node] error: no module named ")
    if all(importlib.util.find_spec(m) for m in ("rclpy", "vision_msgs")):   # else the first one missing is named
        assert f"'torch' for {sys.executable}: pip install -e '.[cpu]'" in lines[0], lines


def test_a_command_whose_python_lacks_torch_says_so_in_one_line_and_writes_nothing(tmp_path):
    image = tmp_path / "frame.png"
    Image.fromarray(np.zeros((32, 48, 3), np.uint8)).save(image)
    before = image.read_bytes()
    run = run_without(["torch"], f"import sys\nfrom panoptic_node.cli import main\n"
                                  f"sys.exit(main(['infer', {str(image)!r}, '--out', 'out']))", tmp_path)
    assert run.returncode == 2
    assert run.stderr.splitlines()[-1] == (
        f"panoptic-node infer: error: no module named 'torch' for {sys.executable}: pip install -e '.[cpu]' in the "
        f"package's folder puts it there (a node colcon built runs with the Python that ran colcon: README, For "
        f"ROS 2 users)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frame.png"] and image.read_bytes() == before


@pytest.mark.parametrize("encoding, dtype, top", [("mono8", np.uint8, 255), ("mono16", np.uint16, 65535)])
def test_a_label_maps_png_twin_is_lossless_and_named_as_image_transport_names_it(encoding, dtype, top):
    """<ns>/panoptic/semantic/compressed and instances/compressed: PNG, which keeps every label and instance id
    (JPEG would blur them into other classes); decoded here by Pillow alone, at full depth."""
    import io
    from panoptic_node.messages import png_fields
    rng = np.random.default_rng(3)
    labels = np.zeros((37, 53), dtype)
    labels[5:20, 10:40] = rng.integers(0, top, (15, 30), endpoint=True).astype(dtype)  # ids up to the top
    labels[0, 0], labels[-1, -1] = top, 1
    fields = png_fields(labels, encoding)
    assert fields["format"] == f"{encoding}; png compressed "
    with Image.open(io.BytesIO(fields["data"])) as im:
        assert im.format == "PNG"
        decoded = np.asarray(im)
    assert decoded.shape == labels.shape and np.array_equal(decoded.astype(np.int64), labels.astype(np.int64))
    if dtype is np.uint8:  # label maps are runs of few values: tens of times smaller than the raw map
        flat = np.repeat(np.arange(12, dtype=np.uint8), 360 * 480 // 12).reshape(360, 480)
        assert len(png_fields(flat, encoding)["data"]) * 20 < flat.nbytes


@pytest.mark.parametrize("encoding,dtype,top", [("mono8", np.uint8, 255), ("mono16", np.uint16, 65535)])
def test_png_labels_read_a_twin_back_exactly(encoding, dtype, top):
    """evaluate reads a recording of the twins with png_labels: the map png_fields wrote, value for value and
    in its own dtype (checked against Pillow above, so the two are not only each other's inverse)."""
    from types import SimpleNamespace
    from panoptic_node.messages import png_fields, png_labels
    labels = np.random.default_rng(4).integers(0, top, (29, 41), endpoint=True).astype(dtype)
    labels[0, 0] = top
    got = png_labels(SimpleNamespace(**png_fields(labels, encoding)))
    assert got.dtype == dtype and np.array_equal(got, labels)


def test_png_labels_refuse_what_is_not_a_lossless_label_map():
    import io
    from types import SimpleNamespace
    from panoptic_node.messages import FrameError, jpeg_fields, png_fields, png_labels
    mono16 = png_fields(np.full((6, 8), 300, np.uint16), "mono16")["data"]
    jpeg = jpeg_fields(np.zeros((6, 8, 3), np.uint8))
    rgb_png = io.BytesIO()
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(rgb_png, format="PNG")
    bomb = io.BytesIO()
    Image.new("L", (9000, 8000)).save(bomb, format="PNG")  # a few KB declaring 72 megapixels
    for fmt, data, says in (
            (jpeg["format"], jpeg["data"], "expected a lossless label map ('mono8; png compressed ' or"),
            ("mono8; jpeg compressed ", jpeg["data"], "expected a lossless label map"),
            ("mono8; png compressed ", mono16, "holds a PNG image of mode I;16; expected a one-channel 8-bit PNG"),
            ("mono16; png compressed ", rgb_png.getvalue(), "holds a PNG image of mode RGB; expected a one-channel "
                                                            "16-bit PNG"),
            ("mono8; png compressed ", mono16[:40], "does not decode as a PNG label map"),
            ("mono8; png compressed ", bomb.getvalue(), "declares 9000x8000 pixels")):
        with pytest.raises(FrameError, match=re.escape(says)):
            png_labels(SimpleNamespace(format=fmt, data=data))


def test_a_map_with_no_png_form_is_refused():
    from panoptic_node.messages import png_fields
    with pytest.raises(ValueError, match="cannot PNG-compress encoding '32SC1', expected one of"):
        png_fields(np.zeros((4, 4), np.int32), "32SC1")
    with pytest.raises(ValueError, match="mono8 needs an H x W array"):
        png_fields(np.zeros((4, 4, 3), np.uint8), "mono8")


def test_why_a_camera_receives_nothing_names_what_the_graph_shows():
    """The node's graph checks, ROS-free: another message type on the topic names the type, its nodes and the
    setting that reads it; a topic nobody publishes names up to three image topics of its type, those under
    the camera first, never an output of ours nor another camera's input, and nothing when there is none."""
    from panoptic_node.node_stats import no_publisher_why, wrong_type_why
    image, compressed = "sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage"
    assert wrong_type_why(image, "raw", {(compressed, "usb_cam")}) == (
        "a publisher sends sensor_msgs/msg/CompressedImage (from usb_cam), not the sensor_msgs/msg/Image that "
        "input_transport raw reads: set input_transport: compressed, or point the camera at the driver's raw topic")
    assert wrong_type_why(compressed, "compressed", {(image, "b"), (image, "a")}).endswith(
        "(from a, b), not the sensor_msgs/msg/CompressedImage that input_transport compressed reads: set "
        "input_transport: raw, or point the camera at the driver's compressed topic")
    assert wrong_type_why(image, "raw", {("sensor_msgs/msg/Imu", "imu")}).endswith(
        "point the camera at the driver's image topic")
    graph = [("/a/image_raw", [image]), ("/cam/front/color/image_raw", [image]), ("/cam/front/imu", ["x/Imu"]),
             ("/cam/front/panoptic/overlay", [image]), ("/cam/rear/image", [image]), ("/b/image_raw", [image]),
             ("/c/image_raw", [image]), ("/d/image/compressed", [compressed])]
    why = no_publisher_why("/cam/front", image, graph, {"/cam/front/image", "/cam/rear/image"})
    assert why == ("no publisher on it; sensor_msgs/msg/Image topics on the graph: /cam/front/color/image_raw, "
                   "/a/image_raw, /b/image_raw (point the camera at its driver's with image_topics:= or a remap)")
    assert no_publisher_why("/cam/front", compressed, graph, set()).startswith(
        "no publisher on it; sensor_msgs/msg/CompressedImage topics on the graph: /d/image/compressed (")
    assert no_publisher_why("/cam/front", image, graph[2:5], {"/cam/rear/image"}) is None


def test_weights_replaced_or_removed_while_the_node_runs_are_noticed(tmp_path):
    """A deployment that copies new weights over the file the node loaded changes nothing it does: the file is
    looked at each report (stat) and hashed again only when that changes; the same bytes touched are no change."""
    import os
    from panoptic_node.inference.cache_key import weights_identity
    from panoptic_node.inference.weights_watch import MISSING, WeightsWatch
    weights = tmp_path / "street.pth"
    weights.write_bytes(b"the weights the node loaded")
    loaded = weights_identity(weights)
    watch = WeightsWatch(weights, loaded)
    assert watch.changed() is None
    os.utime(weights, ns=(1, 1))  # touched, the same bytes
    assert watch.changed() is None
    weights.write_bytes(b"new weights, copied in place")
    assert watch.changed() == weights_identity(weights) != loaded
    weights.unlink()
    assert watch.changed() == MISSING
    weights.write_bytes(b"the weights the node loaded")  # put back
    assert watch.changed() is None


def test_weights_changed_on_disk_are_a_warning_that_says_what_runs_and_how_to_run_the_new_ones():
    from panoptic_node.inference.weights_watch import MISSING
    stats = NodeStats(clock=lambda: 0.0)
    buf = LatestFrameBuffer(FakeClock())
    info = {"model": "street_lite0", "backend": "torch", "weights": "street_lite0.pth, sha256 2b958c155251"}

    def inference():
        return stats.statuses(buf, {"front": "/front/image"}, 2.0, info)[0]
    assert inference().level == 0 and "weights on disk" not in inference().values
    stats.weights_on_disk = "street_lite0.pth, sha256 0123456789ab"
    status = inference()
    assert status.level == 1 and status.values["weights on disk"] == "street_lite0.pth, sha256 0123456789ab"
    assert status.message == (
        "street_lite0.pth changed on disk since the node loaded it (now sha256 0123456789ab): it runs the weights it "
        "loaded (street_lite0.pth, sha256 2b958c155251); restart it, or lifecycle deactivate, cleanup, configure, "
        "activate, to run the new ones")
    stats.weights_on_disk = MISSING
    assert inference().message == ("street_lite0.pth is no longer on disk: the node runs the weights it loaded "
                                   "(street_lite0.pth, sha256 2b958c155251), and a restart would find none")
    stats.worker_stopped("boom")  # a worse fault keeps its level and words; the value still says it
    status = inference()
    assert status.level == 2 and "the inference thread stopped" in status.message
    assert status.values["weights on disk"] == MISSING


def test_what_the_node_ran_names_its_int8_scales_and_weight_width(tiny_pipeline):
    """The values a recording keeps of what ran: an int8 node also says its scales, its graphs' weight width
    (7 bits on a CPU whose int8 kernels overflow 8-bit weights) and their matrix products (float there), which
    replay on another machine compares."""
    from panoptic_node import __version__
    from panoptic_node.bag.recorded_health import RAN_KEYS, ran_line
    from panoptic_node.node_stats import what_ran
    fp32 = what_ran(tiny_pipeline)
    assert fp32 == {"backend": "torch", "model": tiny_pipeline.cfg.name, "precision": "fp32",
                    "weights": tiny_pipeline.weights_id, "version": __version__}
    int8 = SimpleNamespace(backend=SimpleNamespace(name="openvino", precision="int8", int8_weight_bits=7,
                                                   int8_matrix_products="float"),
                           cfg=tiny_pipeline.cfg, weights_id=tiny_pipeline.weights_id,
                           scales_id="tiny.int8.json, sha256 aa00")
    values = what_ran(int8)
    assert set(values) == set(RAN_KEYS)  # everything replay compares, and nothing it does not
    assert ran_line(values) == (f"{tiny_pipeline.cfg.name} ({tiny_pipeline.weights_id}) on openvino int8 "
                                f"(tiny.int8.json, sha256 aa00, 7-bit weights, float matrix products), "
                                f"panoptic_node {__version__}")


def test_int8_scales_recalibrated_while_the_node_runs_are_a_warning_too():
    """`panoptic-node calibrate` written over the scales beside the weights changes nothing the node runs: its
    int8 graphs were made from the scales it found at configure. Its /diagnostics says so, as for the weights."""
    from panoptic_node.inference.weights_watch import MISSING
    stats = NodeStats(clock=lambda: 0.0)
    buf = LatestFrameBuffer(FakeClock())
    info = {"model": "street_lite0", "backend": "openvino", "precision": "int8",
            "weights": "street_lite0.pth, sha256 2b958c155251", "int8 scales": "street_lite0.int8.json, sha256 aa00"}

    def inference():
        return stats.statuses(buf, {"front": "/front/image"}, 2.0, info)[0]
    assert inference().level == 0 and "int8 scales on disk" not in inference().values
    stats.scales_on_disk = "street_lite0.int8.json, sha256 bb11"
    status = inference()
    assert status.level == 1 and status.values["int8 scales on disk"] == "street_lite0.int8.json, sha256 bb11"
    assert status.message == (
        "street_lite0.int8.json changed on disk since the node made its int8 graphs from it (now sha256 bb11): it "
        "runs int8 graphs made from the scales it loaded (street_lite0.int8.json, sha256 aa00); restart it, or "
        "lifecycle deactivate, cleanup, configure, activate, to run the new ones")
    stats.scales_on_disk = MISSING
    assert inference().message.startswith("street_lite0.int8.json is no longer on disk: the node runs int8 graphs "
                                          "made from the scales it loaded (street_lite0.int8.json, sha256 aa00)")
    stats.weights_on_disk = "street_lite0.pth, sha256 0123456789ab"  # both: the weights say it first, both values
    status = inference()
    assert status.message.startswith("street_lite0.pth changed on disk")
    assert status.values["int8 scales on disk"] == MISSING and "weights on disk" in status.values


def test_work_done_at_once_takes_its_last_step_in_the_order_it_was_handed_out():
    """The node's workers infer at once and publish in the order they took the frames (in_order.py): work
    that ends first waits for older work; work that fails (finished without its turn) holds nobody up."""
    order, published = InOrder(), []
    tickets = [order.ticket() for _ in range(6)]
    assert tickets == list(range(6))
    failed = {3}
    ready = {t: threading.Event() for t in tickets}

    def work(ticket):
        ready[ticket].wait(5)
        try:
            if ticket not in failed and order.wait(ticket):
                published.append(ticket)
        finally:
            order.finish(ticket)

    threads = [threading.Thread(target=work, args=(t,)) for t in tickets]
    for th in threads:
        th.start()
    for t in reversed(tickets):  # the newest work ends first
        ready[t].set()
    for th in threads:
        th.join(5)
    assert published == [0, 1, 2, 4, 5]
    stuck = InOrder()
    stuck.ticket()  # ticket 0 never finishes (a runtime that hangs)
    later = stuck.ticket()
    stopping = iter([True, True, False])
    assert stuck.wait(later, keep_waiting=lambda: next(stopping), poll_s=0.01) is False  # the node stopping


@pytest.mark.parametrize("num_threads, workers, cpus, expected", [
    (0, 1, 4, 0),   # one worker: the runtimes' own choice, as before
    (3, 1, 4, 3),
    (0, 2, 4, 2),   # every core, shared
    (3, 2, 4, 1),
    (0, 2, 2, 1),
])
def test_inference_workers_share_the_threads(monkeypatch, num_threads, workers, cpus, expected):
    monkeypatch.setattr("os.cpu_count", lambda: cpus)
    assert worker_threads(validate({"num_threads": num_threads, "inference_workers": workers})) == expected


def test_more_inference_workers_than_threads_are_refused_in_one_line(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    with pytest.raises(ParameterError, match=r"^parameter 'inference_workers' = 3 is more than the 2 thread\(s\) "
                                             r"the workers would share \(num_threads every core\): expected at most 2"):
        worker_threads(validate({"inference_workers": 3}))
    with pytest.raises(ParameterError, match="parameter 'inference_workers' = 0 is invalid"):
        validate({"inference_workers": 0})


@pytest.mark.parametrize("choice, backend, device, expected", [
    ("auto", "openvino", "cpu", False), ("auto", "torch", "cpu", False),  # the CPU's cores go to the network
    ("auto", "tensorrt", "cuda", True), ("auto", "torch", "cuda", True),  # the CPU would wait for the GPU
    ("auto", "onnxruntime", "cuda", True), ("always", "openvino", "cpu", True), ("never", "tensorrt", "cuda", False)])
def test_post_processing_overlaps_the_network_where_it_has_a_processor_of_its_own(choice, backend, device, expected):
    p = validate({"overlap_postprocessing": choice, "device": device})
    assert overlaps_postprocessing(p, backend) is expected


def test_overlap_postprocessing_takes_its_three_words_only():
    with pytest.raises(ParameterError, match="overlap_postprocessing"):
        validate({"overlap_postprocessing": "sometimes"})
    with pytest.raises(ParameterError, match="overlap_postprocessing"):
        validate({"overlap_postprocessing": True})  # a YAML true: the word is always


def test_a_call_in_flight_on_any_worker_counts_as_busy():
    """With inference_workers, one worker's call that never ends shows while the other keeps serving; with
    overlap_postprocessing a call begun on the network's thread ends on the post-processing thread."""
    t = [0.0]
    stats = NodeStats(clock=lambda: t[0])
    stuck = stats.call_started()
    t[0] = 5.0
    handed = []
    begun = threading.Thread(target=lambda: handed.append(stats.call_started()))  # the network's thread
    begun.start()
    begun.join()
    assert stats.busy_since == 0.0
    stats.call_ended(handed[0])  # ended here, by another thread: the stuck call is still the oldest
    assert stats.busy_since == 0.0
    inference = stats.statuses(LatestFrameBuffer(FakeClock()), {}, 2.0, {})[0]
    assert "one inference call has run for 5.0 s" in inference.message
    stats.call_ended(stuck)
    assert stats.busy_since is None


def test_frames_given_to_several_pipelines_come_back_in_the_order_given():
    """replay's inference workers (PipelinesInOrder): a frame that takes longer holds back the ones given after
    it, whichever pipeline ran them; a frame whose inference raised raises in its turn, after the ones before."""
    import time

    class Slow:  # a stand-in pipeline: frame value v takes v / 100 s; 99 fails
        def __init__(self):
            self.ran = []

        def __call__(self, frame):
            self.ran.append(frame)
            if frame == 99:
                raise RuntimeError("the runtime failed")
            time.sleep(frame / 100)
            return frame * 10

    pipelines = [Slow(), Slow()]
    pool = PipelinesInOrder(pipelines)
    assert pool.depth == 3
    got = []
    for i, frame in enumerate([20, 1, 2, 15, 0, 3]):
        pool.submit(frame, i)
        assert pool.frames_in_flight() <= pool.depth
        got += list(pool.ready())
    got += list(pool.drain())
    assert got == [(0, 200), (1, 10), (2, 20), (3, 150), (4, 0), (5, 30)]
    assert pipelines[0].ran and pipelines[1].ran  # both took frames
    pool.submit(20, "slow")
    pool.pass_through("behind it")  # no inference: waits for the frame before it all the same
    assert list(pool.ready()) == [] and pool.frames_in_flight() == 1
    assert list(pool.drain()) == [("slow", 200), ("behind it", None)]
    pool.submit(1, "before")
    pool.submit(99, "bad")
    pool.submit(2, "after")
    done = pool.drain()
    assert next(done) == ("before", 10)
    with pytest.raises(RuntimeError, match="the runtime failed"):
        next(done)
    pool.close()
    assert pool.frames_in_flight() == 0
