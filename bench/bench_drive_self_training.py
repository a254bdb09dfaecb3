"""Prepares self-training on a new drive's unlabelled frames (models/experiments/drive_self_training.md): a
CamVid-layout folder of links in which the held-out drive's first half carries the fold model's surest answers as
labels (each class's segments at or above its median score over those frames; the rest void) and its second half
is renamed to the drive `<drive>late`, which only scores. Prints the pseudo-labels' make-up and the two training
commands (self-training, and the control without the pseudo-labelled frames).

    python bench/bench_drive_self_training.py --weights runs/fold6R0_frame_s1/last.pth --drive 0006R0 \
        --train-drives 0016E5,0001TP --out /tmp/self_training_6R0

The new drive's labels are only linked for its scored half; the first half's are never read.
"""
import argparse
import os
import statistics
from pathlib import Path

import numpy as np
from PIL import Image

CAMVID_VOID = 11  # CamVid's label value for void (its README)


def class_medians(results):
    """Each class's median segment score over every frame's result (CBST's class-balanced portion of 1/2)."""
    scores = {}
    for r in results:
        for s in r.segments:
            scores.setdefault(s.label, []).append(s.score)
    return {label: statistics.median(v) for label, v in scores.items()}


def pseudo_labels(result, medians) -> np.ndarray:
    """A CamVid label map of `result`: the pixels of segments scoring at least their class's median keep the
    class, every other pixel is void."""
    out = np.full(result.segment_ids.shape, CAMVID_VOID, np.uint8)
    for s in result.segments:
        if s.score >= medians[s.label]:
            out[result.segment_ids == s.id] = s.label
    return out


def link(target: Path, link_path: Path) -> None:
    link_path.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target.resolve(), link_path)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True, help="the fold model that labels the new drive")
    parser.add_argument("--drive", required=True, help="its held-out drive")
    parser.add_argument("--train-drives", required=True)
    parser.add_argument("--out", required=True, help="a new folder for the links and pseudo-labels")
    parser.add_argument("--config", default="street_lite0")
    parser.add_argument("--camvid")
    args = parser.parse_args()

    import torch
    from tqdm import tqdm
    torch.set_num_threads(2)
    from panoptic_node.inference.pipeline import Pipeline
    from panoptic_node.taxonomy import get_taxonomy
    from panoptic_node.training.data import CamVid, find_camvid

    out = Path(args.out)
    if out.exists():
        raise SystemExit(f"--out {out} exists; expected a new folder (nothing in it is replaced)")
    root = find_camvid(args.camvid)
    new = CamVid(root, drives=[args.drive])
    pairs = sorted(new.pairs, key=lambda p: p[0].name)  # names sort in time order
    half = len(pairs) // 2
    first, later = pairs[:half], pairs[half:]
    training = CamVid(root, drives=args.train_drives.split(",")).pairs
    from panoptic_node.images import read_rgb
    pipeline = Pipeline.from_config(args.config, weights=args.weights)  # a wrong --weights before anything is written
    results = [pipeline(read_rgb(img)) for img, _ in tqdm(first, desc="labelling the new drive's first half")]
    medians = class_medians(results)

    train_lines, val_lines = [], []
    for img, lab in training:
        link(img, out / "train" / img.name)
        link(lab, out / "trainannot" / lab.name)
        train_lines.append(f"train/{img.name} trainannot/{lab.name}")
    for img, lab in later:
        name = img.name.replace(args.drive, f"{args.drive}late", 1)
        link(img, out / "val" / name)
        link(lab, out / "valannot" / name)
        val_lines.append(f"val/{name} valannot/{name}")

    names = {c.id: c.name for c in get_taxonomy(pipeline.labels).classes}
    kept = np.zeros(CAMVID_VOID + 1, np.int64)
    for (img, _), result in zip(first, results):  # the listings last: a folder cut short has none, so no run reads it
        labels = pseudo_labels(result, medians)
        Image.fromarray(labels).save(out / "trainannot" / img.name)
        link(img, out / "train" / img.name)
        train_lines.append(f"train/{img.name} trainannot/{img.name}")
        kept += np.bincount(labels.ravel(), minlength=CAMVID_VOID + 1)
    (out / "train.txt").write_text("\n".join(train_lines) + "\n")
    (out / "val.txt").write_text("\n".join(val_lines) + "\n")

    share = kept / kept.sum()
    print(f"{len(first)} frames of {args.drive} pseudo-labelled ({first[0][0].stem}..{first[-1][0].stem}), "
          f"{len(later)} scored as {args.drive}late; void {100 * share[CAMVID_VOID]:.1f} % of their pixels")
    print("| class | median score kept from | pixel share |\n|---|---|---|")
    for cid in sorted(names):
        print(f"| {names[cid]} | {medians.get(cid, float('nan')):.2f} | {100 * share[cid]:.1f} % |")
    common = (f"panoptic-node train --config {args.config} --data {out} --init {args.weights} --epochs 6 "
              f"--lr 1e-4 --lr-backbone 1e-5 --val-every 1 --val-drives {args.drive}late --threads 1")
    print(f"\nself-training: {common} --train-drives {args.train_drives},{args.drive} --out runs/SELF")
    print(f"control:       {common} --train-drives {args.train_drives} --out runs/CONTROL")


if __name__ == "__main__":
    main()
