"""PanopticResult: what the pipeline gives for one frame (see DESIGN.md)."""
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
from scipy import ndimage  # imported with the module: its first import takes ~1 s, not a frame's time

VOID_LABEL = 255
VOID_PANOPTIC = -1  # label 0 is a real class, so void needs its own panoptic value
LABEL_DIVISOR = 1000


@dataclass
class Segment:
    id: int                  # 1..S, the value in `segment_ids` (0 = void)
    label: int               # class id in the result's label set
    is_thing: bool
    score: float
    box: Tuple[int, int, int, int]  # x0, y0, x1, y1 in input pixels, x1 / y1 exclusive
    area: int
    instance: int = 0        # 1..N for things (unique in the frame), 0 for stuff


@dataclass
class PanopticResult:
    semantic: np.ndarray      # H x W uint8, 255 = void
    instance: np.ndarray      # H x W uint16, 0 = no instance / stuff
    panoptic: np.ndarray      # H x W int32, label*1000 + instance for things, label for stuff, -1 void
    segment_ids: np.ndarray   # H x W int32, segment id per pixel, 0 = void
    segments: List[Segment]
    labels: str = "coco"      # taxonomy name
    timings: Dict[str, float] = field(default_factory=dict)  # seconds per stage

    @property
    def shape(self) -> Tuple[int, int]:
        return self.semantic.shape


def empty_result(height: int, width: int, labels: str) -> PanopticResult:
    return PanopticResult(np.full((height, width), VOID_LABEL, np.uint8), np.zeros((height, width), np.uint16),
                          np.full((height, width), VOID_PANOPTIC, np.int32), np.zeros((height, width), np.int32),
                          [], labels)


def result_from_segments(segment_ids: np.ndarray, labels: np.ndarray, scores: np.ndarray, thing_lut: np.ndarray,
                         taxonomy_name: str, boxes: Optional[list] = None) -> PanopticResult:
    """Build every map from a segment-id image (0 = void, 1..S) and per-segment label / score.

    Thing instances are numbered 1..N over the frame, in segment order.
    """
    n = len(labels)
    labels = np.asarray(labels, np.int64)
    is_thing = thing_lut[labels] if n else np.zeros(0, bool)
    instance_of = np.zeros(n + 1, np.int64)
    instance_of[1:][is_thing] = np.arange(1, int(is_thing.sum()) + 1)
    label_of = np.full(n + 1, VOID_LABEL, np.int64)
    label_of[1:] = labels
    pan_of = np.full(n + 1, VOID_PANOPTIC, np.int64)
    pan_of[1:] = np.where(is_thing, labels * LABEL_DIVISOR + instance_of[1:], labels)

    # the tables in the maps' own types: one pass over the frame each, no wide copy to narrow
    semantic = label_of.astype(np.uint8)[segment_ids]
    instance = instance_of.astype(np.uint16)[segment_ids]
    panoptic = pan_of.astype(np.int32)[segment_ids]
    areas = np.bincount(segment_ids.ravel(), minlength=n + 1)
    # boxes: ndimage.find_objects' answer for these ids when the caller has it (split_disconnected does)
    slices = boxes if boxes is not None else ndimage.find_objects(segment_ids, max_label=n) if n else []
    segments = []
    for i in range(n):
        sl = slices[i]
        if sl is None:
            continue  # a segment that lost every pixel
        segments.append(Segment(i + 1, int(labels[i]), bool(is_thing[i]), float(scores[i]),
                                (sl[1].start, sl[0].start, sl[1].stop, sl[0].stop), int(areas[i + 1]),
                                int(instance_of[i + 1])))
    return PanopticResult(semantic, instance, panoptic, segment_ids.astype(np.int32), segments, taxonomy_name)


def nearest_indices(src: int, dst: int) -> np.ndarray:
    """For each of `dst` output positions, the source position whose cell holds the output pixel's
    centre: floor((i + 0.5) * src / dst), in integers (no float rounding at exact cell edges; PIL's
    NEAREST uses 16.16 fixed point and differs from this on a few columns)."""
    return np.minimum((2 * np.arange(dst, dtype=np.int64) + 1) * src // (2 * dst), src - 1)


def upsample_result(result: PanopticResult, height: int, width: int) -> PanopticResult:
    """A result decided at the network's resolution, brought to a larger input frame: every map
    nearest-upsampled, as DETR's published panoptic post-processing resizes its id map (there with
    PIL's NEAREST); areas and boxes counted in input pixels (exactly, from how many input rows /
    columns each sample covers)."""
    h, w = result.shape
    ry, rx = nearest_indices(h, height), nearest_indices(w, width)

    def up(m: np.ndarray) -> np.ndarray:
        return m.take(ry, axis=0).take(rx, axis=1)

    cover = np.outer(np.bincount(ry, minlength=h), np.bincount(rx, minlength=w)).ravel()
    areas = np.bincount(result.segment_ids.ravel(), weights=cover, minlength=len(result.segments) + 1)
    segments = []
    for s in result.segments:
        x0, y0, x1, y1 = s.box
        box = (int(np.searchsorted(rx, x0)), int(np.searchsorted(ry, y0)),
               int(np.searchsorted(rx, x1)), int(np.searchsorted(ry, y1)))
        segments.append(Segment(s.id, s.label, s.is_thing, s.score, box, int(areas[s.id]), s.instance))
    return PanopticResult(up(result.semantic), up(result.instance), up(result.panoptic), up(result.segment_ids),
                          segments, result.labels, result.timings)
