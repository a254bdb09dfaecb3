"""End-to-end speed of our Pipeline vs Hugging Face transformers' DETR panoptic, same weights.

DETR R50 panoptic at 480x640 with identical random weights on 2 CPU threads: preprocess + model
+ postprocess. transformers: DetrImageProcessor -> DetrForSegmentation ->
post_process_panoptic_segmentation(threshold=0.85, label_ids_to_fuse=stuff ids). Ours: Pipeline
with the same threshold. Random weights keep almost no query above 0.85, so the second row forces
every query through the mask head (threshold 0): our worst case. Also prints the compact street
model's frames/s at 480x360.

    python bench/bench_pipeline.py [--runs 5]
"""
import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def median_time(fn, runs):
    fn()  # warm-up
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    from panoptic_node.inference.backends import check_threads
    check_threads(args.threads, "--threads")  # torch's thread pool crashes on absurd counts
    torch.set_num_threads(args.threads)

    from transformers import DetrConfig, DetrForSegmentation, DetrImageProcessor, ResNetConfig

    from panoptic_node.inference.backend import TorchBackend
    from panoptic_node.inference.pipeline import Pipeline
    from panoptic_node.model.checkpoint import load_weights
    from panoptic_node.model.config import load_config
    from panoptic_node.model.detr import build_model
    from panoptic_node.taxonomy import get_taxonomy

    torch.manual_seed(0)
    hf = DetrForSegmentation(DetrConfig(backbone_config=ResNetConfig(out_features=["stage1", "stage2", "stage3",
                                                                                   "stage4"]),
                                        num_labels=250, use_pretrained_backbone=False)).eval()
    processor = DetrImageProcessor(size={"shortest_edge": 480, "longest_edge": 640})
    stuff_ids = get_taxonomy("coco").stuff_ids

    cfg = load_config("detr_r50_panoptic")
    cfg.input.short_side, cfg.input.max_size = 480, 640
    ours = build_model(cfg)
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        load_weights(ours, Path(d) / "model.safetensors")

    frame = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)

    def run_hf(threshold):
        def fn():
            with torch.inference_mode():
                inputs = processor(images=frame, return_tensors="pt")
                out = hf(**inputs)
                processor.post_process_panoptic_segmentation(out, threshold=threshold, label_ids_to_fuse=set(stuff_ids),
                                                             target_sizes=[(480, 640)])
        return fn

    rows = []
    for threshold in (0.85, 0.0):
        pipeline = Pipeline(cfg, TorchBackend(ours), threshold=threshold)
        kept = len(pipeline(frame).segments)
        t_ours = median_time(lambda: pipeline(frame), args.runs)
        t_hf = median_time(run_hf(threshold), args.runs)
        rows.append((threshold, kept, t_hf, t_ours))

    lite_cfg = load_config("street_lite0")
    lite = Pipeline(lite_cfg, TorchBackend(build_model(lite_cfg)))
    lite_frame = frame[:360, :480].copy()
    t_lite = median_time(lambda: lite(lite_frame), max(args.runs, 10))

    print(f"DETR R50 panoptic, 480x640, {args.threads} threads, median of {args.runs} runs, identical weights")
    print("| threshold | segments out | transformers 5 | panoptic_node | speed-up |")
    print("|---|---|---|---|---|")
    for threshold, kept, t_hf, t_ours in rows:
        print(f"| {threshold} | {kept} | {t_hf:.2f} s | {t_ours:.2f} s | {t_hf / t_ours:.1f}x |")
    print(f"compact street model (street_lite0 architecture), 480x360: {1 / t_lite:.1f} frames/s "
          f"({1000 * t_lite:.0f} ms end to end)")


if __name__ == "__main__":
    main()
