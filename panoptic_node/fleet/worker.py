"""Scoring one bag: the replay of one process, kept as the evaluator's accumulators (merged later) and
the latency samples. A Ray actor holds one Pipeline, loaded once, and scores bag after bag."""
from pathlib import Path
from typing import Optional


def score_bag(pipeline, bag: Path, out_bag: Optional[Path] = None, video: Optional[Path] = None) -> dict:
    """The bag's result (see results.py); a bag that cannot be read is a result too, with the reason."""
    from ..bag.writer import BagError
    from ..replay import replay
    try:
        summary = replay(pipeline, bag, out_bag=out_bag, video=video, overwrite=True, log=lambda m: None)
    except (BagError, ValueError, OSError) as e:
        hint = ""
        if "recover" not in str(e) and ("truncated" in str(e) or "corrupt" in str(e) or Path(bag).is_file()):
            hint = f" (a recording cut short? panoptic-node recover '{bag}' --out NEW_BAG)"
        return {"ok": False, "error": f"{e}{hint}"}
    ev = summary.evaluator
    return {"ok": True, "frames": summary.frames, "undecodable": summary.undecodable,
            "evaluated": summary.evaluated, "unscored": summary.unscored, "gt_unmatched": summary.gt_unmatched,
            "frames_without_gt": summary.frames_without_gt, "backend": summary.backend,
            "precision": summary.precision, "model": summary.model, "seconds": summary.wall_seconds,
            "stage_ms": summary.stage_ms, "scores": ev.state() if ev is not None and summary.evaluated else None,
            "metrics": summary.metrics}


class BagScorer:
    """The actor's class (ray.remote wraps it in run.py): one pipeline per worker process."""

    def __init__(self, model, weights, backend, device, threshold, labels, onnx, threads: int):
        import torch

        from ..inference.backends import make_pipeline
        torch.set_num_threads(threads)
        self.pipeline = make_pipeline(model, weights=weights, backend=backend, device=device, threshold=threshold,
                                      labels=labels, onnx=onnx, log=lambda m: None)

    def score(self, bag: str, out_bag: Optional[str] = None, video: Optional[str] = None) -> dict:
        return score_bag(self.pipeline, Path(bag), Path(out_bag) if out_bag else None, Path(video) if video else None)
