"""DETR's post-norm encoder-decoder transformer.

Parameter names follow facebookresearch/detr so official checkpoints load by name.
"""
import copy
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn, Tensor


class Transformer(nn.Module):
    def __init__(self, d_model=256, nhead=8, num_encoder_layers=6, num_decoder_layers=6,
                 dim_feedforward=2048, dropout=0.1, cross_first=False):
        super().__init__()
        enc = TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout)
        dec = TransformerDecoderLayer(d_model, nhead, dim_feedforward, dropout, cross_first)
        self.encoder = TransformerEncoder(enc, num_encoder_layers)
        self.decoder = TransformerDecoder(dec, num_decoder_layers, nn.LayerNorm(d_model))
        self.d_model = d_model
        self.nhead = nhead
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, src: Tensor, mask: Tensor, query_embed: Tensor, pos_embed: Tensor,
                query_attn_mask: Optional[Tensor] = None, query_feat: Optional[Tensor] = None):
        """src, pos_embed: B x C x H x W; mask: B x H x W (True = pad); query_embed: Q x C;
        query_attn_mask: Q x Q additive, which queries each query's self-attention may read (query_groups.py);
        query_feat: Q x C, the queries' starting content (Mask2Former's learned features; None: zeros, DETR's).

        Returns (decoder outputs L x B x Q x C after the final norm, memory B x C x H x W).
        """
        bs, c, h, w = src.shape
        src = src.flatten(2).permute(2, 0, 1)
        pos_embed = pos_embed.flatten(2).permute(2, 0, 1)
        query_embed = query_embed.unsqueeze(1).repeat(1, bs, 1)
        mask = mask.flatten(1)
        tgt = torch.zeros_like(query_embed) if query_feat is None else query_feat.unsqueeze(1).repeat(1, bs, 1)
        memory = self.encoder(src, key_padding_mask=mask, pos=pos_embed)
        hs = self.decoder(tgt, memory, memory_key_padding_mask=mask, pos=pos_embed, query_pos=query_embed,
                          query_attn_mask=query_attn_mask)
        return hs.transpose(1, 2), memory.permute(1, 2, 0).view(bs, c, h, w)

    def encode(self, src: Tensor, mask: Tensor, pos_embed: Tensor) -> Tensor:
        """The encoder alone (for a decoder that needs the memory before it runs): B x C x H x W in and out."""
        bs, c, h, w = src.shape
        memory = self.encoder(src.flatten(2).permute(2, 0, 1), key_padding_mask=mask.flatten(1),
                              pos=pos_embed.flatten(2).permute(2, 0, 1))
        return memory.permute(1, 2, 0).view(bs, c, h, w)


class TransformerEncoder(nn.Module):
    def __init__(self, layer, num_layers):
        super().__init__()
        self.layers = nn.ModuleList([copy.deepcopy(layer) for _ in range(num_layers)])

    def forward(self, src, key_padding_mask, pos):
        for layer in self.layers:
            src = layer(src, key_padding_mask, pos)
        return src


class TransformerDecoder(nn.Module):
    def __init__(self, layer, num_layers, norm):
        super().__init__()
        self.layers = nn.ModuleList([copy.deepcopy(layer) for _ in range(num_layers)])
        self.norm = norm

    def forward(self, tgt, memory, memory_key_padding_mask, pos, query_pos, query_attn_mask=None):
        intermediate = []
        for layer in self.layers:
            tgt = layer(tgt, memory, memory_key_padding_mask, pos, query_pos, query_attn_mask=query_attn_mask)
            intermediate.append(self.norm(tgt))
        # every layer's normalised output: the last is the prediction, the others feed auxiliary losses
        return torch.stack(intermediate)


def _with_pos(t: Tensor, pos: Optional[Tensor]) -> Tensor:
    return t if pos is None else t + pos


def _float_mask(key_padding_mask: Tensor, dtype) -> Tensor:
    # an additive float mask instead of a bool one keeps ONNX export and the fast SDPA path simple
    return torch.zeros(key_padding_mask.shape, dtype=dtype, device=key_padding_mask.device).masked_fill(
        key_padding_mask, float("-inf"))


class TransformerEncoderLayer(nn.Module):
    def __init__(self, d_model, nhead, dim_feedforward=2048, dropout=0.1):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, src, key_padding_mask, pos):
        q = k = _with_pos(src, pos)
        src2 = self.self_attn(q, k, value=src, key_padding_mask=_float_mask(key_padding_mask, src.dtype),
                              need_weights=False)[0]
        src = self.norm1(src + self.dropout1(src2))
        src2 = self.linear2(self.dropout(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout2(src2))


class TransformerDecoderLayer(nn.Module):
    def __init__(self, d_model, nhead, dim_feedforward=2048, dropout=0.1, cross_first=False):
        super().__init__()
        self.cross_first = cross_first  # Mask2Former's order; each attention keeps its own norm and name either way
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(self, tgt, memory, memory_key_padding_mask, pos, query_pos, attn_mask=None, query_attn_mask=None):
        """attn_mask: (B * nhead) x Q x S additive, in place of the padding mask (masked_decoder.py);
        query_attn_mask: Q x Q additive, on the queries' self-attention (query_groups.py)."""
        def among_queries(tgt):
            q = k = _with_pos(tgt, query_pos)
            tgt2 = self.self_attn(q, k, value=tgt, attn_mask=query_attn_mask, need_weights=False)[0]
            return self.norm1(tgt + self.dropout1(tgt2))

        def to_memory(tgt):
            padding = None if attn_mask is not None else _float_mask(memory_key_padding_mask, memory.dtype)
            tgt2 = self.multihead_attn(query=_with_pos(tgt, query_pos), key=_with_pos(memory, pos), value=memory,
                                       key_padding_mask=padding, attn_mask=attn_mask, need_weights=False)[0]
            return self.norm2(tgt + self.dropout2(tgt2))

        tgt = among_queries(to_memory(tgt)) if self.cross_first else to_memory(among_queries(tgt))
        tgt2 = self.linear2(self.dropout(F.relu(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout3(tgt2))
