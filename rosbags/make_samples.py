"""Small sample bags for trying the node, replay, evaluate and recover, made here rather than committed:

    python rosbags/make_samples.py [--out rosbags/samples] [--camvid PATH] [--overwrite]

- `camvid_val_10/` (mcap) and `camvid_val_10_sqlite/` (sqlite3): ten CamVid val frames with ground
  truth, as `panoptic-node convert` writes them (needs CamVid, see ../shared/data/camvid);
- `synthetic_camera/` (mcap): 30 frames of a moving synthetic scene on /camera/image_raw at 10 Hz,
  raw rgb8, plus /camera/image_raw/compressed (PNG): no dataset needed;
- `cut_recording.mcap`: the synthetic bag's data file cut at two thirds with no metadata.yaml, as a
  recorder killed mid-drive leaves it: `panoptic-node recover` brings its complete messages back.
"""
import argparse
import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def synthetic_frames(n=30, h=240, w=320):
    """Sky, road, a building and a car moving left to right."""
    for i in range(n):
        rgb = np.zeros((h, w, 3), np.uint8)
        rgb[: h // 3] = (120, 160, 230)
        rgb[h // 3: h // 2] = (150, 110, 90)
        rgb[h // 2:] = (90, 90, 90)
        x = 10 + i * (w - 80) // n
        rgb[h // 2 + 20: h // 2 + 60, x: x + 60] = (200, 30, 30)
        yield rgb


def write_synthetic(out: Path, overwrite: bool) -> Path:
    from panoptic_node.bag.writer import BagWriter, compressed_msg, header, image_msg
    from panoptic_node.messages import image_fields
    with BagWriter(out, "mcap", overwrite=overwrite) as w:
        for i, rgb in enumerate(synthetic_frames()):
            stamp = 1_700_000_000_000_000_000 + i * 100_000_000
            hdr = header(stamp, "camera")
            w.write("/camera/image_raw", image_msg(hdr, image_fields(rgb, "rgb8")), stamp)
            buf = io.BytesIO()
            Image.fromarray(rgb).save(buf, format="PNG")
            w.write("/camera/image_raw/compressed", compressed_msg(hdr, "png", buf.getvalue()), stamp)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "samples"))
    parser.add_argument("--camvid")
    parser.add_argument("--overwrite", action="store_true", help="replace sample bags an earlier run made")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    synthetic = write_synthetic(out / "synthetic_camera", args.overwrite)
    print(f"wrote {synthetic}")
    cut = out / "cut_recording.mcap"
    if cut.exists() and not args.overwrite:
        print(f"{cut} exists; pass --overwrite to make it again", file=sys.stderr)
        return 2
    data = next(synthetic.glob("*.mcap")).read_bytes()
    cut.write_bytes(data[: len(data) * 2 // 3])
    print(f"wrote {cut} (recover it: panoptic-node recover {cut} --out {out / 'recovered'})")

    from panoptic_node.bag.convert import convert
    from panoptic_node.training.data import find_camvid
    try:
        camvid = find_camvid(args.camvid)
    except FileNotFoundError as e:
        print(f"CamVid samples skipped: {e}", file=sys.stderr)
        return 0
    for name, storage in (("camvid_val_10", "mcap"), ("camvid_val_10_sqlite", "sqlite3")):
        convert("camvid", camvid, out / name, split="val", storage=storage, max_frames=10, overwrite=args.overwrite)
        print(f"wrote {out / name}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, OSError, RuntimeError) as e:  # an existing sample, a bad path: one line
        print(f"make_samples: error: {e}", file=sys.stderr)
        sys.exit(2)
