"""Training-only dense supervision of the pixel embeddings.

The set losses reach the mask head's pixel embeddings only through the masks of matched queries.
This adds a per-pixel class cross-entropy from a 1x1 classifier on those embeddings (void pixels
ignored), so every labelled pixel teaches the features which class it is, as semantic segmentation
networks are trained. The classifier is thrown away after training: the shipped model, its export
and inference are unchanged; only `checkpoint.pth` keeps it, to resume.

With class weights (train --semantic-aux-balance) each labelled pixel's loss is weighed by its class's weight, as
SegNet's median frequency balancing does; the set losses are not touched.
"""
import torch
import torch.nn.functional as F
from torch import nn, Tensor

from ..taxonomy import VOID


class SemanticAux(nn.Module):
    def __init__(self, mask_dim: int, num_classes: int, class_weights: Tensor | None = None):
        super().__init__()
        self.classifier = nn.Conv2d(mask_dim, num_classes, 1)
        weights = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        if weights is not None and weights.shape != (num_classes,):
            raise ValueError(f"class weights for the semantic auxiliary loss: {tuple(weights.shape)}, expected "
                             f"({num_classes},), one per class")
        # None: the plain mean, as before weights existed. Not persistent: checkpoints saved before the weights
        # existed still load, and a resumed run recomputes them from its training frames (its settings hold the power)
        self.register_buffer("class_weights", weights, persistent=False)

    def forward(self, pixel_features: Tensor, semantic: Tensor) -> Tensor:
        """pixel_features B x C x h x w; semantic B x H x W class ids (VOID ignored) on the loss grid.
        Logits are upsampled bilinearly to the grid; cross-entropy over labelled pixels, each weighed by its class's
        weight, divided by the sum of those weights (PyTorch's weighted mean; without weights the plain mean)."""
        logits = self.classifier(pixel_features)
        if logits.shape[-2:] != semantic.shape[-2:]:
            logits = F.interpolate(logits, size=semantic.shape[-2:], mode="bilinear", align_corners=False)
        return labelled_nll(logits.log_softmax(1), semantic, self.class_weights)


def labelled_nll(log_probs: Tensor, semantic: Tensor, class_weights: Tensor | None = None) -> Tensor:
    """log_probs B x K x ... per-pixel class log-probabilities; semantic B x ... class ids (VOID ignored) -> their
    negative log-likelihood, PyTorch's weighted mean over the labelled pixels with class weights, else the plain mean;
    0 (still in the graph, no gradient) when no pixel is labelled."""
    if not (semantic != VOID).any():
        return log_probs.sum() * 0.0
    return F.nll_loss(log_probs, semantic.long(), weight=class_weights, ignore_index=VOID)
