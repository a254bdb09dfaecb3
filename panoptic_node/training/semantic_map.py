"""A per-pixel class loss on the queries' own semantic map, for training only.

DETR's set losses teach each matched query its class and its mask, one segment at a time: no loss makes the
queries' classes compete pixel by pixel, as a semantic network's cross-entropy does. The semantic map the queries
imply is MaskFormer's semantic inference, at each pixel x and class c the sum over queries q of
p_q(c) * sigmoid(m_q(x)) (p_q the query's class probabilities without "no object"). Normalised over the classes
it is a distribution per pixel, and its cross-entropy against the labelled class (void ignored) reaches the
queries' class logits and masks directly, the things the panoptic map is made of. Optionally each pixel is weighed
by its class's weight (median frequency balancing, class_balance.py). Nothing is added to the model: export and
inference are unchanged.
"""
import torch
from torch import Tensor

from .semantic_aux import labelled_nll

EPS = 1e-6


def query_class_scores(logits: Tensor, masks: Tensor) -> Tensor:
    """logits ... x Q x (K + 1) (the last: no object); masks ... x Q x N mask logits -> ... x K x N: at each pixel,
    the sum over queries of p(class) * sigmoid(mask), MaskFormer's semantic inference before any normalisation."""
    probs = logits.float().softmax(-1)[..., :-1]
    return torch.einsum("...qk,...qn->...kn", probs, masks.float().sigmoid())


def query_semantic_map(logits: Tensor, masks: Tensor) -> Tensor:
    """logits B x Q x (K + 1); masks B x Q x N -> B x K x N, each pixel's class distribution: query_class_scores
    divided by their sum over the classes."""
    scores = query_class_scores(logits, masks)
    return scores / (scores.sum(1, keepdim=True) + EPS)


def semantic_map_loss(logits: Tensor, masks: Tensor, semantic: Tensor, class_weights: Tensor | None = None) -> Tensor:
    """Cross-entropy of the queries' semantic map (query_semantic_map) against `semantic` (B x N class ids on the
    masks' grid, VOID ignored): PyTorch's weighted mean over the labelled pixels with class weights, else the plain
    mean; 0 (in the graph) when no pixel is labelled."""
    return labelled_nll((query_semantic_map(logits, masks) + EPS).log(), semantic, class_weights)
