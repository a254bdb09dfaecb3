"""bench/bench_semantic_network.py's scoring: the figures semantic_network.md decides by come from it."""
import sys
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from conftest import compact_config
from panoptic_node.evaluation.semantic import ConfusionMatrix
from panoptic_node.model.detr import build_model
from panoptic_node.taxonomy import get_taxonomy
from panoptic_node.training.data import Sample, instances_from_components

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import bench_semantic_network as bench  # noqa: E402

THING_LUT = get_taxonomy("camvid").thing_lut


def test_panoptic_of_makes_each_thing_piece_an_instance_and_leaves_small_pieces_void(rng):
    semantic = rng.integers(0, 11, (40, 50)).astype(np.uint8)
    semantic[5:25, 5:25] = 8    # a car of 400 pixels
    semantic[30:34, 40:43] = 9  # a pedestrian of 12, under the floor
    panoptic = bench.panoptic_of(semantic, THING_LUT, min_area=16)
    ids = set()
    for c in range(11):
        region = semantic == c
        if not THING_LUT[c]:
            assert (panoptic[region] == c).all()  # a stuff class is one segment, labelled by its class
            continue
        pieces, n = ndimage.label(region, structure=np.ones((3, 3)))
        for k in range(1, n + 1):
            values = np.unique(panoptic[pieces == k])
            assert len(values) == 1  # one piece, one segment
            if (pieces == k).sum() < 16:
                assert values[0] == -1
            else:
                assert values[0] // 1000 == c and values[0] % 1000 > 0 and values[0] not in ids
                ids.add(int(values[0]))
    assert len(ids) >= 1


def test_scoring_gives_the_confusion_matrix_miou_and_leaves_batchnorm_frozen(rng):
    # the first run of the record trained its BatchNorm statistics after each evaluation: scoring must hand the
    # network back as train() keeps it, BatchNorm in eval mode, the rest training
    cfg = compact_config()
    torch.manual_seed(0)
    model = build_model(cfg).train()
    classifier = torch.nn.Conv2d(cfg.mask_dim, cfg.num_classes, 1)
    samples = []
    for i in range(2):
        # classes (and void) on 8x8 blocks: a few dozen pieces, as a street frame has
        semantic = np.kron(rng.integers(0, 12, (12, 16)), np.ones((8, 8), int)).astype(np.uint8)
        semantic[semantic == 11] = 255
        samples.append(Sample(f"frame{i}", rng.integers(0, 255, (96, 128, 3), dtype=np.uint8), semantic,
                              instances_from_components(semantic, [8, 9, 10])))
    report = bench.score(model, classifier, cfg, samples)
    assert all(not m.training for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert model.transformer.training and classifier.training

    from panoptic_node.inference.preprocess import preprocess
    model.eval()
    matrix = ConfusionMatrix(cfg.num_classes)
    with torch.no_grad():
        for s in samples:
            x, pad, geom = preprocess(s.rgb, cfg.input)
            logits = torch.nn.functional.interpolate(bench.semantic_logits(model, classifier, x, pad),
                                                     size=x.shape[-2:], mode="bilinear", align_corners=False)
            matrix.add(s.semantic, logits[0, :, :geom.resized_h, :geom.resized_w].argmax(0).numpy().astype(np.uint8))
    assert report["miou"] == matrix.scores()["miou"] and report["frames"] == 2


def test_the_semantic_path_is_the_pixel_embeddings_detect_gives_for_either_memory_stride():
    # the benchmark trains the panoptic model's own semantic path: its features must be the mask head's
    # pixel embeddings as detect() computes them, also for a config whose memory is at stride 16
    for stride in (32, 16):
        cfg = compact_config(memory_stride=stride)
        torch.manual_seed(0)
        model = build_model(cfg).eval()
        classifier = torch.nn.Conv2d(cfg.mask_dim, cfg.num_classes, 1)
        images, pad = torch.randn(1, 3, 96, 128), torch.zeros(1, 96, 128, dtype=torch.bool)
        pad[:, :, 120:] = True
        with torch.no_grad():
            expected = classifier(model.detect(images, pad).mask_features[0])
            assert torch.allclose(bench.semantic_logits(model, classifier, images, pad), expected, atol=1e-5)
