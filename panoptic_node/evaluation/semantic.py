"""Confusion-matrix metrics: mIoU, pixel accuracy, Dice / F1 per class (streaming)."""
from typing import Dict

import numpy as np

from .runs import count, runs


class ConfusionMatrix:
    """Rows: ground truth class, columns: prediction (the last column counts void predictions)."""

    def __init__(self, num_classes: int, void: int = 255):
        self.n = num_classes
        self.void = void
        self.matrix = np.zeros((num_classes, num_classes + 1), np.int64)

    def add(self, gt: np.ndarray, pred: np.ndarray) -> None:
        if gt.shape != pred.shape:
            raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} differ in size")
        (g, p), lengths = runs(gt.ravel(), pred.ravel())  # runs of equal pairs, not every pixel
        self.add_runs(g, p, lengths)

    def add_runs(self, g: np.ndarray, p: np.ndarray, lengths) -> None:
        """One frame given as runs of equal (ground truth, prediction) pairs (runs.runs)."""
        valid = g != self.void
        g, p = g[valid].astype(np.int64), p[valid].astype(np.int64)
        lengths = None if lengths is None else lengths[valid]
        if g.size and g.max() >= self.n:
            raise ValueError(f"ground truth label {g.max()} outside the {self.n} classes")
        p = np.where(p < self.n, p, self.n)  # void or unknown predictions are wrong for every class
        n = self.n * (self.n + 1)
        self.matrix += count(g * (self.n + 1) + p, lengths, n).reshape(self.n, self.n + 1)

    def scores(self) -> Dict[str, object]:
        m = self.matrix
        tp = np.diag(m[:, :self.n]).astype(np.float64)
        gt_total = m.sum(1).astype(np.float64)
        pred_total = m[:, :self.n].sum(0).astype(np.float64)
        union = gt_total + pred_total - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = np.where(union > 0, tp / union, np.nan)
            dice = np.where(gt_total + pred_total > 0, 2 * tp / (gt_total + pred_total), np.nan)
        return {
            # classes that neither occur nor are predicted have no IoU and do not count
            "miou": float(np.nanmean(iou)) if (union > 0).any() else 0.0,
            "pixel_accuracy": float(tp.sum() / gt_total.sum()) if gt_total.sum() else 0.0,
            "mean_dice": float(np.nanmean(dice)) if (union > 0).any() else 0.0,
            "iou": iou.tolist(),
            "dice": dice.tolist(),
        }
