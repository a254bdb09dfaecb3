"""Association quality (AQ) and STQ: do the predicted instance ids follow the labelled objects over a
sequence? From STEP (Weber et al., "STEP: Segmenting and Tracking Every Pixel", NeurIPS 2021 datasets).

A ground-truth track is every pixel, over all frames of a sequence, of one (class, instance id) of a thing
class; a predicted track likewise, of the predicted panoptic value (label * 1000 + id, so a track that
changes class is two). For a ground-truth track g and each predicted track p that shares pixels with it,
TPA = |p ∩ g|, FPA = |p \\ g|, FNA = |g \\ p|, and

    AQ(g) = 1/|g| · Σ_p TPA(p, g) · TPA / (TPA + FPA + FNA)
    AQ    = the mean of AQ(g) over every track of every sequence
    STQ   = sqrt(AQ · mIoU)

So one id kept over the whole track scores 1, and a track cut in two halves by an id switch about 1/2.
Pixels whose ground truth is void are left out on both sides (STEP leaves out only thing pixels without an
id, 'crowd'; our conversions make those void, as they do for PQ). Ground truth needs ids that stay with
an object over the sequence (KITTI-STEP's); CamVid's or Cityscapes' per-frame ids measure nothing here.
"""
from collections import Counter
from typing import Dict

import numpy as np

from ..inference.result import LABEL_DIVISOR


class AssociationQuality:
    def __init__(self, thing_lut: np.ndarray):
        self.thing_lut = np.asarray(thing_lut, bool)
        # per sequence: pixels of each ground-truth track, of each predicted track, of each (gt, pred) pair
        self.sequences: Dict[str, Dict[str, Counter]] = {}

    def _tracks(self, panoptic: np.ndarray) -> np.ndarray:
        """Where `panoptic` holds a thing with an instance id."""
        label = np.clip(panoptic // LABEL_DIVISOR, 0, len(self.thing_lut) - 1)
        return (panoptic >= LABEL_DIVISOR) & self.thing_lut[label]

    def add(self, gt_panoptic: np.ndarray, pred_panoptic: np.ndarray, sequence: str = "") -> None:
        """One frame's maps in our convention (label * 1000 + instance for things, -1 void)."""
        if gt_panoptic.shape != pred_panoptic.shape:
            raise ValueError(f"prediction {pred_panoptic.shape} and ground truth {gt_panoptic.shape} differ in size")
        counts = self.sequences.setdefault(sequence, {"gt": Counter(), "pred": Counter(), "both": Counter()})
        gt = gt_panoptic.astype(np.int64).ravel()
        pred = pred_panoptic.astype(np.int64).ravel()
        scored = gt >= 0
        gt_track, pred_track = self._tracks(gt) & scored, self._tracks(pred) & scored
        for name, values in (("gt", gt[gt_track]), ("pred", pred[pred_track]),
                             ("both", gt[gt_track & pred_track] * 2 ** 32 + pred[gt_track & pred_track])):
            ids, n = np.unique(values, return_counts=True)
            counts[name].update(dict(zip(ids.tolist(), n.tolist())))

    def per_sequence(self) -> Dict[str, Dict[str, float]]:
        out = {}
        for name, c in self.sequences.items():
            total = 0.0
            for key, tpa in c["both"].items():
                g, p = divmod(key, 2 ** 32)
                iou = tpa / (c["gt"][g] + c["pred"][p] - tpa)
                total += tpa * iou / c["gt"][g]
            out[name] = {"aq_sum": total, "tracks": len(c["gt"])}
        return out

    def result(self, miou: float) -> Dict[str, float]:
        """AQ over every ground-truth track, and STQ with the sequences' mIoU."""
        seqs = self.per_sequence()
        tracks = sum(s["tracks"] for s in seqs.values())
        aq = sum(s["aq_sum"] for s in seqs.values()) / tracks if tracks else 0.0
        return {"aq": aq, "stq": float(np.sqrt(aq * miou)), "tracks": tracks,
                "per_sequence": {k: s["aq_sum"] / s["tracks"] if s["tracks"] else 0.0 for k, s in seqs.items()}}
