"""What training on a large dataset folder holds in memory: every frame decoded at once (how `train --dataset
cityscapes` read its frames before 2026-12-05) against the frames a batch needs, decoded when it needs them.

    python bench/bench_training_frames.py [--frames 16] [--size 2048x1024] [--batch 4]

Writes a Cityscapes-layout folder of synthetic frames of that size (Cityscapes' own: 2048x1024) into a temporary
folder, removed afterwards, and reads it as `train` does for the CamVid street model (labels mapped to CamVid's
classes). Memory is the peak of Python's and NumPy's allocations (tracemalloc) while the frames are read; the
baseline, measured in the same run, holds every frame (the Samples alone: the former reader held each frame's
panoptic map too). The last column scales each to Cityscapes' 2,975 training frames: what a run on the whole set
would need, at least.
"""
import argparse
import tempfile
import time
import tracemalloc
from pathlib import Path

CITYSCAPES_TRAIN_FRAMES = 2975


def write_folder(root: Path, frames: int, width: int, height: int) -> None:
    """Smooth colour with noise (a PNG about as hard to decode as a street), road / sky / a car per frame."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    for d in ("leftImg8bit/train/ulm", "gtFine/train/ulm"):
        (root / d).mkdir(parents=True)
    yy, xx = np.mgrid[0:height, 0:width]
    for i in range(frames):
        base = np.stack([(xx + 40 * i) % 256, (yy // 4) % 256, (xx + yy) // 16 % 256], -1)
        rgb = np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)
        label = np.full((height, width), 7, np.uint8)
        label[:height // 3] = 23
        x = width // 4 + 20 * i
        label[height // 2:height // 2 + height // 6, x:x + width // 8] = 26
        instance = label.astype(np.uint16)
        instance[label == 26] = 26000
        name = f"ulm_000000_{i:06d}"
        Image.fromarray(rgb).save(root / f"leftImg8bit/train/ulm/{name}_leftImg8bit.png")
        Image.fromarray(label).save(root / f"gtFine/train/ulm/{name}_gtFine_labelIds.png")
        Image.fromarray(instance).save(root / f"gtFine/train/ulm/{name}_gtFine_instanceIds.png")


def peak_mb(read) -> tuple:
    """(peak MB allocated while `read` runs, seconds)."""
    tracemalloc.start()
    t0 = time.perf_counter()
    read()
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 1e6, seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", default="2048x1024", help="WxH of the synthetic frames")
    parser.add_argument("--batch", type=int, default=4, help="frames a training step reads")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    from panoptic_node.training.data import make_dataset

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "cityscapes"
        write_folder(root, args.frames, width, height)
        frames = make_dataset("cityscapes", root, "train", labels="camvid").load_all()

        held_bytes = []

        def every_frame_held():
            held = [frames[i] for i in range(len(frames))]
            held_bytes.append(sum(a.nbytes for s in held for a in (s.rgb, s.semantic, s.instance)))

        def one_batch_at_a_time():
            for start in range(0, len(frames), args.batch):
                batch = [frames[i] for i in range(start, min(start + args.batch, len(frames)))]
                del batch

        held_mb, held_s = peak_mb(every_frame_held)
        lazy_mb, lazy_s = peak_mb(one_batch_at_a_time)
    per_frame = held_bytes[0] / 1e6 / args.frames  # what one frame holds, without the decoding's passing arrays
    print(f"\n{args.frames} synthetic Cityscapes-layout frames of {width}x{height}, labels mapped to CamVid's classes; "
          f"decoding took {1000 * lazy_s / args.frames:.0f} ms a frame\n")
    print(f"| how the frames are read | peak MB | vs every frame held | at {CITYSCAPES_TRAIN_FRAMES:,} frames |")
    print("|---|---|---|---|")
    print(f"| every frame decoded and held (before 2026-12-05) | {held_mb:.0f} | 1.00x | "
          f"{per_frame * CITYSCAPES_TRAIN_FRAMES / 1000:.1f} GB |")
    print(f"| a batch of {args.batch} decoded when a step needs it (now) | {lazy_mb:.0f} | {lazy_mb / held_mb:.2f}x | "
          f"{lazy_mb:.0f} MB |")
    print(f"\n(each held frame {per_frame:.1f} MB of arrays; reading took {held_s:.1f} s and {lazy_s:.1f} s)")


if __name__ == "__main__":
    main()
