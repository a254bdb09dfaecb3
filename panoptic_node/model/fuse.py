"""Inference-time folding of BatchNorm into the preceding convolution.

With frozen statistics a BatchNorm is a per-channel scale and shift: folding it into the conv's
weight and bias removes two full passes over every feature map (the backbone's largest cost after
the convolutions themselves). Applied by the torch backend to its own copy of the model, so the
trained module and its state-dict names stay untouched.
"""
import torch
from torch import nn

from .backbone import Bottleneck, EfficientNetLite, FrozenBatchNorm2d, MBConv, ResNet


def _fold(conv: nn.Conv2d, bn: nn.Module) -> None:
    eps = bn.eps
    scale = bn.weight * (bn.running_var + eps).rsqrt()
    shift = bn.bias - bn.running_mean * scale
    with torch.no_grad():
        conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
        bias = shift if conv.bias is None else conv.bias * scale + shift
        conv.bias = nn.Parameter(bias.detach().clone())


def _pair(owner: nn.Module, conv_name: str, bn_name: str) -> None:
    if hasattr(owner, conv_name) and isinstance(getattr(owner, bn_name, None), (FrozenBatchNorm2d, nn.BatchNorm2d)):
        _fold(getattr(owner, conv_name), getattr(owner, bn_name))
        setattr(owner, bn_name, nn.Identity())


@torch.no_grad()
def fold_batchnorm(backbone: nn.Module) -> nn.Module:
    """Fold every conv + BatchNorm pair of our backbones in place (eval use only)."""
    if isinstance(backbone, ResNet):
        _pair(backbone, "conv1", "bn1")
        for m in backbone.modules():
            if isinstance(m, Bottleneck):
                for i in (1, 2, 3):
                    _pair(m, f"conv{i}", f"bn{i}")
                if m.downsample is not None:
                    _fold(m.downsample[0], m.downsample[1])
                    m.downsample[1] = nn.Identity()
    elif isinstance(backbone, EfficientNetLite):
        _pair(backbone, "_conv_stem", "_bn0")
        for m in backbone.modules():
            if isinstance(m, MBConv):
                _pair(m, "_expand_conv", "_bn0")
                _pair(m, "_depthwise_conv", "_bn1")
                _pair(m, "_project_conv", "_bn2")
    return backbone
