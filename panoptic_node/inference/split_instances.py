"""Thing instances as connected pieces of their class: segments in separate pieces are split, and
segments of one class that touch are merged.

A query's mask can cover two objects of its class that do not touch: two parked cars with a gap between
them, two cyclists side by side. In CamVid, which the street model learns from, an instance *is* an
8-connected component of a class, so one segment spread over two blobs can match neither. Each piece of
a thing segment holding at least `min_area` pixels (other than the largest, which keeps the segment)
becomes an instance of its own, with the segment's class and score; smaller pieces stay with the segment.
Measured on a drive held out of training: thing PQ 6.7 -> 10.2 (models/README.md). Off (0) for DETR's
COCO models, which run the published rule.

The other half of CamVid's definition: objects of one class that touch are one instance (a row of
parked cars), and a model that covers such a segment with two queries matches it with neither.
`merge_touching` joins thing segments of one class that are 8-neighbours. Only touching ones: merging
every segment of a class and then splitting would hand each small stray piece to the class's largest
instance, and cost it its match (measured: models/README.md).
"""
from typing import Optional, Tuple

import numpy as np
from scipy import ndimage

EIGHT = np.ones((3, 3), bool)


def split_disconnected(segment_ids: np.ndarray, labels: np.ndarray, scores: np.ndarray, thing_lut: np.ndarray,
                       min_area: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray, Optional[list]]:
    """segment_ids (0 = void, 1..S), labels / scores per segment -> the same with pieces split off
    (new segments numbered S+1.. in order of their segment, then of size), and every segment's bounding box
    as ndimage.find_objects gives it (None when nothing was looked at: result_from_segments finds them)."""
    n = len(labels)
    if min_area <= 0 or n == 0 or not thing_lut[np.asarray(labels, np.int64)].any():
        return segment_ids, labels, scores, None
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
        # each piece's box in frame coordinates: the boxes of the segments made here and of what stays
        y0, x0 = sl[0].start, sl[1].start
        piece_boxes = [(slice(b[0].start + y0, b[0].stop + y0), slice(b[1].start + x0, b[1].stop + x0))
                       for b in ndimage.find_objects(pieces)]
        stays = list(range(count))
        for p in order[1:]:
            if sizes[p] < min_area:
                break  # sorted by size: the rest are smaller still
            new_labels.append(labels[i])
            new_scores.append(scores[i])
            out[sl][pieces == p + 1] = len(new_labels)
            boxes.append(piece_boxes[p])
            stays.remove(p)
        if len(stays) < count:
            boxes[i] = tuple(slice(min(piece_boxes[p][a].start for p in stays),
                                   max(piece_boxes[p][a].stop for p in stays)) for a in (0, 1))
    return out, np.asarray(new_labels, np.asarray(labels).dtype), np.asarray(new_scores, float), boxes


def merge_touching(segment_ids: np.ndarray, labels: np.ndarray, scores: np.ndarray,
                   thing_lut: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thing segments of one class with 8-neighbouring pixels become one segment with the best score of
    theirs (segments renumbered 1..S' in order of their first member)."""
    labels = np.asarray(labels, np.int64)
    n = len(labels)
    label_of = np.full(n + 1, -1, np.int64)  # -1: void or stuff, never merged
    label_of[1:] = np.where(thing_lut[labels], labels, -1) if n else []
    if np.bincount(label_of[label_of >= 0]).max(initial=0) < 2:  # no class with two thing segments
        return segment_ids, labels, np.asarray(scores, float)
    lab = label_of[segment_ids]
    rows, cols = np.flatnonzero((lab >= 0).any(1)), np.flatnonzero((lab >= 0).any(0))
    if rows.size == 0:  # thing segments without a pixel
        return segment_ids, labels, np.asarray(scores, float)
    box = slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)  # only thing pixels can touch
    ids, lab = segment_ids[box], lab[box]
    h, w = ids.shape
    pairs = [np.zeros((0, 2), ids.dtype)]
    # each pixel against its right, lower, lower-right and lower-left neighbour
    for (ys, xs), (yt, xt) in [((slice(0, h), slice(0, w - 1)), (slice(0, h), slice(1, w))),
                               ((slice(0, h - 1), slice(0, w)), (slice(1, h), slice(0, w))),
                               ((slice(0, h - 1), slice(0, w - 1)), (slice(1, h), slice(1, w))),
                               ((slice(0, h - 1), slice(1, w)), (slice(1, h), slice(0, w - 1)))]:
        a, b = ids[ys, xs], ids[yt, xt]
        border = np.nonzero(a != b)  # few pixels: test the classes there only
        a, b, la = a[border], b[border], lab[ys, xs][border]
        touch = (la >= 0) & (la == lab[yt, xt][border])
        pairs.append(np.stack([a[touch], b[touch]], 1))
    pairs = np.concatenate(pairs)
    # segments joined by a chain of touching pairs form one group, named by its first member: a union-find
    # over a few dozen segments, each group's root kept at its lowest id (scipy's sparse-graph components
    # cost 0.7 ms a frame on a 2-core Zen 2 for this)
    parent = list(range(n + 1))

    def root(i):
        while parent[i] != i:
            parent[i] = i = parent[parent[i]]
        return i

    for key in np.unique(pairs[:, 0] * (n + 1) + pairs[:, 1]).tolist():
        a, b = root(key // (n + 1)), root(key % (n + 1))
        parent[max(a, b)] = min(a, b)
    roots = np.array([root(i) for i in range(n + 1)])
    if (roots == np.arange(n + 1)).all():
        return segment_ids, labels, np.asarray(scores, float)
    kept = np.nonzero(roots[1:] == np.arange(1, n + 1))[0] + 1
    renumber = np.zeros(n + 1, np.int64)
    renumber[kept] = np.arange(1, len(kept) + 1)
    best = np.zeros(n + 1)
    np.maximum.at(best, roots[1:], np.asarray(scores, float))
    return renumber[roots][segment_ids].astype(segment_ids.dtype), labels[kept - 1], best[kept]
