"""Is a semantic network better on a new drive than the panoptic model's semantic map?

The issue's published references at this resolution are semantic networks, trained by a per-pixel loss alone;
our street model learns its semantic map through DETR's set losses (a class per query, a mask per query). The
records found a per-pixel classifier trained beside the set losses (`--semantic-aux`) no better than the queries
(`bench_semantic_head.py`). This trains the street model's own semantic path (EfficientNet-Lite, the transformer
encoder, the mask head's FPN, and a 1x1 classifier on its pixel embeddings) by per-pixel cross-entropy alone, with
no query, decoder or set loss, on `panoptic-node train`'s batches, optimiser and schedule, and scores it on the
held-out drives every third epoch with the evaluator (each pixel's argmax, upsampled bilinearly to the frame; mIoU
from its confusion matrix, PQ with the class map's 8-connected thing pieces as instances, CamVid's own definition).
Beside a run of the release's recipe on the same fold (`--baseline`, its history.json), it says whether the set
formulation costs the semantic map on a new drive.

    python bench/bench_semantic_network.py --camvid ../shared/data/camvid --train-drives 0001TP,0006R0 \\
        --val-drives 0016E5 --out runs/semantic_16E5 --baseline models/experiments/runs/fold16E5_framenorm

Writes `history.json` into `--out` (a new folder) after every epoch, and the last weights
(`last_semantic_network.pth`, to score them again) beside it.
"""
import argparse
import json
import time
from pathlib import Path


def semantic_logits(model, classifier, images, pad):
    """The panoptic model's path to its pixel embeddings (detect() without the decoder), then the classifier:
    B x classes x h x w at the mask head's stride."""
    feats, src_proj, mask, pos = model.encoder_inputs(images, pad)
    memory = model.transformer.encode(src_proj, mask, pos)
    return classifier(model.masks.pyramid(memory, feats)[-1])


def panoptic_of(semantic, thing_lut, min_area):
    """A class map as a panoptic map the way CamVid's labels define instances (training/data.py): each
    8-connected piece of a thing class is one instance; pieces under `min_area` pixels (the model config's
    post-processing floor) are left void, as the pipeline drops such segments; each stuff class is one segment."""
    import numpy as np
    from panoptic_node.evaluation.gt import panoptic_from_labels
    from panoptic_node.inference.result import VOID_PANOPTIC
    from panoptic_node.training.data import instances_from_components

    instance = instances_from_components(semantic, np.flatnonzero(thing_lut[:int(semantic.max()) + 1]))
    panoptic = panoptic_from_labels(semantic, instance, thing_lut)
    small = np.bincount(instance.ravel())[instance] < min_area
    return np.where((instance > 0) & small, VOID_PANOPTIC, panoptic).astype(np.int32)


def score(model, classifier, cfg, samples):
    """The evaluator's report (mIoU from its confusion matrix, PQ) of each frame's argmax at full resolution
    (bench_semantic_head.py's way), its instances the class map's 8-connected thing pieces (panoptic_of)."""
    import numpy as np
    import torch
    from bench_semantic_head import on_frame  # this folder's: the same upsampling to the frame
    from panoptic_node.evaluation.evaluator import Evaluator
    from panoptic_node.evaluation.gt import panoptic_from_labels
    from panoptic_node.inference.preprocess import preprocess
    from panoptic_node.taxonomy import get_taxonomy
    from panoptic_node.training.train import freeze_batchnorm

    taxonomy = get_taxonomy(cfg.labels)
    evaluator = Evaluator(taxonomy)
    model.eval()
    with torch.no_grad():
        for sample in samples:
            x, pad, geom = preprocess(sample.rgb, cfg.input)
            pred = on_frame(semantic_logits(model, classifier, x, pad)[0], x.shape[-2:], geom, sample.semantic.shape)
            semantic = pred.argmax(0).numpy().astype(np.uint8)
            evaluator.add(panoptic_from_labels(sample.semantic, sample.instance, taxonomy.thing_lut), sample.semantic,
                          panoptic_of(semantic, taxonomy.thing_lut, cfg.postprocess.min_area), semantic)
    model.train()
    freeze_batchnorm(model)  # back to training as train() has it: ImageNet's BatchNorm statistics stay
    return evaluator.report()


def late_mean(history, from_epoch):
    values = [100 * h["val"]["miou"] for h in history if "val" in h and h["epoch"] >= from_epoch]
    return sum(values) / len(values) if values else float("nan")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--camvid", required=True, help="the CamVid folder (train + val)")
    parser.add_argument("--train-drives", required=True)
    parser.add_argument("--val-drives", required=True)
    parser.add_argument("--out", required=True, help="a new folder for history.json")
    parser.add_argument("--config", default="street_lite0", help="a model name or YAML (its semantic path)")
    parser.add_argument("--baseline", help="a run folder of the release's recipe on the same fold (history.json)")
    parser.add_argument("--epochs", type=int, default=36)
    parser.add_argument("--from-epoch", type=int, default=24, help="the late window's first epoch")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--lr-backbone", type=float, default=3e-5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--class-balance", type=float, default=0.0,
                        help="weigh each class's cross-entropy by (median / its pixel frequency) ** POWER (SegNet's "
                             "weighting at 1; 0 = off), as train --class-balance")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    out = Path(args.out)
    if out.exists():
        parser.error(f"--out '{out}' exists; expected a new folder (nothing is written into an existing one)")
    baseline = None
    if args.baseline:
        path = Path(args.baseline) / "history.json"
        if not path.is_file():
            parser.error(f"--baseline '{args.baseline}' has no history.json; expected a training run's folder")
        baseline = json.loads(path.read_text())

    import numpy as np
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    from panoptic_node.atomic import atomic_path, write_json
    from panoptic_node.model.config import load_config
    from panoptic_node.model.detr import build_model
    from panoptic_node.taxonomy import VOID, get_taxonomy
    from panoptic_node.training.class_balance import describe, frame_class_weights
    from panoptic_node.training.data import make_dataset
    from panoptic_node.training.train import freeze_batchnorm, make_batch, warmup_cosine

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    cfg = load_config(args.config)
    taxonomy = get_taxonomy(cfg.labels)
    train_samples = make_dataset("camvid", args.camvid, "train", drives=args.train_drives.split(","),
                                 labels=cfg.labels).load_all()
    val_samples = make_dataset("camvid", args.camvid, "val", drives=args.val_drives.split(","),
                               labels=cfg.labels).load_all()
    print(f"{len(train_samples)} training frames ({args.train_drives}), "
          f"{len(val_samples)} held out ({args.val_drives})")

    model = build_model(cfg, pretrained_backbone=True).to(memory_format=torch.channels_last)
    classifier = torch.nn.Conv2d(cfg.mask_dim, cfg.num_classes, 1)
    model.train()
    freeze_batchnorm(model)
    # the head's parameters off the semantic path (decoder, queries, class and box heads) get no gradient, and
    # AdamW and the clipping pass over those
    used = [p for n, p in model.named_parameters() if not n.startswith("backbone.")]
    backbone = [p for n, p in model.named_parameters() if n.startswith("backbone.")]
    optimizer = torch.optim.AdamW([{"params": used + list(classifier.parameters()), "lr": args.lr},
                                   {"params": backbone, "lr": args.lr_backbone}], weight_decay=1e-4)
    batch_size, crop = 4, (352, 480)  # panoptic-node train's defaults
    iters = len(train_samples) // batch_size
    total, warmup = args.epochs * iters, min(200, args.epochs * iters // 10)

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, warmup, total))
    thing_lut = taxonomy.thing_lut
    weights = None
    if args.class_balance:  # from the training frames as loaded, before augmentation (as train does)
        weights = frame_class_weights(train_samples, cfg.num_classes, args.class_balance)
        print(f"class weights: {describe(weights, taxonomy.name_of)}")
    history = []
    for epoch in range(args.epochs):
        t0, running = time.time(), []
        order = rng.permutation(len(train_samples))
        for it in tqdm(range(iters), desc=f"epoch {epoch + 1}/{args.epochs}", leave=False):
            images, pad, targets = make_batch([train_samples[i] for i in order[it * batch_size:(it + 1) * batch_size]],
                                              rng, crop, cfg.input.normalization, thing_lut)
            semantic = torch.stack([t["semantic"] for t in targets])  # the stride-4 loss grid
            logits = F.interpolate(semantic_logits(model, classifier, images, pad), size=semantic.shape[-2:],
                                   mode="bilinear", align_corners=False)
            loss = F.cross_entropy(logits, semantic, weight=weights, ignore_index=VOID)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(used + backbone + list(classifier.parameters()), 0.1)
            optimizer.step()
            scheduler.step()
            running.append(float(loss.detach()))
        entry = {"epoch": epoch + 1, "loss": float(np.mean(running)), "train_seconds": time.time() - t0}
        if (epoch + 1) % 3 == 0 or epoch + 1 == args.epochs:
            rep = score(model, classifier, cfg, val_samples)
            entry["val"] = {"pq": rep["pq"]["pq"], "pq_things": rep["pq_things"]["pq"],
                            "pq_stuff": rep["pq_stuff"]["pq"], "miou": rep["miou"],
                            "pixel_accuracy": rep["pixel_accuracy"],
                            "iou": {v["name"]: v["iou"] for v in rep["per_class"].values()}}
        history.append(entry)
        out.mkdir(parents=True, exist_ok=True)
        write_json(history, out / "history.json", indent=1)
        print(f"epoch {epoch + 1}: loss {entry['loss']:.3f} ({entry['train_seconds']:.0f} s)"
              + (f", held-out mIoU {100 * entry['val']['miou']:.1f} PQ {100 * entry['val']['pq']:.1f} (things "
                 f"{100 * entry['val']['pq_things']:.1f})" if "val" in entry else ""), flush=True)
    with atomic_path(out / "last_semantic_network.pth") as tmp:  # a killed run leaves no half-written weights
        # to score again (semantic_network.md's ensemble); not a checkpoint the pipeline loads
        torch.save({"model": model.state_dict(), "classifier": classifier.state_dict(), "config": args.config}, tmp)

    print(f"\nheld-out mIoU, mean of epochs {args.from_epoch}-{args.epochs}: semantic network "
          f"{late_mean(history, args.from_epoch):.1f}"
          + (f", baseline {late_mean(baseline, args.from_epoch):.1f}" if baseline else ""))
    last = history[-1]["val"]["iou"]
    base_last = next((h["val"]["iou"] for h in reversed(baseline or []) if "val" in h), None)
    for name, iou in last.items():
        print(f"  {name}: {100 * iou:.1f}" + (f" (baseline {100 * base_last[name]:.1f})" if base_last else ""))


if __name__ == "__main__":
    main()
