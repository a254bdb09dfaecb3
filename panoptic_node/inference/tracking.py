"""Instance ids that stay with an object from frame to frame, per camera.

vision_msgs says of `Detection2D.id`: detections of the same object in different messages should have the
same id. The pipeline numbers a frame's things 1..N in segment order, so 'car 1' of one frame and 'car 1' of
the next were two unrelated objects. `InstanceTracker` renumbers each frame's things with track ids, and the
same id is then in the instance map, the panoptic map (label * 1000 + id) and the detection.

How a thing finds its track: each track keeps its last box and its velocity (the box centre's motion per
frame, smoothed), and is expected where that velocity takes it. Boxes are compared enlarged by BUFFER of
their width and height on every side (the buffered IoU of C-BIoU, Yang et al., WACV 2023): a pedestrian of
10 pixels moving 6 pixels a frame overlaps its last box by little, its buffered box by much. Things and
tracks of one class are paired one to one (Hungarian, scipy) on that IoU, at least `min_iou`; then what is
left, with boxes enlarged by WIDE_BUFFER (an object that jumped more than its size, before its velocity is
known: a camera at 10 Hz, a turn); a thing still left over starts a track; a track not seen for more than
`max_lost` frames ends.

Ids are 1..999 (the panoptic map's label * 1000 + instance holds no more). A new track takes the free id that
was freed longest ago, so an id comes back only after every other free one has been handed out (999 new
objects later, on a camera that sees few at once).
"""
import time
from collections import deque
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
from scipy.optimize import linear_sum_assignment

from .result import LABEL_DIVISOR, VOID_PANOPTIC, PanopticResult, Segment

MAX_TRACK_ID = LABEL_DIVISOR - 1
GRID_PIXELS = 65536   # robust boxes are read off every k-th row and column, at most this many pixels
CORE = (10, 90)       # percentiles of a thing's pixel columns and rows that make its robust box
BUFFER = 0.3          # each side of a box enlarged by this share of its size before boxes are compared
WIDE_BUFFER = 1.0     # the second stage's, for the things and tracks the first left unpaired
SMOOTHING = 0.5       # weight of the newest displacement in a track's velocity
DEFAULT_MIN_IOU, DEFAULT_MAX_LOST = 0.3, 15  # the node's track_min_iou / track_max_lost defaults (schema)


@dataclass
class Track:
    label: int
    box: np.ndarray        # x0, y0, x1, y1 where it was last seen
    velocity: np.ndarray   # its centre's motion per frame, x and y
    lost: int = 0          # frames since it was last seen
    seen: int = 1          # frames it was seen in

    def expected(self) -> np.ndarray:
        """Its box where its velocity has taken it by this frame."""
        return self.box + np.tile(self.velocity * (self.lost + 1), 2)


def buffered_iou(a: np.ndarray, b: np.ndarray, buffer: float = BUFFER) -> np.ndarray:
    """IoU of every box of `a` (N x 4) with every box of `b` (M x 4), each enlarged by `buffer` of its width
    and height on every side."""
    def grow(x):
        size = np.stack([x[:, 2] - x[:, 0], x[:, 3] - x[:, 1]], 1)
        return x + buffer * np.concatenate([-size, size], 1)

    a, b = grow(np.asarray(a, float)), grow(np.asarray(b, float))
    w = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    h = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = w * h
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


class InstanceTracker:
    """One camera's tracks. `update(result)` returns the result with its things numbered by track id."""

    def __init__(self, min_iou: float = DEFAULT_MIN_IOU, max_lost: int = DEFAULT_MAX_LOST):
        if not 0.0 < min_iou <= 1.0:
            raise ValueError(f"min_iou = {min_iou}: expected a number in (0, 1]")
        if max_lost < 0:
            raise ValueError(f"max_lost = {max_lost}: expected a whole number of frames >= 0")
        self.min_iou, self.max_lost = min_iou, max_lost
        self.free = deque(range(1, MAX_TRACK_ID + 1))  # oldest freed first
        self.tracks: Dict[int, Track] = {}
        self.shape: Optional[Tuple[int, int]] = None

    def reset(self) -> None:
        """End every track (a new stream: the camera restarted, the node was reactivated). Their ids go to
        the back of the free queue, so the next objects get ids not used just before."""
        for track in sorted(self.tracks, key=lambda t: -self.tracks[t].lost):
            self._end(track)

    def _end(self, track: int) -> None:
        del self.tracks[track]
        self.free.append(track)

    def _new_id(self, track_of: Dict[int, int]) -> int:
        """A free id; when none is, the id of the track unseen longest that no thing of this frame took."""
        if not self.free:  # rare: every id is live
            taken = set(track_of.values())
            idle = [t for t in self.tracks if t not in taken]
            if not idle:
                raise ValueError(f"more than {MAX_TRACK_ID} thing segments in one frame; the panoptic map "
                                 f"(label * {LABEL_DIVISOR} + instance) holds at most {MAX_TRACK_ID}")
            self._end(max(idle, key=lambda t: self.tracks[t].lost))
        return self.free.popleft()

    def update(self, result: PanopticResult) -> PanopticResult:
        """`result` with its things numbered by track id; its timings gain the stage 'track'."""
        started = time.perf_counter()
        if result.shape != self.shape:
            self.reset()  # the camera's frame size changed: boxes of the old frames say nothing of the new
            self.shape = result.shape
        things = [s for s in result.segments if s.is_thing]
        boxes = core_boxes(result.segment_ids, things)
        track_of = self._match(things, boxes)
        for s, box in zip(things, boxes):
            if s.id in track_of:
                t = self.tracks[track_of[s.id]]
                moved = (_centre(box) - _centre(t.box)) / (t.lost + 1)
                t.velocity = moved if t.seen == 1 else SMOOTHING * moved + (1 - SMOOTHING) * t.velocity
                t.box, t.lost, t.seen = box, 0, t.seen + 1
            else:
                track_of[s.id] = self._new_id(track_of)
                self.tracks[track_of[s.id]] = Track(s.label, box, np.zeros(2))
        seen = set(track_of.values())
        for track in [t for t in self.tracks if t not in seen]:
            self.tracks[track].lost += 1
            if self.tracks[track].lost > self.max_lost:
                self._end(track)
        out = renumbered(result, track_of)
        out.timings = {**result.timings, "track": time.perf_counter() - started}
        return out

    def _match(self, things: List[Segment], boxes: np.ndarray) -> Dict[int, int]:
        """Segment id -> live track id, one to one, on the buffered IoU of its box with the track's expected
        box: first with boxes enlarged by BUFFER, then what is left with WIDE_BUFFER (C-BIoU's two stages: an
        object that moved more than its size since the last frame, before its velocity is known)."""
        out: Dict[int, int] = {}
        for buffer in (BUFFER, WIDE_BUFFER):
            left = [k for k, s in enumerate(things) if s.id not in out]
            ids = [t for t in self.tracks if t not in out.values()]
            if not left or not ids:
                break
            iou = buffered_iou(np.array([self.tracks[t].expected() for t in ids]), boxes[left], buffer)
            labels = np.array([things[k].label for k in left])
            iou[np.array([self.tracks[t].label for t in ids])[:, None] != labels[None]] = 0
            rows, cols = linear_sum_assignment(-iou)
            out.update({things[left[j]].id: ids[i] for i, j in zip(rows, cols) if iou[i, j] >= self.min_iou})
        return out


def grid_step(height: int, width: int) -> int:
    """Every k-th row and column: the smallest k that leaves at most GRID_PIXELS samples."""
    step = 1
    while (height // step) * (width // step) > GRID_PIXELS:
        step += 1
    return step


def core_boxes(segment_ids: np.ndarray, things: List[Segment]) -> np.ndarray:
    """Per thing, the box of its core: from the column (row) where CORE[0] % of its pixels lie left of (above)
    it to the one where CORE[1] % do. A segment's own box spans every piece of it, and merge_things /
    split_things leave small distant pieces with a segment (a cyclist's box grew from 28 to 210 pixels wide in
    one frame for a piece of 200 pixels), which would make the object look as if it jumped. Counted on the
    grid, from each thing's histogram of columns and of rows; a thing with no pixel there keeps its own box."""
    boxes = np.array([s.box for s in things], float).reshape(-1, 4)
    if not things:
        return boxes
    step = grid_step(*segment_ids.shape)
    grid = segment_ids[step // 2::step, step // 2::step]
    gh, gw = grid.shape
    index = np.zeros(max(int(grid.max(initial=0)), max(s.id for s in things)) + 1, np.int64)  # 0: not a thing
    index[[s.id for s in things]] = np.arange(1, len(things) + 1)
    which = index[grid]
    k = len(things) + 1
    columns = np.bincount((which * gw + np.arange(gw)).ravel(), minlength=k * gw).reshape(k, gw)[1:].cumsum(1)
    rows = np.bincount((which * gh + np.arange(gh)[:, None]).ravel(), minlength=k * gh).reshape(k, gh)[1:].cumsum(1)
    count = columns[:, -1:]
    lo, hi = CORE[0] / 100 * count, CORE[1] / 100 * count
    x0, x1 = (columns <= lo).sum(1), (columns < hi).sum(1)  # first column past lo; the one reaching hi
    y0, y1 = (rows <= lo).sum(1), (rows < hi).sum(1)
    core = np.stack([x0, y0, x1 + 1, y1 + 1], 1) * step + step // 2
    seen = count[:, 0] > 0
    boxes[seen] = core[seen]
    return boxes


def _centre(box: np.ndarray) -> np.ndarray:
    return (box[:2] + box[2:]) / 2


def renumbered(result: PanopticResult, instance_of_segment: Dict[int, int]) -> PanopticResult:
    """`result` with each thing segment's instance id replaced (instance map, panoptic map, segments); stuff
    and void unchanged. Only the rectangle holding every thing is rewritten (with the maps at 1920x1080 a
    lookup over the whole frame cost a tenth of the pipeline's time)."""
    segments = [Segment(s.id, s.label, s.is_thing, s.score, s.box, s.area,
                        instance_of_segment.get(s.id, 0) if s.is_thing else 0) for s in result.segments]
    instance, panoptic = result.instance.copy(), result.panoptic.copy()
    things = [s for s in segments if s.is_thing]
    if things:
        top = max(s.id for s in segments)
        instance_lut = np.zeros(top + 1, np.uint16)  # stuff and void have no instance
        panoptic_lut = np.full(top + 1, VOID_PANOPTIC, np.int32)
        for s in segments:
            instance_lut[s.id] = s.instance
            panoptic_lut[s.id] = s.label * LABEL_DIVISOR + s.instance if s.is_thing else s.label
        x0, y0 = min(s.box[0] for s in things), min(s.box[1] for s in things)
        x1, y1 = max(s.box[2] for s in things), max(s.box[3] for s in things)
        ids = result.segment_ids[y0:y1, x0:x1]
        instance[y0:y1, x0:x1] = np.take(instance_lut, ids)
        panoptic[y0:y1, x0:x1] = np.take(panoptic_lut, ids)
    return PanopticResult(result.semantic, instance, panoptic, result.segment_ids, segments, result.labels,
                          result.timings)
