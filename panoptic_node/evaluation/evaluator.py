"""One object that scores predictions against ground truth frame by frame: PQ / SQ / RQ (all,
things, stuff, per class), mIoU, pixel accuracy and Dice, in a label set (taxonomy)."""
from typing import Dict, List, Tuple

import numpy as np

from ..taxonomy import VOID, ClassInfo, Taxonomy
from .gt import panoptic_from_labels
from .pq import PQAccumulator, SegmentInfo, compact, segments_from_panoptic
from .runs import runs
from .semantic import ConfusionMatrix


class Evaluator:
    def __init__(self, taxonomy: Taxonomy):
        self.taxonomy = taxonomy
        self.pq = PQAccumulator()
        self.confusion = ConfusionMatrix(taxonomy.max_id + 1)
        self.frames = 0

    def add(self, gt_panoptic: np.ndarray, gt_semantic: np.ndarray, pred_panoptic: np.ndarray,
            pred_semantic: np.ndarray) -> None:
        """Maps in our convention: panoptic int32 (label*1000+instance, stuff = label, -1 void)."""
        if not gt_panoptic.shape == gt_semantic.shape == pred_panoptic.shape == pred_semantic.shape:
            raise ValueError(f"prediction {pred_panoptic.shape} / {pred_semantic.shape} and ground truth "
                             f"{gt_panoptic.shape} / {gt_semantic.shape} (panoptic / semantic) differ in size")
        # one pass finds where any of the four maps changes; segments and classes are then read off
        # the runs' values, not every pixel (runs.runs)
        (gt_values, pred_values, gt_classes, pred_classes), lengths = runs(
            gt_panoptic.ravel(), pred_panoptic.ravel(), gt_semantic.ravel(), pred_semantic.ravel())
        for values, what in ((gt_values, "ground-truth panoptic map"), (pred_values, "predicted panoptic map")):
            self._check_panoptic(values, what)
        for values, what in ((gt_classes, "ground-truth semantic map"), (pred_classes, "predicted semantic map")):
            self._check_semantic(values, what)
        gt_ids, gt_segs = segments_from_panoptic(gt_values, self.taxonomy.thing_lut)
        pr_ids, pr_segs = segments_from_panoptic(pred_values, self.taxonomy.thing_lut)
        self.pq.add_runs(gt_ids, pr_ids, lengths, gt_segs, pr_segs)
        self.confusion.add_runs(gt_classes, pred_classes, lengths)
        self.frames += 1

    def _allowed(self) -> str:
        ids = sorted(self.taxonomy.by_id)
        return f"the {self.taxonomy.name} label set (labels {ids[0]}..{ids[-1]})"

    def _check_panoptic(self, values: np.ndarray, what: str) -> None:
        """Values of our convention only (label*1000 + instance, stuff = label, -1 void) with labels of
        the label set: anything else (a flipped byte, a class map stored as panoptic) is refused
        rather than scored as if it meant something."""
        v = values.astype(np.int64)
        label = np.where(v >= 1000, v // 1000, v)
        known = np.zeros(VOID + 1, bool)
        known[list(self.taxonomy.by_id)] = True
        bad = (v < -1) | ((v >= 0) & ((label > VOID) | ~known[np.clip(label, 0, VOID)]))
        if bad.any():
            raise ValueError(f"{what} holds value {int(v[bad][0])}, outside {self._allowed()}: expected "
                             f"label*1000 + instance, a stuff label, or -1 for void")

    def _check_semantic(self, values: np.ndarray, what: str) -> None:
        known = np.zeros(VOID + 1, bool)
        known[list(self.taxonomy.by_id) + [VOID]] = True
        v = values.astype(np.int64)
        bad = (v < 0) | (v > VOID) | ~known[np.clip(v, 0, VOID)]
        if bad.any():
            raise ValueError(f"{what} holds label {int(v[bad][0])}, outside {self._allowed()} (255 = void)")

    def add_segments(self, gt_ids: np.ndarray, gt_segments: Dict[int, SegmentInfo], pred_ids: np.ndarray,
                     pred_segments: Dict[int, SegmentInfo]) -> None:
        """Maps of segment ids with a SegmentInfo per id (COCO panoptic: 0 = void); each pixel's class
        for mIoU / pixel accuracy / Dice is its segment's."""
        if gt_ids.shape != pred_ids.shape:
            raise ValueError(f"ground truth {gt_ids.shape} and prediction {pred_ids.shape} differ in size")
        (gt_runs, pred_runs), lengths = runs(gt_ids.ravel(), pred_ids.ravel())
        # every id has info, and (COCO panoptic's files) every listed segment has pixels
        self.pq.add_runs(gt_runs, pred_runs, lengths, gt_segments, pred_segments, listed_are_drawn=True)
        self.confusion.add_runs(_classes(gt_runs, gt_segments), _classes(pred_runs, pred_segments), lengths)
        self.frames += 1

    def add_labelled(self, semantic: np.ndarray, instance: np.ndarray, result) -> None:
        """Ground truth as a class map (255 void) and instance ids (a training dataset's Sample), the
        prediction as a PanopticResult."""
        gt = panoptic_from_labels(semantic, instance, self.taxonomy.thing_lut)
        self.add(gt, semantic, result.panoptic, result.semantic)

    def state(self) -> Dict[str, object]:
        """What was accumulated, as JSON types: per class PQ sums and counts, the confusion matrix and
        the frame count. States of disjoint frame sets merge exactly (merge_state), so frames scored in
        many processes (fleet.py) give the numbers one process scoring them all would."""
        return {"taxonomy": self.taxonomy.name, "frames": self.frames,
                "pq": {str(k): [v.iou, v.tp, v.fp, v.fn] for k, v in self.pq.stats.items()},
                "confusion": self.confusion.matrix.tolist()}

    def merge_state(self, state: Dict[str, object]) -> None:
        from .pq import ClassStat
        if state["taxonomy"] != self.taxonomy.name:
            raise ValueError(f"cannot merge scores in the {state['taxonomy']} label set into {self.taxonomy.name}")
        matrix = np.asarray(state["confusion"], np.int64)
        if matrix.shape != self.confusion.matrix.shape:
            raise ValueError(f"confusion matrix {matrix.shape} does not fit {self.confusion.matrix.shape}")
        self.confusion.matrix += matrix
        for k, (iou, tp, fp, fn) in state["pq"].items():
            s = self.pq.stats.setdefault(int(k), ClassStat())
            s.iou, s.tp, s.fp, s.fn = s.iou + iou, s.tp + tp, s.fp + fp, s.fn + fn
        self.frames += state["frames"]

    @property
    def labelled_pixels(self) -> int:
        """Ground-truth pixels of a class (not void) scored so far: with none, every score is 0 and means
        nothing (all-void ground truth)."""
        return int(self.confusion.matrix.sum())

    def confusion_of_classes(self) -> Dict[str, object]:
        """The confusion matrix on the label set's classes (their ids may have gaps, COCO's do): rows
        the ground truth's classes, columns the same classes then void, in class order."""
        ids = [c.id for c in self.taxonomy.classes]
        m = self.confusion.matrix
        return {"classes": [c.name for c in self.taxonomy.classes],
                "matrix": m[np.ix_(ids, ids + [m.shape[1] - 1])].tolist()}

    def report(self) -> Dict[str, object]:
        tax = self.taxonomy
        sem = self.confusion.scores()
        per_pq = self.pq.per_class()
        per_class = {}
        for c in tax.classes:
            entry = {"name": c.name, "isthing": c.isthing, "iou": sem["iou"][c.id], "dice": sem["dice"][c.id]}
            entry.update(per_pq.get(c.id, {}))
            per_class[c.id] = entry
        return {
            "frames": self.frames,
            "pq": self.pq.summary(), "pq_things": self.pq.summary(tax.thing_ids),
            "pq_stuff": self.pq.summary(tax.stuff_ids),
            "miou": sem["miou"], "pixel_accuracy": sem["pixel_accuracy"], "mean_dice": sem["mean_dice"],
            "per_class": per_class,
            # pixels of each ground-truth class (rows, in class order) by what was predicted there
            # (columns: the same classes, then void); confusion_chart draws it
            "confusion": self.confusion_of_classes(),
        }


def _classes(ids: np.ndarray, segments: Dict[int, SegmentInfo], void: int = 255) -> np.ndarray:
    """The class of each segment id (void for 0 and ids without a segment)."""
    if not segments:
        return np.full(ids.shape, void, np.int64)
    keys = np.array(sorted(segments), np.int64)
    labels = np.array([segments[k].label for k in keys.tolist()], np.int64)
    at, known = compact(ids, keys)
    return np.where(known, labels[at], void)


def taxonomy_from_categories(categories: Dict[int, dict], name: str = "categories") -> Taxonomy:
    """A COCO panoptic JSON's categories as a label set (ids below 255, which is void)."""
    big = [c for c in categories if not 0 <= c < VOID]
    if big:
        raise ValueError(f"category id {big[0]} is outside 0..{VOID - 1}")
    return Taxonomy(name, [ClassInfo(c, v.get("name", str(c)), bool(v.get("isthing")), tuple(v.get("color", (0, 0, 0))))
                           for c, v in sorted(categories.items())])


def format_report(report: Dict[str, object]) -> str:
    lines = [f"{'class':<16}{'PQ':>7}{'SQ':>7}{'RQ':>7}{'IoU':>7}{'Dice':>7}"]
    for entry in report["per_class"].values():
        def pct(key):
            v = entry.get(key)
            return f"{100 * v:7.1f}" if v is not None and v == v else "      -"
        lines.append(f"{entry['name'][:15]:<16}{pct('pq')}{pct('sq')}{pct('rq')}{pct('iou')}{pct('dice')}")
    for key, title in (("pq", "all"), ("pq_things", "things"), ("pq_stuff", "stuff")):
        s = report[key]
        lines.append(f"{'PQ ' + title:<16}{100 * s['pq']:7.1f}{100 * s['sq']:7.1f}{100 * s['rq']:7.1f}")
    lines.append(f"mIoU {100 * report['miou']:.1f}  pixel accuracy {100 * report['pixel_accuracy']:.1f}  "
                 f"mean Dice {100 * report['mean_dice']:.1f}  ({report['frames']} frames)")
    if "tracking" in report:  # evaluate --stq
        t = report["tracking"]
        lines.append(f"STQ {100 * t['stq']:.1f}  AQ {100 * t['aq']:.1f}  ({t['tracks']} labelled tracks)")
    return "\n".join(lines)


def score_samples(pipeline, samples, progress: str = "") -> Tuple[Evaluator, List[float]]:
    """Every dataset sample (training.data.Sample) through `pipeline`, scored in its label set; with the
    seconds each pipeline call took (benchmarks time the same loop they score). progress: a tqdm label."""
    import time

    from tqdm import tqdm
    ev = Evaluator(pipeline.taxonomy)
    seconds = []
    for s in tqdm(samples, desc=progress, leave=False, disable=not progress):
        t0 = time.perf_counter()
        result = pipeline(s.rgb)
        seconds.append(time.perf_counter() - t0)
        ev.add_labelled(s.semantic, s.instance, result)
    return ev, seconds
