"""DETR for panoptic segmentation: backbone -> transformer -> class / box heads -> mask head.

Inference runs in two steps so the (expensive) mask head sees only the queries worth keeping:
`detect()` returns class logits, boxes, decoder embeddings and the per-image mask features;
`predict_masks(features, hs)` then runs the mask head on any subset of queries.
Parameter names follow facebookresearch/detr (without its `detr.` prefix) so official
checkpoints map onto this module by renaming, not by surgery.
"""
from dataclasses import dataclass
from typing import Tuple

import torch.nn.functional as F
from torch import nn, Tensor

from .backbone import build_backbone
from .config import ModelConfig
from .mask_heads import DETRConvMaskHead, DotProductMaskHead, MLP
from .masked_decoder import MaskedPyramidDecoder
from .position_encoding import PositionEmbeddingSine
from .transformer import Transformer


@dataclass
class DetectOutput:
    logits: Tensor                    # B x Q x (num_classes + 1), last decoder layer
    boxes: Tensor                     # B x Q x 4, (cx, cy, w, h) in [0, 1] of the unpadded image
    hs: Tensor                        # B x Q x D, query embeddings for the mask head
    mask_features: Tuple[Tensor, ...]  # per-image tensors the mask head needs
    aux_logits: Tensor = None         # L x B x Q x C, every decoder layer (training)
    aux_boxes: Tensor = None
    aux_hs: Tensor = None


class PanopticDETR(nn.Module):
    def __init__(self, cfg: ModelConfig, pretrained_backbone: bool = False):
        super().__init__()
        self.cfg = cfg
        d = cfg.hidden_dim
        self.backbone = build_backbone(cfg.backbone, pretrained=pretrained_backbone, drop_connect=cfg.drop_connect)
        self.position_embedding = PositionEmbeddingSine(d // 2)
        self.input_proj = nn.Conv2d(self.backbone.num_channels[-1], d, 1)
        if cfg.memory_stride == 16:
            # the stride-16 level's own projection, to which the last level is added upsampled (detect())
            self.input_proj16 = nn.Conv2d(self.backbone.num_channels[-2], d, 1)
        mask2former = cfg.decoder_layer == "mask2former"
        self.transformer = Transformer(d, cfg.nheads, cfg.enc_layers, cfg.dec_layers, cfg.dim_feedforward, cfg.dropout,
                                       cross_first=mask2former)
        self.query_embed = nn.Embedding(cfg.num_queries, d)  # the queries' positions (DETR's object queries)
        if mask2former:
            self.query_feat = nn.Embedding(cfg.num_queries, d)  # and their starting content
        self.class_embed = nn.Linear(d, cfg.num_classes + 1)
        self.bbox_embed = MLP(d, d, 4, 3)
        fpn_dims = self.backbone.num_channels[::-1][1:]  # strides 16, 8, 4
        if cfg.mask_head == "detr_conv":
            self.masks = DETRConvMaskHead(d, cfg.nheads, fpn_dims)
        else:
            self.masks = DotProductMaskHead(d, fpn_dims, cfg.mask_dim, cfg.mask_stride,
                                            separable=cfg.fpn_smooth == "separable")
        self.mask_stride = self.masks.stride
        if cfg.decoder == "masked":
            self.masked_decoder = MaskedPyramidDecoder(d, cfg.mask_dim)

    def detect(self, images: Tensor, pad_mask: Tensor, query_groups=None) -> DetectOutput:
        """images: B x 3 x H x W normalised; pad_mask: B x H x W bool, True on padding.
        query_groups (training only, query_groups.py): more groups of queries after the model's own, each
        reading only its own group; the outputs then hold every group's queries, the model's first."""
        feats, src_proj, mask, pos = self.encoder_inputs(images, pad_mask)
        if self.cfg.decoder == "masked":
            if query_groups is not None:
                raise ValueError("query groups are built for DETR's decoder, not decoder: masked")
            hs, memory, mask_features = self._masked_decode(src_proj, mask, pos, feats, pad_mask)
        else:
            queries, query_attn_mask = self.query_embed.weight, None
            if query_groups is not None:
                queries, query_attn_mask = query_groups.queries(queries)
            query_feat = self.query_feat.weight if self.cfg.decoder_layer == "mask2former" else None
            hs, memory = self.transformer(src_proj, mask, queries, pos, query_attn_mask, query_feat)
            mask_features = self.masks.prepare(src_proj, memory, mask, feats)
        logits = self.class_embed(hs)
        boxes = self.bbox_embed(hs).sigmoid()
        return DetectOutput(logits[-1], boxes[-1], hs[-1], mask_features, logits, boxes, hs)

    def encoder_inputs(self, images: Tensor, pad_mask: Tensor):
        """The backbone's features, and what the transformer's encoder reads: (feats, the projected map B x D x h x w
        at the memory's stride, its padding mask B x h x w, its position encoding)."""
        feats = self.backbone(images)
        src_proj = self.input_proj(feats[-1])
        if self.cfg.memory_stride == 16:
            finer = feats[-2]
            src_proj = self.input_proj16(finer) + F.interpolate(src_proj, size=finer.shape[-2:], mode="bilinear",
                                                                align_corners=False)
        mask = F.interpolate(pad_mask[:, None].float(), size=src_proj.shape[-2:])[:, 0].bool()
        pos = self.position_embedding(mask).to(src_proj.dtype)
        return feats, src_proj, mask, pos

    def _masked_decode(self, src_proj, mask, pos, feats, pad_mask):
        """Mask2Former's decoder (masked_decoder.py): the memory and the mask head's pyramid first, then the
        decoder layers over them. Returns (hs L x B x Q x D, memory, the mask head's features)."""
        memory = self.transformer.encode(src_proj, mask, pos)
        pyramid = self.masks.pyramid(memory, feats)
        mask_features = (pyramid[-1],)
        levels = self.masked_decoder.levels(memory, pos, pyramid[:2], pad_mask)
        query_pos = self.query_embed.weight.unsqueeze(1).repeat(1, src_proj.shape[0], 1)
        decoder = self.transformer.decoder
        hs = self.masked_decoder(decoder.layers, decoder.norm, query_pos, levels,
                                 lambda h: self.masks(mask_features, h), self.cfg.nheads)
        return hs.transpose(1, 2), memory, mask_features

    def predict_masks(self, mask_features: Tuple[Tensor, ...], hs: Tensor) -> Tensor:
        """hs: B x K x D (any subset of queries) -> mask logits B x K x h x w at `mask_stride`."""
        return self.masks(mask_features, hs)

    def forward(self, images: Tensor, pad_mask: Tensor):
        """Every query's logits, boxes and masks (training and reference comparisons)."""
        out = self.detect(images, pad_mask)
        return out.logits, out.boxes, self.predict_masks(out.mask_features, out.hs)


def build_model(cfg: ModelConfig, pretrained_backbone: bool = False) -> PanopticDETR:
    """pretrained_backbone loads ImageNet weights (training); inference loads a full checkpoint."""
    return PanopticDETR(cfg, pretrained_backbone)
