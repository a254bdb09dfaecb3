"""Class-balanced loss weights: median frequency balancing (Eigen & Fergus 2015; SegNet's weighting on CamVid).

A class's weight is (median frequency / its frequency) ** power, its frequency being its share of the labelled
pixels of the training frames. Power 1 is the paper's; 0.5 softens it (pedestrians, 0.75 % of the pixels of
CamVid's drives 0016E5 + 0001TP, weigh 2.5x the median class, car, instead of 6.4x). The rare classes (pole, sign, pedestrian, bicyclist) then count more
in the class loss and in their masks' losses, for the mIoU they lose on new drives.
"""
import numpy as np
import torch

from ..taxonomy import VOID


def pixel_frequencies(semantic_maps, num_classes: int) -> np.ndarray:
    """Each class's share of the labelled (non-void) pixels over all the maps."""
    counts = np.zeros(num_classes, np.int64)
    for semantic in semantic_maps:
        labelled = semantic[semantic != VOID]
        counts += np.bincount(labelled.ravel(), minlength=num_classes)[:num_classes]
    return counts / max(1, counts.sum())


def frame_class_weights(samples, num_classes: int, power: float) -> torch.Tensor:
    """balanced_weights over the pixel shares of the frames' semantic maps (`samples`: anything with .semantic)."""
    return balanced_weights(pixel_frequencies((s.semantic for s in samples), num_classes), power)


def describe(weights: torch.Tensor, name_of) -> str:
    """'sky 0.16, building 0.18, ...': the weights as the training log shows them."""
    return ", ".join(f"{name_of(c)} {w:.2f}" for c, w in enumerate(weights.tolist()))


def balanced_weights(frequencies: np.ndarray, power: float) -> torch.Tensor:
    """(median / frequency) ** power per class, the median over the classes present; an absent class (never a
    target, so its weight is never used) gets 1."""
    present = frequencies > 0
    weights = np.ones(len(frequencies))
    if present.any():
        weights[present] = (np.median(frequencies[present]) / frequencies[present]) ** power
    return torch.tensor(weights, dtype=torch.float32)
