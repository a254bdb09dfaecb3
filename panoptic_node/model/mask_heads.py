"""Mask heads behind one interface.

`prepare(...)` runs once per image batch and returns the per-image tensors the head needs;
`forward(features, hs)` turns query embeddings (B x K x D, any K) into mask logits B x K x h x w.
The pipeline calls `forward` with the kept queries only, which is where most CPU time goes.

- DETRConvMaskHead: the published head (MHAttentionMap + MaskHeadSmallConv), stride 4.
- DotProductMaskHead: query embedding . per-pixel embedding (a light FPN), stride 8 (2.4x cheaper)
  or stride 4 (one more FPN level: finer masks, ~4 ms more per frame; the shipped street model).
"""
from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import nn, Tensor


class MLP(nn.Module):
    """A few fully connected layers with ReLU between them (DETR's box head)."""

    def __init__(self, input_dim, hidden_dim, output_dim, num_layers):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:] + [output_dim]))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = F.relu(layer(x)) if i < len(self.layers) - 1 else layer(x)
        return x


class MHAttentionMap(nn.Module):
    """Attention weights of each query over the encoder memory, softmax over heads x H x W jointly."""

    def __init__(self, query_dim, hidden_dim, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.hidden_dim = hidden_dim
        self.q_linear = nn.Linear(query_dim, hidden_dim)
        self.k_linear = nn.Linear(query_dim, hidden_dim)
        nn.init.zeros_(self.k_linear.bias)
        nn.init.zeros_(self.q_linear.bias)
        nn.init.xavier_uniform_(self.k_linear.weight)
        nn.init.xavier_uniform_(self.q_linear.weight)
        self.normalize_fact = float(hidden_dim / num_heads) ** -0.5

    def forward(self, q: Tensor, k: Tensor, mask: Tensor) -> Tensor:
        q = self.q_linear(q)
        k = F.conv2d(k, self.k_linear.weight.unsqueeze(-1).unsqueeze(-1), self.k_linear.bias)
        c = self.hidden_dim // self.num_heads
        qh = q.view(q.shape[0], q.shape[1], self.num_heads, c)
        kh = k.view(k.shape[0], self.num_heads, c, k.shape[-2], k.shape[-1])
        weights = torch.einsum("bqnc,bnchw->bqnhw", qh * self.normalize_fact, kh)
        weights = weights.masked_fill(mask[:, None, None], float("-inf"))
        return F.softmax(weights.flatten(2), dim=-1).view(weights.shape)


class MaskHeadSmallConv(nn.Module):
    """DETR's per-query FPN: attention maps + projected features, refined with three skip levels."""

    def __init__(self, dim, fpn_dims, context_dim):
        super().__init__()
        inter = [dim, context_dim // 2, context_dim // 4, context_dim // 8, context_dim // 16]
        self.lay1 = nn.Conv2d(dim, dim, 3, padding=1)
        self.gn1 = nn.GroupNorm(8, dim)
        self.lay2 = nn.Conv2d(dim, inter[1], 3, padding=1)
        self.gn2 = nn.GroupNorm(8, inter[1])
        self.lay3 = nn.Conv2d(inter[1], inter[2], 3, padding=1)
        self.gn3 = nn.GroupNorm(8, inter[2])
        self.lay4 = nn.Conv2d(inter[2], inter[3], 3, padding=1)
        self.gn4 = nn.GroupNorm(8, inter[3])
        self.lay5 = nn.Conv2d(inter[3], inter[4], 3, padding=1)
        self.gn5 = nn.GroupNorm(8, inter[4])
        self.out_lay = nn.Conv2d(inter[4], 1, 3, padding=1)
        self.adapter1 = nn.Conv2d(fpn_dims[0], inter[1], 1)
        self.adapter2 = nn.Conv2d(fpn_dims[1], inter[2], 1)
        self.adapter3 = nn.Conv2d(fpn_dims[2], inter[3], 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                nn.init.constant_(m.bias, 0)

    def forward(self, x: Tensor, bbox_mask: Tensor, fpns: List[Tensor]) -> Tensor:
        # x, fpns: B x C x h x w; bbox_mask: B x K x heads x h x w -> (B*K) x 1 x H x W
        k = bbox_mask.shape[1]
        x = torch.cat([x.repeat_interleave(k, 0), bbox_mask.flatten(0, 1)], 1)
        x = F.relu(self.gn1(self.lay1(x)))
        x = F.relu(self.gn2(self.lay2(x)))
        for adapter, lay, gn, fpn in ((self.adapter1, self.lay3, self.gn3, fpns[0]),
                                      (self.adapter2, self.lay4, self.gn4, fpns[1]),
                                      (self.adapter3, self.lay5, self.gn5, fpns[2])):
            cur = adapter(fpn).repeat_interleave(k, 0)
            x = cur + F.interpolate(x, size=cur.shape[-2:], mode="nearest")
            x = F.relu(gn(lay(x)))
        return self.out_lay(x)


class DETRConvMaskHead(nn.Module):
    """The published DETR panoptic head. Parameter names match the official checkpoints."""

    stride = 4

    def __init__(self, hidden_dim: int, nheads: int, fpn_dims: List[int]):
        super().__init__()
        self.bbox_attention = MHAttentionMap(hidden_dim, hidden_dim, nheads)
        self.mask_head = MaskHeadSmallConv(hidden_dim + nheads, fpn_dims, hidden_dim)

    def prepare(self, src_proj: Tensor, memory: Tensor, mask: Tensor, feats: List[Tensor]) -> Tuple[Tensor, ...]:
        return (src_proj, memory, mask, feats[2], feats[1], feats[0])

    def forward(self, features: Tuple[Tensor, ...], hs: Tensor) -> Tensor:
        src_proj, memory, mask, f16, f8, f4 = features
        bbox_mask = self.bbox_attention(hs, memory, mask)
        masks = self.mask_head(src_proj, bbox_mask, [f16, f8, f4])
        return masks.view(hs.shape[0], hs.shape[1], masks.shape[-2], masks.shape[-1])


class DotProductMaskHead(nn.Module):
    """Mask logits = MLP(query) . pixel embedding; pixel embeddings from a light FPN at stride 8 or 4.

    The stride-4 level adds the backbone's stride-4 tap through a 1x1 lateral and a depthwise 3x3
    smoothing: a full 3x3 at that resolution would cost as much as the backbone.

    separable: the stride-16 and stride-8 smoothings as a depthwise 3x3 then a 1x1 (9x fewer operations): the
    full 3x3 at stride 8 is a fifth of the street model's int8 network on an x86 CPU without VNNI.
    """

    def __init__(self, hidden_dim: int, fpn_dims: List[int], mask_dim: int = 128, stride: int = 8,
                 separable: bool = False):
        super().__init__()
        self.stride = stride
        self.lateral32 = nn.Conv2d(hidden_dim, mask_dim, 1)
        self.lateral16 = nn.Conv2d(fpn_dims[0], mask_dim, 1)
        self.lateral8 = nn.Conv2d(fpn_dims[1], mask_dim, 1)

        def smoothing():
            convs = ([nn.Conv2d(mask_dim, mask_dim, 3, padding=1, groups=mask_dim), nn.Conv2d(mask_dim, mask_dim, 1)]
                     if separable else [nn.Conv2d(mask_dim, mask_dim, 3, padding=1)])
            return nn.Sequential(*convs, nn.GroupNorm(8, mask_dim), nn.ReLU())
        self.smooth16 = smoothing()
        self.smooth8 = smoothing()
        if stride == 4:
            self.lateral4 = nn.Conv2d(fpn_dims[2], mask_dim, 1)
            self.smooth4 = nn.Sequential(nn.Conv2d(mask_dim, mask_dim, 3, padding=1, groups=mask_dim),
                                         nn.GroupNorm(8, mask_dim), nn.ReLU())
        self.pixel_out = nn.Conv2d(mask_dim, mask_dim, 1)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)

    def pyramid(self, memory: Tensor, feats: List[Tensor]) -> List[Tensor]:
        """The FPN's levels after smoothing, stride 16 to the finest (8 or 4): the last is the pixel embedding."""
        x = self.lateral32(memory)
        levels = []
        taps = [(feats[2], self.lateral16, self.smooth16), (feats[1], self.lateral8, self.smooth8)]
        if self.stride == 4:
            taps.append((feats[0], self.lateral4, self.smooth4))
        for f, lateral, smooth in taps:
            x = smooth(lateral(f) + F.interpolate(x, size=f.shape[-2:], mode="bilinear", align_corners=False))
            levels.append(x)
        return levels

    def prepare(self, src_proj: Tensor, memory: Tensor, mask: Tensor, feats: List[Tensor]) -> Tuple[Tensor, ...]:
        # pixel_out is applied on the query side in forward(): the features stay before it
        return (self.pyramid(memory, feats)[-1],)

    def forward(self, features: Tuple[Tensor, ...], hs: Tensor) -> Tensor:
        # mask = e . (W x + b) = (e W) . x + e . b for the 1x1 projection pixel_out (W, b): projecting
        # the K query embeddings instead of every pixel saves a 128x128 matrix product per pixel
        # (~1.4 ms per frame at stride 4); same function, same parameters
        e = self.mask_embed(hs)
        w = self.pixel_out.weight.flatten(1)
        bias = (e * self.pixel_out.bias).sum(-1)
        return torch.einsum("bqc,bchw->bqhw", e @ w, features[0]) + bias[..., None, None]
