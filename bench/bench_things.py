"""Where thing PQ is lost, frame by frame: every ground-truth car, pedestrian and cyclist segment is
matched (IoU > 0.5, as PQ does) or put in the first failure class that explains it.

    python bench/bench_things.py [--weights W] [--drives 0006R0] [--csv things.csv] [--gallery worst.png]

Failure classes, in order: tiny (< 100 px) and small (< 400 px) segments; missed (no predicted segment
of the class touches it; split by whether its pixels got the class in the semantic map, i.e. found as
pixels but given to no instance, or not found); merged (the prediction covering most of it also covers
a fifth of another ground-truth segment of the class); split (two or more predictions each cover a
fifth of it); mislocated (the rest). CamVid instances are 8-connected components of the class map
(a car cut by a pole is two segments), so tiny fragments are part of what the metric asks for.
Also printed: thing PQ with unmatched ground truth under 100 px left out, to show what the fragments
cost (not a metric the project reports as its score). --gallery draws the frames where the model itself
failed most (segments of 400 px or more missed, merged, split or mislocated): the frame, its ground
truth and the prediction side by side, each labelled, so the failure classes can be seen.
"""
import argparse
import collections
import csv


def classify(gt_inst, gt_sem, pan, sem_pred, label, divisor=1000):
    """[(segment id, area, kind, iou)] for the ground-truth segments of `label` in one frame."""
    import numpy as np

    valid = gt_sem != 255
    out = []
    gt_ids = [int(k) for k in np.unique(gt_inst[gt_sem == label]) if k]
    preds = [int(k) for k in np.unique(pan) if k // divisor == label and k % divisor]
    pred_masks = {p: pan == p for p in preds}
    for g in gt_ids:
        gm = gt_inst == g
        area = int(gm.sum())
        covers = []
        best = 0.0
        for p, pm in pred_masks.items():
            inter = int((gm & pm).sum())
            if inter:
                best = max(best, inter / int(((gm | pm) & valid).sum()))
                covers.append((inter, p))
        if best > 0.5:
            kind = "matched"
        elif area < 100:
            kind = "tiny <100 px"
        elif area < 400:
            kind = "small <400 px"
        elif not covers:
            kind = "missed, pixels found" if (sem_pred[gm] == label).mean() > 0.5 else "missed, pixels not found"
        elif sum(inter > 0.2 * area for inter, _ in covers) >= 2:
            kind = "split"
        else:
            _, p = max(covers)
            others = [k for k in gt_ids if k != g and int(((gt_inst == k) & pred_masks[p]).sum())
                      > 0.2 * int((gt_inst == k).sum())]
            kind = "merged" if others else "mislocated"
        out.append((g, area, kind, best))
    return out


MODEL_FAILURES = ("missed, pixels found", "missed, pixels not found", "merged", "split", "mislocated")


def ground_truth_result(semantic, instance, taxonomy):
    """The ground truth as a PanopticResult (one segment per instance / stuff class), to draw like a prediction."""
    import numpy as np

    from panoptic_node.evaluation.gt import panoptic_from_labels
    from panoptic_node.inference.result import result_from_segments
    pan = panoptic_from_labels(semantic, instance, taxonomy.thing_lut)
    values, ids = np.unique(pan, return_inverse=True)
    keep = values >= 0  # -1: void
    ids = np.where(keep[ids], np.cumsum(keep)[ids], 0).reshape(pan.shape)
    labels = np.where(values[keep] >= 1000, values[keep] // 1000, values[keep])
    return result_from_segments(ids, labels, np.ones(len(labels)), taxonomy.thing_lut, taxonomy.name)


def draw_gallery(path, frames, taxonomy):
    """frames: [(name, rgb, ground-truth result, predicted result, {failure kind: count})] -> one row each:
    frame | ground truth | prediction."""
    import numpy as np
    from PIL import Image, ImageDraw

    from panoptic_node.render import draw_labels, overlay
    rows = []
    for name, rgb, gt, pred, failures in frames:
        tiles = [rgb.copy(), draw_labels(overlay(rgb, gt, taxonomy, labels=False), gt, taxonomy),
                 overlay(rgb, pred, taxonomy)]
        titled = []
        for tile, title in zip(tiles, (name, "ground truth (an instance = a connected piece)",
                                       "prediction: " + ", ".join(f"{n} {k}" for k, n in failures.items() if n))):
            image = Image.fromarray(tile)
            draw = ImageDraw.Draw(image)
            draw.rectangle((0, 0, tile.shape[1], 14), fill=(0, 0, 0))
            draw.text((3, 1), title, fill=(255, 255, 255))
            titled.append(np.asarray(image))
        rows.append(np.concatenate(titled, axis=1))
    from panoptic_node.atomic import atomic_path
    with atomic_path(path) as tmp:
        Image.fromarray(np.concatenate(rows, axis=0)).save(tmp, quality=85)  # PNG or JPEG by the suffix


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="street_lite0")
    parser.add_argument("--weights")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--camvid")
    parser.add_argument("--drives", help="every labelled frame of these drives (default: CamVid val)")
    parser.add_argument("--csv", help="one row per ground-truth thing segment (frame, class, area, kind, IoU)")
    parser.add_argument("--gallery", help="PNG of the frames with the most model failures (frame | ground truth | "
                                           "prediction)")
    parser.add_argument("--gallery-frames", type=int, default=4)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --csv / --gallery")
    args = parser.parse_args()
    from panoptic_node.output_safety import check_outputs
    try:
        # before minutes of inference, not after
        check_outputs({"--csv": args.csv, "--chart": args.gallery}, overwrite=args.overwrite)
    except (ValueError, OSError) as e:
        parser.error(str(e))
    from tqdm import tqdm

    from panoptic_node.evaluation.evaluator import Evaluator
    from panoptic_node.inference.backends import make_pipeline
    from panoptic_node.inference.result import LABEL_DIVISOR
    from panoptic_node.taxonomy import get_taxonomy
    from panoptic_node.training.data import CamVid, find_camvid

    root = find_camvid(args.camvid)
    data = CamVid(root, drives=args.drives.split(",")) if args.drives else CamVid(root, "val")
    tax = get_taxonomy("camvid")
    pipe = make_pipeline(args.model, weights=args.weights, backend=args.backend, log=lambda m: None)
    rows, ev, ev_no_tiny, failures = [], Evaluator(tax), Evaluator(tax), {}
    for i in tqdm(range(len(data)), desc="frames"):
        s = data[i]
        r = pipe(s.rgb)
        ev.add_labelled(s.semantic, s.instance, r)
        tiny_missed, first_row = [], len(rows)
        for label in tax.thing_ids:
            for g, area, kind, iou in classify(s.instance, s.semantic, r.panoptic, r.semantic, label, LABEL_DIVISOR):
                rows.append((s.name, tax.name_of(label), area, kind, round(iou, 3)))
                if kind == "tiny <100 px":
                    tiny_missed.append(g)
        # the same frame with those fragments made void: what PQ would be without them
        sem2 = s.semantic.copy()
        for g in tiny_missed:
            sem2[s.instance == g] = 255
        ev_no_tiny.add_labelled(sem2, s.instance, r)
        failures[i] = collections.Counter(kind for _, _, _, kind, _ in rows[first_row:] if kind in MODEL_FAILURES)
    counts = collections.Counter((c, k) for _, c, _, k, _ in rows)
    classes = sorted({c for _, c, _, _, _ in rows})
    kinds = ["matched", "tiny <100 px", "small <400 px", "missed, pixels found", "missed, pixels not found",
             "merged", "split", "mislocated"]
    print(f"{len(data)} frames ({'drives ' + args.drives if args.drives else 'CamVid val'}), weights "
          f"{args.weights or 'shipped'}; ground-truth thing segments by what happened to them:")
    print(f"{'':26}" + "".join(f"{c[:12]:>13}" for c in classes))
    for k in kinds:
        print(f"{k:26}" + "".join(f"{counts[(c, k)]:13d}" for c in classes))
    a, b = ev.report(), ev_no_tiny.report()
    print(f"thing PQ {100 * a['pq_things']['pq']:.1f} (RQ {100 * a['pq_things']['rq']:.1f}); with the unmatched "
          f"fragments under 100 px left out: {100 * b['pq_things']['pq']:.1f} (RQ {100 * b['pq_things']['rq']:.1f})")
    if args.csv:
        from panoptic_node.atomic import atomic_path
        with atomic_path(args.csv) as tmp, open(tmp, "w", newline="") as f:  # never a half-written table
            w = csv.writer(f)
            w.writerow(["frame", "class", "area", "kind", "iou"])
            w.writerows(rows)
        print(f"wrote {args.csv}")
    if args.gallery:
        worst = sorted(failures, key=lambda i: -sum(failures[i].values()))[:args.gallery_frames]
        frames = []
        for i in sorted(worst):  # in time order
            s = data[i]
            frames.append((s.name, s.rgb, ground_truth_result(s.semantic, s.instance, tax), pipe(s.rgb), failures[i]))
        draw_gallery(args.gallery, frames, tax)
        print(f"wrote {args.gallery}: the {len(frames)} frames with the most model failures")


if __name__ == "__main__":
    main()
