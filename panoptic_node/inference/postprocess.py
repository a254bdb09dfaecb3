"""Raw DETR outputs -> PanopticResult.

1. keep queries whose best non-void class probability passes the threshold;
2. (the caller runs the mask head on those queries only);
3. crop the padding off the kept low-resolution masks, then resize them to the input size in one
   bilinear resample (no full-size intermediate); a frame larger than the network's view is
   decided at the network's resolution instead and its maps nearest-upsampled (pipeline.py);
4. per-pixel argmax among kept masks; stuff queries of one class share a segment; segments under
   `min_area` pixels are dropped and their pixels go to the next best mask;
5. (postprocess.merge_things) thing segments of one class that touch become one segment;
6. (postprocess.split_things) a thing segment in separate pieces becomes one instance per large piece.

On a CPU, steps 3-4 are one: cell_decision.py decides from the low-resolution masks, resampling only
the grid cells on object borders (the dense rule's answer at about half of its post-processing time).
On a GPU (masks on a CUDA device) steps 3-4 stay on the device: the resize, the sigmoid x score,
the argmax over queries (one vectorised call there) and the re-decided pixels; only the H x W winner
map and per-query counts come back to the host. Masks already at the frame's size take the same
dense path (on a CPU with a running maximum, faster there than a strided argmax).
"""
from functools import lru_cache
from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .cell_decision import CellDecision, bilinear_taps
from .preprocess import Geometry
from .result import PanopticResult, empty_result, result_from_segments
from .split_instances import merge_touching, split_disconnected


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
    lo, hi, frac = (torch.from_numpy(a) for a in bilinear_taps(out_size, in_size, scale))
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


class DenseDecision:
    """The per-pixel decision from masks already resized to the frame: K x H x W logits on any device
    (the GPU path, and full-resolution masks given directly). `masks` is used in place."""

    def __init__(self, masks: Tensor, scores: Tensor, merge: str, count_own: bool, vectorized: Optional[bool] = None):
        k, self.height, self.width = masks.shape
        if vectorized is None:
            vectorized = masks.device.type != "cpu"
        if vectorized:
            self.own = (masks > 0).flatten(1).sum(1).cpu().numpy() if count_own else None
            self.values = masks if merge == "logits" else masks.sigmoid_().mul_(scores.to(masks.device)[:, None, None])
            self.best = argmax_alive(self.values, torch.ones(k, dtype=torch.bool)).cpu().numpy()
        else:
            self.values, self.best, self.own = decide_plane_by_plane(masks, scores, merge, count_own)

    def winners(self, alive: np.ndarray) -> np.ndarray:
        self.best = reassign_pixels(self.values, torch.from_numpy(alive), self.best)
        return self.best

    def own_areas(self, queries: Optional[np.ndarray] = None) -> np.ndarray:
        return self.own if queries is None else np.where(queries, self.own, 0)


def merge_panoptic(masks, labels: Tensor, scores: Tensor, thing_lut: np.ndarray, merge: str,
                   min_area: int, taxonomy: str, overlap: float = 0.0,
                   vectorized: Optional[bool] = None, split_things: int = 0,
                   merge_things: bool = False) -> PanopticResult:
    """masks: K x H x W logits at input resolution (on any device), or a CellDecision made from the
    low-resolution ones (the CPU path); labels and scores on the host.

    overlap > 0 also drops a query whose won pixels are less than that share of its own mask
    (logit > 0): a fragment of an object another query explains (MaskFormer's overlap rule).
    split_things > 0: a thing segment's separate pieces of at least that many pixels become instances
    of their own (split_instances.py).
    merge_things: thing segments of one class that touch become one segment first, so that with
    split_things an instance is an 8-connected piece of its class: the definition of the labels a
    model trained on CamVid learned (touching objects of a class are one instance there).
    vectorized: one argmax call instead of the running maximum; by default on non-CPU devices."""
    k = len(labels)
    if isinstance(masks, CellDecision):
        decision = masks
    elif k == 0:
        return empty_result(masks.shape[-2], masks.shape[-1], taxonomy)
    else:  # in place: `masks` is this frame's own resized copy
        decision = DenseDecision(masks, scores, merge, overlap > 0, vectorized)
    h, w = decision.height, decision.width
    alive = np.ones(k, dtype=bool)
    best = decision.winners(alive)
    labels_np = labels.numpy().astype(np.int64)
    own_area = decision.own_areas(thing_lut[labels_np]) if overlap > 0 else None  # the rule drops things only
    # stuff queries of one class form one segment; every thing query is its own
    group = np.empty(k, np.int64)
    stuff_group = {}
    for q, lab in enumerate(labels_np):
        if thing_lut[lab]:
            group[q] = q
        else:
            group[q] = stuff_group.setdefault(lab, q)
    while True:
        won = np.bincount(best.ravel(), minlength=k)
        areas = np.bincount(group, weights=won, minlength=k).astype(np.int64)  # per segment (first query)
        small = [q for q in range(k) if alive[q] and areas[group[q]] < min_area]
        if own_area is not None:
            small += [q for q in range(k) if alive[q] and q not in small and thing_lut[labels_np[q]]
                      and won[q] < overlap * max(own_area[q], 1)]
        if not small or len(small) == int(alive.sum()):
            if small:  # every segment is small: the frame is void
                return empty_result(h, w, taxonomy)
            break
        alive[small] = False
        best = decision.winners(alive)
    # number segments 1..S by their first query
    present = np.nonzero(areas)[0]
    renumber = np.zeros(k, np.int64)
    renumber[present] = np.arange(1, len(present) + 1)
    segment_ids = renumber[group][best]
    best_score = np.full(k, -np.inf)
    np.maximum.at(best_score, group, scores.numpy().astype(np.float64))  # a segment's best query
    seg_scores = best_score[present]
    seg_labels = labels_np[present]
    if merge_things:
        segment_ids, seg_labels, seg_scores = merge_touching(segment_ids, seg_labels, seg_scores, thing_lut)
    boxes = None
    if split_things:
        segment_ids, seg_labels, seg_scores, boxes = split_disconnected(segment_ids, seg_labels, seg_scores,
                                                                        thing_lut, split_things)
    return result_from_segments(segment_ids, seg_labels, seg_scores, thing_lut, taxonomy, boxes)
