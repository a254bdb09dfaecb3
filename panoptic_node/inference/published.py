"""DETR's published panoptic post-processing (facebookresearch/detr, PostProcessPanoptic), per frame:
the rule the published DETR PQ numbers were computed with, and the default of the DETR configs
(`postprocess: {rule: published}`); the street model keeps ours (postprocess.py), which scores better
on it (models/README.md).

1. keep a query when its most probable class (no-object included) is not no-object and its
   probability passes the threshold;
2. resize the kept queries' mask logits bilinearly to the network's input size (before padding);
3. give each pixel to the query with the largest logit (first query on ties);
4. merge every kept query of a stuff class into the first of them (pixels rewritten);
5. nearest-resize that id map to the frame's size and count each query's area there;
6. while some kept query has an area of 4 pixels or fewer (queries the merge emptied included), drop
   all such queries and decide the pixels again among the survivors (steps 3 and 5, without the merge).
The survivors are the segments.
"""
from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from .preprocess import Geometry
from .result import PanopticResult, empty_result, result_from_segments

SMALL = 4  # a query with this many pixels or fewer is dropped


def select_queries_published(logits: Tensor, threshold: float) -> Tuple[Tensor, Tensor, Tensor]:
    """logits: Q x (C + 1), the last no-object. Returns (indices, labels, scores) of the kept queries."""
    scores, labels = logits.softmax(-1).max(-1)
    keep = torch.nonzero((labels != logits.shape[-1] - 1) & (scores > threshold)).flatten()
    return keep, labels[keep], scores[keep]


def network_size_logits(mask_logits: Tensor, geom: Geometry, stride: int) -> Tensor:
    """K x h x w mask logits on the padded grid -> K x resized_h x resized_w: the padding's rows and
    columns cropped (an unpadded frame's grid), then one bilinear resize, as the original code does."""
    rows = min(mask_logits.shape[-2], -(-geom.resized_h // stride))
    cols = min(mask_logits.shape[-1], -(-geom.resized_w // stride))
    m = mask_logits[:, :rows, :cols].float()
    return F.interpolate(m[None], size=(geom.resized_h, geom.resized_w), mode="bilinear", align_corners=False)[0]


def _ids_at_frame_size(logits: Tensor, alive: np.ndarray, height: int, width: int, merge_into=None) -> np.ndarray:
    """Each pixel's query (index into all kept queries) at the frame's size."""
    idx = np.flatnonzero(alive)
    ids = idx[logits[torch.from_numpy(idx)].argmax(0).numpy()]
    if merge_into is not None:
        ids = merge_into[ids]
    small = Image.fromarray(ids.astype(np.int32), mode="I")  # PIL's nearest, as the original resizes
    return np.asarray(small.resize((width, height), Image.NEAREST)).astype(np.int64)


def published_panoptic(mask_logits: Tensor, labels: Tensor, scores: Tensor, geom: Geometry, stride: int,
                       thing_lut: np.ndarray, taxonomy: str) -> PanopticResult:
    k = len(labels)
    if k == 0:
        return empty_result(geom.height, geom.width, taxonomy)
    logits = network_size_logits(mask_logits, geom, stride)
    labels_np = labels.numpy().astype(np.int64)
    merge_into = np.arange(k)
    first_of_class = {}
    for q, lab in enumerate(labels_np):
        if not thing_lut[lab]:
            merge_into[q] = first_of_class.setdefault(int(lab), q)
    alive = np.ones(k, bool)
    ids = _ids_at_frame_size(logits, alive, geom.height, geom.width, merge_into)
    while True:
        area = np.bincount(ids.ravel(), minlength=k)
        small = alive & (area <= SMALL)
        if not small.any():
            break
        alive &= ~small
        if not alive.any():  # every query dropped: nothing is left to show
            return empty_result(geom.height, geom.width, taxonomy)
        ids = _ids_at_frame_size(logits, alive, geom.height, geom.width)  # again, without the merge
    survivors = np.flatnonzero(alive)
    renumber = np.zeros(k, np.int64)
    renumber[survivors] = np.arange(1, len(survivors) + 1)
    return result_from_segments(renumber[ids], labels_np[survivors], scores.numpy()[survivors].astype(float),
                                thing_lut, taxonomy)
