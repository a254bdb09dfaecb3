"""Raw DETR outputs -> PanopticResult.

1. keep queries whose best non-void class probability passes the threshold;
2. (the caller runs the mask head on those queries only);
3. resize the kept masks straight from the padded low-resolution grid to the input size, reading
   only the unpadded part (one separable bilinear resample, no full-size intermediate);
4. per-pixel argmax among kept masks; stuff queries of one class share a segment; segments under
   `min_area` pixels are dropped and their pixels go to the next best mask.
"""
from functools import lru_cache
from typing import Tuple

import numpy as np
import torch
from torch import Tensor

from .preprocess import Geometry
from .result import PanopticResult, empty_result, result_from_segments


def select_queries(logits: Tensor, threshold: float) -> Tuple[Tensor, Tensor, Tensor]:
    """logits: Q x (C + 1). Returns (indices, labels, scores) of queries over the threshold."""
    prob = logits.softmax(-1)[:, :-1]
    scores, labels = prob.max(-1)
    keep = torch.nonzero(scores > threshold).flatten()
    return keep, labels[keep], scores[keep]


@lru_cache(maxsize=64)
def bilinear_matrix(out_size: int, in_size: int, scale: float) -> Tensor:
    """out_size x in_size weights of align_corners=False bilinear sampling, source = (i + .5) / scale - .5.

    Same sample positions as F.interpolate with that scale factor, clamped at the edges.
    """
    src = (torch.arange(out_size, dtype=torch.float64) + 0.5) / scale - 0.5
    src = src.clamp(min=0.0)
    lo = src.floor().long().clamp(max=in_size - 1)
    hi = (lo + 1).clamp(max=in_size - 1)
    frac = (src - lo).to(torch.float32)
    m = torch.zeros(out_size, in_size)
    m[torch.arange(out_size), lo] += 1 - frac
    m[torch.arange(out_size), hi] += frac
    return m


def resize_masks(masks: Tensor, geom: Geometry, stride: int) -> Tensor:
    """K x h x w logits on the padded grid at `stride` -> K x H x W at input resolution.

    Pixel (y, x) of the input maps to (y * resized_h / H + .5) / stride - .5 on the mask grid, so
    padding is never read beyond the bilinear neighbour of the last valid row / column.
    """
    ay = bilinear_matrix(geom.height, masks.shape[-2], stride * geom.height / geom.resized_h)
    ax = bilinear_matrix(geom.width, masks.shape[-1], stride * geom.width / geom.resized_w)
    # crop the columns / rows no output pixel reads before multiplying
    rows = int(torch.nonzero(ay.sum(0)).max()) + 1
    cols = int(torch.nonzero(ax.sum(0)).max()) + 1
    m = masks[:, :rows, :cols].float()
    return torch.matmul(torch.matmul(ay[:, :rows], m), ax[:, :cols].T)


def argmax_over_queries(values: Tensor, alive: Tensor) -> Tensor:
    """Index of the best alive query per pixel (first one on ties, like argmax).

    A running maximum over the K query planes: K cheap passes over contiguous memory, where a
    strided argmax over the first dimension of K x H x W is ~20x slower on CPU.
    """
    best_val = torch.full(values.shape[1:], float("-inf"), dtype=values.dtype)
    best_idx = torch.zeros(values.shape[1:], dtype=torch.long)
    better = torch.empty(values.shape[1:], dtype=torch.bool)
    for q in torch.nonzero(alive).flatten().tolist():
        torch.gt(values[q], best_val, out=better)
        torch.maximum(values[q], best_val, out=best_val)
        best_idx.masked_fill_(better, q)
    return best_idx


def merge_panoptic(masks: Tensor, labels: Tensor, scores: Tensor, thing_lut: np.ndarray, merge: str,
                   min_area: int, taxonomy: str, overlap: float = 0.0) -> PanopticResult:
    """masks: K x H x W logits at input resolution for the kept queries.

    overlap > 0 also drops a query whose won pixels are less than that share of its own mask
    (logit > 0): a fragment of an object another query explains (MaskFormer's overlap rule)."""
    k, h, w = masks.shape
    if k == 0:
        return empty_result(h, w, taxonomy)
    own_area = (masks > 0).flatten(1).sum(1).numpy() if overlap > 0 else None
    # in place: `masks` is this frame's own resized copy
    values = masks if merge == "logits" else masks.sigmoid_().mul_(scores[:, None, None])
    labels_np = labels.numpy().astype(np.int64)
    # stuff queries of one class form one segment; every thing query is its own
    group = np.empty(k, np.int64)
    stuff_group = {}
    for q, lab in enumerate(labels_np):
        if thing_lut[lab]:
            group[q] = q
        else:
            group[q] = stuff_group.setdefault(lab, q)
    alive = torch.ones(k, dtype=torch.bool)
    while True:
        best = argmax_over_queries(values, alive).numpy()
        seg_of_pixel = group[best]
        areas = np.bincount(seg_of_pixel.ravel(), minlength=k)
        small = [q for q in range(k) if alive[q] and areas[group[q]] < min_area]
        if own_area is not None:
            won = np.bincount(best.ravel(), minlength=k)
            small += [q for q in range(k) if alive[q] and q not in small and thing_lut[labels_np[q]]
                      and won[q] < overlap * max(own_area[q], 1)]
        if not small or len(small) == int(alive.sum()):
            if small:  # every segment is small: the frame is void
                return empty_result(h, w, taxonomy)
            break
        alive[small] = False
    # number segments 1..S by their first query
    present = np.nonzero(areas)[0]
    renumber = np.zeros(k, np.int64)
    renumber[present] = np.arange(1, len(present) + 1)
    segment_ids = renumber[seg_of_pixel]
    seg_scores = np.array([float(scores[group == g].max()) for g in present])
    return result_from_segments(segment_ids, labels_np[present], seg_scores, thing_lut, taxonomy)
