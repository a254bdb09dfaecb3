"""Post-processing and storage ablations of the street model on CamVid, in one run: splitting thing
segments in separate pieces (split_things) on / off / other sizes, touching thing segments of a class
merged first (merge_things) on / off, the overlap rule on / off, a larger min_area (small segments dropped),
the input upscaled to 640x480 at test time, horizontal-flip test-time augmentation (not shipped: twice the
network for a few tenths of PQ), a stricter threshold for pedestrian queries (0.9, 0.95; not shipped), thing
segments cut where they narrow (not shipped), mask borders snapped to the frame's edges by a guided filter
(`guided r R eps E`), each class's likelihood by frame row added to its masks (`row prior alpha A`), and the
float16 file vs the float32 training checkpoint (if given).
--grid instead sweeps the query threshold and the overlap share; run it on train frames
(--split train --every 6), never to pick settings on val. Settings are chosen on a drive held out of
training: --weights of a fold's model with --drives of its validation drive.

    python bench/bench_street_ablation.py [--fp32-checkpoint runs/street_lite0/last.pth]
    python bench/bench_street_ablation.py --weights runs/fold6R0/last.pth --drives 0006R0
    python bench/bench_street_ablation.py --grid --split train --every 6

Prints PQ (all / things / stuff) and mIoU per variant; the model card's ablation table quotes it.
"""
import argparse
import copy
import dataclasses
import statistics



def flip_pipeline_class():
    """A Pipeline that also runs the mirrored frame: both passes' kept queries go into one merge, so a
    pixel takes the surest query of either pass; stuff of a class merges, and with merge_things the
    two passes' copies of one object touch and unite."""
    import numpy as np
    import torch

    from panoptic_node.inference.pipeline import Pipeline
    from panoptic_node.inference.postprocess import merge_panoptic, resize_masks, select_queries
    from panoptic_node.inference.preprocess import preprocess

    class FlipPipeline(Pipeline):
        def __call__(self, rgb):
            pp, stride = self.cfg.postprocess, self.backend.mask_stride
            a = preprocess(rgb, self.cfg.input)
            b = preprocess(np.ascontiguousarray(rgb[:, ::-1]), self.cfg.input)
            geom = a[2]
            if geom.resized_w != a[0].shape[-1] or geom.resized_w % stride:
                raise ValueError("flip back needs frames without horizontal padding, on the mask grid")
            logits, _, hs, feats = self.backend.detect(torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]]))
            masks, labels, scores = [], [], []
            for i in range(2):
                keep, lab, sc = select_queries(logits[i].float(), self.threshold)
                if len(keep):
                    m = self.backend.masks(feats, i, hs[i, keep]).float()
                    masks.append(m.flip(-1) if i else m)
                    labels.append(lab)
                    scores.append(sc)
            if not masks:
                return super().__call__(rgb)
            return merge_panoptic(resize_masks(torch.cat(masks), geom, stride), torch.cat(labels), torch.cat(scores),
                                  self.taxonomy.thing_lut, pp.merge, pp.min_area, self.cfg.labels, pp.overlap,
                                  split_things=pp.split_things, merge_things=pp.merge_things)
    return FlipPipeline


def select_patched_pipeline_class(select):
    """A Pipeline whose query selection is `select(logits, threshold, original)` instead of the model's own, for
    its calls only: a post-processing change measured before it is offered as a setting."""
    import panoptic_node.inference.pipeline as pipeline_module
    from panoptic_node.inference.pipeline import Pipeline
    original = pipeline_module.select_queries

    class PatchedPipeline(Pipeline):
        def __call__(self, rgb):
            pipeline_module.select_queries = lambda logits, t: select(logits, t, original)  # what run_batch looks up
            try:
                return super().__call__(rgb)
            finally:
                pipeline_module.select_queries = original
    return PatchedPipeline


def strict_class_pipeline_class(label: int, threshold: float):
    """A Pipeline that keeps queries of class `label` only above `threshold` (the others at the model's own):
    a per-class threshold."""
    def select(logits, t, original):
        keep, labels, scores = original(logits, t)
        ok = ~((labels == label) & (scores < threshold))
        return keep[ok], labels[ok], scores[ok]
    return select_patched_pipeline_class(select)


def neck_cut_pipeline_class(radius: int, seed_area: int = 32):
    """A Pipeline that also cuts each thing segment where it narrows (models/experiments/thin_necks.md): the
    segment eroded `radius` times (3x3), each piece of the eroded mask of at least `seed_area` pixels a seed,
    and where there are two or more, every pixel of the segment given to its nearest seed, the largest seed
    keeping the segment and the others becoming instances of their own. The semantic map is unchanged."""
    import numpy as np
    from scipy import ndimage

    from panoptic_node.inference.pipeline import Pipeline
    from panoptic_node.inference.result import result_from_segments
    square = np.ones((3, 3), bool)

    class NeckCutPipeline(Pipeline):
        def decide(self, detected):
            result = super().decide(detected)
            ids = result.segment_ids.copy()
            n = max((s.id for s in result.segments), default=0)
            labels, scores = [0] * n, [0.0] * n  # by segment id; new instances are appended
            for s in result.segments:
                labels[s.id - 1], scores[s.id - 1] = s.label, s.score
            for s in result.segments:
                if not s.is_thing:
                    continue
                x0, y0, x1, y1 = s.box
                box = ids[max(y0 - 1, 0):y1 + 1, max(x0 - 1, 0):x1 + 1]  # a view: cuts are written into ids
                mask = box == s.id
                pieces, count = ndimage.label(ndimage.binary_erosion(mask, square, iterations=radius), square)
                sizes = np.bincount(pieces.ravel(), minlength=count + 1)[1:]
                seeds = [p + 1 for p in np.argsort(-sizes, kind="stable") if sizes[p] >= seed_area]
                if len(seeds) < 2:
                    continue
                seed_map = np.zeros_like(pieces)
                for j, p in enumerate(seeds, 1):
                    seed_map[pieces == p] = j
                _, (iy, ix) = ndimage.distance_transform_edt(seed_map == 0, return_indices=True)
                nearest = seed_map[iy, ix]
                for j in range(2, len(seeds) + 1):
                    labels.append(s.label)
                    scores.append(s.score)
                    box[mask & (nearest == j)] = len(labels)
            out = result_from_segments(ids, np.asarray(labels, np.int64), np.asarray(scores), self.taxonomy.thing_lut,
                                       result.labels)
            out.timings = result.timings
            return out
    return NeckCutPipeline


def box_mean(x, radius: int):
    """The mean of each (2 radius + 1)^2 window over the last two dimensions of an N x C x H x W tensor, windows
    cut at the frame's edges (only the pixels inside count)."""
    import torch.nn.functional as F
    return F.avg_pool2d(x, 2 * radius + 1, stride=1, padding=radius, count_include_pad=False)


def guided_filter(grid_planes, guide, radius: int, eps: float):
    """He et al.'s guided filter of each K x h x w plane with one H x W guide: in every window the plane is fitted
    as a * guide + b (least squares, a shrunk by eps), and each pixel takes the mean of its windows' fits, so a
    step of the plane moves onto the guide's edges (models/experiments/guided_masks.md). On planes as large as the
    guide that is the filter itself; on a grid coarser by a whole factor, He and Sun's Fast Guided Filter: the
    guide area-averaged to the grid, a and b fitted there (radius in grid points) and resampled bilinearly to the
    frame."""
    import torch.nn.functional as F
    h, w = grid_planes.shape[-2:]
    small = F.adaptive_avg_pool2d(guide[None, None], (h, w))  # the guide itself when the sizes agree
    p = grid_planes[None]
    mean_g, mean_p = box_mean(small, radius), box_mean(p, radius)
    a = (box_mean(small * p, radius) - mean_g * mean_p) / (box_mean(small * small, radius) - mean_g * mean_g + eps)
    b = mean_p - a * mean_g
    size = guide.shape[-2:]
    a = F.interpolate(box_mean(a, radius), size=size, mode="bilinear", align_corners=False)
    b = F.interpolate(box_mean(b, radius), size=size, mode="bilinear", align_corners=False)
    return (a * guide[None, None] + b)[0]


def guided_pipeline_class(step: int, radius: int, eps: float):
    """A Pipeline whose mask logits go through guided_filter with the frame's grey level as guide before the
    decision, which is taken densely: at step 1 on the masks resized to the frame (the filter itself), at a larger
    step on the masks resampled to a grid `step` pixels apart (the fast form; the mask grid itself at step = the
    mask stride), which needs frames the mask grid and the step divide exactly (CamVid's do)."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from panoptic_node.inference.pipeline import Pipeline
    from panoptic_node.inference.postprocess import resize_masks

    class GuidedPipeline(Pipeline):
        def __call__(self, rgb):
            self._rgb = rgb  # the guide is made in the post-processing, whose time it adds to
            return super().__call__(rgb)

        def _masks_to_decide(self, mask_logits, geom, scores):
            stride = self.backend.mask_stride
            guide = torch.from_numpy(np.ascontiguousarray(self._rgb, dtype=np.float32).mean(-1) / 255.0)
            if step == 1:
                masks = resize_masks(mask_logits, geom, stride)
                if not len(masks) or guide.shape != masks.shape[1:]:
                    return masks
                return guided_filter(masks, guide, radius, eps)
            if (geom.height, geom.width) != (geom.resized_h, geom.resized_w) or geom.height % stride \
                    or geom.width % stride or geom.height % step or geom.width % step:
                raise ValueError("the fast guided variant needs frames the mask grid and the step divide exactly")
            if not len(mask_logits):
                return torch.zeros(0, geom.height, geom.width)
            masks = mask_logits[:, :geom.height // stride, :geom.width // stride].float()
            if step != stride:
                masks = F.interpolate(masks[None], size=(geom.height // step, geom.width // step), mode="bilinear",
                                      align_corners=False)[0]
            return guided_filter(masks, guide, radius, eps)
    return GuidedPipeline


def pixel_log_prior(samples, num_classes: int):
    """log of each class's share of the labelled pixels of `samples` (void left out)."""
    import numpy as np
    counts = sum(np.bincount(s.semantic.ravel(), minlength=256)[:num_classes].astype(np.float64) for s in samples)
    return np.log(np.maximum(counts, 1) / counts.sum())


def class_prior_pipeline_class(tau: float, log_prior):
    """A Pipeline whose query logits are logit-adjusted (Menon et al., ICLR 2021): class c gets
    + tau * (max log prior - log prior of c), so rare classes score higher; no-object is left as it is."""
    import torch
    boost = torch.tensor(tau * (log_prior.max() - log_prior), dtype=torch.float32)

    def select(logits, t, original):
        adjusted = logits.clone()
        adjusted[:, :-1] += boost.to(logits.dtype)
        return original(adjusted, t)
    return select_patched_pipeline_class(select)


def row_log_ratio(samples, num_classes: int, bands: int):
    """bands x classes: log p(class | band of frame rows) - log p(class) over the labelled pixels of `samples`
    (void left out, counts + 1 per class): how much likelier a class is in that band than anywhere
    (models/experiments/row_prior.md). Band b holds the frame rows r with floor(r * bands / height) == b."""
    import numpy as np
    counts = np.zeros((bands, num_classes), np.float64)
    for s in samples:
        h = s.semantic.shape[0]
        band_of_row = np.arange(h) * bands // h
        for b in range(bands):
            labels = s.semantic[band_of_row == b].ravel()
            counts[b] += np.bincount(labels, minlength=256)[:num_classes]
    counts += 1
    in_band = counts / counts.sum(1, keepdims=True)
    overall = counts.sum(0) / counts.sum()
    return np.log(in_band) - np.log(overall)


def row_boost(table, labels, grid_rows: int, stride: int, frame_rows: int):
    """K x grid_rows: table[band, class of query k] for each row of the mask grid, the band being that of the
    frame row at the grid row's centre; 0 on rows of padding (centre at or past the frame's last row)."""
    import torch
    log_ratio = torch.as_tensor(table, dtype=torch.float32)  # bands x classes
    centre = (torch.arange(grid_rows, dtype=torch.float32) + 0.5) * stride / frame_rows
    inside = centre < 1
    boost = torch.zeros(len(labels), grid_rows)
    boost[:, inside] = log_ratio[(centre[inside] * log_ratio.shape[0]).long()][:, labels.long()].T
    return boost


def row_prior_pipeline_class(alpha: float, table):
    """A Pipeline whose kept queries' mask logits get + alpha * row_boost on each row of the mask grid before the
    decision (models/experiments/row_prior.md)."""
    import dataclasses as dc

    from panoptic_node.inference.pipeline import Pipeline

    class RowPriorPipeline(Pipeline):
        def decide(self, detected):
            logits, geom = detected.mask_logits, detected.geom
            if not len(logits):
                return super().decide(detected)
            boost = row_boost(table, detected.labels, logits.shape[-2], self.backend.mask_stride, geom.resized_h)
            adjusted = logits.float() + alpha * boost.to(logits.device)[:, :, None]
            return super().decide(dc.replace(detected, mask_logits=adjusted))
    return RowPriorPipeline


def time_postprocessing(variants, samples, rounds: int):
    """The post-processing alone (Pipeline.decide after one shared network pass per frame), per variant: each
    frame's fastest of `rounds` runs, the variants interleaved frame by frame so that a change in the machine's
    speed reaches them alike; prints the median over frames and the difference to the first variant. Only for
    variants that change the post-processing (not flips, which run the network twice)."""
    import time

    from panoptic_node.inference.pipeline import Pipeline
    runners = [(name, (kind[0] if kind else Pipeline).from_config(cfg, weights=weights))
               for name, cfg, weights, *kind in variants]
    detect = runners[0][1]
    times = {name: [] for name, _ in runners}
    for sample in samples:
        detected = detect.detect_batch([sample.rgb])[0]
        for name, runner in runners:
            runner._rgb = sample.rgb  # what the guided variants' post-processing reads
            best = float("inf")
            for _ in range(rounds):
                masks = detected.mask_logits.clone()
                t0 = time.perf_counter()
                runner.decide(dataclasses.replace(detected, mask_logits=masks))
                best = min(best, time.perf_counter() - t0)
            times[name].append(best)
    base = statistics.median(times[runners[0][0]])
    print("| variant | post-processing ms / frame (median of each frame's fastest) | added ms |\n|---|---|---|")
    for name, _ in runners:
        ms = statistics.median(times[name])
        print(f"| {name} | {1000 * ms:.1f} | {1000 * (ms - base):+.1f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fp32-checkpoint", help="the float32 training checkpoint (runs/<name>/last.pth)")
    parser.add_argument("--frames", type=int, default=101)
    parser.add_argument("--split", default="val", choices=["train", "val"])
    parser.add_argument("--every", type=int, default=1, help="take every N-th frame of the split")
    parser.add_argument("--grid", action="store_true", help="sweep threshold x overlap instead")
    parser.add_argument("--camvid")
    parser.add_argument("--weights", help="weights to ablate (default: the shipped file)")
    parser.add_argument("--drives", help="every labelled frame of these drives instead of --split")
    parser.add_argument("--only", action="append", default=[],
                        help="run only the variants whose name holds this text (repeatable), e.g. --only shipped "
                             "--only upscaled")
    parser.add_argument("--prior-drives", help="drives whose pixel shares give the class-prior variants' prior "
                        "(the weights' training drives; models/experiments/class_prior_adjustment.md)")
    parser.add_argument("--postprocess-ms", type=int, default=0, metavar="ROUNDS",
                        help="time only the post-processing of each variant (each frame's fastest of ROUNDS runs)")
    parser.add_argument("--per-class", action="store_true", help="also print each variant's IoU per class")
    parser.add_argument("--guided-eps", type=float, action="append", default=[],
                        help="eps of the fast guided variants (repeatable; models/experiments/guided_masks.md)")
    args = parser.parse_args()

    import torch
    torch.set_num_threads(2)
    from panoptic_node.evaluation.evaluator import score_samples
    from panoptic_node.evaluation.report import per_class_iou_table
    from panoptic_node.inference.pipeline import Pipeline
    from panoptic_node.model.config import load_config
    from panoptic_node.taxonomy import get_taxonomy
    from panoptic_node.training.data import CamVid, find_camvid

    root = find_camvid(args.camvid)
    data = CamVid(root, drives=args.drives.split(",")) if args.drives else CamVid(root, args.split)
    samples = [data[i] for i in range(0, len(data), args.every)][:args.frames]
    shipped = load_config("street_lite0")

    def with_postprocess(**changes):
        cfg = copy.deepcopy(shipped)
        cfg.postprocess = dataclasses.replace(shipped.postprocess, **changes)
        return cfg

    def with_input(**changes):
        cfg = copy.deepcopy(shipped)
        cfg.input = dataclasses.replace(shipped.input, **changes)
        return cfg

    if args.grid:
        variants = [(f"threshold {t}, overlap {o}", with_postprocess(threshold=t, overlap=o), args.weights)
                    for t, o in [(0.3, 0.5), (0.4, 0.5), (0.5, 0.5), (0.6, 0.5), (0.7, 0.5), (0.4, 0.6), (0.5, 0.7)]]
    else:
        w = args.weights
        pp = shipped.postprocess
        variants = [(f"shipped settings (split_things {pp.split_things}, merge_things {pp.merge_things}, "
                     f"overlap 0.5)", shipped, w),
                    ("merge_things off", with_postprocess(merge_things=False), w),
                    ("split_things off (and merge_things)", with_postprocess(split_things=0, merge_things=False), w),
                    ("split_things 128", with_postprocess(split_things=128), w),
                    ("split_things 64", with_postprocess(split_things=64), w),
                    ("split_things 512", with_postprocess(split_things=512), w),
                    ("overlap rule off", with_postprocess(overlap=0.0), w),
                    # small predicted segments as false positives (models/experiments/small_thing_segments.md)
                    *[(f"min_area {a}", with_postprocess(min_area=a), w) for a in (32, 64, 128, 256)],
                    # small pedestrians / cyclists bigger at test time (4/3 is inside the training scales)
                    ("input upscaled to 640x480", with_input(short_side=480, max_size=640), w),
                    ("flip test-time augmentation", shipped, w, flip_pipeline_class())]
        pedestrian = next(c.id for c in get_taxonomy(shipped.labels).classes if c.name == "pedestrian")
        variants += [(f"pedestrian threshold {t}", shipped, w, strict_class_pipeline_class(pedestrian, t))
                     for t in (0.9, 0.95)]  # sign boards taken for pedestrians on 0006R0 (models/README.md)
        variants += [(f"cut at necks, radius {r}", shipped, w, neck_cut_pipeline_class(r)) for r in (1, 2, 3)]
        variants += [(f"guided r {r} eps {e:g}", shipped, w, guided_pipeline_class(1, r, e))
                     for r in (2, 4, 8) for e in (1e-3, 1e-2, 1e-1)]  # models/experiments/guided_masks.md
        variants += [(f"fast guided step {st} r {r} eps {e:g}", shipped, w, guided_pipeline_class(st, r, e))
                     for st, r in ((2, 2), (4, 1), (8, 1)) for e in args.guided_eps]  # the same record's addendum
        if args.prior_drives:
            prior_samples = CamVid(root, drives=args.prior_drives.split(",")).load_all()
            log_prior = pixel_log_prior(prior_samples, shipped.num_classes)
            variants += [(f"class prior tau {tau}", shipped, w, class_prior_pipeline_class(tau, log_prior))
                         for tau in (0.1, 0.25, 0.5, 1.0)]
            table = row_log_ratio(prior_samples, shipped.num_classes, 45)  # models/experiments/row_prior.md
            variants += [(f"row prior alpha {a}", shipped, w, row_prior_pipeline_class(a, table))
                         for a in (0.25, 0.5, 1.0)]
        if args.fp32_checkpoint:
            variants.append(("float32 checkpoint, overlap 0.5", shipped, args.fp32_checkpoint))
    if args.only:
        variants = [v for v in variants if any(text in v[0] for text in args.only)]
    if args.postprocess_ms:
        time_postprocessing(variants, samples, args.postprocess_ms)
        return
    print(f"{len(samples)} CamVid {'frames of drives ' + args.drives if args.drives else args.split + ' frames'}, "
          f"weights {args.weights or 'shipped'}")
    print("| variant | PQ | PQ things | PQ stuff | mIoU | ms / frame (median) |")
    print("|---|---|---|---|---|---|")
    per_class = {}
    for name, cfg, weights, *kind in variants:
        runner = kind[0] if kind else Pipeline  # the same network and settings, another way of running it
        ev, times = score_samples(runner.from_config(cfg, weights=weights), samples, progress=name)
        rep = ev.report()
        per_class[name] = rep["per_class"]
        print(f"| {name} | {100 * rep['pq']['pq']:.1f} | {100 * rep['pq_things']['pq']:.1f} | "
              f"{100 * rep['pq_stuff']['pq']:.1f} | {100 * rep['miou']:.1f} | {1000 * statistics.median(times):.0f} |",
              flush=True)
    if args.per_class and per_class:
        print("\n" + per_class_iou_table(per_class))


if __name__ == "__main__":
    main()
