"""A recording that kept the node's /diagnostics (car.launch.py record:=): replay says how the node on the car
fared over the drive, status by status, from those reports alone."""
import numpy as np

from panoptic_node.bag.reader import BagReader
from panoptic_node.bag.recorded_health import StatusHealth, node_health, ran_line
from panoptic_node.bag.types import msg_class
from panoptic_node.bag.writer import BagWriter, header, image_msg
from panoptic_node.cli import main
from panoptic_node.messages import image_fields
from panoptic_node.replay import ReplaySummary, replay

START = 1_700_000_000_000_000_000
SECOND = 1_000_000_000


def _status(name, level, message, **values):
    return msg_class("diagnostic_msgs/msg/DiagnosticStatus")(
        level=level, name=name, message=message, hardware_id="",
        values=[msg_class("diagnostic_msgs/msg/KeyValue")(key=k, value=v) for k, v in values.items()])


CAR_WEIGHTS = ("street_lite0.pth, sha256 2b958c155251", "street_lite0.pth, sha256 0123456789ab")


def _drive(path, rng, weights=CAR_WEIGHTS):
    """20 s of a car: a frame and a /diagnostics report each second. Inference ok but for three reports of a
    call running long (s 5-7) and then none; the camera silent for two reports (s 12-13); another node's
    'inference' status and replay's own status beside them, which are not the node's; a 10 s gap in the
    reports (the node off) counted as one period, after which the node runs the second of `weights`."""
    seconds = [*range(0, 15), *range(25, 30)]
    with BagWriter(path) as w:
        for i in seconds:
            stamp = START + i * SECOND
            rgb = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
            w.write("/car/image", image_msg(header(stamp, "cam"), image_fields(rgb, "rgb8")), stamp)
            slow = 5 <= i <= 7
            silent = 12 <= i <= 13
            statuses = [
                _status("/car/panoptic_node: inference", 1 if slow else 0,
                        f"one inference call has run for {i - 3}.0 s" if slow else "ok", backend="openvino",
                        model="street_lite0", precision="int8", weights=weights[i >= 25], version="0.1.0"),
                _status("/car/panoptic_node: camera /car", 2 if silent else 0,
                        "no frame on /car/image for 2.1 s" if silent else "ok", **{"input topic": "/car/image"}),
                _status("/planner: inference", 2, "not ours"),
                _status("panoptic_node: replay", 0, "1 frames, 0 undecodable", backend="torch")]
            w.write("/diagnostics", msg_class("diagnostic_msgs/msg/DiagnosticArray")(
                header=header(stamp, ""), status=statuses), stamp)
    return path


def test_replay_says_how_the_recording_node_fared_over_the_drive(tiny_pipeline, tiny_model_yaml, tmp_path, rng,
                                                                 capsys):
    bag = _drive(tmp_path / "drive", rng)
    with BagReader(bag) as r:
        health = node_health(r)
    assert [h.name for h in health] == ["/car/panoptic_node: inference", "/car/panoptic_node: camera /car"]
    inference, camera = health
    # 20 reports 1 s apart; the 10 s gap counts 5 periods at most (the node was off), so 24 s in all
    assert inference.seconds == {"ok": 21.0, "WARN": 3.0} and inference.first["WARN"] == (
        5.0, "one inference call has run for 2.0 s")
    assert camera.seconds == {"ok": 22.0, "ERROR": 2.0} and camera.first["ERROR"][0] == 12.0
    summary = replay(tiny_pipeline, bag)
    assert [h.line() for h in summary.node_health] == [
        "/car/panoptic_node: inference: ok 88 % of 24 s; WARN 3.0 s (first at +5.0 s: one inference call has run "
        "for 2.0 s)",
        "/car/panoptic_node: camera /car: ok 92 % of 24 s; ERROR 2.0 s (first at +12.0 s: no frame on /car/image "
        "for 2.1 s)"]
    assert summary.to_dict()["recorded_node_health"] == [h.line() for h in summary.node_health]
    # a window of the drive (--start / --duration) reports that window only
    part = replay(tiny_pipeline, bag, start_s=0, duration_s=4.5)
    assert [h.line() for h in part.node_health] == ["/car/panoptic_node: inference: ok 100 % of 5 s",
                                                    "/car/panoptic_node: camera /car: ok 100 % of 5 s"]
    assert main(["replay", str(bag), "--model", str(tiny_model_yaml), "--backend", "torch", "--max-frames", "1"]) == 0
    out = capsys.readouterr().out
    assert "the node that recorded this bag, on its /diagnostics:\n  /car/panoptic_node: inference: ok 88 %" in out
    # which weights the car's node ran, each change (its restart in the gap brought other weights), and that
    # this replay's own are other ones: its maps and speed are not that node's
    ran = [f"street_lite0 ({w}) on openvino int8, panoptic_node 0.1.0" for w in CAR_WEIGHTS]
    assert inference.ran_lines() == ran and summary.to_dict()["recorded_node_ran"] == ran
    assert f"  it ran {ran[0]}\n  it ran {ran[1]}\n" in out
    assert f"  this replay ran other weights than that node: {tiny_pipeline.weights_id}" in out
    assert tiny_pipeline.weights_id.startswith("tiny.pth, sha256 ")


def test_a_replay_of_the_same_weights_in_another_precision_says_so():
    """A car that ran its weights in int8 and a replay that runs them in fp32 (or int8 from another calibration,
    or with another weight width) give close maps, not the same: the replay says which; fp32 on another runtime,
    or the same int8, is quiet."""
    int8_car = {"model": "street_lite0", "weights": CAR_WEIGHTS[0], "backend": "openvino", "precision": "int8",
                "int8 scales": "street_lite0.int8.json, sha256 aa00", "int8 weight bits": "8", "version": "0.1.0"}
    car = StatusHealth("/car/panoptic_node: inference", {"ok": 10.0}, ran=[int8_car])

    def said(**runtime):
        summary = ReplaySummary(model="street_lite0", weights=CAR_WEIGHTS[0], node_health=[car], **runtime)
        return [line.strip() for line in summary.format().splitlines() if "this replay ran" in line]
    assert said(backend="torch", precision="fp32") == [
        f"this replay ran the same weights in another precision than that node: street_lite0 ({CAR_WEIGHTS[0]}) "
        f"on torch fp32"]
    assert said(backend="openvino", precision="int8", scales="street_lite0.int8.json, sha256 bb11", weight_bits=8) == [
        f"this replay ran the same weights in another precision than that node: street_lite0 ({CAR_WEIGHTS[0]}) "
        f"on openvino int8 (street_lite0.int8.json, sha256 bb11, 8-bit weights)"]
    # the car's scales at 7 bits (a replay on a CPU without VNNI, cpu_features.py): other maps too
    assert said(backend="openvino", precision="int8", scales="street_lite0.int8.json, sha256 aa00", weight_bits=7) == [
        f"this replay ran the same weights in another precision than that node: street_lite0 ({CAR_WEIGHTS[0]}) "
        f"on openvino int8 (street_lite0.int8.json, sha256 aa00, 7-bit weights)"]
    assert said(backend="onnxruntime", precision="int8", scales="street_lite0.int8.json, sha256 aa00",
                weight_bits=8) == []
    # the car's graphs multiplied matrices in int8; a replay on a CPU without VNNI keeps them in float: other maps
    int8_car["int8 matrix products"] = "int8"
    assert said(backend="openvino", precision="int8", scales="street_lite0.int8.json, sha256 aa00", weight_bits=8,
                matrix_products="float") == [
        f"this replay ran the same weights in another precision than that node: street_lite0 ({CAR_WEIGHTS[0]}) "
        f"on openvino int8 (street_lite0.int8.json, sha256 aa00, 8-bit weights, float matrix products)"]
    assert said(backend="openvino", precision="int8", scales="street_lite0.int8.json, sha256 aa00", weight_bits=8,
                matrix_products="int8") == []
    # a replay whose graph does not say (one given by --onnx from an older release): not told apart by this
    assert said(backend="openvino", precision="int8", scales="street_lite0.int8.json, sha256 aa00", weight_bits=8) == []
    # its summary's first line names the width, and --metrics' JSON keeps which weights, scales and width gave
    # its numbers
    assert "backend openvino (int8, 7-bit weights, float matrix products), model street_lite0" in ReplaySummary(
        model="street_lite0", backend="openvino", precision="int8", weight_bits=7,
        matrix_products="float").format().splitlines()[0]
    assert {k: v for k, v in ReplaySummary(model="street_lite0", weights=CAR_WEIGHTS[0], backend="openvino",
                                           precision="int8", scales="street_lite0.int8.json, sha256 aa00",
                                           weight_bits=7, matrix_products="float").to_dict().items()
            if k.startswith(("weights", "int8"))} == {
        "weights": CAR_WEIGHTS[0], "int8_scales": "street_lite0.int8.json, sha256 aa00", "int8_weight_bits": 7,
        "int8_matrix_products": "float"}
    # a release naming no scales nor width: the same precision counts as the same arithmetic
    car.ran = [{k: v for k, v in int8_car.items()
                if k not in ("int8 scales", "int8 weight bits", "int8 matrix products")}]
    assert said(backend="openvino", precision="int8", scales="street_lite0.int8.json, sha256 bb11", weight_bits=7) == []
    assert said(backend="torch", precision="fp32") != []
    car.ran = [{**int8_car, "version": "0.0.9"}]
    # other weights: that is said, and it says enough
    summary = ReplaySummary(model="street_lite0", weights=CAR_WEIGHTS[1], backend="torch", precision="fp32",
                            node_health=[car])
    assert [line.strip() for line in summary.format().splitlines() if "this replay ran" in line] == [
        f"this replay ran other weights than that node: {CAR_WEIGHTS[1]}"]
    # a release naming no weights: nothing to compare
    car.ran = [{"model": "street_lite0", "backend": "openvino", "precision": "int8"}]
    assert "this replay ran" not in summary.format()


def test_what_ran_names_the_int8_scales_an_int8_graph_was_made_from():
    """Two cars with the same weights and other calibrations give other maps: what ran says both."""
    values = {"backend": "openvino", "model": "street_lite0", "precision": "int8", "version": "0.1.0",
              "weights": "street_lite0.pth, sha256 2b958c155251"}
    assert ran_line(values) == ("street_lite0 (street_lite0.pth, sha256 2b958c155251) on openvino int8, "
                                "panoptic_node 0.1.0")
    values["int8 scales"] = "street_lite0.int8.json, sha256 0123456789ab"
    assert ran_line(values) == ("street_lite0 (street_lite0.pth, sha256 2b958c155251) on openvino int8 "
                                "(street_lite0.int8.json, sha256 0123456789ab), panoptic_node 0.1.0")
    values["int8 weight bits"] = "7"  # its graphs' weight width (7 where the CPU's int8 kernels overflow 8)
    assert ran_line(values) == ("street_lite0 (street_lite0.pth, sha256 2b958c155251) on openvino int8 "
                                "(street_lite0.int8.json, sha256 0123456789ab, 7-bit weights), panoptic_node 0.1.0")
    del values["int8 scales"]  # an int8 --onnx graph: no scales file, its width from its metadata
    assert ran_line(values) == ("street_lite0 (street_lite0.pth, sha256 2b958c155251) on openvino int8 "
                                "(7-bit weights), panoptic_node 0.1.0")


def test_a_replay_of_the_weights_the_car_ran_names_them_once_and_no_difference(tiny_pipeline, tmp_path, rng):
    bag = _drive(tmp_path / "drive", rng, weights=(tiny_pipeline.weights_id,) * 2)
    text = replay(tiny_pipeline, bag).format()
    assert text.count("  it ran ") == 1 and f"it ran street_lite0 ({tiny_pipeline.weights_id}) on openvino" in text
    assert "other weights" not in text


def test_a_bag_without_the_nodes_reports_says_nothing_of_it(tiny_pipeline, tmp_path, rng):
    with BagWriter(tmp_path / "plain") as w:
        for i in range(3):
            rgb = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
            w.write("/car/image", image_msg(header(START + i, "cam"), image_fields(rgb, "rgb8")), START + i)
    summary = replay(tiny_pipeline, tmp_path / "plain", tmp_path / "out")
    assert summary.node_health == [] and "recorded" not in summary.format()
    with BagReader(tmp_path / "out") as r:  # replay's own output holds a /diagnostics status: not the node's
        assert "/diagnostics" in r.topics and node_health(r) == []
