"""panoptic-node doctor: each answer is what the commands and the node will do on this machine."""
import hashlib
import importlib.util
import os
import re
import signal
import sys
from pathlib import Path

import pytest

from panoptic_node.cli import main
from panoptic_node.doctor import NOTE, OK, PROBLEM, machine_checks, model_checks, ros_checks
from panoptic_node.inference.backends import resolve
from panoptic_node.model.config import load_config, share_dir


def by_name(checks):
    return {c.name: c for c in checks}


def without(*modules):
    """find_spec as if `modules` were not installed."""
    return lambda name, *a: None if name.split(".")[0] in modules else importlib.util.find_spec(name, *a)


def test_the_shipped_model_and_what_auto_runs_it_on(tmp_path, monkeypatch):
    monkeypatch.setenv("PANOPTIC_NODE_GRAPH_CACHE", str(tmp_path / "graphs"))
    checks = by_name(model_checks("street_lite0", None))
    assert checks["model"].verdict == OK and "6.7 M parameters" in checks["model"].finding
    shipped = Path(__file__).resolve().parents[1] / "models" / "street_lite0.pth"  # named as the node names it
    assert f"(sha256 {hashlib.sha256(shipped.read_bytes()).hexdigest()[:12]}, " in checks["model"].finding
    chosen = resolve("auto", load_config("street_lite0"))
    assert checks["auto backend"].finding.startswith(chosen)
    if chosen == "openvino":  # x86 with OpenVINO: the shipped scales make it int8, the graph comes on first use
        assert checks["int8 scales"].verdict == OK and checks["auto backend"].finding.startswith("openvino (int8)")
        from panoptic_node.inference.cpu_features import int8_saturates  # 7 bits where 8 saturate the kernels
        assert checks["int8 scales"].finding.endswith("with 7-bit weights and matrix products in float"
                                                      if int8_saturates() else "with 8-bit weights")
        assert "is made on the first frame" in checks["graph cache"].finding
        assert checks["speed"].finding.startswith("not measured: the graph is made on the first run")
    assert not (tmp_path / "graphs").exists()  # doctor looks; it makes no graph


def test_speed_is_the_deployment_s_own_frames_per_second(tiny_model_yaml, monkeypatch):
    from panoptic_node import doctor
    monkeypatch.setattr(doctor, "SPEED_FRAMES", 4)
    check = doctor.speed_check(str(tiny_model_yaml), None, camera_hz=1e6)  # no CPU serves a megahertz camera
    assert check.verdict == NOTE and " frames/s end to end on " in check.finding
    assert "a 1e+06 Hz camera is served at about" in check.finding
    assert ("inference_workers: 2 infers two frames at once" in check.finding) == ((os.cpu_count() or 1) >= 2)
    assert doctor.speed_check(str(tiny_model_yaml), None, camera_hz=0.001).verdict == OK


def test_speed_with_inference_workers_times_them_at_once(tiny_model_yaml, monkeypatch):
    from panoptic_node import doctor
    from panoptic_node.params import validate
    monkeypatch.setattr(doctor, "SPEED_FRAMES", 4)
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    node = validate({"model": str(tiny_model_yaml), "backend": "torch", "inference_workers": 2})
    check = doctor.speed_check(str(tiny_model_yaml), None, camera_hz=1e6, node=node)
    assert check.verdict == NOTE and "(torch fp32, 2 inference workers): a 1e+06 Hz camera" in check.finding
    assert "inference_workers: 2 infers" not in check.finding  # it has two already
    broken = {**node, "inference_workers": 3}  # more workers than threads: named, as the node refuses it
    check = doctor.speed_check(str(tiny_model_yaml), None, node=broken)
    assert check.verdict == PROBLEM and "parameter 'inference_workers' = 3 is more than the 2" in check.finding


@pytest.mark.parametrize("workers", [1, 2])
def test_speed_with_overlapped_postprocessing_times_it_beside_the_network(tiny_model_yaml, monkeypatch, workers):
    """overlap_postprocessing: always is timed as the node runs it: every frame through the network and then
    post-processed on another thread, each worker's own, while its network runs the next frame."""
    import threading

    from panoptic_node import doctor
    from panoptic_node.inference.pipeline import Pipeline
    from panoptic_node.params import validate
    monkeypatch.setattr(doctor, "SPEED_FRAMES", 6)
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    calls = []
    for name in ("detect_batch", "decide"):
        real = getattr(Pipeline, name)

        def recorded(self, *a, real=real, name=name):
            calls.append((name, id(self), threading.current_thread().name))
            return real(self, *a)
        monkeypatch.setattr(Pipeline, name, recorded)
    node = validate({"model": str(tiny_model_yaml), "backend": "torch", "inference_workers": workers,
                     "overlap_postprocessing": "always"})
    check = doctor.speed_check(str(tiny_model_yaml), None, camera_hz=1e6, node=node)
    assert check.verdict == NOTE and "post-processing beside the network's next frame): a 1e+06 Hz" in check.finding
    timed = calls[-2 * 6:]  # after the warm-up: each of the 6 frames once through each half
    assert sorted(name for name, _, _ in timed) == ["decide"] * 6 + ["detect_batch"] * 6
    network = {t for name, _, t in timed if name == "detect_batch"}
    post = {t for name, _, t in timed if name == "decide"}
    assert not network & post and all(t.startswith("panoptic_postprocess") for t in post)
    assert len({p for _, p, _ in timed}) == workers  # every worker took frames
    plain = doctor.speed_check(str(tiny_model_yaml), None, camera_hz=1e6,
                               node={**node, "overlap_postprocessing": "never"})
    assert "post-processing beside" not in plain.finding


def test_a_cache_that_cannot_be_written_means_torch(tmp_path, monkeypatch):
    if resolve("auto", load_config("street_lite0")) != "openvino":
        pytest.skip("auto does not choose OpenVINO here (needs x86 and openvino)")
    (tmp_path / "a_file").write_text("")
    monkeypatch.setenv("PANOPTIC_NODE_GRAPH_CACHE", str(tmp_path / "a_file" / "graphs"))  # unwritable even for root
    checks = by_name(model_checks("street_lite0", None))
    assert checks["graph cache"].verdict == NOTE and "auto would run torch" in checks["graph cache"].finding
    assert checks["auto backend"].finding.startswith("torch")


def test_missing_weights_are_a_problem_and_the_exit_code_says_so(tmp_path, capsys):
    yaml_path = tmp_path / "mine.yaml"  # the street model's config with a weights file that is not there
    shipped = (share_dir("models") / "street_lite0.yaml").read_text()
    yaml_path.write_text(shipped.replace("weights: street_lite0.pth", "weights: gone.pth"))
    assert main(["doctor", "--model", str(yaml_path)]) == 1
    out, err = capsys.readouterr()
    row = [line for line in out.splitlines() if " model " in line][0]
    assert row.startswith("problem") and "gone.pth' does not exist" in row
    assert "problem(s): model" in err and "python" in out and "CamVid" in out  # the other checks still ran


def test_missing_runtimes_say_what_auto_does_instead():
    checks = by_name(machine_checks(find_spec=without("openvino", "onnxruntime", "tensorrt")))
    assert checks["openvino"].verdict == NOTE and "auto runs torch" in checks["openvino"].finding
    assert checks["onnxruntime"].verdict == NOTE and checks["tensorrt"].verdict == NOTE
    assert checks["python"].verdict == OK and checks["torch"].verdict == OK


def test_ros_2_without_the_message_packages_the_node_needs():
    (check,) = ros_checks(find_spec=without("rclpy"), environ={})
    assert check.verdict == NOTE and "the node cannot run here" in check.finding
    checks = by_name(ros_checks(find_spec=lambda name, *a: None if name == "vision_msgs" else object(),
                                environ={"ROS_DISTRO": "humble"}))
    assert checks["ROS 2"].verdict == PROBLEM and "apt install ros-humble-vision-msgs" in checks["ROS 2"].finding
    # rclpy from PyPI's wheels, nothing sourced: the wheels cannot supply vision_msgs, a ROS 2 install can
    pypi = by_name(ros_checks(find_spec=lambda name, *a: None if name == "vision_msgs" else object(), environ={}))
    assert pypi["ROS 2"].verdict == PROBLEM and "no ROS 2 install is sourced" in pypi["ROS 2"].finding
    assert "ros-jazzy-vision-msgs" in pypi["ROS 2"].finding and "<distro>" not in pypi["ROS 2"].finding
    assert checks["Fast DDS"].verdict in (OK, NOTE)
    ok = by_name(ros_checks(find_spec=lambda name, *a: object(), environ={"RMW_IMPLEMENTATION": "rmw_cyclonedds_cpp"}))
    assert ok["ROS 2"].verdict == OK and "rmw_cyclonedds_cpp" in ok["ROS 2"].finding
    assert "Fast DDS profiles do not apply" in ok["Fast DDS"].finding


def test_a_cached_graph_that_does_not_open_is_named(tmp_path, monkeypatch, tiny_model_yaml):
    from panoptic_node.inference.graph_cache import cached_graph_path
    from panoptic_node.export import mask_graph_path
    cfg = load_config(str(tiny_model_yaml))
    if resolve("auto", cfg) != "openvino":
        pytest.skip("auto does not choose OpenVINO here (needs x86 and openvino)")
    monkeypatch.setenv("PANOPTIC_NODE_GRAPH_CACHE", str(tmp_path))
    graph = cached_graph_path(cfg, cfg.weights, tmp_path)
    graph.write_bytes(b"not a graph")
    mask_graph_path(graph).write_bytes(b"not a graph either")
    check = by_name(model_checks(str(tiny_model_yaml), None))["graph cache"]
    assert "is damaged or incomplete: the next run exports it again" in check.finding  # as cached_graph does
    from panoptic_node.inference.graph_cache import _checksum_file, _pair_sha256
    _checksum_file(graph).write_text(_pair_sha256(graph))  # complete as far as the cache can tell, yet no graph
    check = by_name(model_checks(str(tiny_model_yaml), None))["graph cache"]
    assert check.verdict == NOTE and f"{graph.name} does not open (" in check.finding
    assert "delete it to have it made again" in check.finding


def test_doctor_checks_the_nodes_parameters_file(tiny_model_yaml, tmp_path, monkeypatch, capsys):
    """doctor --params: the file as the node reads it, its ego masks as the node reads them, its backend, and
    the speed of the pipeline the node builds from it, shared by its cameras."""
    import numpy as np
    import yaml
    from PIL import Image
    from panoptic_node import doctor
    monkeypatch.setattr(doctor, "SPEED_FRAMES", 4)
    (tmp_path / "masks").mkdir()
    Image.fromarray(np.full((36, 48), 255, np.uint8)).save(tmp_path / "masks" / "camera_front.png")
    params = tmp_path / "car.param.yaml"
    params.write_text(yaml.safe_dump({"/**": {"ros__parameters": {
        "model": str(tiny_model_yaml), "backend": "torch", "cameras": ["camera/front", "/camera/rear"],
        "ego_mask_dir": str(tmp_path / "masks")}}}))
    checks = by_name(doctor.run_checks(params=params, node_name="/car1/panoptic_node"))
    # the topics that node subscribes to: the relative camera under its namespace, the absolute one as given
    assert checks["parameters"].verdict == OK and ("2 camera(s) camera/front, /camera/rear (raw: "
                                                   "/car1/camera/front/image, /camera/rear/image)") in \
        checks["parameters"].finding
    assert checks["ego masks"].verdict == NOTE and "camera /camera/rear: no ego mask" in checks["ego masks"].finding
    assert checks["backend"].finding.startswith("torch (fp32) for tiny_lite0") and "as the parameters ask" in \
        checks["backend"].finding
    assert "(torch fp32): 2 cameras at 30 Hz" in checks["speed"].finding or \
        "keeps up with 2 cameras at 30 Hz" in checks["speed"].finding
    assert "clock" not in checks
    # a bag-replay file's use_sim_time copied to the car: the node's clock would be /clock's (0 without one)
    sim = tmp_path / "replay.param.yaml"
    sim.write_text(yaml.safe_dump({"/**": {"ros__parameters": {
        "model": str(tiny_model_yaml), "backend": "torch", "use_sim_time": True}}}))
    clock = by_name(doctor.run_checks(params=sim))["clock"]
    assert clock.verdict == NOTE and clock.finding.startswith("use_sim_time is true: the node's clock is /clock's")

    # a file the node would refuse, or masks it cannot read: a problem, in the node's own words, exit 1
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "masks" / "camera_rear.png")  # not 8-bit grey
    assert by_name(doctor.run_checks(params=params))["ego masks"].verdict == PROBLEM
    params.write_text("/**:\n  ros__parameters: {threshold: 3.0}\n")
    capsys.readouterr()
    assert main(["doctor", "--params", str(params)]) == 1
    out = capsys.readouterr().out
    row = [line for line in out.splitlines() if " parameters " in line][0]
    assert row.startswith("problem") and "parameter 'threshold' = 3.0 is invalid" in row
    assert " model " not in out  # no model to check when the file is refused
    assert main(["doctor", "--params", str(params), "--model", "street_lite0"]) == 2


def test_doctor_without_torch_says_what_provides_it_and_checks_the_rest(tmp_path):
    """doctor is what a user runs when something is wrong: a Python without torch (the package installed into
    another one) stopped it at its first check with one line; now that is its problem line, and what needs no
    torch is still checked."""
    from conftest import run_without
    run = run_without(["torch"], "import sys\nfrom panoptic_node.cli import main\nsys.exit(main(['doctor']))",
                      tmp_path)
    lines = run.stdout.splitlines()
    assert run.returncode == 1, run.stderr
    assert lines[1].split(None, 2) == ["problem", "torch", f"no module named 'torch' for {sys.executable}: "
                                       f"pip install -e '.[cpu]' in the package's folder puts it there (a node "
                                       f"colcon built runs with the Python that ran colcon: README, For ROS 2 users)"]
    assert lines[2].split(None, 2) == ["note", "model", "street_lite0 not checked: it needs torch (above)"]
    assert {line.split()[1] for line in lines[3:]} >= {"ROS", "video", "fleet", "CamVid"}
    assert "torch" in run.stderr.splitlines()[-1]   # "N problem(s): torch, ..."


def stop_gently(proc) -> None:
    """Ctrl-C, then kill: a killed process leaves its Fast DDS segment in /dev/shm."""
    import subprocess
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


CAMERA_DRIVERS = """
import sys, time, rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
rclpy.init()
node = rclpy.create_node("fake_drivers")
prefix = sys.argv[1]
best_effort = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
pubs = {"front/image": node.create_publisher(Image, prefix + "/front/image", best_effort),
        "rear/image": node.create_publisher(CompressedImage, prefix + "/rear/image", 10),
        "side/image_raw": node.create_publisher(Image, prefix + "/side/image_raw", 10),
        "old/image": node.create_publisher(Image, prefix + "/old/image", 10),
        "odd/image": node.create_publisher(Image, prefix + "/odd/image", 10)}
calibration = node.create_publisher(CameraInfo, prefix + "/front/camera_info", 10)
second = rclpy.create_node("bag_player")  # a bag played beside the live driver: two sources on one topic
pubs["twice/image"] = node.create_publisher(Image, prefix + "/twice/image", 10)
replayed = second.create_publisher(Image, prefix + "/twice/image", 10)
pubs["served/image"] = node.create_publisher(Image, prefix + "/served/image", 10)
left_running = rclpy.create_node("left_running")  # a panoptic node already serving that camera
maps = left_running.create_publisher(Image, prefix + "/served/panoptic/semantic", 10)
diagnostics = left_running.create_publisher(DiagnosticArray, "/diagnostics", 10)  # its status, as node.py says it
status = DiagnosticStatus(level=b"\\x01", name=prefix + "/panoptic_node: inference", message="one call ran 2.1 s",
                          values=[KeyValue(key=k, value=v) for k, v in (("backend", "openvino"), ("model", "street"),
                                  ("precision", "int8"), ("weights", "street.pth, sha256 0123456789ab"),
                                  ("version", "0.0.9"))])
while rclpy.ok():
    diagnostics.publish(DiagnosticArray(status=[status]))
    now = node.get_clock().now().nanoseconds
    calibration.publish(CameraInfo(width=64, height=48))
    for name, pub in pubs.items():
        if name == "rear/image":
            pub.publish(CompressedImage(format="jpeg", data=b"x"))
            continue
        msg = Image(height=48, width=64, encoding="yuv420" if name == "odd/image" else "rgb8", step=64 * 3,
                    data=bytes(48 * 64 * 3))
        stamp = now - (3600 * 10**9 if name == "old/image" else 0)
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 10**9)
        pub.publish(msg)
    time.sleep(0.05)
"""


def test_doctor_listen_hears_the_cameras_on_the_live_graph(tiny_model_yaml, tmp_path, monkeypatch, capsys):
    """doctor --listen, before the node starts: each camera's topic as the node would subscribe to it. A
    driver that streams is ok (rate, size, encoding, stamp age); another message type, nothing published
    (with the image topics that do exist), stamps an hour old (max_age_ms would drop them all) and an
    encoding the node cannot read are each a problem in one line, and the exit code says so. The speed is
    then timed on the frames the cameras sent and judged by their rates."""
    pytest.importorskip("rclpy")
    import subprocess
    import uuid
    import yaml
    from panoptic_node import doctor
    monkeypatch.setattr(doctor, "SPEED_FRAMES", 2)
    prefix = f"/t{uuid.uuid4().hex[:6]}"
    drivers = subprocess.Popen([sys.executable, "-c", CAMERA_DRIVERS, prefix], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        params = tmp_path / "car.param.yaml"
        params.write_text(yaml.safe_dump({"/**": {"ros__parameters": {
            "model": str(tiny_model_yaml), "backend": "torch",
            "cameras": [f"{prefix}/{c}" for c in ("front", "rear", "side", "old", "odd", "twice", "served")]}}}))
        assert main(["doctor", "--params", str(params), "--listen", "3"]) == 1
        captured = capsys.readouterr()
        # where car.launch.py's image_topics:= would remap them: the side camera's driver found, and each
        # camera's calibration looked for beside its driver's frames (none beside side/image_raw)
        remapped = tmp_path / "remapped.param.yaml"
        remapped.write_text(yaml.safe_dump({"/**": {"ros__parameters": {
            "model": str(tiny_model_yaml), "backend": "torch", "cameras": ["left", "right"]}}}))
        # and a listen shorter than discovery takes: stretched until the drivers, frames and calibration came
        code = main(["doctor", "--params", str(remapped), "--listen", "0.1", "--image-topics",
                     f"{prefix}/side/image_raw", f"{prefix}/front/image"])
        second = capsys.readouterr().out
        print(second)  # whole, under the failure's "Captured stdout" (an assertion message is cut short)
        assert code == 0
        heard = {line.split()[2]: " ".join(line.split()) for line in second.splitlines()
                 if line.split()[1:2] == ["camera"]}  # the columns' width depends on what else is on the graph
    finally:
        stop_gently(drivers)
    assert heard["/left"].startswith(f"ok camera /left {prefix}/side/image_raw: ") and heard["/left"].endswith(
        f"; no {prefix}/side/camera_info heard (the maps go out without calibration)"), heard
    assert heard["/right"].startswith(f"ok camera /right {prefix}/front/image: ") and heard["/right"].endswith(
        "; camera_info 64x48"), heard
    rows = {line.split()[2]: line for line in captured.out.splitlines() if line.split()[1:2] == ["camera"]}
    front = rows[f"{prefix}/front"]
    assert front.startswith("ok") and f"{prefix}/front/image: " in front and " Hz from fake_drivers, 64x48 rgb8, " \
        "stamps " in front and front.endswith("ms old (median); camera_info 64x48"), front
    assert rows[f"{prefix}/rear"].startswith("problem") and (
        "a publisher sends sensor_msgs/msg/CompressedImage (from fake_drivers), not the sensor_msgs/msg/Image that "
        "input_transport raw reads") in rows[f"{prefix}/rear"]
    assert rows[f"{prefix}/side"].startswith("problem") and (
        f"{prefix}/side/image: no publisher on it; sensor_msgs/msg/Image topics on the graph: "
        f"{prefix}/side/image_raw") in rows[f"{prefix}/side"]
    assert rows[f"{prefix}/side"].endswith("(point the camera at its driver's with --image-topics)")
    assert rows[f"{prefix}/old"].startswith("problem") and "; stamps 3600 s behind this machine's clock (median), so " \
        "max_age_ms 500 drops every frame" in rows[f"{prefix}/old"]
    assert rows[f"{prefix}/old"].endswith(f"; no {prefix}/old/camera_info heard (the maps go out without calibration)")
    assert rows[f"{prefix}/odd"].startswith("problem") and "sends frames the node cannot read: unsupported " \
        "encoding 'yuv420'" in rows[f"{prefix}/odd"]
    assert rows[f"{prefix}/twice"].startswith("problem") and rows[f"{prefix}/twice"].endswith(
        "; 2 nodes publish on it (/bag_player, /fake_drivers): their frames are served as one camera's "
        "(a bag playing beside the live driver?)")
    assert rows[f"{prefix}/served"].startswith("problem") and (
        f"; /left_running already publishes {prefix}/served/panoptic/semantic: a node started now would serve this "
        f"camera beside it, their maps interleaved (stop it first, or give this one other cameras)") in \
        rows[f"{prefix}/served"], rows[f"{prefix}/served"]
    assert "problem(s):" in captured.err and f"camera {prefix}/rear" in captured.err
    # a panoptic node heard on /diagnostics: what it runs and how it fares (not the node these parameters are
    # for, so its other weights are no problem here; running_node_checks below)
    running = [" ".join(line.split()) for line in captured.out.splitlines()
               if line.split()[1:3] == ["running", f"{prefix}/panoptic_node"]]
    assert running == [f"ok running {prefix}/panoptic_node street (street.pth, sha256 0123456789ab) on openvino int8, "
                       f"panoptic_node 0.0.9; its inference: WARN, one call ran 2.1 s"], running
    # the speed timed on what the cameras sent (front, old, twice and served: the frames the node can read) at
    # their rates
    speed = [line for line in captured.out.splitlines() if line.split()[1:2] == ["speed"]][0]
    assert "end to end on the frames the cameras sent (64x48, 64x48, 64x48, 64x48) (torch fp32): " in speed and \
        "the cameras heard (" in speed and " Hz)" in speed, speed


BAG_PLAYER = """
import sys, time, rclpy
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image
rclpy.init()
node = rclpy.create_node("bag_with_clock")
frames = node.create_publisher(Image, sys.argv[1], 10)
clock = node.create_publisher(Clock, "/clock", 10) if sys.argv[2] == "--clock" else None
start, t0 = time.time(), node.get_clock().now().nanoseconds - 3600 * 10**9  # recorded an hour ago
while rclpy.ok():
    now = t0 + int((time.time() - start) * 1e9)
    if clock:
        msg = Clock()
        msg.clock.sec, msg.clock.nanosec = divmod(now, 10**9)
        clock.publish(msg)
    msg = Image(height=48, width=64, encoding="rgb8", step=64 * 3, data=bytes(48 * 64 * 3))
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(now, 10**9)
    frames.publish(msg)
    time.sleep(0.05)
"""


@pytest.mark.parametrize("clock", ["--clock", "no-clock"])
def test_doctor_listen_judges_a_sim_time_nodes_stamps_by_clock(tiny_model_yaml, tmp_path, capsys, clock):
    """A node on use_sim_time beside a bag played with --clock: its frames, recorded an hour ago, are fresh by
    /clock, as the node judges them; doctor called them a problem 3600 s behind this machine's clock. Without
    /clock the node's clock reads 0: said, with what to do."""
    pytest.importorskip("rclpy")
    import subprocess
    import uuid
    import yaml
    topic = f"/t{uuid.uuid4().hex[:6]}/front/image"
    player = subprocess.Popen([sys.executable, "-c", BAG_PLAYER, topic, clock], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        rows = {}
        for sim_time in (True, False):
            params = tmp_path / f"sim_{sim_time}.param.yaml"
            params.write_text(yaml.safe_dump({"/**": {"ros__parameters": {
                "model": str(tiny_model_yaml), "backend": "torch", "cameras": [topic.rsplit("/", 1)[0]],
                "use_sim_time": sim_time}}}))
            main(["doctor", "--params", str(params), "--listen", "2"])
            rows[sim_time] = next(line for line in capsys.readouterr().out.splitlines()
                                  if line.split()[1:2] == ["camera"])
    finally:
        stop_gently(player)
    assert rows[False].startswith("problem") and "stamps 3600 s behind this machine's clock (median), so max_age_ms " \
        "500 drops every frame: synchronise the camera's clock" in rows[False], rows[False]
    if clock == "--clock":
        assert rows[True].startswith("ok") and re.search(r", stamps -?[0-9]+ ms old by /clock's time \(use_sim_time\) "
                                                         r"\(median\)", rows[True]), rows[True]
    else:
        assert rows[True].startswith("ok") and rows[True].endswith(
            "; the node runs on sim time (use_sim_time) and no /clock has come: play the bag with --clock, or set "
            "use_sim_time false for live cameras; no " + topic.rsplit("/", 1)[0] + "/camera_info heard (the maps go "
            "out without calibration)"), rows[True]


def test_doctor_listen_says_what_the_calibration_beside_the_frames_gives():
    pytest.importorskip("rclpy")
    from types import SimpleNamespace
    import numpy as np
    from panoptic_node.ros.camera_check import _calibration
    frame = np.zeros((720, 1280, 3), np.uint8)

    def info(width, height, binning=0, roi=(0, 0)):
        return SimpleNamespace(width=width, height=height, binning_x=binning, binning_y=binning,
                               roi=SimpleNamespace(width=roi[0], height=roi[1]))

    assert _calibration("/cam/camera_info", info(1280, 720), frame) == "; camera_info 1280x720"
    assert _calibration("/cam/camera_info", info(1920, 1080), frame) == (
        "; camera_info 1920x1080, not the frames' 1280x720")
    # a sensor binned 2x2 or read through a region of interest says so, as the node judges it
    assert _calibration("/cam/camera_info", info(2560, 1440, binning=2), frame) == (
        "; camera_info 2560x1440 (describing 1280x720 frames)")
    assert _calibration("/cam/camera_info", info(1920, 1080, roi=(1280, 720)), frame) == (
        "; camera_info 1920x1080 (describing 1280x720 frames)")
    assert _calibration("/cam/camera_info", None, frame) == "; no /cam/camera_info heard (the maps go out without calibration)"


def test_a_running_node_with_other_weights_or_release_than_its_parameters_is_a_problem(tiny_model_yaml, tmp_path):
    """Weights copied over the file a running node loaded, or the package upgraded under it, reach the car only
    when the node restarts: doctor --listen compares what the node these parameters are for says it runs
    (its /diagnostics) with the weights they name, by the same sha256, and with this install's release.
    Another node runs what it likes."""
    from panoptic_node import __version__
    from panoptic_node.doctor import running_node_checks
    from panoptic_node.inference.cache_key import weights_identity
    from panoptic_node.params import defaults
    node = {**defaults(), "model": str(tiny_model_yaml)}
    here = weights_identity(load_config(str(tiny_model_yaml)).weights)
    ran = {"backend": "torch", "model": "tiny", "precision": "fp32", "weights": here, "version": __version__}
    (check,) = running_node_checks({"panoptic_node": (0, "ok", ran)}, node, "/panoptic_node")
    assert (check.name, check.verdict) == ("running panoptic_node", OK)
    assert check.finding == f"tiny ({here}) on torch fp32, panoptic_node {__version__}; its inference: ok"
    old = {**ran, "weights": "tiny.pth, sha256 0123456789ab", "version": "0.0.1"}
    checks = by_name(running_node_checks({"/car1/panoptic_node": (2, "the inference thread stopped", old),
                                          "/car2/panoptic_node": (0, "ok", old)}, node, "/car1/panoptic_node"))
    assert checks["running /car1/panoptic_node"].verdict == PROBLEM
    assert checks["running /car1/panoptic_node"].finding == (
        f"tiny (tiny.pth, sha256 0123456789ab) on torch fp32, panoptic_node 0.0.1; its inference: ERROR, the "
        f"inference thread stopped; the weights here are {here}: a node loads its weights when configured; restart it "
        f"(or lifecycle deactivate, cleanup, configure, activate) to run these; the package here is panoptic_node "
        f"{__version__}: restart it to run this release")
    assert checks["running /car2/panoptic_node"].verdict == OK  # not the node these parameters are for
    # these parameters' weights missing: the model check says so; the running node is not judged by them
    gone = {**node, "weights": str(tmp_path / "gone.pth")}
    (check,) = running_node_checks({"panoptic_node": (0, "ok", old)}, gone, "/panoptic_node")
    assert check.verdict == PROBLEM and "the weights here" not in check.finding  # its release still differs
    assert running_node_checks({}, node, "/panoptic_node") == []
    # recalibrated in place: the int8 graphs it runs were made from the scales it found at configure
    mine = tmp_path / "mine.yaml"  # the tiny model beside a copy of its weights, so that scales can sit there
    (tmp_path / "tiny.pth").write_bytes(Path(load_config(str(tiny_model_yaml)).weights).read_bytes())
    mine.write_text(Path(tiny_model_yaml).read_text())
    scales = tmp_path / "tiny.int8.json"
    scales.write_text('{"scales": "as calibrate writes them"}')
    node = {**defaults(), "model": str(mine)}
    ran = {**ran, "weights": weights_identity(tmp_path / "tiny.pth"), "precision": "int8",
           "int8 scales": "tiny.int8.json, sha256 0123456789ab"}
    (check,) = running_node_checks({"panoptic_node": (0, "ok", ran)}, node, "/panoptic_node")
    assert check.verdict == PROBLEM and check.finding.endswith(
        f"; the int8 scales here are {weights_identity(scales)}: restart it (or configure it again) to run them")
    ran["int8 scales"] = weights_identity(scales)
    assert running_node_checks({"panoptic_node": (0, "ok", ran)}, node, "/panoptic_node")[0].verdict == OK


def test_doctor_listen_needs_a_positive_time_and_rclpy(capsys):
    from panoptic_node.doctor import camera_checks
    from panoptic_node.params import defaults
    assert main(["doctor", "--listen", "0"]) == 2
    assert capsys.readouterr().err.strip().endswith("--listen 0: expected the seconds to listen to the cameras, "
                                                    "more than 0")
    assert main(["doctor", "--image-topics", "/usb_cam/image_raw"]) == 2
    assert capsys.readouterr().err.strip().endswith("--image-topics says where --listen hears the cameras; give "
                                                    "--listen too")
    with pytest.raises(ValueError, match=r"^launch argument image_topics names 2 topic\(s\) for 1 camera\(s\)"):
        camera_checks(defaults(), "/panoptic_node", 1.0, ["/a/image_raw", "/b/image_raw"])
    (check,), heard = camera_checks(defaults(), "/panoptic_node", 1.0, find_spec=without("rclpy"))
    assert heard == []
    assert check.verdict == PROBLEM and "rclpy or sensor_msgs is not importable here" in check.finding


def test_doctor_listen_hears_through_the_fast_dds_profile_the_launch_gives_the_node(monkeypatch):
    """With Fast DDS's defaults a 1280x720 camera at 30 Hz arrived at 0.7 Hz where the node, with the profile
    car.launch.py exports, got 27.8: doctor listens with that profile (unless one is exported) and leaves the
    environment as it was."""
    pytest.importorskip("rclpy")
    from panoptic_node.doctor import camera_checks
    from panoptic_node.params import defaults
    from panoptic_node.ros import camera_check
    for var in ("FASTRTPS_DEFAULT_PROFILES_FILE", "FASTDDS_DEFAULT_PROFILES_FILE", "RMW_IMPLEMENTATION"):
        monkeypatch.delenv(var, raising=False)
    seen = {}

    def fake_listen(cameras, *args):
        seen.update(os.environ)
        return [(camera, False, f"{topic}: heard", None, None) for camera, topic in cameras.items()], {}
    monkeypatch.setattr(camera_check, "listen", fake_listen)
    (check,), heard = camera_checks(defaults(), "/car1/panoptic_node", 1.0)
    assert check.name == "camera /car1/camera/front" and check.finding == "/car1/camera/front/image: heard"
    assert Path(seen["FASTRTPS_DEFAULT_PROFILES_FILE"]).name.startswith("fastdds_large_images")
    assert "FASTRTPS_DEFAULT_PROFILES_FILE" not in os.environ and heard == []
    monkeypatch.setenv("FASTRTPS_DEFAULT_PROFILES_FILE", "/mine.xml")  # the user's own: left alone
    seen.clear()
    camera_checks(defaults(), "/panoptic_node", 1.0)
    assert seen["FASTRTPS_DEFAULT_PROFILES_FILE"] == "/mine.xml" and "FASTDDS_DEFAULT_PROFILES_FILE" not in seen
