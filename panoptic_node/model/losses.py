"""DETR's set losses: class cross-entropy (down-weighted "no object"), sigmoid focal + dice on
masks (or Mask2Former's binary cross-entropy + dice: `mask_loss="bce"`), L1 + generalised IoU on boxes;
applied to the last decoder layer and every auxiliary one.

`class_weights` (one per class) weigh the class loss as cross-entropy's own weights do, and each matched query's
mask and box losses by its target's class (a weighted mean over the matched queries): all ones is DETR's."""
from typing import Dict, List

import torch
import torch.nn.functional as F
from torch import Tensor

from .matcher import HungarianMatcher


def box_cxcywh_to_xyxy(b: Tensor) -> Tensor:
    cx, cy, w, h = b.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)


def generalized_box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise-aligned GIoU of N boxes a and N boxes b (xyxy)."""
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    lt = torch.max(a[:, :2], b[:, :2])
    rb = torch.min(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = area_a + area_b - inter
    iou = inter / union.clamp(min=1e-7)
    lt_c = torch.min(a[:, :2], b[:, :2])
    rb_c = torch.max(a[:, 2:], b[:, 2:])
    hull = (rb_c - lt_c).clamp(min=0).prod(-1)
    return iou - (hull - union) / hull.clamp(min=1e-7)


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, valid: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Per-mask mean focal loss over valid pixels. logits, targets: N x P; valid: P."""
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return (loss * valid).sum(-1) / valid.sum().clamp(min=1)


def bce_loss(logits: Tensor, targets: Tensor, valid: Tensor) -> Tensor:
    """Per-mask mean binary cross-entropy over valid pixels (Mask2Former's mask loss). logits, targets: N x P."""
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return (ce * valid).sum(-1) / valid.sum().clamp(min=1)


def dice_loss(logits: Tensor, targets: Tensor, valid: Tensor) -> Tensor:
    p = logits.sigmoid() * valid
    t = targets * valid
    return 1 - (2 * (p * t).sum(-1) + 1) / (p.sum(-1) + t.sum(-1) + 1)


MASK_LOSSES = {"focal": (sigmoid_focal_loss, 20.0), "bce": (bce_loss, 5.0)}  # each with its weight


class SetCriterion:
    def __init__(self, num_classes: int, eos_coef: float = 0.1, weights: Dict[str, float] = None,
                 matcher: HungarianMatcher = None, class_weights: Tensor = None, mask_loss: str = "focal"):
        self.num_classes = num_classes
        self.matcher = matcher or HungarianMatcher()
        self.mask_name = mask_loss
        self.mask_loss_of, mask_weight = MASK_LOSSES[mask_loss]
        self.weights = {"ce": 2.0, mask_loss: mask_weight, "dice": 5.0, "l1": 5.0, "giou": 2.0}
        self.weights.update(weights or {})
        self.class_weight = torch.ones(num_classes + 1)
        if class_weights is not None:
            self.class_weight[:-1] = torch.as_tensor(class_weights, dtype=torch.float32)
        self.class_weight[-1] = eos_coef

    def layer_losses(self, logits: Tensor, boxes: Tensor, masks: Tensor, targets: List[dict]) -> Dict[str, Tensor]:
        """logits B x Q x C+1, boxes B x Q x 4, masks B x Q x P (at the targets' resolution)."""
        indices = self.matcher(logits, masks, targets)
        b, q = logits.shape[:2]
        target_classes = torch.full((b, q), self.num_classes, dtype=torch.long)
        for i, (qi, ni) in enumerate(indices):
            target_classes[i, qi] = targets[i]["labels"][ni]
        ce = F.cross_entropy(logits.transpose(1, 2), target_classes, self.class_weight.to(logits.device))
        num = 0.0  # the matched queries' total weight (their count when every class weighs 1)
        mask = dice = l1 = giou = logits.new_zeros(())
        for i, (qi, ni) in enumerate(indices):
            if len(qi) == 0:
                continue
            t = targets[i]
            w = self.class_weight[t["labels"][ni]].to(logits.device)
            num += float(w.sum())
            mask = mask + (w * self.mask_loss_of(masks[i, qi], t["masks"][ni], t["valid"])).sum()
            dice = dice + (w * dice_loss(masks[i, qi], t["masks"][ni], t["valid"])).sum()
            pb, tb = boxes[i, qi], t["boxes"][ni]
            l1 = l1 + (w[:, None] * F.l1_loss(pb, tb, reduction="none")).sum()
            giou = giou + (w * (1 - generalized_box_iou(box_cxcywh_to_xyxy(pb), box_cxcywh_to_xyxy(tb)))).sum()
        num = num or 1.0  # no target in the batch: the mask and box losses are 0
        return {"ce": ce, self.mask_name: mask / num, "dice": dice / num, "l1": l1 / num, "giou": giou / num}

    def __call__(self, layers, targets: List[dict]):
        """layers: list of (logits, boxes, masks), last decoder layer first. Returns (total, parts)."""
        parts, total = {}, 0.0
        for li, (logits, boxes, masks) in enumerate(layers):
            losses = self.layer_losses(logits, boxes, masks, targets)
            for k, v in losses.items():
                total = total + self.weights[k] * v
                if li == 0:
                    parts[k] = float(v.detach())
        return total, parts
