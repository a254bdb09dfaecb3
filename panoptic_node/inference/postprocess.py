"""Raw DETR outputs -> PanopticResult.

1. keep queries whose best non-void class probability passes the threshold;
2. (the caller runs the mask head on those queries only);
3. crop the padding off the kept low-resolution masks, then resize them to the input size in one
   bilinear resample (no full-size intermediate); a frame larger than the network's view is
   decided at the network's resolution instead and its maps nearest-upsampled (pipeline.py);
4. per-pixel argmax among kept masks; stuff queries of one class share a segment; segments under
   `min_area` pixels are dropped and their pixels go to the next best mask.

On a GPU (masks on a CUDA device) steps 3-4 stay on the device: the resize, the sigmoid x score,
the argmax over queries (one vectorised call there, where a CPU is faster with a running maximum)
and the re-decided pixels; only the H x W winner map and per-query counts come back to the host.
"""
from functools import lru_cache
from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
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

    The padded part is cropped first (rows / columns beyond ceil(resized / stride) never reach the
    output); then input pixel (y, x) samples the grid bilinearly at (y * resized_h / H + .5) / stride - .5.
    """
    rows = min(masks.shape[-2], -(-geom.resized_h // stride))
    cols = min(masks.shape[-1], -(-geom.resized_w // stride))
    m = masks[:, :rows, :cols].float()
    if geom.resized_h == rows * stride and geom.resized_w == cols * stride:
        # the crop covers the frame exactly: plain bilinear resizing samples the same points
        return F.interpolate(m[None], size=(geom.height, geom.width), mode="bilinear", align_corners=False)[0]
    ay = bilinear_matrix(geom.height, rows, stride * geom.height / geom.resized_h).to(m.device)
    ax = bilinear_matrix(geom.width, cols, stride * geom.width / geom.resized_w).to(m.device)
    return torch.matmul(torch.matmul(ay, m), ax.T)


def argmax_alive(values: Tensor, alive: Tensor) -> Tensor:
    """Index of the best alive query per pixel in one vectorised call (the GPU path; on a CPU a
    strided argmax over the first dimension is ~10x slower than the plane-by-plane running maximum
    below); dead queries lose every pixel; ties go to the first query, as torch.argmax documents."""
    dead = ~alive.to(values.device)
    return values.masked_fill(dead[:, None, None], float("-inf")).argmax(0)


def decide_plane_by_plane(masks: Tensor, scores: Tensor, merge: str, count_own: bool):
    """The CPU path: each query plane once, while it is in cache: its own area (logit > 0, for the
    overlap rule), its value (score x sigmoid, or the logit) and the running best (first query wins
    ties). Returns (values, winner per pixel, own areas or None)."""
    k = masks.shape[0]
    own = np.empty(k, np.int64) if count_own else None
    planes = masks.numpy()
    best_val = torch.full(masks.shape[1:], float("-inf"), dtype=masks.dtype)
    best_idx = torch.zeros(masks.shape[1:], dtype=torch.long)
    better = torch.empty(masks.shape[1:], dtype=torch.bool)
    for q in range(k):
        if count_own:  # numpy counts ~2x faster than a torch reduction over a bool tensor
            own[q] = np.count_nonzero(planes[q] > 0)
        plane = masks[q]
        if merge != "logits":
            plane.sigmoid_().mul_(scores[q])
        torch.gt(plane, best_val, out=better)
        torch.maximum(plane, best_val, out=best_val)
        best_idx.masked_fill_(better, q)
    return masks, best_idx.numpy(), own


def reassign_pixels(values: Tensor, alive: Tensor, best: np.ndarray) -> np.ndarray:
    """After queries die, only the pixels they had won need a new argmax over the alive queries:
    the same answer as a full argmax (first alive query on ties), on a small share of the frame."""
    alive_idx = torch.nonzero(alive).flatten().to(values.device)
    redo = np.flatnonzero(~alive.numpy()[best])
    if len(redo):
        sub = values.flatten(1)[:, torch.from_numpy(redo).to(values.device)][alive_idx]
        best = best.copy()
        best.ravel()[redo] = alive_idx[sub.argmax(0)].cpu().numpy()
    return best


def merge_panoptic(masks: Tensor, labels: Tensor, scores: Tensor, thing_lut: np.ndarray, merge: str,
                   min_area: int, taxonomy: str, overlap: float = 0.0,
                   vectorized: Optional[bool] = None) -> PanopticResult:
    """masks: K x H x W logits at input resolution for the kept queries (on any device); labels and
    scores on the host.

    overlap > 0 also drops a query whose won pixels are less than that share of its own mask
    (logit > 0): a fragment of an object another query explains (MaskFormer's overlap rule).
    vectorized: one argmax call instead of the running maximum; by default on non-CPU devices."""
    k, h, w = masks.shape
    if k == 0:
        return empty_result(h, w, taxonomy)
    if vectorized is None:
        vectorized = masks.device.type != "cpu"
    # in place: `masks` is this frame's own resized copy
    if vectorized:
        own_area = (masks > 0).flatten(1).sum(1).cpu().numpy() if overlap > 0 else None
        values = masks if merge == "logits" else masks.sigmoid_().mul_(scores.to(masks.device)[:, None, None])
        best = argmax_alive(values, torch.ones(k, dtype=torch.bool)).cpu().numpy()
    else:
        values, best, own_area = decide_plane_by_plane(masks, scores, merge, overlap > 0)
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
        best = reassign_pixels(values, alive, best)
    # number segments 1..S by their first query
    present = np.nonzero(areas)[0]
    renumber = np.zeros(k, np.int64)
    renumber[present] = np.arange(1, len(present) + 1)
    segment_ids = renumber[seg_of_pixel]
    seg_scores = np.array([float(scores[group == g].max()) for g in present])
    return result_from_segments(segment_ids, labels_np[present], seg_scores, thing_lut, taxonomy)
