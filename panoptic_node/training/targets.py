"""Ground truth for set prediction: one target per stuff class present and per thing instance."""
import numpy as np
import torch
import torch.nn.functional as F

from ..taxonomy import VOID


def segments_of(semantic: np.ndarray, instance: np.ndarray, thing_lut: np.ndarray, min_area: int = 1):
    """-> labels (N,), masks (N x H x W bool). Thing pixels without an instance are left out."""
    labels, masks = [], []
    for label in np.unique(semantic):
        if label == VOID:
            continue
        region = semantic == label
        if not thing_lut[label]:
            if region.sum() >= min_area:
                labels.append(int(label))
                masks.append(region)
            continue
        for inst in np.unique(instance[region]):
            if inst == 0:
                continue
            m = region & (instance == inst)
            if m.sum() >= min_area:
                labels.append(int(label))
                masks.append(m)
    if not masks:
        return np.zeros(0, np.int64), np.zeros((0,) + semantic.shape, bool)
    return np.array(labels, np.int64), np.stack(masks)


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """N x H x W -> N x 4 (cx, cy, w, h) normalised by the mask size."""
    n, h, w = masks.shape
    boxes = np.zeros((n, 4), np.float32)
    for i, m in enumerate(masks):
        ys, xs = np.nonzero(m.any(1))[0], np.nonzero(m.any(0))[0]
        x0, x1, y0, y1 = xs[0], xs[-1] + 1, ys[0], ys[-1] + 1
        boxes[i] = [(x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h]
    return boxes


def semantic_on_grid(semantic: np.ndarray, stride: int) -> np.ndarray:
    """The class map at the loss grid's cell centres (nearest: class ids must not be averaged)."""
    h, w = semantic.shape[0] // stride, semantic.shape[1] // stride
    return semantic[stride // 2::stride, stride // 2::stride][:h, :w]


def build_target(semantic: np.ndarray, instance: np.ndarray, thing_lut: np.ndarray, stride: int) -> dict:
    """Masks average-pooled to the loss grid (soft targets), with a validity weight that is 0 on void;
    the class map on the same grid for the semantic auxiliary loss."""
    labels, masks = segments_of(semantic, instance, thing_lut, min_area=stride * stride)
    m = torch.from_numpy(masks).float()[None] if len(labels) else torch.zeros(1, 0, *semantic.shape)
    pooled = F.avg_pool2d(m, stride)[0] if len(labels) else torch.zeros(0, semantic.shape[0] // stride,
                                                                         semantic.shape[1] // stride)
    valid = F.avg_pool2d(torch.from_numpy(semantic != VOID).float()[None, None], stride)[0, 0]
    return {"labels": torch.from_numpy(labels), "masks": pooled.flatten(1), "valid": (valid > 0.5).float().flatten(),
            "boxes": torch.from_numpy(masks_to_boxes(masks)) if len(labels) else torch.zeros(0, 4),
            "shape": tuple(pooled.shape[-2:]),
            "semantic": torch.from_numpy(semantic_on_grid(semantic, stride).astype(np.int64))}
