"""PQ evaluation speed: ours (one process, streaming) vs panopticapi's pq_compute on the same
200-frame COCO-panoptic set, in the same run; checks the numbers are identical.

    python bench/bench_evaluation.py [--frames 200]
"""
import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "test"))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=200)
    args = parser.parse_args()

    from panopticapi.evaluation import pq_compute

    from panoptic_node.coco_format import id_to_rgb
    from panoptic_node.evaluation.coco_folders import pq_from_folders
    from test_evaluation import CATEGORIES, make_frame

    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        (root / "gt").mkdir()
        (root / "pred").mkdir()
        rng = np.random.default_rng(0)
        gt_anns, pred_anns = [], []
        for i in range(args.frames):
            gt, gt_segs, pred, pred_segs = make_frame(rng)
            # CamVid-sized frames: tile the generated 48x64 layout to 384x512
            gt, pred = np.kron(gt, np.ones((8, 8), np.int64)), np.kron(pred, np.ones((8, 8), np.int64))
            name = f"{i}.png"
            Image.fromarray(id_to_rgb(gt)).save(root / "gt" / name)
            Image.fromarray(id_to_rgb(pred)).save(root / "pred" / name)
            gt_anns.append({"image_id": i + 1, "file_name": name, "segments_info": [
                {"id": int(k), "category_id": c, "iscrowd": cr, "area": int((gt == k).sum())}
                for k, (c, cr) in gt_segs.items()]})
            pred_anns.append({"image_id": i + 1, "file_name": name, "segments_info": [
                {"id": int(k), "category_id": c, "iscrowd": 0, "area": int((pred == k).sum())}
                for k, (c, _) in pred_segs.items()]})
        for name, anns in (("gt", gt_anns), ("pred", pred_anns)):
            (root / f"{name}.json").write_text(json.dumps({"annotations": anns, "categories": CATEGORIES}))

        t = time.perf_counter()
        acc, _ = pq_from_folders(root / "gt.json", root / "gt", root / "pred.json", root / "pred")
        ours = time.perf_counter() - t
        # what replay does: score frames already in memory (no PNG files in between)
        from panoptic_node.evaluation.pq import PQAccumulator, SegmentInfo
        frames = []
        rng = np.random.default_rng(0)
        for i in range(args.frames):
            gt, gt_segs, pred, pred_segs = make_frame(rng)
            frames.append((np.kron(gt, np.ones((8, 8), np.int64)), {k: SegmentInfo(c, bool(cr)) for k, (c, cr) in gt_segs.items()},
                           np.kron(pred, np.ones((8, 8), np.int64)), {k: SegmentInfo(c) for k, (c, _) in pred_segs.items()}))
        t = time.perf_counter()
        mem = PQAccumulator()
        for f in frames:
            mem.add(*f)
        in_memory = time.perf_counter() - t
        t = time.perf_counter()
        theirs = pq_compute(str(root / "gt.json"), str(root / "pred.json"), str(root / "gt"), str(root / "pred"))
        ref = time.perf_counter() - t
    same = abs(acc.summary()["pq"] - theirs["All"]["pq"]) < 1e-12 and abs(mem.summary()["pq"] - theirs["All"]["pq"]) < 1e-12
    print(f"\n{args.frames} frames 384x512, PQ identical to panopticapi: {same}")
    print("| evaluator | seconds | vs pq_compute |")
    print("|---|---|---|")
    print(f"| panopticapi pq_compute (PNG folders, 2 processes) | {ref:.2f} | 1.0x |")
    print(f"| panoptic_node, PNG folders (1 process) | {ours:.2f} | {ref / ours:.1f}x |")
    print(f"| panoptic_node, frames in memory as in replay (1 process) | {in_memory:.2f} | {ref / in_memory:.1f}x |")


if __name__ == "__main__":
    main()
