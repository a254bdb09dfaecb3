"""A pair of label maps as runs of equal (ground truth, prediction) pairs.

Segment and class maps are piecewise constant along rows, so a frame has ~10-100x fewer runs than
pixels. Finding the runs costs two comparisons over the maps in their own dtype; everything after
(which ids exist, their pixel counts, the pair table) then works on a few thousand runs instead of
every pixel, with no widening copy and no sort of the frame.
"""
import numpy as np


def pair_runs(a: np.ndarray, b: np.ndarray):
    """Flat maps a, b -> (a at each run start, b at each run start, run lengths), or the pixels
    themselves with lengths None when runs would not be shorter (noise)."""
    if a.size < 2:
        return a, b, None
    change = np.empty(a.size, bool)
    change[0] = True
    np.not_equal(a[1:], a[:-1], out=change[1:])
    change[1:] |= b[1:] != b[:-1]
    starts = np.flatnonzero(change)
    if len(starts) > a.size // 4:
        return a, b, None
    return a[starts], b[starts], np.diff(starts, append=a.size)


def count(index: np.ndarray, lengths, n: int) -> np.ndarray:
    """Pixels per value of `index` (0..n-1), each entry standing for `lengths` pixels (None: one)."""
    counts = np.bincount(index, weights=lengths, minlength=n)
    return counts if lengths is None else counts.astype(np.int64)
