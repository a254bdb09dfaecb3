"""Folding BatchNorm into convolutions changes nothing but speed."""
import copy

import pytest
import torch

from panoptic_node.model.backbone import build_backbone
from panoptic_node.model.fuse import fold_batchnorm

from conftest import randomize_batchnorm


@pytest.mark.parametrize("name", ["resnet50", "efficientnet_lite0"])
def test_folded_backbone_gives_the_same_features(name):
    torch.manual_seed(0)
    net = build_backbone(name, pretrained=name.startswith("eff")).eval()
    if name == "resnet50":
        with torch.no_grad():
            randomize_batchnorm(net)
    folded = fold_batchnorm(copy.deepcopy(net))
    bn_left = [m for m in folded.modules() if "BatchNorm" in type(m).__name__]
    assert not bn_left
    x = torch.randn(1, 3, 72, 100)
    with torch.no_grad():
        for a, b in zip(net(x), folded(x)):
            torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
