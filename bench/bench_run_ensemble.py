"""Is an ensemble of training runs a better model, and by how much? The teacher question behind
distillation: a student trained to copy several runs can at best keep what the runs gain together.

Each run's network sees every frame once; from those outputs it scores, for every run alone and for all
runs together:
  queries   every run's kept queries go into one merge (as the shipped post-processing merges one run's),
            PQ and mIoU;
  soft      the per-pixel class distribution sum_q p_q(c) * sigmoid(m_q) over all queries (MaskFormer's
            semantic inference), averaged over the runs, argmax per pixel: mIoU only;
  vote      each run's own semantic map (its shipped post-processing), the class most runs give a pixel
            (a tie goes to the earliest run's class among the tied): mIoU only.
Not a deployment (N times the network); run it with the runs' held-out drive.

    python bench/bench_run_ensemble.py --drives 0006R0 --weights runs/fold6R0_lowbb/last.pth \
        --weights runs/fold6R0_seed1/last.pth --weights runs/fold6R0_ema/last.pth --weights runs/fold6R0_wd05/last.pth
"""
import argparse


def majority(maps, num_classes):
    """Per pixel the class most maps give (void 255 counts as a class too); among tied classes the one
    the earliest map gives."""
    import numpy as np
    stack = np.where(np.stack(maps) == 255, num_classes, np.stack(maps)).astype(np.int64)
    counts = np.stack([(stack == c).sum(0) for c in range(num_classes + 1)])
    mine = np.take_along_axis(counts, stack, 0)  # how many maps agree with each map, per pixel
    best = np.empty(stack.shape[1:], np.int64)
    for position in range(len(maps) - 1, -1, -1):  # backwards: the earliest map with the most votes writes last
        winning = mine[position] == counts.max(0)
        best[winning] = stack[position][winning]
    return np.where(best == num_classes, 255, best).astype(np.uint8)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", action="append", required=True, help="a run's weights (repeat, two or more)")
    parser.add_argument("--drives", required=True, help="CamVid drives to score: the runs' held-out drive")
    parser.add_argument("--model", default="street_lite0", help="the runs' config (all runs share it)")
    parser.add_argument("--camvid")
    args = parser.parse_args()
    if len(args.weights) < 2:
        parser.error("an ensemble needs two or more --weights")

    import numpy as np
    import torch
    from tqdm import tqdm

    from panoptic_node.evaluation.evaluator import Evaluator
    from panoptic_node.evaluation.semantic import ConfusionMatrix
    from panoptic_node.inference.pipeline import Pipeline
    from panoptic_node.inference.postprocess import merge_panoptic, resize_masks, select_queries
    from panoptic_node.inference.preprocess import preprocess
    from panoptic_node.training.data import CamVid, find_camvid
    from panoptic_node.training.semantic_map import query_class_scores

    torch.set_num_threads(2)
    pipes = [Pipeline.from_config(args.model, weights=w) for w in args.weights]
    cfg, taxonomy = pipes[0].cfg, pipes[0].taxonomy
    pp, stride = cfg.postprocess, pipes[0].backend.mask_stride
    data = CamVid(find_camvid(args.camvid), drives=args.drives.split(","))
    names = [f"run {i + 1} alone" for i in range(len(pipes))] + [f"all {len(pipes)} runs"]
    members = [[i] for i in range(len(pipes))] + [list(range(len(pipes)))]
    panoptic = [Evaluator(taxonomy) for _ in names]
    soft = [ConfusionMatrix(cfg.num_classes) for _ in names]
    vote = [ConfusionMatrix(cfg.num_classes) for _ in names]

    with torch.no_grad():
        for index in tqdm(range(len(data)), desc=f"frames of {args.drives}"):
            sample = data[index]
            x, pad, geom = preprocess(sample.rgb, cfg.input)
            kept, distributions = [], []
            for pipe in pipes:
                logits, _, hs, feats = pipe.backend.detect(x, pad)
                logits = logits[0].float()
                keep, labels, scores = select_queries(logits, pp.threshold)
                every = pipe.backend.masks(feats, 0, hs[0]).float()  # all queries: the soft map needs them
                kept.append((resize_masks(every[keep], geom, stride), labels, scores))
                scores_map = query_class_scores(logits, every.flatten(1)).unflatten(1, every.shape[1:])
                distributions.append(resize_masks(scores_map, geom, stride))
            own = []  # each run's semantic map, as its own merge gives it
            for k, group in enumerate(members):
                masks = torch.cat([kept[i][0] for i in group])
                result = merge_panoptic(masks, torch.cat([kept[i][1] for i in group]),
                                        torch.cat([kept[i][2] for i in group]), taxonomy.thing_lut, pp.merge,
                                        pp.min_area, cfg.labels, pp.overlap, split_things=pp.split_things,
                                        merge_things=pp.merge_things)
                panoptic[k].add_labelled(sample.semantic, sample.instance, result)
                if len(group) == 1:
                    own.append(result.semantic)
                vote[k].add(sample.semantic, majority([own[i] for i in group], cfg.num_classes))
                mean = torch.stack([distributions[i] for i in group]).mean(0)
                soft[k].add(sample.semantic, mean.argmax(0).numpy().astype(np.uint8))

    print(f"{len(data)} frames of {args.drives}; runs: " + ", ".join(f"{i + 1} = {w}" for i, w in enumerate(args.weights)))
    print("| model | PQ (queries) | things | stuff | mIoU (queries) | mIoU (soft) | mIoU (vote) |")
    print("|---|---|---|---|---|---|---|")
    for name, ev, matrix, votes in zip(names, panoptic, soft, vote):
        rep = ev.report()
        print(f"| {name} | {100 * rep['pq']['pq']:.1f} | {100 * rep['pq_things']['pq']:.1f} | "
              f"{100 * rep['pq_stuff']['pq']:.1f} | {100 * rep['miou']:.1f} | {100 * matrix.scores()['miou']:.1f} | "
              f"{100 * votes.scores()['miou']:.1f} |")


if __name__ == "__main__":
    main()
