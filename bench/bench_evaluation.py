"""PQ evaluation speed: ours (one process, streaming) vs panopticapi's pq_compute on the same
200-frame set, in the same run; checks the numbers are identical.

    python bench/bench_evaluation.py [--frames 200]

The frames are CamVid-sized (384x512) pairs of ground truth and prediction in our label maps
(stuff blocks, thing instances, crowds, void), also written as COCO panoptic PNG folders. Rows:
pq_compute on the folders; ours on the same folders (PNG decoding included, and on its own for
scale); ours on the ids those PNGs hold, already in memory; and ours as replay scores, on our label
maps (PQ, and mIoU too, which pq_compute does not compute).
"""
import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "test"))


def _timed(function):
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=200)
    args = parser.parse_args()

    from panopticapi.evaluation import pq_compute

    from panoptic_node.evaluation.coco_folders import _prefetched, _read_ids, evaluate_folders
    from panoptic_node.evaluation.evaluator import Evaluator
    from panoptic_node.evaluation.pq import SegmentInfo
    from panoptic_node.taxonomy import get_taxonomy
    from test_evaluation import our_frame, semantic_of, write_coco_folders

    camvid = get_taxonomy("camvid")
    rng = np.random.default_rng(0)
    block = np.ones((8, 8), np.int32)
    frames = [tuple(np.kron(m, block) for m in our_frame(rng, "blocks")) for _ in range(args.frames)]
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        write_coco_folders(frames, root, camvid)
        files = [root / part / f"{i}.png" for i in range(args.frames) for part in ("gt", "pred")]
        anns = {part: json.loads((root / f"{part}.json").read_text())["annotations"] for part in ("gt", "pred")}

        folders, t_folders = _timed(lambda: evaluate_folders(root / "gt.json", root / "gt", root / "pred.json",
                                                             root / "pred").pq)
        # decoding alone, each frame dropped as the folder path drops it (keeping 400 would time page faults)
        _, t_decode = _timed(lambda: sum(1 for _ in _prefetched(_read_ids, files)))
        decoded = list(_prefetched(_read_ids, files))

        def score_ids():  # what the folder path does after decoding
            ev = Evaluator(camvid)
            for i, (g, p) in enumerate(zip(anns["gt"], anns["pred"])):
                ev.add_segments(decoded[2 * i], {s["id"]: SegmentInfo(s["category_id"], bool(s["iscrowd"]))
                                                 for s in g["segments_info"]},
                                decoded[2 * i + 1], {s["id"]: SegmentInfo(s["category_id"]) for s in p["segments_info"]})
            return ev.pq
        ids, t_ids = _timed(score_ids)
        semantic = [(semantic_of(gt), semantic_of(pred)) for gt, pred in frames]

        def score_like_replay():
            ev = Evaluator(camvid)
            for (gt, pred), (gs, ps) in zip(frames, semantic):
                ev.add(gt, gs, pred, ps)
            return ev
        replay, t_replay = _timed(score_like_replay)
        theirs, t_ref = _timed(lambda: pq_compute(str(root / "gt.json"), str(root / "pred.json"), str(root / "gt"),
                                                  str(root / "pred")))
    ref = theirs["All"]["pq"]
    same = all(abs(pq - ref) < 1e-12 for pq in (folders.summary()["pq"], ids.summary()["pq"],
                                                replay.report()["pq"]["pq"]))
    print(f"\n{args.frames} frames 384x512, PQ {100 * ref:.2f}, identical to panopticapi in every row: {same}")
    print("| evaluator | seconds | vs pq_compute |")
    print("|---|---|---|")
    for name, seconds in (
            ("panopticapi pq_compute (PNG folders, 2 processes)", t_ref),
            ("panoptic_node, PNG folders, PQ + mIoU (1 process)", t_folders),
            ("  of which decoding the PNGs alone (PIL, 2 threads)", t_decode),
            ("panoptic_node, the PNGs' ids already in memory, PQ + mIoU (1 process)", t_ids),
            ("panoptic_node, our label maps as replay scores them, PQ + mIoU (1 process)", t_replay)):
        print(f"| {name} | {seconds:.3f} | {t_ref / seconds:.1f}x |")


if __name__ == "__main__":
    main()
