"""Do objects keep their instance id from frame to frame, and what does keeping it cost?

    python bench/bench_tracking.py [--drives 0006R0] [--sequences 8] [--frames 20] [--motion pan|forward]

CamVid has no video at camera rate and no tracks, so the motion is made: each sequence is one labelled
frame seen through a window that moves, by `--step` pixels a frame sideways (`pan`, the car turning) or
closing in on the centre (`forward`, the car driving on), each view brought back to the frame's size. The
labelled objects (CamVid's instances: connected pieces of a thing class) are then the same objects in every
view, with the same ids. Every view goes through the default pipeline; its thing segments are matched to
the labelled objects as PQ matches them (IoU > 0.5), and for every object matched in two views in a row the
prediction's id is compared: kept or changed; and an id that passes from one labelled object to another is
counted as taken over (the worse error: a consumer believes two objects are one). Per-frame numbering (the
pipeline's own, track_instances false) is the baseline, measured on the same predictions. The cost is the
tracker's time per frame against the pipeline's, on the frames and on them brought to 1920x1080 (an HD
camera: maps at that size).
"""
import argparse
import time


def views(rgb, sem, inst, n, step, motion):
    """n views of one frame: (rgb, semantic, instance), each at the frame's size."""
    import numpy as np
    from PIL import Image

    h, w = sem.shape
    for t in range(n):
        if motion == "pan":
            cw, ch = w - step * (n - 1), h - step * (n - 1) * h // w
            x0, y0 = step * t, (h - ch) // 2
        else:  # forward: the window shrinks towards the centre
            cw, ch = w - 2 * step * t, h - 2 * step * t * h // w
            x0, y0 = (w - cw) // 2, (h - ch) // 2
        box = (x0, y0, x0 + cw, y0 + ch)
        crop = Image.fromarray(rgb).crop(box).resize((w, h), Image.BILINEAR)
        near = [np.asarray(Image.fromarray(a).crop(box).resize((w, h), Image.NEAREST)) for a in (sem, inst)]
        yield np.asarray(crop), near[0], near[1]


def matches(gt_inst, gt_sem, result, thing_ids):
    """{labelled object id: predicted instance id} for the pairs with IoU > 0.5 (unique, as in PQ)."""
    import numpy as np

    out = {}
    valid = gt_sem != 255
    for g in np.unique(gt_inst[np.isin(gt_sem, thing_ids)]):
        if not g:
            continue
        gm = gt_inst == g
        label = int(np.bincount(gt_sem[gm]).argmax())
        for s in result.segments:
            if s.is_thing and s.label == label:
                pm = result.segment_ids == s.id
                inter = int((gm & pm).sum())
                if inter and inter / int(((gm | pm) & valid).sum()) > 0.5:
                    out[int(g)] = s.instance
                    break
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="street_lite0")
    parser.add_argument("--weights")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--camvid")
    parser.add_argument("--drives", help="labelled frames of these drives (default: CamVid val)")
    parser.add_argument("--sequences", type=int, default=8, help="frames of the split, evenly spaced, each made "
                                                                  "into one sequence")
    parser.add_argument("--frames", type=int, default=20, help="views per sequence")
    parser.add_argument("--step", type=int, default=6, help="pixels the window moves per view")
    parser.add_argument("--motion", choices=["pan", "forward"], default="pan")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: every core)")
    args = parser.parse_args()
    import numpy as np
    from PIL import Image
    from tqdm import tqdm

    from panoptic_node.inference.backends import check_threads, make_pipeline
    from panoptic_node.inference.tracking import InstanceTracker
    from panoptic_node.taxonomy import get_taxonomy
    from panoptic_node.training.data import CamVid, find_camvid

    try:
        check_threads(args.threads, "--threads")  # torch's thread pool crashes on absurd counts
    except ValueError as e:
        parser.error(str(e))
    data = CamVid(find_camvid(args.camvid), drives=args.drives.split(",")) if args.drives else \
        CamVid(find_camvid(args.camvid), "val")
    thing_ids = get_taxonomy("camvid").thing_ids
    pipe = make_pipeline(args.model, weights=args.weights, backend=args.backend, threads=args.threads,
                         log=lambda m: None)
    pipe(data[0].rgb)  # the graph made or compiled before anything is timed
    kept, taken = {"tracked": 0, "per frame": 0}, {"tracked": 0, "per frame": 0}
    pairs, pipeline_ms, pipeline_hd_ms, track_ms, track_hd_ms = 0, [], [], [], []
    picks = np.linspace(0, len(data) - 1, args.sequences).round().astype(int)
    for i in tqdm(picks, desc="sequences"):
        s = data[int(i)]
        tracker, tracker_hd = InstanceTracker(), InstanceTracker()
        before = None
        for rgb, sem, inst in views(s.rgb, s.semantic, s.instance, args.frames, args.step, args.motion):
            t0 = time.perf_counter()
            result = pipe(rgb)
            pipeline_ms.append(1000 * (time.perf_counter() - t0))
            tracked = tracker.update(result)
            track_ms.append(1000 * tracked.timings["track"])
            t0 = time.perf_counter()
            hd = pipe(np.asarray(Image.fromarray(rgb).resize((1920, 1080), Image.BILINEAR)))
            pipeline_hd_ms.append(1000 * (time.perf_counter() - t0))
            track_hd_ms.append(1000 * tracker_hd.update(hd).timings["track"])
            now = {"tracked": matches(inst, sem, tracked, thing_ids),
                   "per frame": matches(inst, sem, result, thing_ids)}
            if before:
                for way in kept:
                    for g in set(now[way]) & set(before[way]):
                        pairs += way == "tracked"
                        kept[way] += now[way][g] == before[way][g]
                    owner = {i: g for g, i in before[way].items()}
                    taken[way] += sum(owner.get(i, g) != g for g, i in now[way].items())
            before = now
    print(f"{args.motion}, {args.step} px a view, {len(picks)} sequences of {args.frames} views "
          f"({args.drives or 'CamVid val'}), backend {pipe.backend.name} ({pipe.backend.precision})")
    print(f"labelled objects found in two views in a row: {pairs}")
    for way, n in kept.items():
        print(f"  {way:9}: id kept {n:5d} ({100 * n / max(pairs, 1):.1f} %), an id taken over by another "
              f"labelled object {taken[way]}")
    p50 = lambda v: float(np.median(v))  # noqa: E731
    print(f"cost (p50): at {s.rgb.shape[1]}x{s.rgb.shape[0]} tracking {p50(track_ms):.2f} ms, the pipeline "
          f"{p50(pipeline_ms):.1f} ms ({p50(track_ms) / p50(pipeline_ms):.3f}x); at 1920x1080 tracking "
          f"{p50(track_hd_ms):.2f} ms, the pipeline {p50(pipeline_hd_ms):.1f} ms "
          f"({p50(track_hd_ms) / p50(pipeline_hd_ms):.3f}x)")


if __name__ == "__main__":
    main()
