"""Test-time style normalisation, measured and not shipped (it lowered mIoU on the held-out drive; the
model card has the figures): each frame's backbone features at the stride-4 (and stride-8) taps get
their per-channel mean / std replaced by the average of the training drives' frames, i.e. a new drive
is mapped to the style the head learned.
The statistics come from the model's own training drives; the score is on a drive it never trained on.

    python bench/bench_restyle.py --weights runs/fold6R0_lowbb/last.pth --train-drives 0016E5,0001TP --drives 0006R0

Prints PQ (all / things / stuff) and mIoU without and with each variant (the shipped post-processing).
"""
import argparse


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--train-drives", required=True, help="the drives the weights trained on (their style)")
    parser.add_argument("--drives", required=True, help="the drive to score (held out of training)")
    parser.add_argument("--camvid")
    parser.add_argument("--only", action="append", default=[], help="variants whose name holds this text")
    args = parser.parse_args()

    import torch
    from tqdm import tqdm

    from panoptic_node.evaluation.evaluator import score_samples
    from panoptic_node.inference.backend import TorchBackend
    from panoptic_node.inference.pipeline import Pipeline
    from panoptic_node.inference.preprocess import preprocess
    from panoptic_node.model.checkpoint import load_model
    from panoptic_node.model.config import load_config
    from panoptic_node.training.data import CamVid, find_camvid

    torch.set_num_threads(2)
    cfg = load_config("street_lite0")
    root = find_camvid(args.camvid)
    train_set = CamVid(root, drives=args.train_drives.split(","))
    test_samples = CamVid(root, drives=args.drives.split(",")).load_all()
    backend = TorchBackend(load_model(cfg, args.weights))
    backbone = backend.model.backbone
    taps = backbone.taps[:2]

    def channel_stats(x):
        return x.mean(dim=(2, 3)), x.var(dim=(2, 3), unbiased=False).add(1e-6).sqrt()

    # the training drives' style: per-channel mean / std of each tap, averaged over their frames
    sums = {i: [0.0, 0.0] for i in taps}
    grab = {}
    hooks = [backbone._blocks[i].register_forward_hook(lambda m, a, out, i=i: grab.__setitem__(i, out)) for i in taps]
    with torch.inference_mode():
        for k in tqdm(range(len(train_set)), desc="training drives' style", leave=False):
            x, pad, _ = preprocess(train_set[k].rgb, cfg.input)
            backbone(x.contiguous(memory_format=torch.channels_last))
            for i in taps:
                mu, sd = channel_stats(grab[i])
                sums[i][0] += mu[0]
                sums[i][1] += sd[0]
    for h in hooks:
        h.remove()
    style = {i: (s[0] / len(train_set), s[1] / len(train_set)) for i, s in sums.items()}

    def restyle(blocks):
        def hook(module, inputs, out, i):
            mu, sd = channel_stats(out)
            target_mu, target_sd = style[i]
            return (out - mu[..., None, None]) / sd[..., None, None] * target_sd[None, :, None, None] \
                + target_mu[None, :, None, None]
        return [backbone._blocks[i].register_forward_hook(lambda m, a, o, i=i: hook(m, a, o, i)) for i in blocks]

    variants = [("without", []), ("restyle stride 4 and 8", taps), ("restyle stride 4", taps[:1])]
    if args.only:
        variants = [v for v in variants if any(t in v[0] for t in args.only)]
    print(f"{len(test_samples)} frames of {args.drives}; style of {len(train_set)} frames of {args.train_drives}; "
          f"weights {args.weights}")
    print("| variant | PQ | PQ things | PQ stuff | mIoU |")
    print("|---|---|---|---|---|")
    for name, blocks in variants:
        hooks = restyle(blocks)
        ev, _ = score_samples(Pipeline(cfg, backend), test_samples, progress=name)
        for h in hooks:
            h.remove()
        rep = ev.report()
        print(f"| {name} | {100 * rep['pq']['pq']:.1f} | {100 * rep['pq_things']['pq']:.1f} | "
              f"{100 * rep['pq_stuff']['pq']:.1f} | {100 * rep['miou']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
