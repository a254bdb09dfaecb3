"""The backbone's BatchNorm statistics re-estimated on unlabelled frames of a new drive
(models/experiments/drive_adaptation.md): the held-out drive's frames in time order, the first half's images
adapt, the second half is scored by the adapted and the unadapted model alike.

    python bench/bench_drive_adaptation.py --weights runs/fold6R0_frame_s1/last.pth --drive 0006R0 \
        --train-drives 0016E5,0001TP

Variants: `plain` (each BatchNorm's statistics set to the new frames' at its input) and `aligned A` (each
BatchNorm's input mapped from the new frames' per-channel mean and spread to the training drives', blended by A),
both estimated layer by layer in the order the frame flows; `--control` also runs them with other frames of the
training drives in place of the new drive's. Prints PQ (all / things / stuff) and mIoU per variant.
"""
import argparse
import copy
import time

import torch


class _Stop(Exception):
    """Raised by a statistics hook once the layer it measures has seen the batch: the rest is not needed."""


def batchnorm_layers(backbone, frame):
    """The backbone's BatchNorm layers in the order a frame flows through them."""
    order, hooks = [], []
    for m in backbone.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            hooks.append(m.register_forward_pre_hook(lambda mod, inp: order.append(mod)))
    try:
        with torch.no_grad():
            backbone(frame)
    finally:
        for h in hooks:
            h.remove()
    return order


def input_statistics(backbone, batches, layers, stop_after=None):
    """Per-channel mean and variance (float64) of each layer's input over every pixel of every batch; with
    `stop_after`, the forward pass ends at that layer (the layers after it are not needed)."""
    sums = {m: [0.0, 0.0, 0] for m in layers}

    def hook(mod, inp):
        x = inp[0].double()
        acc = sums[mod]
        acc[0] = acc[0] + x.sum((0, 2, 3))
        acc[1] = acc[1] + (x * x).sum((0, 2, 3))
        acc[2] += x.numel() // x.shape[1]
        if mod is stop_after:
            raise _Stop
    hooks = [m.register_forward_pre_hook(hook) for m in layers]
    backbone.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                try:
                    backbone(batch)
                except _Stop:
                    pass
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for m, (s, ss, n) in sums.items():
        mean = s / n
        out[m] = (mean, (ss / n - mean * mean).clamp_min(0.0))
    return out


def adapt_statistics(backbone, batches, mode: str, amount: float = 1.0, source=None):
    """Re-estimate every BatchNorm of `backbone` in place, layer by layer, from `batches` (no labels):
    mode 'plain' sets the statistics to the batches'; 'aligned' keeps the trained normalisation but first maps
    the batches' per-channel mean / spread at the layer's input onto `source`'s (the training frames' (mean,
    variance) at each layer's input, in flow order), the batches' statistics blended with the source's by `amount`."""
    layers = batchnorm_layers(backbone, batches[0][:1])
    for i, m in enumerate(layers):
        mean_t, var_t = input_statistics(backbone, batches, [m], stop_after=m)[m]
        if mode == "plain":
            new_mean, new_var = mean_t, var_t
        else:
            mean_s, var_s = source[i]
            mean_t = amount * mean_t + (1 - amount) * mean_s
            var_t = amount * var_t + (1 - amount) * var_s
            eps = m.eps
            ratio = ((var_s + eps) / (var_t + eps)).sqrt()  # spread of the source over the new frames'
            sd = (m.running_var.double() + eps).sqrt()
            # (x' - m) / sd with x' = (x - mean_t) * ratio + mean_s, written as one BatchNorm (x - m') / sd'
            new_mean = mean_t - (mean_s - m.running_mean.double()) / ratio
            new_var = ((sd / ratio) ** 2 - eps).clamp_min(0.0)
        m.running_mean.copy_(new_mean.float())
        m.running_var.copy_(new_var.float())


def frame_batches(samples, cfg, size: int = 8):
    """The frames as the backbone sees them (normalised, at the model's size, without the padding), in batches."""
    from panoptic_node.inference.preprocess import preprocess
    tensors = []
    for s in samples:
        image, _, geom = preprocess(s.rgb, cfg.input)
        tensors.append(image[:, :, :geom.resized_h, :geom.resized_w])
    return [torch.cat(tensors[i:i + size]) for i in range(0, len(tensors), size)]


def spread(items, count: int, offset: float = 0.0):
    """`count` items spread evenly over `items` (offset in steps, 0..1)."""
    step = len(items) / count
    return [items[min(int((i + offset) * step), len(items) - 1)] for i in range(count)]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True, help="a fold model (runs/<fold>/last.pth)")
    parser.add_argument("--drive", required=True, help="its held-out drive")
    parser.add_argument("--train-drives", required=True, help="the drives it trained on (for the source statistics)")
    parser.add_argument("--config", default="street_lite0")
    parser.add_argument("--camvid")
    parser.add_argument("--variant", action="append", default=[],
                        help="plain, or aligned A (repeatable; default: plain, aligned 0.25, 0.5, 1.0)")
    parser.add_argument("--control", action="store_true",
                        help="also adapt each variant on other frames of the training drives")
    parser.add_argument("--source-frames", type=int, default=64)
    args = parser.parse_args()

    torch.set_num_threads(2)
    from panoptic_node.evaluation.evaluator import score_samples
    from panoptic_node.evaluation.report import per_class_iou_table
    from panoptic_node.inference.backend import TorchBackend
    from panoptic_node.inference.pipeline import Pipeline
    from panoptic_node.model.checkpoint import load_model
    from panoptic_node.model.config import load_config
    from panoptic_node.training.data import CamVid, find_camvid

    root = find_camvid(args.camvid)
    cfg = load_config(args.config)
    frames = sorted(CamVid(root, drives=[args.drive]), key=lambda s: s.name)  # names sort in time order
    half = len(frames) // 2
    adapt_frames, scored = frames[:half], frames[half:]
    training = CamVid(root, drives=args.train_drives.split(","))
    in_time = sorted(range(len(training)), key=lambda i: training.pairs[i][0].name)  # read only the frames taken
    source_frames = [training[i] for i in spread(in_time, args.source_frames)]
    control_frames = [training[i] for i in spread(in_time, args.source_frames, offset=0.5)]  # others of those drives
    trained = load_model(cfg, args.weights)
    source_batches = frame_batches(source_frames, cfg)
    source = list(input_statistics(trained.backbone, source_batches,
                                   batchnorm_layers(trained.backbone, source_batches[0][:1])).values())

    variants = args.variant or ["plain", "aligned 0.25", "aligned 0.5", "aligned 1.0"]
    runs = [("unadapted", None, None)] + [(v, v, adapt_frames) for v in variants]
    if args.control:
        runs += [(f"{v}, control (training-drive frames)", v, control_frames) for v in variants]
    print(f"{args.drive}: {len(adapt_frames)} frames adapt ({adapt_frames[0].name}..{adapt_frames[-1].name}), "
          f"{len(scored)} scored ({scored[0].name}..{scored[-1].name}); weights {args.weights}")
    print("| variant | PQ | PQ things | PQ stuff | mIoU | adaptation s |")
    print("|---|---|---|---|---|---|")
    per_class = {}
    for name, variant, adapt_on in runs:
        net, seconds = copy.deepcopy(trained), 0.0
        if variant:
            mode, *amount = variant.split()
            t0 = time.perf_counter()
            adapt_statistics(net.backbone, frame_batches(adapt_on, cfg), mode, float(amount[0]) if amount else 1.0,
                             source)
            seconds = time.perf_counter() - t0
        ev, _ = score_samples(Pipeline(cfg, TorchBackend(net)), scored, progress=name)
        rep = ev.report()
        per_class[name] = rep["per_class"]
        print(f"| {name} | {100 * rep['pq']['pq']:.1f} | {100 * rep['pq_things']['pq']:.1f} | "
              f"{100 * rep['pq_stuff']['pq']:.1f} | {100 * rep['miou']:.1f} | {seconds:.0f} |", flush=True)
    print("\n" + per_class_iou_table(per_class))


if __name__ == "__main__":
    main()
