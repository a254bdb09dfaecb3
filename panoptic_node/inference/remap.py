"""Publish a result in another label set (e.g. a COCO model's output as Cityscapes trainIds)."""
import numpy as np

from ..taxonomy import LabelMapping, VOID
from .result import PanopticResult, result_from_segments


def remap_result(result: PanopticResult, mapping: LabelMapping) -> PanopticResult:
    """Segments mapped to void disappear; segments whose class becomes stuff in the target merge
    per class (COCO traffic lights are things, Cityscapes traffic lights are stuff)."""
    new_id = np.zeros(max((s.id for s in result.segments), default=0) + 1, np.int64)
    labels, scores, stuff_slot = [], [], {}
    for seg in result.segments:
        target = int(mapping.lut[seg.label])
        if target == VOID:
            continue
        if not mapping.target.is_thing(target) and target in stuff_slot:
            slot = stuff_slot[target]
            scores[slot - 1] = max(scores[slot - 1], seg.score)
        else:
            labels.append(target)
            scores.append(seg.score)
            slot = len(labels)
            if not mapping.target.is_thing(target):
                stuff_slot[target] = slot
        new_id[seg.id] = slot
    out = result_from_segments(new_id[result.segment_ids], np.array(labels, np.int64), np.array(scores),
                               mapping.target.thing_lut, mapping.target.name)
    out.timings = result.timings
    return out
