"""Mask2Former's decoder (Cheng et al., CVPR 2022) on DETR's decoder layers: `decoder: masked` in a config.

DETR's queries cross-attend to the whole encoder memory at stride 32 in every layer. Here decoder layer l
cross-attends to one level of the mask head's pyramid, coarse to fine and round robin (strides 32, 16, 8), and
only to the cells where the mask the previous layer predicts is on (logit > 0): a query that answers for a sign
reads the sign's cells, at a resolution where a sign is more than a fraction of one cell. The first layer has no
previous mask and reads its whole level; a query whose mask is on nowhere reads its whole level too (as in
Mask2Former). The masks that steer attention are the mask head's own (the same function the losses train on every
layer), average-pooled to each level's grid.
"""
from typing import Callable, List

import torch
import torch.nn.functional as F
from torch import nn, Tensor

from .position_encoding import PositionEmbeddingSine
from .transformer import _float_mask


def allowed_cells(mask_logits: Tensor, pad: Tensor) -> Tensor:
    """B x Q x h x w mask logits on a level's grid, pad B x h x w (True = padding) -> B x Q x h*w bool:
    the cells a query may attend to. Its mask's cells off the padding, or every real cell when that is none."""
    real = ~pad.flatten(1)[:, None, :]
    on = (mask_logits.flatten(2) > 0) & real
    return on | (~on.any(-1, keepdim=True) & real)


def additive_mask(allowed: Tensor, nheads: int, dtype) -> Tensor:
    """B x Q x S bool -> (B * nheads) x Q x S float, 0 where allowed and -inf elsewhere (MultiheadAttention's
    attn_mask, head by head; additive for the reason transformer.py's padding mask is)."""
    return _float_mask(~allowed, dtype).repeat_interleave(nheads, dim=0)


class MaskedPyramidDecoder(nn.Module):
    """The levels' projections and embeddings; the decoder layers and the mask function are passed in, so that
    parameter names of DETR's own decoder stay where official checkpoints expect them."""

    def __init__(self, hidden_dim: int, mask_dim: int, finer_levels: int = 2):
        super().__init__()
        # the encoder memory is the coarsest level, already hidden_dim wide; the finer ones come from the mask head
        self.level_proj = nn.ModuleList(nn.Conv2d(mask_dim, hidden_dim, 1) for _ in range(finer_levels))
        self.level_embed = nn.Embedding(finer_levels + 1, hidden_dim)
        self.position_embedding = PositionEmbeddingSine(hidden_dim // 2)

    def levels(self, memory: Tensor, memory_pos: Tensor, pyramid: List[Tensor], pad_mask: Tensor):
        """[(tokens S x B x D, positions S x B x D, pad B x h x w, grid (h, w))] coarse to fine."""
        out = []
        maps = [(memory, memory_pos)] + [(proj(f), None) for proj, f in zip(self.level_proj, pyramid)]
        for i, (x, pos) in enumerate(maps):
            pad = F.interpolate(pad_mask[:, None].float(), size=x.shape[-2:])[:, 0].bool()
            pos = self.position_embedding(pad).to(x.dtype) if pos is None else pos
            pos = pos + self.level_embed.weight[i][None, :, None, None]
            out.append((x.flatten(2).permute(2, 0, 1), pos.flatten(2).permute(2, 0, 1), pad, x.shape[-2:]))
        return out

    def forward(self, layers: nn.ModuleList, norm: nn.Module, query_pos: Tensor, levels,
                mask_logits_of: Callable[[Tensor], Tensor], nheads: int) -> Tensor:
        """query_pos Q x B x D; mask_logits_of(hs B x Q x D) -> B x Q x h x w at the mask head's stride.
        Returns every layer's normalised output, L x Q x B x D (as TransformerDecoder does)."""
        tgt = torch.zeros_like(query_pos)
        intermediate = []
        for li, layer in enumerate(layers):
            tokens, pos, pad, grid = levels[li % len(levels)]
            if li == 0:
                allowed = ~pad.flatten(1)[:, None, :].expand(-1, tgt.shape[0], -1)
            else:
                logits = mask_logits_of(intermediate[-1].transpose(0, 1))
                allowed = allowed_cells(pooled_to(logits, grid), pad)
            attn_mask = additive_mask(allowed, nheads, tokens.dtype)
            tgt = layer(tgt, tokens, None, pos, query_pos, attn_mask=attn_mask)
            intermediate.append(norm(tgt))
        return torch.stack(intermediate)


def pooled_to(logits: Tensor, grid) -> Tensor:
    """Mask logits B x Q x H x W averaged over the cells of a coarser grid (an exact multiple: the input is
    padded to a multiple of 32). Averaging logits equals the dot product with averaged pixel embeddings."""
    k = logits.shape[-1] // grid[1]
    return logits if k == 1 else F.avg_pool2d(logits, k)
