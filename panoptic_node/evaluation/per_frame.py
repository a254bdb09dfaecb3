"""Scores of each frame on its own (replay / evaluate --per-frame): which frames of a drive go wrong.

The totals a report gives are the accumulated ones (PQ over every frame's segments together); a frame's
row scores that frame alone, so a user can sort a drive's frames and look at the worst."""
import csv
import math
from typing import List

import numpy as np

from ..atomic import atomic_path
from .evaluator import Evaluator

COLUMNS = ("stamp_ns", "pq", "pq_things", "pq_stuff", "miou", "pixel_accuracy", "gt_segments", "pred_segments",
           "matched_segments")


def lowest_pq(rows: List[dict], n: int = 3) -> List[dict]:
    """The `n` rows of lowest PQ (of the frames that define it)."""
    return sorted((r for r in rows if r["pq"] is not None), key=lambda r: r["pq"])[:n]


class PerFrameScores:
    def __init__(self, taxonomy):
        self.taxonomy = taxonomy
        self.rows: List[dict] = []

    def add(self, stamp_ns: int, gt_panoptic: np.ndarray, gt_semantic: np.ndarray, pred_panoptic: np.ndarray,
            pred_semantic: np.ndarray) -> None:
        """One frame's maps, in the convention Evaluator.add takes. Scores are in percent; a score the
        frame does not define (PQ things of a frame with no thing in either map, every score of a frame
        whose ground truth is all void) is left empty."""
        frame = Evaluator(self.taxonomy)
        frame.add(gt_panoptic, gt_semantic, pred_panoptic, pred_semantic)
        report = frame.report()
        stats = [e for e in report["per_class"].values() if "tp" in e]
        labelled = frame.labelled_pixels > 0

        def pct(value, defined=True):
            return round(100 * value, 2) if defined and labelled and not math.isnan(value) else None

        tp = sum(e["tp"] for e in stats)
        self.rows.append({
            "stamp_ns": int(stamp_ns),
            "pq": pct(report["pq"]["pq"], report["pq"]["n"] > 0),
            "pq_things": pct(report["pq_things"]["pq"], report["pq_things"]["n"] > 0),
            "pq_stuff": pct(report["pq_stuff"]["pq"], report["pq_stuff"]["n"] > 0),
            "miou": pct(report["miou"]), "pixel_accuracy": pct(report["pixel_accuracy"]),
            "gt_segments": tp + sum(e["fn"] for e in stats), "pred_segments": tp + sum(e["fp"] for e in stats),
            "matched_segments": tp})

    def worst(self, n: int = 3) -> List[dict]:
        return lowest_pq(self.rows, n)

    def write(self, path) -> None:
        """CSV, one row per frame in the order scored; written under a .partial name, then renamed."""
        with atomic_path(path) as tmp:
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=COLUMNS)
                writer.writeheader()
                writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in self.rows)
