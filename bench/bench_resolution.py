"""Camera resolution vs speed: the shipped street model on CamVid val frames resized to 480x360,
1280x720 and 1920x1080, with frames larger than the network's view decided at the network's
resolution and nearest-upsampled (the default) against deciding every input pixel
(`postprocess.full_resolution: true`, the baseline), in one run.

    python bench/bench_resolution.py [--frames 20] [--threads 2]

Prints per-stage median ms and end-to-end frames/s per size and mode, and how many pixels of the
semantic map the two modes agree on.
"""
import argparse
import copy
import dataclasses
import statistics
import time

import numpy as np


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--camvid")
    args = parser.parse_args()

    import torch
    from PIL import Image
    from panoptic_node.inference.backends import check_threads
    check_threads(args.threads, "--threads")  # torch's thread pool crashes on absurd counts
    torch.set_num_threads(args.threads)
    from panoptic_node.inference.pipeline import Pipeline
    from panoptic_node.model.config import load_config
    from panoptic_node.training.data import CamVid, find_camvid

    val = CamVid(find_camvid(args.camvid), "val")
    step = max(1, len(val) // args.frames)
    originals = [val[i].rgb for i in range(0, len(val), step)][:args.frames]
    cfg = load_config("street_lite0")
    exact_cfg = copy.deepcopy(cfg)
    exact_cfg.postprocess = dataclasses.replace(cfg.postprocess, full_resolution=True)
    pipelines = {"network resolution + upsample": Pipeline.from_config(cfg),
                 "every input pixel (baseline)": Pipeline.from_config(exact_cfg)}
    print(f"street_lite0, {len(originals)} CamVid val frames resized, {args.threads} threads, median ms")
    print("| frame | decision | preprocess | detect | postprocess | end to end | frames/s | vs baseline | same semantic |")
    print("|---|---|---|---|---|---|---|---|---|")
    for w, h in [(480, 360), (1280, 720), (1920, 1080)]:
        frames = [np.asarray(Image.fromarray(f).resize((w, h), Image.BILINEAR)) for f in originals]
        rows, semantics = {}, {}
        for name, pipeline in pipelines.items():
            pipeline(frames[0])  # warm-up
            stages, totals, semantics[name] = {}, [], []
            for f in frames:
                t = time.perf_counter()
                r = pipeline(f)
                totals.append(time.perf_counter() - t)
                semantics[name].append(r.semantic)
                for k, v in r.timings.items():
                    stages.setdefault(k, []).append(v)
            rows[name] = ({k: 1000 * statistics.median(v) for k, v in stages.items()}, 1000 * statistics.median(totals))
        base = rows["every input pixel (baseline)"][1]
        same = np.mean([(a == b).mean() for a, b in zip(*semantics.values())])
        for name, (st, total) in rows.items():
            print(f"| {w}x{h} | {name} | {st['preprocess']:.1f} | {st['detect']:.1f} | {st['postprocess']:.1f} | "
                  f"{total:.1f} | {1000 / total:.1f} | {base / total:.2f}x | {100 * same:.2f}% |")


if __name__ == "__main__":
    main()
