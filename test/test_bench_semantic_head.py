"""bench/bench_semantic_head.py's maps: semantic_aux_balanced.md decides by the figures they give."""
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from conftest import compact_config
from panoptic_node.inference.preprocess import preprocess
from panoptic_node.model.detr import build_model
from panoptic_node.training.semantic_aux import SemanticAux

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import bench_semantic_head as bench  # noqa: E402


def test_the_fused_maps_are_the_classifier_and_maskformers_soft_map_at_the_frame(rng):
    cfg = compact_config()
    torch.manual_seed(0)
    model = build_model(cfg, pretrained_backbone=False).eval()
    head = SemanticAux(cfg.mask_dim, cfg.num_classes).eval()
    rgb = rng.integers(0, 256, (90, 150, 3), dtype=np.uint8)
    x, pad, geom = preprocess(rgb, cfg.input)
    assert (geom.resized_h, geom.resized_w) != tuple(x.shape[-2:])  # the canvas has padding to crop
    with torch.no_grad():
        maps = bench.frame_maps(model, head, x, pad, geom, (90, 150), fuse=True)
        # directly: every query's class probability (no "no object") times its mask, summed per class
        logits, _, masks = model(x, pad)
        soft = (logits[0].softmax(-1)[:, :-1, None, None] * masks[0].sigmoid()[:, None]).sum(0)
        pixels = head.classifier(model.detect(x, pad).mask_features[0])

    def at_frame(m):  # the canvas's size, its padding off, the frame's size
        m = F.interpolate(m[None], size=x.shape[-2:], mode="bilinear", align_corners=False)[0]
        m = m[:, :geom.resized_h, :geom.resized_w]
        return F.interpolate(m[None], size=(90, 150), mode="bilinear", align_corners=False)[0]

    soft = at_frame(soft)
    soft = soft / soft.sum(0, keepdim=True)
    assert maps[bench.CLASSIFIER].shape == (cfg.num_classes, 90, 150)
    assert torch.allclose(maps[bench.CLASSIFIER], at_frame(pixels[0]), atol=1e-5)
    assert torch.allclose(maps[bench.SOFT], soft, atol=1e-5)
    assert torch.allclose(maps[bench.SOFT].sum(0), torch.ones(90, 150), atol=1e-5)
    assert torch.allclose(maps[bench.AVERAGED], (soft + at_frame(pixels[0]).softmax(0)) / 2, atol=1e-5)
    # without --fuse, the classifier alone, as the script scored before
    with torch.no_grad():
        assert list(bench.frame_maps(model, head, x, pad, geom, (90, 150), fuse=False)) == [bench.CLASSIFIER]
