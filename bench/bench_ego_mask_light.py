"""What a car's own bonnet in view costs a model that normalises each frame by its own light
(`normalization: frame`), and what its ego mask wins back by keeping the bonnet out of the frame's mean and
spread (inference/preprocess.py).

CamVid has no bonnet in view, so one is painted: the lowest --bonnet share of every frame's rows in one flat
grey level (--levels: a dark and a bright bonnet), its pixels void in the ground truth and, as the node and
replay do with an ego mask, in the prediction. Every row is scored on the same pixels (the street above):

    no bonnet            the frames as recorded
    bonnet, light of the whole frame    the bonnet moves the street's normalisation (no ego mask given to it)
    bonnet, light of the street only    the ego mask keeps the bonnet out of the statistics (the node's way)

    python bench/bench_ego_mask_light.py                                   # the shipped model, CamVid val
    python bench/bench_ego_mask_light.py --model models/experiments/street_lite0_framenorm.yaml \
        --weights runs/fold1TP_framenorm/last.pth --drives 0001TP          # a fold's model, its held-out drive

Prints PQ (all / things) and mIoU per row.
"""
import argparse
import dataclasses


def bonnet_samples(samples, share: float, level: int):
    """`samples` with the lowest `share` of rows painted `level` and void in the ground truth."""
    out = []
    for s in samples:
        top = s.rgb.shape[0] - int(round(share * s.rgb.shape[0]))
        rgb, semantic, instance = s.rgb.copy(), s.semantic.copy(), s.instance.copy()
        rgb[top:], semantic[top:], instance[top:] = level, 255, 0
        out.append(dataclasses.replace(s, rgb=rgb, semantic=semantic, instance=instance))
    return out


class EgoMasked:
    """`pipeline` run as the node runs a camera with an ego mask: the masked pixels void in the result; with
    `measure_street`, also left out of where the frame's light is measured."""

    def __init__(self, pipeline, keep, measure_street: bool):
        self.pipeline, self.keep, self.measure_street = pipeline, keep, measure_street
        self.taxonomy = pipeline.taxonomy

    def __call__(self, rgb):
        from panoptic_node.inference.ego_mask import apply_ego_mask
        result = self.pipeline(rgb, self.keep if self.measure_street else None)
        return apply_ego_mask(result, self.keep, self.taxonomy.thing_lut)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="street_lite0", help="a config of `normalization: frame`")
    parser.add_argument("--weights", help="weights (default: the config's own file)")
    parser.add_argument("--drives", help="every labelled frame of these drives instead of CamVid val")
    parser.add_argument("--camvid")
    parser.add_argument("--frames", type=int, default=400)
    parser.add_argument("--bonnet", type=float, default=0.2, help="share of the frame's rows the bonnet covers")
    parser.add_argument("--levels", default="25,230", help="the bonnets' grey levels, comma-separated")
    args = parser.parse_args()
    if not 0 < args.bonnet < 1:
        parser.error(f"--bonnet {args.bonnet} is not a share of the rows; expected a number between 0 and 1")
    levels = [int(v) for v in args.levels.split(",")]
    if any(not 0 <= v <= 255 for v in levels):
        parser.error(f"--levels {args.levels}: expected grey levels 0..255")

    import numpy as np
    import torch
    torch.set_num_threads(2)
    from panoptic_node.evaluation.evaluator import score_samples
    from panoptic_node.inference.pipeline import Pipeline
    from panoptic_node.training.data import CamVid, find_camvid

    pipeline = Pipeline.from_config(args.model, weights=args.weights)
    if pipeline.cfg.input.normalization != "frame":
        parser.error(f"model {args.model} normalises its input by '{pipeline.cfg.input.normalization}', not by each "
                     f"frame's light: an ego mask changes nothing in its input; expected a `normalization: frame` model")
    root = find_camvid(args.camvid)
    data = CamVid(root, drives=args.drives.split(",")) if args.drives else CamVid(root, "val")
    samples = [data[i] for i in range(min(len(data), args.frames))]
    h, w = samples[0].rgb.shape[:2]
    keep = np.ones((h, w), bool)
    keep[h - int(round(args.bonnet * h)):] = False
    print(f"{len(samples)} CamVid {'frames of drives ' + args.drives if args.drives else 'val frames'}, model "
          f"{args.model}, weights {args.weights or 'its own'}; bonnet: the lowest {100 * args.bonnet:.0f} % of rows")
    print("| frames | PQ | PQ things | mIoU |")
    print("|---|---|---|---|")
    # the recorded frames, scored on the same street pixels: those rows void in truth and prediction, not painted
    recorded = [dataclasses.replace(b, rgb=s.rgb) for b, s in zip(bonnet_samples(samples, args.bonnet, 0), samples)]
    rows = [("no bonnet", recorded, EgoMasked(pipeline, keep, False))]
    for level in levels:
        painted = bonnet_samples(samples, args.bonnet, level)
        rows += [(f"bonnet at grey {level}, light of the whole frame", painted, EgoMasked(pipeline, keep, False)),
                 (f"bonnet at grey {level}, light of the street only (ego mask)", painted,
                  EgoMasked(pipeline, keep, True))]
    for name, frames, runner in rows:
        rep = score_samples(runner, frames, progress=name)[0].report()
        print(f"| {name} | {100 * rep['pq']['pq']:.1f} | {100 * rep['pq_things']['pq']:.1f} | "
              f"{100 * rep['miou']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
