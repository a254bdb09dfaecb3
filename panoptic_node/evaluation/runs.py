"""The label maps of one frame (ground truth and prediction, panoptic and semantic) as runs along
rows over which none of them changes.

Segment and class maps are piecewise constant along rows, so a frame has ~10-100x fewer runs than
pixels. Finding the runs costs one comparison per map, in the map's own dtype; everything after
(which ids exist, their pixel counts, the pair tables) then works on a few thousand runs instead of
every pixel, with no widening copy and no sort of the frame.
"""
import numpy as np


def runs(*maps: np.ndarray):
    """Flat maps of one frame -> ([each map at each run start], run lengths): a run ends where any
    map changes. Returns the pixels themselves with lengths None when runs would not be shorter
    (noise)."""
    size = maps[0].size
    if size < 2:
        return list(maps), None
    change = np.empty(size, bool)
    change[0] = True
    np.not_equal(maps[0][1:], maps[0][:-1], out=change[1:])
    for m in maps[1:]:
        change[1:] |= m[1:] != m[:-1]
    starts = np.flatnonzero(change)
    if len(starts) > size // 4:
        return list(maps), None
    return [m[starts] for m in maps], np.diff(starts, append=size)


def count(index: np.ndarray, lengths, n: int) -> np.ndarray:
    """Pixels per value of `index` (0..n-1), each entry standing for `lengths` pixels (None: one)."""
    counts = np.bincount(index, weights=lengths, minlength=n)
    return counts if lengths is None else counts.astype(np.int64)
