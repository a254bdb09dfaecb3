"""Memory and threads of the node over repeated lifecycle cycles: does anything accumulate when a lifecycle
manager configures, activates, deactivates and cleans it up again and again? Needs rclpy (a ROS 2
install, or `make install-test`'s wheels, whose vision_msgs build bench/ros_graph.py finds).

    python bench/bench_lifecycle.py [--cycles 12] [-p key:=value ...]

The node starts with `autostart: false` and the shipped defaults (or -p's); each cycle is driven through
its lifecycle services. Baseline in the same run: the process's resident memory (VmRSS) and thread count
after the first cycle; printed after each listed cycle, with the memory as a ratio of the baseline.
"""
import argparse
import os
import signal
import subprocess
import tempfile
import uuid
from pathlib import Path

import yaml

import ros_graph  # bench/ros_graph.py: the script's own folder is on sys.path


def process_status(pid: int):
    """(resident MB, threads) of a process, from Linux /proc."""
    rss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
               if line.startswith("VmRSS"))
    return rss / 1024, len(os.listdir(f"/proc/{pid}/task"))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=12)
    parser.add_argument("-p", dest="params", action="append", default=[], help="node parameter key:=value (YAML value)")
    args = parser.parse_args()
    ros_graph.ensure_ros_graph()  # before the baseline: rclpy and the node's messages import

    import rclpy
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState

    params = {"cameras": ["/bench_lifecycle/cam"], "autostart": False,
              **{k: yaml.safe_load(v) for k, v in (p.split(":=", 1) for p in args.params)}}
    name = f"bench_lifecycle_{uuid.uuid4().hex[:6]}"
    with tempfile.TemporaryDirectory() as d:
        params_file = Path(d) / "params.yaml"
        params_file.write_text(yaml.safe_dump({"/**": {"ros__parameters": params}}))
        log = Path(d) / "node.log"
        node = subprocess.Popen(["panoptic_node", "--ros-args", "-r", f"__node:={name}", "--params-file",
                                 str(params_file)], stdout=log.open("w"), stderr=subprocess.STDOUT,
                                start_new_session=True)
        rclpy.init()
        probe = rclpy.create_node("bench_lifecycle_probe")
        change = probe.create_client(ChangeState, f"/{name}/change_state")
        try:
            if not change.wait_for_service(timeout_sec=60):
                raise RuntimeError(f"the node did not start: {log.read_text()}")

            def transition(t) -> bool:
                future = change.call_async(ChangeState.Request(transition=Transition(id=t)))
                rclpy.spin_until_future_complete(probe, future, timeout_sec=120)
                return future.result() is not None and future.result().success

            steps = (Transition.TRANSITION_CONFIGURE, Transition.TRANSITION_ACTIVATE,
                     Transition.TRANSITION_DEACTIVATE, Transition.TRANSITION_CLEANUP)
            base = None
            for cycle in range(1, args.cycles + 1):
                if not all(transition(t) for t in steps):
                    raise RuntimeError(f"cycle {cycle} failed: {log.read_text()[-2000:]}")
                mb, threads = process_status(node.pid)
                base = base or mb
                if cycle in (1, 2, 4) or cycle % 4 == 0 or cycle == args.cycles:
                    print(f"after cycle {cycle}: {mb:.0f} MB resident ({mb / base:.3f}x the first cycle's), "
                          f"{threads} threads", flush=True)
        finally:
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGINT)
                node.wait(10)
            probe.destroy_node()
            rclpy.shutdown()


if __name__ == "__main__":
    main()
