"""What the node's PNG twins of its maps cost and save (<ns>/panoptic/semantic/compressed, instances/compressed).

    python bench/bench_map_compression.py [--frames 20] [--camvid PATH]

The maps are the default pipeline's own on CamVid val frames (480x360), and the same maps brought to
1920x1080 (an HD camera's maps: nearest neighbour, as labels must be). For each map: the raw message's bytes
and the time to build its fields (image_fields, what the raw topic sends), against the PNG twin's bytes and
encoding time (png_fields). The pipeline's time per frame on the same frames, measured in this run, is the
baseline the encoding is put against.
"""
import argparse
import time


def timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, 1000 * (time.perf_counter() - t0)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--camvid")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for the pipeline (0: every core)")
    args = parser.parse_args()
    import numpy as np
    from PIL import Image
    from tqdm import tqdm

    from panoptic_node.inference.backends import make_pipeline
    from panoptic_node.messages import image_fields, png_fields
    from panoptic_node.training.data import CamVid, find_camvid

    data = CamVid(find_camvid(args.camvid), "val")
    pipe = make_pipeline("street_lite0", threads=args.threads, log=lambda m: None)
    pipe(data[0].rgb)  # the graph made before anything is timed
    rows = {}  # (map, size) -> lists of raw bytes, raw ms, png bytes, png ms
    pipeline_ms = []
    for i in tqdm(np.linspace(0, len(data) - 1, args.frames).round().astype(int), desc="frames"):
        result, ms = timed(pipe, data[int(i)].rgb)
        pipeline_ms.append(ms)
        for name, labels, encoding in (("semantic", result.semantic, "mono8"), ("instances", result.instance, "mono16")):
            hd = np.asarray(Image.fromarray(labels).resize((1920, 1080), Image.NEAREST))
            for size, array in (("480x360", labels), ("1920x1080", hd)):
                raw, raw_ms = timed(image_fields, array, encoding)
                png, png_ms = timed(png_fields, array, encoding)
                row = rows.setdefault((name, size), ([], [], [], []))
                for values, value in zip(row, (raw["data"].nbytes, raw_ms, len(png["data"]), png_ms)):
                    values.append(value)
    base = float(np.median(pipeline_ms))
    print(f"\npipeline (default backend) on {args.frames} CamVid val frames: {base:.1f} ms per frame (median)\n")
    print("| map | size | raw KB | PNG KB | bytes saved | raw fields ms | PNG ms | PNG ms / pipeline ms |")
    print("|---|---|---|---|---|---|---|---|")
    for (name, size), (raw_b, raw_ms, png_b, png_ms) in rows.items():
        raw_kb, png_kb = np.mean(raw_b) / 1000, np.mean(png_b) / 1000
        print(f"| {name} | {size} | {raw_kb:.0f} | {png_kb:.1f} | {raw_kb / png_kb:.0f}x | {np.median(raw_ms):.2f} | "
              f"{np.median(png_ms):.2f} | {np.median(png_ms) / base:.2f}x |")


if __name__ == "__main__":
    main()
