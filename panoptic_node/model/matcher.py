"""Hungarian matching between predicted queries and ground-truth segments (DETR's set prediction)."""
from typing import List, Tuple

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor


def mask_bce_cost(logits: Tensor, targets: Tensor, valid: Tensor) -> Tensor:
    """Q x P logits, N x P targets in [0, 1], P valid weights -> Q x N mean BCE over valid pixels."""
    pos = torch.nn.functional.softplus(-logits) * valid  # -log(sigmoid(x))
    neg = torch.nn.functional.softplus(logits) * valid   # -log(1 - sigmoid(x))
    return (pos @ targets.T + neg @ (1 - targets).T) / valid.sum().clamp(min=1)


def mask_dice_cost(logits: Tensor, targets: Tensor, valid: Tensor) -> Tensor:
    p = logits.sigmoid() * valid
    num = 2 * p @ targets.T
    den = p.sum(-1)[:, None] + (targets * valid).sum(-1)[None, :]
    return 1 - (num + 1) / (den + 1)


# the cost of a pair fixed_stuff_queries forbids: larger than any real cost, finite for scipy
FORBIDDEN = 1e9


def fixed_stuff_queries(thing_lut, num_classes: int, num_queries: int) -> Tensor:
    """Per class id below num_classes, the query every segment of that stuff class is matched to: the stuff
    classes in id order take queries 0, 1, ...; thing classes get -1 (matched by cost among the queries after
    those)."""
    is_thing = torch.as_tensor(thing_lut[:num_classes], dtype=torch.bool)
    stuff = int((~is_thing).sum())
    if num_queries <= stuff:
        raise ValueError(f"fixed stuff queries need more queries than the {stuff} stuff classes, for the things; "
                         f"the model has {num_queries}")
    query = torch.full((len(is_thing),), -1, dtype=torch.long)
    query[~is_thing] = torch.arange(stuff)
    return query


class HungarianMatcher:
    def __init__(self, cost_class: float = 2.0, cost_mask: float = 5.0, cost_dice: float = 5.0,
                 stuff_query: Tensor = None):
        """stuff_query (fixed_stuff_queries): each stuff class's segment always goes to its own query and things
        never go to those queries (one query a stuff class, K-Net / Panoptic FCN's "stuff kernels"); None: every
        pair by cost, as DETR."""
        self.cost_class, self.cost_mask, self.cost_dice = cost_class, cost_mask, cost_dice
        self.stuff_query = stuff_query

    @torch.no_grad()
    def __call__(self, logits: Tensor, masks: Tensor, targets: List[dict]) -> List[Tuple[Tensor, Tensor]]:
        """logits B x Q x C+1, masks B x Q x P (flattened); targets: labels N, masks N x P, valid P."""
        out = []
        for b, t in enumerate(targets):
            if len(t["labels"]) == 0:
                out.append((torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)))
                continue
            prob = logits[b].float().softmax(-1)
            cost = (-self.cost_class * prob[:, t["labels"]]
                    + self.cost_mask * mask_bce_cost(masks[b].float(), t["masks"], t["valid"])
                    + self.cost_dice * mask_dice_cost(masks[b].float(), t["masks"], t["valid"]))
            if self.stuff_query is not None:
                cost = cost + FORBIDDEN * self.forbidden(len(cost), t["labels"]).to(cost.device)
            q, n = linear_sum_assignment(cost.cpu().numpy())
            out.append((torch.as_tensor(q, dtype=torch.long), torch.as_tensor(n, dtype=torch.long)))
        return out

    def forbidden(self, num_queries: int, labels: Tensor) -> Tensor:
        """Q x N: the pairs fixed stuff queries rule out (a stuff segment with any query but its own, a thing
        with a stuff query)."""
        own = self.stuff_query[labels.cpu()]  # N: the segment's fixed query, -1 for things
        queries = torch.arange(num_queries)[:, None]
        stuff_queries = torch.isin(queries, self.stuff_query[self.stuff_query >= 0])
        return torch.where(own[None, :] >= 0, queries != own[None, :], stuff_queries).float()
