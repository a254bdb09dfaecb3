"""Every model config the project keeps (models/*.yaml, and the experiments' configs that the records in
models/experiments/ name in the commands they give) still reads, is named for its file, and builds a
network that runs: a record's command must work after later changes to the config schema or the model
code, or the record can no longer be reproduced."""
from pathlib import Path

import pytest
import torch

from panoptic_node.model.config import load_config
from panoptic_node.model.detr import build_model

MODELS = Path(__file__).resolve().parents[1] / "models"
CONFIGS = sorted(MODELS.glob("*.yaml")) + sorted((MODELS / "experiments").glob("*.yaml"))
STREET = [p for p in CONFIGS if p.stem.startswith("street_")]


def test_the_configs_are_found():
    assert MODELS / "street_lite0.yaml" in CONFIGS and len(STREET) > 10


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.relative_to(MODELS).as_posix())
def test_each_config_reads_and_is_named_for_its_file(path):
    cfg = load_config(str(path))
    assert cfg.name == path.stem


@pytest.mark.parametrize("path", STREET, ids=lambda p: p.relative_to(MODELS).as_posix())
def test_each_street_network_runs_on_a_small_frame(path):
    """Random weights (no ImageNet load), one 96x128 frame, the padding mask of a frame that fills it:
    every query gets a class distribution, a box and a mask at the config's mask stride."""
    cfg = load_config(str(path))
    torch.manual_seed(0)
    net = build_model(cfg).eval()
    images = torch.randn(1, 3, 96, 128)
    pad = torch.zeros(1, 96, 128, dtype=torch.bool)
    with torch.no_grad():
        logits, boxes, masks = net(images, pad)
    q = cfg.num_queries
    assert logits.shape == (1, q, cfg.num_classes + 1)
    assert boxes.shape == (1, q, 4) and bool(((boxes >= 0) & (boxes <= 1)).all())
    assert masks.shape == (1, q, 96 // cfg.mask_stride, 128 // cfg.mask_stride)
    assert bool(torch.isfinite(logits).all() and torch.isfinite(masks).all())
