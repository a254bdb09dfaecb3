"""Training-only dense supervision of the pixel embeddings.

The set losses reach the mask head's pixel embeddings only through the masks of matched queries.
This adds a per-pixel class cross-entropy from a 1x1 classifier on those embeddings (void pixels
ignored), so every labelled pixel teaches the features which class it is, as semantic segmentation
networks are trained. The classifier is thrown away after training: the shipped model, its export
and inference are unchanged; only `checkpoint.pth` keeps it, to resume.
"""
import torch.nn.functional as F
from torch import nn, Tensor

from ..taxonomy import VOID


class SemanticAux(nn.Module):
    def __init__(self, mask_dim: int, num_classes: int):
        super().__init__()
        self.classifier = nn.Conv2d(mask_dim, num_classes, 1)

    def forward(self, pixel_features: Tensor, semantic: Tensor) -> Tensor:
        """pixel_features B x C x h x w; semantic B x H x W class ids (VOID ignored) on the loss grid.
        Logits are upsampled bilinearly to the grid; mean cross-entropy over labelled pixels."""
        logits = self.classifier(pixel_features)
        if logits.shape[-2:] != semantic.shape[-2:]:
            logits = F.interpolate(logits, size=semantic.shape[-2:], mode="bilinear", align_corners=False)
        if not (semantic != VOID).any():
            return logits.sum() * 0.0  # nothing labelled: no gradient, but still a tensor in the graph
        return F.cross_entropy(logits, semantic.long(), ignore_index=VOID)
