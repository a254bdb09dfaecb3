"""Scoring one bag: the replay of one process, kept as the evaluator's accumulators (merged later) and
the latency samples. A Ray actor holds one Pipeline, loaded once, and scores bag after bag."""
from pathlib import Path
from typing import List, Optional

import numpy as np


class WorstFrames:
    """Per class, the `keep` scored frames where that class's IoU was lowest (the class in the ground
    truth or the prediction), each with a thumbnail: what a person looks at to see why a class scores low."""

    def __init__(self, taxonomy, keep: int = 3):
        self.taxonomy, self.keep = taxonomy, keep
        self.worst = {}  # class id -> [(iou, stamp, jpeg base64)]

    def __call__(self, stamp, gt_semantic, pred_semantic, rgb_third) -> None:
        from ..evaluation.semantic import ConfusionMatrix
        n = self.taxonomy.max_id + 1
        cm = ConfusionMatrix(n)
        cm.add(gt_semantic, pred_semantic)
        m = cm.matrix
        tp = np.diag(m[:, :n]).astype(float)
        union = m.sum(1) + m[:, :n].sum(0) - tp
        thumb = None
        for c in self.taxonomy.by_id:
            if union[c] == 0:
                continue
            iou = tp[c] / union[c]
            entries = self.worst.setdefault(c, [])
            if len(entries) < self.keep or iou < entries[-1][0]:
                thumb = thumb or thumbnail(rgb_third, gt_semantic, pred_semantic, self.taxonomy)
                entries.append((float(iou), int(stamp), thumb))
                entries.sort(key=lambda e: e[0])
                del entries[self.keep:]


def thumbnail(rgb_third, gt_semantic, pred_semantic, taxonomy) -> str:
    """Frame | prediction | ground truth (class colours over the frame), a third of the size, JPEG base64."""
    import base64
    import io

    from PIL import Image
    h, w = rgb_third.shape[:2]
    tiles = [rgb_third]
    for sem in (pred_semantic, gt_semantic):
        colours = taxonomy.color_lut[sem[::3, ::3][:h, :w]]
        tiles.append((0.45 * rgb_third + 0.55 * colours).astype(np.uint8))
    buf = io.BytesIO()
    Image.fromarray(np.concatenate(tiles, 1)).save(buf, format="JPEG", quality=80)
    return base64.b64encode(buf.getvalue()).decode()


def score_bag(pipeline, bag: Path, out_bag: Optional[Path] = None, video: Optional[Path] = None,
              gallery: int = 3, ego_masks: Optional[Path] = None, stq: bool = False,
              options: Optional[dict] = None) -> dict:
    """The bag's result (see results.py); a bag that cannot be read is a result too, with the reason. stq: its
    ground truth's ids are track ids (replay --stq); its metrics then hold AQ / STQ over its tracks. options:
    more of replay()'s arguments (fleet --params: the node's cameras, tracking and topics)."""
    from ..bag.writer import BagError
    from ..bag.recorded_health import troubles
    from ..replay import replay
    published = pipeline.taxonomy if pipeline.mapping is None else pipeline.mapping.target
    worst = WorstFrames(published, gallery) if gallery else None
    notes: List[str] = []  # what the replay said of the bag (why it went unscored, cameras left out)
    try:
        summary = replay(pipeline, bag, out_bag=out_bag, video=video, overwrite=True, log=notes.append,
                         on_scored=worst, ego_masks=ego_masks, stq=stq, **(options or {}))
    except (BagError, ValueError, OSError) as e:
        hint = ""
        if "recover" not in str(e) and ("truncated" in str(e) or "corrupt" in str(e) or Path(bag).is_file()):
            hint = f" (a recording cut short? panoptic-node recover '{bag}' --out NEW_BAG)"
        return {"ok": False, "error": f"{e}{hint}"}
    ev = summary.evaluator
    if summary.stamps_unmatchable:  # replay's summary line, which the fleet's report would not show otherwise
        notes.append(f"{summary.stamps_unmatchable} frames not scored: stamped 0 or with another frame's stamp")
    return {"ok": True, "frames": summary.frames, "undecodable": summary.undecodable,
            # frames count as scored when they gave scores (all-void ground truth gives none: said in the notes)
            "evaluated": summary.evaluated if summary.metrics else 0, "unscored": summary.unscored,
            "gt_unmatched": summary.gt_unmatched,
            "frames_without_gt": summary.frames_without_gt, "backend": summary.backend,
            "precision": summary.precision, "model": summary.model, "seconds": summary.wall_seconds,
            "ran_as": ran_as(summary.backend, summary.precision, summary.weight_bits, summary.matrix_products),
            "stage_ms": summary.stage_ms, "scores": ev.state() if ev is not None and summary.metrics else None,
            "metrics": summary.metrics, "notes": notes, "node": troubles(summary.node_health),
            "node_ran": "; then ".join(summary.recorded_ran()),
            "worst_frames": {str(c): e for c, e in worst.worst.items()} if worst else {}}


def ran_as(backend: str, precision: str, weight_bits: int = 0, matrix_products: str = "") -> str:
    """How a worker ran the network: its runtime, precision, int8 weight width and, when an int8 graph left its
    matrix products in float, that. Workers on other machines of a cluster may differ (no OpenVINO there, or
    a CPU without VNNI: 7-bit weights, float matrix products). Int8 products are not named: every int8 graph
    of a release before the choice had them, so results kept from then still read as scored the same way."""
    return (f"{backend} {precision}" + (f", {weight_bits}-bit weights" if weight_bits else "")
            + (", float matrix products" if matrix_products == "float" else ""))


def deployment(model, weights, backend, device, threshold, labels, onnx, precision="auto") -> str:
    """How a worker, built as BagScorer builds its pipeline, runs the network on the machine it lands on
    (ran_as): a rerun keeps a bag's result only when it was scored the same way (run.py)."""
    from ..inference.backends import make_pipeline
    pipeline = make_pipeline(model, weights=weights, backend=backend, device=device, threshold=threshold,
                             labels=labels, onnx=onnx, precision=precision, threads=1, log=lambda m: None)
    runtime = pipeline.backend  # not `backend`, the argument that asked for one
    return ran_as(runtime.name, runtime.precision, getattr(runtime, "int8_weight_bits", 0),
                  getattr(runtime, "int8_matrix_products", ""))


class BagScorer:
    """The actor's class (ray.remote wraps it in run.py): one pipeline per worker process."""

    def __init__(self, model, weights, backend, device, threshold, labels, onnx, threads: int, precision="auto"):
        import os

        from ..inference.backends import make_pipeline
        # its share of the cores for every runtime (OpenVINO and ONNX Runtime would take them all in every
        # worker), at most the CPUs of the machine it landed on (`--cpus` may promise Ray more)
        self.pipeline = make_pipeline(model, weights=weights, backend=backend, device=device, threshold=threshold,
                                      labels=labels, onnx=onnx, precision=precision,
                                      threads=min(threads, os.cpu_count() or 1), log=lambda m: None)

    def score(self, bag: str, out_bag: Optional[str] = None, video: Optional[str] = None,
              ego_masks: Optional[str] = None, stq: bool = False, options: Optional[dict] = None) -> dict:
        return score_bag(self.pipeline, Path(bag), Path(out_bag) if out_bag else None, Path(video) if video else None,
                         ego_masks=Path(ego_masks) if ego_masks else None, stq=stq, options=options)
