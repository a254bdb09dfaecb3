"""Thing segments in separate pieces become separate instances.

A query's mask can cover two objects of its class that do not touch: two parked cars with a gap between
them, two cyclists side by side. In CamVid, which the street model learns from, an instance *is* an
8-connected component of a class, so one segment spread over two blobs can match neither. Each piece of
a thing segment holding at least `min_area` pixels (other than the largest, which keeps the segment)
becomes an instance of its own, with the segment's class and score; smaller pieces stay with the segment.
Measured on a drive held out of training: thing PQ 6.7 -> 10.2 (models/README.md). Off (0) for DETR's
COCO models, which run the published rule.
"""
from typing import Tuple

import numpy as np
from scipy import ndimage

EIGHT = np.ones((3, 3), bool)


def split_disconnected(segment_ids: np.ndarray, labels: np.ndarray, scores: np.ndarray, thing_lut: np.ndarray,
                       min_area: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """segment_ids (0 = void, 1..S), labels / scores per segment -> the same with pieces split off
    (new segments numbered S+1.. in order of their segment, then of size)."""
    n = len(labels)
    if min_area <= 0 or n == 0 or not thing_lut[np.asarray(labels, np.int64)].any():
        return segment_ids, labels, scores
    out = segment_ids.copy()
    new_labels, new_scores = list(labels), list(scores)
    boxes = ndimage.find_objects(segment_ids, max_label=n)
    for i in range(n):
        if not thing_lut[int(labels[i])] or boxes[i] is None:
            continue
        sl = boxes[i]
        mask = segment_ids[sl] == i + 1
        pieces, count = ndimage.label(mask, structure=EIGHT)
        if count < 2:
            continue
        sizes = np.bincount(pieces.ravel(), minlength=count + 1)[1:]
        order = np.argsort(-sizes, kind="stable")
        for p in order[1:]:
            if sizes[p] < min_area:
                break  # sorted by size: the rest are smaller still
            new_labels.append(labels[i])
            new_scores.append(scores[i])
            out[sl][pieces == p + 1] = len(new_labels)
    return out, np.asarray(new_labels, np.asarray(labels).dtype), np.asarray(new_scores, float)
