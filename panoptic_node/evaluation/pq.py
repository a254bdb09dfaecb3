"""Panoptic quality (PQ = SQ x RQ) with the exact COCO / Cityscapes matching rule, accumulated
frame by frame so memory stays flat over a long bag.

A frame is given as a segment-id image (0 = void) plus, per segment id, its class and crowd flag.
Rule (panopticapi's pq_compute): a prediction matches a ground-truth segment of the same class
when IoU > 0.5, where the union leaves out the prediction's pixels on ground-truth void; crowd
ground truth is never matched; an unmatched prediction lying more than half on void (or on a
crowd region of its class) is not a false positive; there is no area threshold.
"""
from dataclasses import dataclass, field
from typing import Dict, Iterable, Optional

import numpy as np

from .runs import count, runs


def compact(ids: np.ndarray, keys: np.ndarray):
    """ids -> (index of each id in the sorted `keys`, whether the id is a key)."""
    top = int(ids.max()) if ids.size else 0
    if 0 <= int(ids.min() if ids.size else 0) and top < (1 << 20):
        lut = np.full(max(top, int(keys[-1])) + 1, -1, np.int64)
        lut[keys] = np.arange(len(keys))
        idx = lut[ids]
        ok = idx >= 0
        return np.where(ok, idx, 0), ok
    idx = np.minimum(np.searchsorted(keys, ids), len(keys) - 1)
    return idx, keys[idx] == ids


def _top(ids: np.ndarray, what: str) -> int:
    """max(ids) + 1, refusing negative ids, in one pass over the frame: seen as unsigned integers of
    the same width, negative ids are the largest values."""
    if not ids.size:
        return 1
    if ids.dtype.kind != "i":
        return int(ids.max()) + 1
    top = int(ids.view(np.dtype(f"u{ids.dtype.itemsize}")).max())
    if top >= 1 << (8 * ids.dtype.itemsize - 1):
        raise ValueError(f"{what} segment id {int(ids.min())} has no segment info")
    return top + 1


def _joint_areas(gt: np.ndarray, gt_keys: np.ndarray, pred: np.ndarray, pred_keys: np.ndarray,
                 lengths) -> np.ndarray:
    """Pixel counts of every (ground-truth key, prediction key) pair: len(gt_keys) x len(pred_keys),
    from runs of equal pairs (runs.runs: every id of the frame starts at least one run).

    One bincount, no sort of the frame as np.unique would do. Small ids (our maps, ids from 0 to a
    few hundred) are counted directly in id space, the table then cut down to the keys; large ones
    (COCO's 24-bit colour ids) are first compacted to key indices.
    """
    g_top, p_top = _top(gt, "ground-truth"), _top(pred, "prediction")
    if g_top * p_top <= (1 << 22):
        table = count(gt.astype(np.int64) * p_top + pred, lengths, g_top * p_top).reshape(g_top, p_top)
        for axis, keys, top, what in ((1, gt_keys, g_top, "ground-truth"), (0, pred_keys, p_top, "prediction")):
            known = np.zeros(top, bool)
            known[keys[keys < top]] = True
            unknown = np.flatnonzero(table.sum(axis).astype(bool) & ~known)
            if len(unknown):
                raise ValueError(f"{what} segment id {int(unknown[0])} has no segment info")
        # keys beyond the largest id present have no pixels: zero rows / columns
        out = np.zeros((len(gt_keys), len(pred_keys)), table.dtype)
        rows, cols = gt_keys < g_top, pred_keys < p_top
        out[np.ix_(rows, cols)] = table[np.ix_(gt_keys[rows], pred_keys[cols])]
        return out
    gi, gi_ok = compact(gt, gt_keys)
    pi, pi_ok = compact(pred, pred_keys)
    for ok, ids, what in ((gi_ok, gt, "ground-truth"), (pi_ok, pred, "prediction")):
        if not ok.all():
            raise ValueError(f"{what} segment id {int(ids[~ok][0])} has no segment info")
    n_p = len(pred_keys)
    return count(gi * n_p + pi, lengths, len(gt_keys) * n_p).reshape(len(gt_keys), n_p)


@dataclass
class SegmentInfo:
    label: int
    iscrowd: bool = False


@dataclass
class ClassStat:
    iou: float = 0.0
    tp: int = 0
    fp: int = 0
    fn: int = 0


@dataclass
class PQAccumulator:
    stats: Dict[int, ClassStat] = field(default_factory=dict)

    def _s(self, label: int) -> ClassStat:
        return self.stats.setdefault(label, ClassStat())

    def add(self, gt_ids: np.ndarray, gt_segments: Dict[int, SegmentInfo], pred_ids: np.ndarray,
            pred_segments: Dict[int, SegmentInfo]) -> None:
        if gt_ids.shape != pred_ids.shape:
            raise ValueError(f"ground truth {gt_ids.shape} and prediction {pred_ids.shape} differ in size")
        (gt_runs, pred_runs), lengths = runs(gt_ids.ravel(), pred_ids.ravel())
        self.add_runs(gt_runs, pred_runs, lengths, gt_segments, pred_segments)

    def add_runs(self, gt_ids: np.ndarray, pred_ids: np.ndarray, lengths, gt_segments: Dict[int, SegmentInfo],
                 pred_segments: Dict[int, SegmentInfo], listed_are_drawn: bool = False) -> None:
        """One frame given as runs of equal (ground truth, prediction) pairs (runs.runs). `listed_are_drawn`
        refuses a segment with info but no pixels (files whose lists and maps disagree), else left out."""
        gt_keys = np.array(sorted(set(gt_segments) | {0}), np.int64)
        pred_keys = np.array(sorted(set(pred_segments) | {0}), np.int64)
        joint = _joint_areas(gt_ids, gt_keys, pred_ids, pred_keys, lengths)
        gt_sums, pred_sums = joint.sum(1), joint.sum(0)
        if listed_are_drawn:  # the areas are at hand here: no extra pass over the frame
            for what, keys, areas in (("ground-truth", gt_keys, gt_sums), ("prediction", pred_keys, pred_sums)):
                undrawn = keys[(areas == 0) & (keys != 0)]
                if len(undrawn):
                    raise ValueError(f"{what} segment id {int(undrawn[0])} has segment info but no pixels "
                                     f"({len(undrawn)} such)")
        gt_area = dict(zip(gt_keys.tolist(), gt_sums.tolist()))
        pred_area = dict(zip(pred_keys.tolist(), pred_sums.tolist()))
        gt_area = {k: v for k, v in gt_area.items() if v}
        pred_area = {k: v for k, v in pred_area.items() if v}
        rows, cols = np.nonzero(joint)
        inter = {(int(gt_keys[r]), int(pred_keys[c])): int(joint[r, c]) for r, c in zip(rows, cols)}
        gt_matched, pred_matched = set(), set()
        for (g, p), n in inter.items():
            if g == 0 or p == 0 or g not in gt_segments:
                continue
            gseg, pseg = gt_segments[g], pred_segments[p]
            if gseg.iscrowd or gseg.label != pseg.label:
                continue
            union = pred_area[p] + gt_area[g] - n - inter.get((0, p), 0)
            iou = n / union
            if iou > 0.5:
                s = self._s(gseg.label)
                s.tp += 1
                s.iou += iou
                gt_matched.add(g)
                pred_matched.add(p)
        crowd_of = {}
        for g, gi in gt_segments.items():
            if gi.iscrowd:
                crowd_of[gi.label] = g  # panopticapi keeps one crowd region per class
            elif g not in gt_matched and g in gt_area:
                self._s(gi.label).fn += 1
        for p, pi in pred_segments.items():
            if p in pred_matched or p not in pred_area:
                continue
            on_void = inter.get((0, p), 0)
            if pi.label in crowd_of:
                on_void += inter.get((crowd_of[pi.label], p), 0)
            if on_void / pred_area[p] > 0.5:
                continue
            self._s(pi.label).fp += 1

    def merge(self, other: "PQAccumulator") -> None:
        for label, s in other.stats.items():
            t = self._s(label)
            t.iou += s.iou
            t.tp += s.tp
            t.fp += s.fp
            t.fn += s.fn

    def per_class(self) -> Dict[int, Dict[str, float]]:
        out = {}
        for label, s in sorted(self.stats.items()):
            denom = s.tp + 0.5 * s.fp + 0.5 * s.fn
            if denom == 0:
                continue
            pq = s.iou / denom
            sq = s.iou / s.tp if s.tp else 0.0
            rq = s.tp / denom
            out[label] = {"pq": pq, "sq": sq, "rq": rq, "tp": s.tp, "fp": s.fp, "fn": s.fn}
        return out

    def summary(self, labels: Optional[Iterable[int]] = None) -> Dict[str, float]:
        """Mean PQ / SQ / RQ over the given classes (all seen ones by default) that occur at all."""
        per = self.per_class()
        chosen = [per[c] for c in (per if labels is None else labels) if c in per]
        n = len(chosen)
        if n == 0:
            return {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0}
        return {k: sum(c[k] for c in chosen) / n for k in ("pq", "sq", "rq")} | {"n": n}


def segments_from_panoptic(panoptic: np.ndarray, thing_lut: np.ndarray, label_divisor: int = 1000,
                           void: int = -1):
    """Values of our panoptic maps (label*1000+instance, stuff = label, -1 void), a whole map or the
    values of its runs, -> segment ids of the same shape (0 = void) + SegmentInfo per id.

    A thing-class pixel without an instance (value = label) is a crowd region, as in Cityscapes.
    """
    if panoptic.size == 0:
        return np.zeros(panoptic.shape, np.int64), {}
    flat = panoptic.ravel().astype(np.int64) - void  # void -> 0
    small = flat.min() >= 0 and flat.max() < (1 << 20)
    # the values present: a bincount when they are small (np.unique sorts every pixel, ~5x slower)
    keys = np.flatnonzero(np.bincount(flat)) if small else np.unique(flat)
    idx, _ = compact(flat, keys)
    ids = (idx + 1).reshape(panoptic.shape)
    segments = {}
    for i, v in enumerate((keys + void).tolist()):
        if v == void:
            ids[ids == i + 1] = 0  # void is segment 0
            continue
        label = int(v // label_divisor) if v >= label_divisor else int(v)
        crowd = v < label_divisor and bool(thing_lut[label])
        segments[i + 1] = SegmentInfo(label, crowd)
    return ids, segments
