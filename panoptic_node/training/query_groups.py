"""Group DETR's training-only query groups (Chen et al., ICCV 2023).

DETR matches each labelled segment to one query, so a frame teaches the decoder and the heads through as many
queries as it has segments. With K groups, K - 1 more sets of object queries run through the same decoder
beside the model's own; each group is matched to the labels on its own, and each query's self-attention reads
only its group's queries, so every group is a whole DETR pass sharing every weight but its queries: K times
the one-to-one supervision a frame gives, with none of one-to-many matching's duplicates to suppress.
Inference runs the model's own group alone: the shipped model, its export and inference are unchanged; only
`checkpoint.pth` keeps the extra queries, to resume.
"""
from typing import List, Tuple

import torch
from torch import nn, Tensor

from ..model.transformer import _float_mask


class QueryGroups(nn.Module):
    def __init__(self, groups: int, num_queries: int, dim: int):
        super().__init__()
        self.groups, self.num_queries = groups, num_queries
        # initialised as the model's own queries are (nn.Embedding's N(0, 1))
        self.extra = nn.Embedding((groups - 1) * num_queries, dim)

    def queries(self, own: Tensor) -> Tuple[Tensor, Tensor]:
        """The model's queries (Q x D) -> (every group's, K*Q x D, the model's first; the additive K*Q x K*Q
        self-attention mask that keeps each group to itself)."""
        queries = torch.cat([own, self.extra.weight.to(own.dtype)])
        group = torch.arange(self.groups, device=own.device).repeat_interleave(self.num_queries)
        apart = group[:, None] != group[None, :]
        return queries, _float_mask(apart, own.dtype)

    def split(self, layers: list) -> List[list]:
        """Loss layers [(logits, boxes, masks), ...] over every group's queries (dim 1) -> one such list a group."""
        q = self.num_queries
        return [[tuple(t[:, g * q:(g + 1) * q] for t in layer) for layer in layers] for g in range(self.groups)]
