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


class HungarianMatcher:
    def __init__(self, cost_class: float = 2.0, cost_mask: float = 5.0, cost_dice: float = 5.0):
        self.cost_class, self.cost_mask, self.cost_dice = cost_class, cost_mask, cost_dice

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
            q, n = linear_sum_assignment(cost.cpu().numpy())
            out.append((torch.as_tensor(q, dtype=torch.long), torch.as_tensor(n, dtype=torch.long)))
        return out
