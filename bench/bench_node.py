"""The node on the wire: a camera process publishing CamVid frames at 30 Hz, the node with the shipped
defaults, outputs timed on receipt. Needs rclpy (a ROS 2 install, or `make install-test`'s wheels, whose
vision_msgs build bench/ros_graph.py finds).

    python bench/bench_node.py [--cameras 1 2] [--seconds 20] [--hz 30] [-p key:=value ...]

Baseline in the same run: the pipeline alone (same model, backend and frames, decoded frame in, all maps
out) in this process before the node starts. Per camera count it prints the output rate (Hz), the
latency from the frame's stamp (wall clock at publish) to the receipt of its semantic map (p50 / p90 /
p99), the output rate as a share of the pipeline's own frames/s (what the node loses between the
wire and the pipeline), the node's resident memory over the run (--seconds 600 for a soak: a leak
climbs), and the CPU the node process used meanwhile (cores busy on average; try
-p max_rate_hz:=10 or -p num_threads:=1, -p inference_workers:=2 or -p overlap_postprocessing:=always,
against the same one-pipeline baseline). The camera publishes best effort, rgb8 480x360, as a driver does; the listener
subscribes to every map and the detections, as a driving stack would (--only-semantic: the semantic
map alone, and the node builds nothing else; --overlay: the overlay too, as RViz watching each camera does).
"""
import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np
import yaml

import ros_graph  # bench/ros_graph.py: the script's own folder is on sys.path

CAMERA = r"""
import sys, time, numpy as np, rclpy
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image
frames = np.load(sys.argv[1])
namespaces, hz = sys.argv[2].split(","), float(sys.argv[3])
rclpy.init()
node = rclpy.create_node("bench_camera")
pubs = [node.create_publisher(Image, f"{ns}/image", qos_profile_sensor_data) for ns in namespaces]
msgs = []
for rgb in frames:
    m = Image(); m.height, m.width = rgb.shape[:2]; m.encoding = "rgb8"; m.step = rgb.shape[1] * 3
    m.data = rgb.tobytes(); m.header.frame_id = "camera"; msgs.append(m)
print("ready", flush=True)
i, t_next = 0, time.time()
try:
    while rclpy.ok():
        for k, pub in enumerate(pubs):
            m = msgs[(i + 7 * k) % len(msgs)]
            m.header.stamp = node.get_clock().now().to_msg()  # wall clock: latency = receipt - stamp
            pub.publish(m)
        i += 1
        t_next += 1.0 / hz
        time.sleep(max(0.0, t_next - time.time()))
except KeyboardInterrupt:  # the bench stops the camera with SIGINT
    pass
"""


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc; its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def rss_mb(pid: int) -> float:
    """Resident memory of a process now (Linux /proc), MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pipeline_alone(frames, params) -> float:
    """Frames/s of the pipeline the node builds from the same parameters, on the same frames."""
    from panoptic_node.params import make_node_pipeline, validate
    pipeline = make_node_pipeline(validate(params), log=lambda m: None)
    for rgb in frames[:5]:
        pipeline(rgb)
    t0 = time.perf_counter()
    for rgb in frames:
        pipeline(rgb)
    return len(frames) / (time.perf_counter() - t0)


def run(cameras: int, frames_file: Path, params: dict, seconds: float, hz: float, tmp: Path,
        subscribe_all: bool = True, dds_profile: Optional[str] = None, camera_profile: bool = True,
        process_per_camera: bool = False, overlay: bool = False) -> dict:
    import rclpy
    from sensor_msgs.msg import Image
    namespaces = [f"/bench/cam{i}" for i in range(cameras)]
    params_file = tmp / f"params_{cameras}.yaml"
    params_file.write_text(yaml.safe_dump({"/**": {"ros__parameters": {**params, "cameras": namespaces}}}))
    log = (tmp / f"node_{cameras}.log").open("w")
    env = dict(os.environ)
    if dds_profile:  # the camera's and the node's participants, as car.launch.py sets it
        env["FASTRTPS_DEFAULT_PROFILES_FILE"] = env["FASTDDS_DEFAULT_PROFILES_FILE"] = dds_profile
    else:  # Fast DDS's defaults: the node, which would take auto when started by hand, is told so
        env["PANOPTIC_NODE_DDS_PROFILE"] = "none"
    node = subprocess.Popen(["panoptic_node", "--ros-args", "--params-file", str(params_file)], stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True, env=env)
    drivers = []
    rclpy.init()
    listener = rclpy.create_node("bench_listener")
    arrivals = {ns: [] for ns in namespaces}

    def on_output(msg, ns):
        arrivals[ns].append((time.time(), msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9))

    from diagnostic_msgs.msg import DiagnosticArray
    from vision_msgs.msg import Detection2DArray
    diagnostics = {}  # the node's newest status per task: 'inference', 'camera <ns>'
    listener.create_subscription(DiagnosticArray, "/diagnostics", lambda m: diagnostics.update(
        {s.name.split(": ", 1)[-1]: {v.key: v.value for v in s.values} for s in m.status}), 10)
    others = []  # what a driving stack reads besides: every map and the detections (received, not timed)
    for ns in namespaces:
        listener.create_subscription(Image, f"{ns}/panoptic/semantic", lambda m, ns=ns: on_output(m, ns), 10)
        if subscribe_all:
            for name in ("instances", "panoptic"):
                others.append(listener.create_subscription(Image, f"{ns}/panoptic/{name}", lambda m: None, 10))
            others.append(listener.create_subscription(Detection2DArray, f"{ns}/panoptic/detections",
                                                       lambda m: None, 10))
        if overlay:  # RViz's Image display on the raw overlay (best effort, as config/panoptic.rviz asks): the
            # node then draws one for every frame
            from rclpy.qos import qos_profile_sensor_data
            others.append(listener.create_subscription(Image, f"{ns}/panoptic/overlay", lambda m: None,
                                                       qos_profile_sensor_data))
    try:
        end = time.time() + 120  # the node is up when its outputs exist (a first start may export a graph)
        while not listener.get_publishers_info_by_topic(f"{namespaces[-1]}/panoptic/semantic"):
            if node.poll() is not None or time.time() > end:
                raise RuntimeError(f"the node did not start: {(tmp / f'node_{cameras}.log').read_text()}")
            rclpy.spin_once(listener, timeout_sec=0.1)
        camera_env = env if camera_profile else dict(os.environ)
        # one driver process for every camera, or one each (as camera drivers usually run: each process
        # has its own Fast DDS shared-memory segment)
        groups = [[ns] for ns in namespaces] if process_per_camera else [namespaces]
        for group in groups:
            drivers.append(subprocess.Popen([sys.executable, "-c", CAMERA, str(frames_file), ",".join(group), str(hz)],
                                            stdout=subprocess.PIPE, text=True, start_new_session=True,
                                            env=camera_env))
        for driver in drivers:  # Fast DDS logs to stdout too (e.g. a shared-memory segment it cannot create)
            if not any(line.strip() == "ready" for line in driver.stdout):
                raise RuntimeError("a camera driver ended before it was ready")
        warm = time.time() + 5.0  # discovery and the first frames
        while time.time() < warm:
            rclpy.spin_once(listener, timeout_sec=0.05)
        for ns in namespaces:
            arrivals[ns].clear()
        t0, cpu0, rss = time.time(), cpu_seconds(node.pid), [rss_mb(node.pid)]
        while time.time() < t0 + seconds:
            rclpy.spin_once(listener, timeout_sec=0.05)
            if time.time() - t0 > 10 * len(rss):  # resident memory every 10 s: a leak shows as a climb
                rss.append(rss_mb(node.pid))
        span = time.time() - t0
        node_cores = (cpu_seconds(node.pid) - cpu0) / span
        rss.append(rss_mb(node.pid))
    finally:
        for proc in (*drivers, node):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)
                proc.wait(10)
        listener.destroy_node()
        rclpy.shutdown()
    out = {}
    for ns, got in arrivals.items():
        lat = sorted(1000 * (t - s) for t, s in got)
        out[ns] = {"hz": len(got) / span,
                   **{f"p{q}": float(np.percentile(lat, q)) if lat else float("nan") for q in (50, 90, 99)},
                   # the node's own count of this camera's frames (its /diagnostics, whole run)
                   "node": diagnostics.get(f"camera {ns}", {})}
    out["stages"] = {k: v for k, v in diagnostics.get("inference", {}).items() if k.startswith("latency")}
    out["cores"] = node_cores
    out["rss_mb"] = rss
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cameras", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--hz", type=float, default=30.0)
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--dds-profile", default="auto",
                        help="Fast DDS profile for the camera and the node, chosen as car.launch.py's dds_profile: "
                             "auto (default), large_images, large_images_shm, none (Fast DDS's defaults) or a file")
    parser.add_argument("--camera-default-dds", action="store_true",
                        help="the camera process keeps Fast DDS's defaults (a driver nobody configured); the node "
                             "still gets --dds-profile")
    parser.add_argument("--process-per-camera", action="store_true",
                        help="one camera process per camera (as drivers usually run) instead of one for all")
    parser.add_argument("--only-semantic", action="store_true",
                        help="subscribe to the semantic map alone (the node then builds no other output)")
    parser.add_argument("--overlay", action="store_true",
                        help="also subscribe to each camera's overlay, as RViz does (the node then draws it)")
    parser.add_argument("--camvid")
    parser.add_argument("-p", dest="params", action="append", default=[],
                        help="a node parameter, key:=value (YAML value), e.g. -p backend:=torch")
    args = parser.parse_args()
    ros_graph.ensure_ros_graph()  # before the baseline: rclpy and the node's messages import

    from panoptic_node.training.data import CamVid, find_camvid
    params = {}
    for item in args.params:
        key, _, value = item.partition(":=")
        params[key] = yaml.safe_load(value)
    val = CamVid(find_camvid(args.camvid), "val")
    frames = np.stack([val[i].rgb for i in range(min(args.frames, len(val)))])
    base_fps = pipeline_alone(list(frames), {k: v for k, v in params.items() if k != "cameras"})
    print(f"pipeline alone (same parameters, same frames): {base_fps:.1f} frames/s, "
          f"{1000 / base_fps:.1f} ms per frame")
    from panoptic_node.dds_profile import choose_profile
    profile, why = choose_profile(args.dds_profile, Path(__file__).resolve().parents[1] / "config")
    print(why)
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        np.save(d / "frames.npy", frames)
        for n in args.cameras:
            res = run(n, d / "frames.npy", params, args.seconds, args.hz, d, not args.only_semantic,
                      str(profile) if profile else None, not args.camera_default_dds,
                      args.process_per_camera, args.overlay)
            stages, cores, rss = res.pop("stages"), res.pop("cores"), res.pop("rss_mb")
            for ns, r in res.items():
                print(f"{n} camera(s) at {args.hz:.0f} Hz, {ns}: {r['hz']:.1f} Hz out, latency p50 "
                      f"{r['p50']:.0f} ms, p90 {r['p90']:.0f} ms, p99 {r['p99']:.0f} ms; node: "
                      + ", ".join(f"{k} {v}" for k, v in r["node"].items()))
            print("  node stages: " + ", ".join(f"{k.replace('latency ', '')} {v}" for k, v in stages.items()))
            total = sum(r["hz"] for r in res.values())
            print(f"  {n} camera(s): {total:.1f} frames/s out in all, {total / base_fps:.2f}x the pipeline alone; "
                  f"mean per camera {statistics.mean(r['hz'] for r in res.values()):.1f} Hz; the node used "
                  f"{cores:.2f} CPU cores ({cores / os.cpu_count():.0%} of this machine's {os.cpu_count()})")
            half = rss[len(rss) // 2]
            print(f"  node resident memory: {rss[0]:.0f} MB when timing began, {half:.0f} MB half way, "
                  f"{rss[-1]:.0f} MB after {args.seconds:g} s ({rss[-1] - half:+.0f} MB over the second half: a "
                  f"steady node stays level once warm)")


if __name__ == "__main__":
    main()
