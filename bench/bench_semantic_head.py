"""Is the mask-classification head the limit of the semantic map? A run trained with `--semantic-aux`
keeps its training-only per-pixel classifier (a 1x1 convolution on the pixel embeddings) in its
`checkpoint.pth`; this scores that classifier alone (each pixel's argmax, upsampled bilinearly to the
frame) with the same confusion-matrix mIoU the evaluator uses, next to nothing else: the queries' mIoU of
the same weights is in the run's history.json (and `bench_street_ablation.py --only shipped`).

    python bench/bench_semantic_head.py --run runs/fold6R0_semaux --drives 0006R0
"""
import argparse


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a run folder trained with --semantic-aux (its checkpoint.pth)")
    parser.add_argument("--drives", required=True, help="CamVid drives to score, e.g. the run's held-out drive")
    parser.add_argument("--camvid")
    args = parser.parse_args()

    from pathlib import Path

    import numpy as np
    import torch
    import torch.nn.functional as F
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
    matrix = ConfusionMatrix(cfg.num_classes)
    with torch.no_grad():
        for i in tqdm(range(len(data)), desc="frames"):
            sample = data[i]
            x, pad, geom = preprocess(sample.rgb, cfg.input)
            logits = head.classifier(model.detect(x, pad).mask_features[0])
            logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
            pred = logits[0, :, :geom.resized_h, :geom.resized_w]
            if pred.shape[-2:] != sample.semantic.shape:
                pred = F.interpolate(pred[None], size=sample.semantic.shape, mode="bilinear", align_corners=False)[0]
            matrix.add(sample.semantic, pred.argmax(0).numpy().astype(np.uint8))
    scores = matrix.scores()
    taxonomy = get_taxonomy(cfg.labels)
    print(f"{len(data)} frames of {args.drives}: per-pixel classifier mIoU {100 * scores['miou']:.1f}, "
          f"pixel accuracy {100 * scores['pixel_accuracy']:.1f}")
    for c, iou in enumerate(scores["iou"]):
        print(f"  {taxonomy.name_of(c)}: {100 * iou:.1f}")


if __name__ == "__main__":
    main()
