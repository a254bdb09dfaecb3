"""What a graph per frame size costs: the first frame of a new size exports and compiles its graph, the
frames after run on it.

    python bench/bench_shapes.py [--model street_lite0] [--backend auto]

CamVid val frames resized to a landscape 4:3 (the config's own canvas), 16:9, portrait 3:4 and square
frame; per shape the first frame's time (export + compile + inference) and the median of the next ten,
against torch on the same frames in the same run. A fresh graph cache is used, as on a new machine.
"""
import argparse
import os
import statistics
import tempfile
import time


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="street_lite0")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--camvid")
    args = parser.parse_args()
    import numpy as np
    import torch
    from PIL import Image

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as cache:
        os.environ["PANOPTIC_NODE_GRAPH_CACHE"] = cache
        from panoptic_node.inference.backends import make_pipeline
        from panoptic_node.training.data import CamVid, find_camvid
        val = CamVid(find_camvid(args.camvid), "val")
        frames = [val[i].rgb for i in range(11)]
        t0 = time.perf_counter()
        runtime = make_pipeline(args.model, backend=args.backend, log=lambda m: None)
        start = time.perf_counter() - t0
        reference = make_pipeline(args.model, backend="torch", log=lambda m: None)
        print(f"{runtime.backend.name}: pipeline made in {start:.1f} s (the config's canvas exported then)")
        for name, (h, w) in [("4:3", (360, 480)), ("16:9", (270, 480)), ("3:4", (480, 360)), ("1:1", (400, 400))]:
            shaped = [np.asarray(Image.fromarray(f).resize((w, h), Image.BILINEAR)) for f in frames]
            t0 = time.perf_counter()
            runtime(shaped[0])
            first = time.perf_counter() - t0
            steady = []
            for f in shaped[1:]:
                t0 = time.perf_counter()
                runtime(f)
                steady.append(time.perf_counter() - t0)
            base = []
            for f in shaped[1:]:
                t0 = time.perf_counter()
                reference(f)
                base.append(time.perf_counter() - t0)
            s, b = statistics.median(steady), statistics.median(base)
            print(f"{name} {w}x{h}: first frame {first * 1000:.0f} ms, then {s * 1000:.1f} ms per frame "
                  f"(torch {b * 1000:.1f} ms, {b / s:.2f}x)")


if __name__ == "__main__":
    main()
