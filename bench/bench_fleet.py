"""Fleet validation speed on this machine, and what it projects for a cluster.

    python bench/bench_fleet.py [--bags 6] [--frames 10] [--backend auto]

Makes `--bags` bags of `--frames` CamVid val frames each, then in one run: the baseline, one process
replaying and scoring every bag in sequence (no Ray); `panoptic-node fleet` with 1 worker (2 threads)
and with 2 workers (1 thread each) on a local Ray. Prints frames/s and the ratio to the baseline, and
Ray's overhead: starting Ray and the workers (model loaded once per worker) and, per bag, the wall time
not spent replaying. From those it projects the hours for 1,000 bags on 100 machines like this one
(paper arithmetic from the measured figures, not a measurement of a cluster).
"""
import argparse
import itertools
import json
import tempfile
import time
from pathlib import Path


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bags", type=int, default=6)
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--model", default="street_lite0")
    parser.add_argument("--camvid")
    parser.add_argument("--project-bags", type=int, default=1000)
    parser.add_argument("--project-machines", type=int, default=100)
    parser.add_argument("--project-frames", type=int, default=1800, help="frames per projected bag (1 min at 30 Hz)")
    args = parser.parse_args()

    import ray
    import torch

    from panoptic_node.bag.convert import camvid_frames, write_bag
    from panoptic_node.fleet.bags import find_bags
    from panoptic_node.fleet.run import run_fleet
    from panoptic_node.inference.backends import make_pipeline
    from panoptic_node.replay import replay
    from panoptic_node.training.data import find_camvid

    camvid = find_camvid(args.camvid)
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        frames = list(itertools.islice(camvid_frames(camvid, "val"), args.bags * args.frames))
        for i in range(args.bags):
            write_bag(iter(frames[i * args.frames:(i + 1) * args.frames]), d / "bags" / f"drive_{i}",
                      "mcap" if i % 2 else "sqlite3", labels="camvid")
        bags = find_bags([str(d / "bags")])
        total = len(bags) * args.frames

        torch.set_num_threads(2)
        t0 = time.perf_counter()
        pipeline = make_pipeline(args.model, backend=args.backend, log=lambda m: None)
        load = time.perf_counter() - t0
        t0 = time.perf_counter()
        for b in bags:
            replay(pipeline, b, log=lambda m: None)
        base = time.perf_counter() - t0
        print(f"one process, {len(bags)} bags x {args.frames} frames in sequence: {total / base:.1f} frames/s "
              f"({base:.1f} s; model loaded once before, in {load:.1f} s)")

        steady, fixed = {}, {}
        for workers in (1, 2):
            t0 = time.perf_counter()
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
            ray_start = time.perf_counter() - t0
            t1 = time.perf_counter()
            out = d / f"out{workers}"
            run_fleet(bags, out, args.model, backend=args.backend, workers=workers, cpus=2, log=lambda m: None)
            wall = time.perf_counter() - t1
            ray.shutdown()
            replaying = sum(json.loads(p.read_text())["seconds"] for p in (out / "bags").glob("*.json"))
            # steady state: frames over the workers' replay time; the rest of the wall time is fixed cost
            # (starting the actors, each loading the model) and per-bag hand-over
            steady[workers] = total / (replaying / workers)
            fixed[workers] = wall - replaying / workers
            print(f"fleet, {workers} worker(s): {total / wall:.1f} frames/s over the whole run ({base / wall:.2f}x one "
                  f"process; {wall:.1f} s, Ray started in {ray_start:.1f} s before); {steady[workers]:.1f} "
                  f"frames/s while replaying ({steady[workers] * base / total:.2f}x); {fixed[workers]:.1f} s not "
                  f"replaying (actors starting with their model, hand-over of {len(bags)} bags)")
        per_machine = args.project_bags / args.project_machines
        hours = (per_machine * args.project_frames / steady[2] + fixed[2]) / 3600
        print(f"projection (paper, from the 2-worker figures): {args.project_bags} bags x {args.project_frames} "
              f"frames on {args.project_machines} machines like this one, {per_machine:.0f} bags each: "
              f"{hours:.2f} h ({per_machine * args.project_frames / steady[2] / 3600:.2f} h replaying + "
              f"{fixed[2]:.0f} s start and hand-over, taken as this run's, which is pessimistic for "
              f"{per_machine:.0f} bags); one machine alone: {hours * args.project_machines:.0f} h")


if __name__ == "__main__":
    main()
