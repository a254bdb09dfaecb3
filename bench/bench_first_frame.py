"""How soon the node serves a camera whose frame size the model's canvas does not fit, with and without
`warmup_sizes`. Needs rclpy (a ROS 2 install, or `make install-test`'s wheels, whose vision_msgs build
bench/ros_graph.py finds).

    python bench/bench_first_frame.py [--size 1280x720] [--seconds 8] [--hz 30] [--warm-cache]

Baseline in the same run: the node with the shipped defaults and `warmup_sizes: ""`; then the same node
with `warmup_sizes: "<size>"`. Each starts on a fresh graph cache (a car's first start), or with
--warm-cache both on one that an unmeasured start filled with both sizes' graphs (a later start: the
graph is compiled, not made). A publisher in this process (no camera process) sends random
frames of that size at --hz once the node subscribes. Printed per run: the seconds until the node
subscribed (start-up), the seconds from the first frame to the first semantic map, and the outputs in
--seconds; then the ratio of the first-output delays.
"""
import argparse
import os
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import yaml

import ros_graph  # bench/ros_graph.py: the script's own folder is on sys.path


def run(size, warmup: str, cache: Path, seconds: float, hz: float, tmp: Path) -> dict:
    import rclpy
    from sensor_msgs.msg import Image
    w, h = size
    ns = f"/bench_ff/cam{uuid.uuid4().hex[:6]}"
    params = tmp / f"params_{uuid.uuid4().hex[:6]}.yaml"
    params.write_text(yaml.safe_dump({"/**": {"ros__parameters": {
        "cameras": [ns], "warmup_sizes": warmup, "qos_reliability": "reliable"}}}))
    started = time.time()
    node = subprocess.Popen(["panoptic_node", "--ros-args", "--params-file", str(params)],
                            stdout=(tmp / "node.log").open("w"), stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "PANOPTIC_NODE_GRAPH_CACHE": str(cache)})
    rclpy.init()
    listener = rclpy.create_node("bench_first_frame")
    outputs = []
    listener.create_subscription(Image, f"{ns}/panoptic/semantic", lambda m: outputs.append(time.time()), 10)
    pub = listener.create_publisher(Image, f"{ns}/image", 10)
    try:
        end = started + 300
        while not listener.get_subscriptions_info_by_topic(f"{ns}/image"):
            if node.poll() is not None or time.time() > end:
                raise RuntimeError(f"the node did not start: {(tmp / 'node.log').read_text()}")
            rclpy.spin_once(listener, timeout_sec=0.05)
        subscribed = time.time() - started
        data = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8).tobytes()
        first_frame = next_at = time.time()
        while time.time() < first_frame + seconds:
            msg = Image(height=h, width=w, encoding="rgb8", step=w * 3, data=data)
            msg.header.stamp = listener.get_clock().now().to_msg()
            pub.publish(msg)
            next_at += 1.0 / hz
            while time.time() < next_at:
                rclpy.spin_once(listener, timeout_sec=max(0.0, next_at - time.time()))
    finally:
        if node.poll() is None:
            os.killpg(node.pid, signal.SIGINT)
            node.wait(10)
        listener.destroy_node()
        rclpy.shutdown()
    return {"subscribed": subscribed, "first": outputs[0] - first_frame if outputs else float("nan"),
            "outputs": len(outputs)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="1280x720", help="camera frames WIDTHxHEIGHT")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--hz", type=float, default=30.0)
    parser.add_argument("--warm-cache", action="store_true",
                        help="both runs on one cache the baseline fills (a later start) instead of fresh ones")
    args = parser.parse_args()
    ros_graph.ensure_ros_graph()  # before the baseline: rclpy and the node's messages import
    size = tuple(int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        results = {}
        if args.warm_cache:  # a start before, not measured, leaves both sizes' graphs in the cache
            run(size, args.size, tmp / "cache", 1.0, args.hz, tmp)
        for name, warmup in (("baseline (warmup_sizes: \"\")", ""), (f"warmup_sizes: \"{args.size}\"", args.size)):
            cache = tmp / ("cache" if args.warm_cache else f"cache_{len(results)}")
            r = results[name] = run(size, warmup, cache, args.seconds, args.hz, tmp)
            print(f"{name}: subscribed {r['subscribed']:.1f} s after start; first output {r['first']:.2f} s after "
                  f"the first {args.size} frame; {r['outputs']} outputs in {args.seconds:g} s at {args.hz:g} Hz",
                  flush=True)
        base, warm = results.values()
        print(f"first output {base['first'] / warm['first']:.0f}x sooner with warmup_sizes, start-up "
              f"{warm['subscribed'] - base['subscribed']:+.1f} s ({'warm' if args.warm_cache else 'fresh'} "
              f"graph cache)")


if __name__ == "__main__":
    main()
