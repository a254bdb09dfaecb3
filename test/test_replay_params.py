"""replay --params: a bag replayed with the node's own parameters file, as the node on the car runs it.

The file is read by ROS 2's rules, checked against rclpy itself where rclpy is installed (the PyPI wheels)."""
import io
import json
import os
import re
import textwrap

import numpy as np
import pytest
import yaml
from PIL import Image

from panoptic_node.bag.reader import BagReader
from panoptic_node.bag.writer import BagWriter, compressed_msg, header, image_msg
from panoptic_node.messages import image_array, image_fields
from panoptic_node.params import (DIAGNOSTIC_FQN, ParameterError, absolute_namespace, defaults, file_parameters,
                                    from_file, node_namespace)

FILES = {
    "one wildcard entry": """
        /**:
          ros__parameters: {threshold: 0.4, cameras: [/a, /b], publish_overlay: false}
        """,
    "the node's own entry after /**": """
        /**:
          ros__parameters: {threshold: 0.4, track_max_lost: 3}
        /panoptic_node:
          ros__parameters: {threshold: 0.6}
        """,
    "a later /** over the node's own entry (the file's order decides)": """
        /panoptic_node:
          ros__parameters: {threshold: 0.6, max_rate_hz: 10.0}
        /**:
          ros__parameters: {threshold: 0.2}
        """,
    "names without a slash, a namespace, other nodes, nested names": """
        panoptic_node:
          ros__parameters:
            threshold: 0.5
            qos_overrides:
              /a/panoptic/semantic:
                publisher: {depth: 3, reliability: reliable}
        car:
          panoptic_node:
            ros__parameters: {threshold: 0.9, input_transport: compressed}
        /other_node:
          ros__parameters: {threshold: 0.1}
        """,
    "an entry written twice is merged where it first stood": """
        /panoptic_node:
          ros__parameters: {threshold: 0.7}
        /**:
          ros__parameters: {threshold: 0.2}
        /panoptic_node:
          ros__parameters: {track_max_lost: 3}
        /*:
          ros__parameters: {max_rate_hz: 5.0}
        /**/panoptic_node:
          ros__parameters: {qos_depth: 2}
        """,
}


def rclpy_gives(path, node_fqn):
    """What rclpy hands a node of that name started with `--ros-args --params-file path` (a list of paths:
    one --params-file each, in order, as launch's parameters=[a, b] starts it)."""
    rclpy = pytest.importorskip("rclpy", reason="rclpy (ros-jazzy-rclpy from PyPI) is not installed")
    from rclpy.context import Context
    from rclpy.node import Node
    context = Context()
    rclpy.init(args=[], context=context)
    try:
        ns, name = node_fqn.rsplit("/", 1)
        files = [a for p in (path if isinstance(path, list) else [path]) for a in ("--params-file", str(p))]
        node = Node(name, namespace=ns or "/", context=context, cli_args=["--ros-args", *files],
                    automatically_declare_parameters_from_overrides=True)
        given = {k: p.value for k, p in node._parameters.items()
                 if k not in ("use_sim_time", "start_type_description_service")}
        node.destroy_node()
        return given
    finally:
        rclpy.shutdown(context=context)


@pytest.mark.parametrize("case", FILES)
@pytest.mark.parametrize("node", ["/panoptic_node", "/car/panoptic_node"])
def test_a_parameters_file_gives_the_node_what_rclpy_gives_it(tmp_path, case, node):
    path = tmp_path / "p.yaml"
    path.write_text(textwrap.dedent(FILES[case]))
    expected = rclpy_gives(path, node)
    if not expected:  # no entry applies to this node: said in one line, naming what the file holds
        with pytest.raises(ParameterError, match=f"holds no parameters for {node} .entries in it: "):
            file_parameters(path, node)
        return
    assert file_parameters(path, node) == expected


@pytest.mark.parametrize("node", ["/panoptic_node", "/car1/panoptic_node"])
def test_several_parameters_files_give_the_node_what_rclpy_gives_it(tmp_path, node):
    """A fleet's shared file, then a car's own (launch's config:="['fleet.yaml', 'car1.yaml']", replay's
    --params given twice): a later file's values over an earlier one's, a file with nothing for this node
    passed over, as rclpy reads them."""
    fleet, car1 = tmp_path / "fleet.yaml", tmp_path / "car1.yaml"
    fleet.write_text("/**:\n  ros__parameters: {threshold: 0.5, cameras: [camera/front], max_rate_hz: 15.0}\n")
    car1.write_text("/car1/panoptic_node:\n  ros__parameters: {threshold: 0.3, cameras: [camera/front, camera/rear]}\n"
                    "/**:\n  ros__parameters: {max_rate_hz: 10.0}\n")
    expected = rclpy_gives([fleet, car1], node)
    assert file_parameters([fleet, car1], node) == expected
    assert expected["max_rate_hz"] == 10.0 and expected["threshold"] == (0.3 if node.startswith("/car1") else 0.5)
    other = tmp_path / "other.yaml"
    other.write_text("/car2/panoptic_node:\n  ros__parameters: {threshold: 0.3}\n")
    assert file_parameters([other, fleet], node) == rclpy_gives([other, fleet], node)  # car2's file: nothing here
    with pytest.raises(ParameterError, match=re.escape(f"parameters files '{other}', '{other}' hold no parameters "
                                                       f"for {node} (entries in them: /car2/panoptic_node, "
                                                       f"/car2/panoptic_node)")):
        file_parameters([other, other], node)


def test_the_shipped_car_parameters_are_the_nodes_defaults():
    """config/car.param.yaml (what car.launch.py loads) read as the node reads it: every parameter, at the
    schema's default, so replay --params config/car.param.yaml runs what the plain replay runs."""
    from panoptic_node.model.config import share_dir
    path = share_dir("config") / "car.param.yaml"
    assert set(file_parameters(path)) == set(defaults()) - {DIAGNOSTIC_FQN}  # see the file
    assert from_file(path) == defaults()


@pytest.mark.parametrize("text, says", [
    (None, "parameters file '{path}' does not exist; expected a ROS 2 parameters YAML"),
    ("/**:\n  ros__parameters:\n    threshold: [0.5\n", "parameters file '{path}' is not valid YAML at line 4"),
    ("- a list\n", "parameters file '{path}': the document holds list; expected node names with ros__parameters"),
    ("/**:\n  ros__parameters:\n    ? [x]\n    : 2\n", "parameters file '{path}' is not valid YAML at line 3 (a key "
                                                      "that is a list, where names are expected)"),
    ("/**: !!python/object:os.system {}\n", "parameters file '{path}' is not valid YAML at line 1 (could not "
                                            "determine a constructor"),
    (b"\xff\xfe/**:", "parameters file '{path}' cannot be read ('utf-8' codec can't decode"),
    ("/other:\n  ros__parameters: {threshold: 0.5}\n",
     "parameters file '{path}' holds no parameters for /panoptic_node (entries in it: /other); expected /** or "
     "/panoptic_node"),
    ("/**:\n  ros__parameters: {treshold: 0.5}\n", "parameters file '{path}': unknown parameter 'treshold' (did you mean "
                                                 "'threshold'?); allowed: "),
    ("/**:\n  ros__parameters: {threshold: 1.5}\n", "parameters file '{path}': parameter 'threshold' = 1.5 is invalid"),
    ("/**:\n  ros__parameters: 3\n", "parameters file '{path}': /**'s ros__parameters holds int; expected parameter"),
])
def test_a_bad_parameters_file_is_one_line_naming_it(tmp_path, text, says):
    path = tmp_path / "car.param.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    elif text is not None:
        path.write_text(text)
    with pytest.raises(ParameterError) as e:
        from_file(path)
    assert str(e.value).startswith(says.format(path=path)) and "\n" not in str(e.value), str(e.value)


T0 = 1_700_000_000_000_000_000


def car_recording(path, rng, frames=3):
    """What `ros2 bag record` takes from the car: two cameras under the node's names, the front one also
    through image_transport's compressed twin (a different picture, so the two cannot be mistaken)."""
    front = rng.integers(0, 255, (frames, 48, 64, 3), dtype=np.uint8)
    rear = rng.integers(0, 255, (frames, 40, 80, 3), dtype=np.uint8)
    with BagWriter(path, "mcap") as w:
        for i in range(frames):
            stamp = T0 + i * 50_000_000
            w.write("/camera/front/image", image_msg(header(stamp, "front"), image_fields(front[i], "rgb8")), stamp)
            w.write("/camera/rear/image", image_msg(header(stamp, "rear"), image_fields(rear[i], "rgb8")), stamp)
            buf = io.BytesIO()
            Image.fromarray(255 - front[i]).save(buf, format="PNG")
            w.write("/camera/front/image/compressed", compressed_msg(header(stamp, "front"), "png", buf.getvalue()),
                    stamp)
    return path


def write_params(path, tiny_model_yaml, **params):
    doc = {"/**": {"ros__parameters": {"model": str(tiny_model_yaml), "backend": "torch",
                                       "cameras": ["/camera/front"], **params}}}
    path.write_text(yaml.safe_dump(doc))
    return path


def maps(bag, topic):
    with BagReader(bag) as r:
        return [image_array(m.msg) for m in r.messages([topic])]


def label_info_threshold(bag, ns="/camera/front"):
    with BagReader(bag) as r:
        return next(r.messages([f"{ns}/panoptic/label_info"])).msg.threshold


def test_replay_with_the_cars_parameters_runs_what_the_node_runs(tiny_model_yaml, tmp_path, rng, capsys):
    """The file's cameras choose the topics (the rear camera is not the node's), its publish_* switches the
    topics written, its threshold the model's, its inference workers infer at once; the result is the plain
    replay's with the same settings."""
    from panoptic_node.cli import main
    bag = car_recording(tmp_path / "drive", rng)
    workers = {"inference_workers": 2} if (os.cpu_count() or 1) >= 2 else {}
    params = write_params(tmp_path / "car.param.yaml", tiny_model_yaml, threshold=0.3, publish_overlay=False,
                          publish_instances=False, max_rate_hz=10.0, overlap_postprocessing="always", **workers)
    assert main(["replay", str(bag), "--params", str(params), "--out", str(tmp_path / "car"),
                 "--metrics", str(tmp_path / "car.json")]) == 0
    out = capsys.readouterr().out
    assert "node parameters of /panoptic_node from " in out and "threshold 0.3" in out
    assert ("not applied offline, where every frame is replayed: max_rate_hz 10.0, overlap_postprocessing "
            "'always'") in out
    with BagReader(tmp_path / "car") as r:
        written = set(r.topics)
    assert written == {"/camera/front/panoptic/label_info", "/camera/front/panoptic/semantic",
                       "/camera/front/panoptic/panoptic", "/camera/front/panoptic/detections", "/diagnostics"}
    metrics = json.loads((tmp_path / "car.json").read_text())
    assert metrics["cameras"] == {"/camera/front/image": 3}
    recorded = metrics["node_parameters"]  # what produced these numbers, for the record
    assert recorded["file"] == str(params) and recorded["node"] == "/panoptic_node"
    assert recorded["values"] == {**defaults(), **yaml.safe_load(params.read_text())["/**"]["ros__parameters"]}
    assert label_info_threshold(tmp_path / "car") == pytest.approx(0.3)

    assert main(["replay", str(bag), "--model", str(tiny_model_yaml), "--backend", "torch", "--threshold", "0.3",
                 "--image-topic", "/camera/front/image", "--out", str(tmp_path / "plain")]) == 0
    for name in ("semantic", "panoptic"):
        got, want = maps(tmp_path / "car", f"/camera/front/panoptic/{name}"), \
            maps(tmp_path / "plain", f"/camera/front/panoptic/{name}")
        assert len(got) == 3 and all(np.array_equal(a, b) for a, b in zip(got, want))

    # an option given on the command line wins over the file, as a launch argument over car.param.yaml
    assert main(["replay", str(bag), "--params", str(params), "--threshold", "0.6",
                 "--out", str(tmp_path / "override")]) == 0
    assert label_info_threshold(tmp_path / "override") == pytest.approx(0.6)


def test_replay_reads_several_parameters_files_in_order(tiny_model_yaml, tmp_path, rng, capsys):
    """--params given twice: the car's own file over the fleet's shared one, as the node was started."""
    from panoptic_node.cli import main
    bag = car_recording(tmp_path / "drive", rng)
    fleet = write_params(tmp_path / "fleet.yaml", tiny_model_yaml, threshold=0.5)
    car = tmp_path / "car1.yaml"
    car.write_text("/**:\n  ros__parameters: {threshold: 0.3}\n")
    assert main(["replay", str(bag), "--params", str(fleet), "--params", str(car), "--out", str(tmp_path / "out"),
                 "--metrics", str(tmp_path / "m.json")]) == 0
    assert f"node parameters of /panoptic_node from {fleet}, {car}: " in capsys.readouterr().out
    assert label_info_threshold(tmp_path / "out") == pytest.approx(0.3)
    assert json.loads((tmp_path / "m.json").read_text())["node_parameters"]["file"] == f"{fleet}, {car}"


def test_the_shipped_relative_camera_is_read_where_a_node_at_the_root_publishes_it(tiny_model_yaml, tmp_path, rng):
    """car.param.yaml names its camera relative (camera/front, so that namespace:= moves it); a bag holds
    resolved names, and the node in the root namespace subscribes to /camera/front/image: replay reads that."""
    from panoptic_node.cli import main
    assert defaults()["cameras"] == ["camera/front"]
    bag = car_recording(tmp_path / "drive", rng)
    params = write_params(tmp_path / "car.param.yaml", tiny_model_yaml, cameras=defaults()["cameras"])
    assert main(["replay", str(bag), "--params", str(params), "--out", str(tmp_path / "car"),
                 "--metrics", str(tmp_path / "car.json")]) == 0
    assert json.loads((tmp_path / "car.json").read_text())["cameras"] == {"/camera/front/image": 3}
    with BagReader(tmp_path / "car") as r:
        assert "/camera/front/panoptic/semantic" in r.topics


def test_a_namespaced_nodes_parameters_replay_its_own_cameras(tiny_model_yaml, tmp_path, rng):
    """What `ros2 param dump /car1/panoptic_node` writes, replayed with --node /car1/panoptic_node over car1's
    recording: its relative camera is read where that node subscribed, /car1/camera/front/image."""
    from panoptic_node.cli import main
    with BagWriter(tmp_path / "car1", "mcap") as w:
        for i in range(2):
            w.write("/car1/camera/front/image",
                    image_msg(header(T0 + i, "front"), image_fields(rng.integers(0, 255, (48, 64, 3), np.uint8),
                                                                    "rgb8")), T0 + i)
    params = tmp_path / "dump.yaml"
    params.write_text(yaml.safe_dump({"/car1/panoptic_node": {"ros__parameters": {
        "model": str(tiny_model_yaml), "backend": "torch", "cameras": ["camera/front"]}}}))
    assert main(["replay", str(tmp_path / "car1"), "--params", str(params), "--node", "/car1/panoptic_node",
                 "--out", str(tmp_path / "out"), "--metrics", str(tmp_path / "m.json")]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["cameras"] == {"/car1/camera/front/image": 2}


@pytest.mark.parametrize("camera, namespace, resolved", [
    ("camera/front", "/", "/camera/front"), ("camera/front/", "/car1", "/car1/camera/front"),
    ("/camera/front", "/car1", "/camera/front"), ("cam", "/fleet/car1", "/fleet/car1/cam"), ("/", "/car1", "/")])
def test_a_camera_resolves_as_ros_resolves_a_relative_name(camera, namespace, resolved):
    assert absolute_namespace(camera, namespace) == resolved


@pytest.mark.parametrize("given, namespace", [("", ""), ("/", "/"), ("car1", "car1"), ("/car1/", "/car1"),
                                              (" fleet/car_1 ", "fleet/car_1")])
def test_a_launch_namespace_is_checked_and_keeps_whether_it_is_relative(given, namespace):
    assert node_namespace(given) == namespace


@pytest.mark.parametrize("given", ["car 1", "1car", "car-1", "//car1", "car1//front", "~/car1"])
def test_a_namespace_that_is_no_ros_name_is_refused_in_one_line(given):
    with pytest.raises(ParameterError) as e:
        node_namespace(given)
    assert str(e.value).startswith(f"launch argument namespace {given!r} is not a ROS namespace: expected")


def test_the_files_input_transport_picks_the_compressed_topic(tiny_model_yaml, tmp_path, rng):
    from panoptic_node.cli import main
    bag = car_recording(tmp_path / "drive", rng)
    params = write_params(tmp_path / "p.yaml", tiny_model_yaml, input_transport="compressed",
                          cameras=["/camera/front", "/camera/rear"])
    # the rear camera has no compressed topic: said before the model loads, naming what the bag holds
    assert main(["replay", str(bag), "--params", str(params), "--out", str(tmp_path / "o")]) == 2
    params = write_params(tmp_path / "p.yaml", tiny_model_yaml, input_transport="compressed")
    assert main(["replay", str(bag), "--params", str(params), "--metrics", str(tmp_path / "m.json")]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["cameras"] == {"/camera/front/image/compressed": 3}


def test_the_files_tracking_settings_reach_the_tracker(tiny_model_yaml, tmp_path, rng, monkeypatch):
    import panoptic_node.replay as replay_module
    from panoptic_node.cli import main
    made = []

    class Recording(replay_module.InstanceTracker):
        def __init__(self, min_iou, max_lost):
            made.append((min_iou, max_lost))
            super().__init__(min_iou, max_lost)
    monkeypatch.setattr(replay_module, "InstanceTracker", Recording)
    bag = car_recording(tmp_path / "drive", rng)
    params = write_params(tmp_path / "p.yaml", tiny_model_yaml, track_min_iou=0.55, track_max_lost=4)
    assert main(["replay", str(bag), "--params", str(params), "--out", str(tmp_path / "a")]) == 0
    assert made == [(0.55, 4)]
    made.clear()
    params = write_params(tmp_path / "p.yaml", tiny_model_yaml, track_instances=False)
    assert main(["replay", str(bag), "--params", str(params), "--out", str(tmp_path / "b")]) == 0
    assert made == []  # numbered per frame, as the node with track_instances false


def test_a_refused_params_replay_writes_nothing_and_changes_nothing(tiny_model_yaml, tmp_path, rng, capsys):
    from panoptic_node.cli import main
    bag = car_recording(tmp_path / "drive", rng)
    mine = tmp_path / "mine.json"
    mine.write_text("the user's")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    cases = [
        (write_params(tmp_path / "a.yaml", tiny_model_yaml, cameras=["/camera/left"]),
         [], "has no topic /camera/left/image (the cameras of "),
        (write_params(tmp_path / "b.yaml", tiny_model_yaml, threshold=2.0), [],
         "parameter 'threshold' = 2.0 is invalid"),
        (write_params(tmp_path / "c.yaml", tiny_model_yaml), ["--threshold", "7"],
         "parameter 'threshold' = 7.0 is invalid: allowed "),
        (tmp_path / "d.yaml", ["--node", "/car/other"], "holds no parameters for /car/other (entries in it: "
                                                         "/panoptic_node)"),
    ]
    (tmp_path / "d.yaml").write_text(f"/panoptic_node:\n  ros__parameters: {{model: {tiny_model_yaml}}}\n")
    before.update({p: p.read_bytes() for p, _, _ in cases})
    for params, extra, says in cases:
        capsys.readouterr()
        assert main(["replay", str(bag), "--params", str(params), "--out", str(tmp_path / "out"),
                     "--metrics", str(mine), "--overwrite", *extra]) == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
        assert len(errors) == 1 and says in errors[0], errors
        assert not (tmp_path / "out").exists()
    assert all(p.read_bytes() == data for p, data in before.items())


def test_what_ros2_param_dump_writes_replays_as_the_node_ran(tmp_path):
    """`ros2 param dump /panoptic_node` of a running node: its own parameters under its name, with the ones
    every rclpy node holds (use_sim_time, the type description service, /parameter_events' QoS): those are
    left out, the node's own taken as they were."""
    dumped = {**defaults(), "threshold": 0.45, "track_max_lost": 7, "use_sim_time": True,
              "start_type_description_service": True,
              "qos_overrides": {"/parameter_events": {"publisher": {"depth": 1000, "durability": "volatile",
                                                                     "history": "keep_last",
                                                                     "reliability": "reliable"}}}}
    path = tmp_path / "dump.yaml"
    path.write_text(yaml.safe_dump({"/panoptic_node": {"ros__parameters": dumped}}))
    assert from_file(path) == {**defaults(), "threshold": 0.45, "track_max_lost": 7}
