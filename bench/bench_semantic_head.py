"""Is the mask-classification head the limit of the semantic map? A run trained with `--semantic-aux`
keeps its training-only per-pixel classifier (a 1x1 convolution on the pixel embeddings) in its
`checkpoint.pth`; this scores that classifier alone (each pixel's argmax, upsampled bilinearly to the
frame) with the same confusion-matrix mIoU the evaluator uses, next to nothing else: the queries' mIoU of
the same weights is in the run's history.json (and `bench_street_ablation.py --only shipped`).

--fuse also scores, from the same network, the queries' soft semantic map (MaskFormer's semantic inference: every
query's class probability times its mask's sigmoid, summed per class, normalised over the classes per pixel) and
that map averaged with the classifier's softmax (each at the frame's size, equal weights): whether the two heads of
one network err on different pixels, as an ensemble of two networks did (`semantic_network.md`).

    python bench/bench_semantic_head.py --run runs/fold6R0_semaux --drives 0006R0 [--fuse]
"""
import argparse

CLASSIFIER, SOFT, AVERAGED = "per-pixel classifier", "queries' soft map", "the two averaged"


def on_frame(maps, canvas, geom, shape):
    """C x h x w maps on the network's grid -> C x H x W at the frame's size: upsampled to the canvas, its padding
    cropped, then to the frame."""
    import torch.nn.functional as F
    maps = F.interpolate(maps[None], size=canvas, mode="bilinear", align_corners=False)[0]
    maps = maps[:, :geom.resized_h, :geom.resized_w]
    if maps.shape[-2:] != shape:
        maps = F.interpolate(maps[None], size=shape, mode="bilinear", align_corners=False)[0]
    return maps


def frame_maps(model, head, x, pad, geom, shape, fuse: bool) -> dict:
    """Per map name, C x H x W class scores at the frame's size (`shape`) for one preprocessed frame: the
    classifier's logits; with `fuse` also the queries' soft map (a distribution per pixel) and its average with the
    classifier's softmax."""
    from panoptic_node.training.semantic_map import query_class_scores
    at_frame = dict(canvas=x.shape[-2:], geom=geom, shape=shape)
    out = model.detect(x, pad)
    classifier = on_frame(head.classifier(out.mask_features[0])[0], **at_frame)
    maps = {CLASSIFIER: classifier}
    if fuse:
        masks = model.predict_masks(out.mask_features, out.hs)[0]  # Q x h x w
        soft = query_class_scores(out.logits[0], masks.flatten(1)).unflatten(1, masks.shape[1:])
        soft = on_frame(soft, **at_frame)  # normalised at the frame's size, as the records' figures were
        maps[SOFT] = soft / soft.sum(0, keepdim=True).clamp_min(1e-6)  # a distribution over the classes per pixel
        maps[AVERAGED] = (maps[SOFT] + classifier.softmax(0)) / 2
    return maps


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a run folder trained with --semantic-aux (its checkpoint.pth)")
    parser.add_argument("--drives", required=True, help="CamVid drives to score, e.g. the run's held-out drive")
    parser.add_argument("--camvid")
    parser.add_argument("--fuse", action="store_true",
                        help="also score the queries' soft semantic map and its average with the classifier's")
    args = parser.parse_args()

    from pathlib import Path

    import numpy as np
    import torch
    from tqdm import tqdm

    from panoptic_node.evaluation.semantic import ConfusionMatrix
    from panoptic_node.inference.preprocess import preprocess
    from panoptic_node.model.config import load_config
    from panoptic_node.model.detr import build_model
    from panoptic_node.taxonomy import get_taxonomy
    from panoptic_node.training.data import CamVid, find_camvid
    from panoptic_node.training.semantic_aux import SemanticAux
    from panoptic_node.training.train import read_training_checkpoint

    torch.set_num_threads(2)
    state = read_training_checkpoint(Path(args.run) / "checkpoint.pth")
    if "semantic_aux" not in state:
        raise SystemExit(f"{args.run} was not trained with --semantic-aux: its checkpoint has no per-pixel classifier")
    cfg = load_config(state["settings"]["config"])
    model = build_model(cfg).eval()
    model.load_state_dict(state["model"])
    head = SemanticAux(cfg.mask_dim, cfg.num_classes).eval()
    head.load_state_dict(state["semantic_aux"])
    data = CamVid(find_camvid(args.camvid), drives=args.drives.split(","))
    names = [CLASSIFIER] + ([SOFT, AVERAGED] if args.fuse else [])
    matrices = {name: ConfusionMatrix(cfg.num_classes) for name in names}
    with torch.no_grad():
        for i in tqdm(range(len(data)), desc="frames"):
            sample = data[i]
            x, pad, geom = preprocess(sample.rgb, cfg.input)
            maps = frame_maps(model, head, x, pad, geom, sample.semantic.shape, args.fuse)
            for name, scores in maps.items():
                matrices[name].add(sample.semantic, scores.argmax(0).numpy().astype(np.uint8))
    taxonomy = get_taxonomy(cfg.labels)
    print(f"{len(data)} frames of {args.drives}, {args.run}:")
    for name, matrix in matrices.items():
        scores = matrix.scores()
        print(f"{name}: mIoU {100 * scores['miou']:.1f}, pixel accuracy {100 * scores['pixel_accuracy']:.1f}; "
              + ", ".join(f"{taxonomy.name_of(c)} {100 * iou:.1f}" for c, iou in enumerate(scores["iou"])))


if __name__ == "__main__":
    main()
