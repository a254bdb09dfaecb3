"""Which query wins each pixel, decided from the low-resolution mask logits, cell by cell.

A pixel's mask logit is a bilinear mix of the four grid values around it (a convex combination), so
within one grid cell every query's value (its logit, or score x sigmoid of it: both increase with
the logit) lies between the smallest and the largest of its four corner values. In a cell where one
query's smallest corner value beats every other query's largest, that query wins every pixel of the
cell, with no per-pixel work. Only the remaining cells (about a fifth on street frames, on object
borders, with about three candidates each) are resampled pixel by pixel, among their candidates only.

The answer is the dense rule's (resize every mask to the frame, per-pixel argmax, the first query on
ties) at ~1/30 of its work; a small margin on the bounds keeps float rounding of the mixes on the
side of resampling. The same bounds give each query's own area (pixels with logit > 0): a cell whose
four corners are all positive counts whole, one whose corners are all <= 0 counts nothing.
"""
from typing import Optional, Tuple

import numpy as np
import torch

from .preprocess import Geometry

# bounds are widened by this share before a cell is called decided: float rounding of a bilinear
# mix may exceed its largest corner by an ulp or so; a wider margin only resamples a few more cells
MARGIN = 1e-5


def bilinear_taps(out_size: int, in_size: int, scale: float) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each output index: the two source indices it mixes and the weight of the second, for
    align_corners=False sampling at source = (i + .5) / scale - .5, clamped at the edges (as
    F.interpolate)."""
    src = np.maximum((np.arange(out_size, dtype=np.float64) + 0.5) / scale - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    hi = np.minimum(lo + 1, in_size - 1)
    return lo, hi, (src - lo).astype(np.float32)


class _Axis:
    """One axis of the cell grid: output pixel i falls in cell lo[i] and mixes grid lines lo[i] and
    lo[i] + 1 (clamped). Cells are padded to the same number of pixels for vectorised resampling."""

    def __init__(self, out_size: int, in_size: int, scale: float):
        lo, _, frac = bilinear_taps(out_size, in_size, scale)
        self.count = np.bincount(lo, minlength=in_size)  # output pixels per cell (lo is non-decreasing)
        start = np.concatenate([[0], np.cumsum(self.count)[:-1]])
        width = max(int(self.count.max()), 1)
        offset = np.arange(width)
        self.valid = offset[None, :] < self.count[:, None]                   # cells x width
        # pixel per slot; a padded slot repeats the cell's last pixel
        self.pixel = np.minimum(start[:, None] + np.minimum(offset[None, :], np.maximum(self.count[:, None] - 1, 0)),
                                out_size - 1)
        self.frac = frac[self.pixel]
        self.next = np.minimum(np.arange(in_size) + 1, in_size - 1)          # the cell's second grid line


class CellDecision:
    """masks: K x h x w mask logits on the padded grid at `stride` (CPU); the frame is geom.height x
    geom.width, sampled as postprocess.resize_masks does."""

    def __init__(self, masks: torch.Tensor, geom: Geometry, stride: int, scores: torch.Tensor, merge: str):
        rows = min(masks.shape[-2], -(-geom.resized_h // stride))
        cols = min(masks.shape[-1], -(-geom.resized_w // stride))
        self.logits = masks[:, :rows, :cols].float().contiguous()
        self.scores = scores.float()
        self.merge = merge
        self.height, self.width = geom.height, geom.width
        self.y = _Axis(geom.height, rows, stride * geom.height / geom.resized_h)
        self.x = _Axis(geom.width, cols, stride * geom.width / geom.resized_w)
        self.cell_area = np.outer(self.y.count, self.x.count)  # pixels per cell
        grid = self.logits.numpy()
        below = grid[:, self.y.next]
        corners = (grid, grid[:, :, self.x.next], below, below[:, :, self.x.next])
        self.logit_min, self.logit_max = np.minimum.reduce(corners), np.maximum.reduce(corners)
        # the merge value increases with the logit: its corner bounds are those of the logits
        queries = np.arange(len(grid))
        self.value_min = self._values(torch.from_numpy(self.logit_min), queries).numpy()
        self.value_max = self._values(torch.from_numpy(self.logit_max), queries).numpy()
        self.alive = None  # the last call of winners(): its alive queries, candidates and answer
        self.candidate = self.best = None

    def _values(self, logits: torch.Tensor, queries: np.ndarray) -> torch.Tensor:
        """The merge rule's per-pixel value of `logits` (leading dimension: one per entry of `queries`)."""
        if self.merge == "logits":
            return logits
        shape = (-1,) + (1,) * (logits.dim() - 1)
        return logits.sigmoid().mul_(self.scores[torch.from_numpy(queries)].view(shape))

    def _resample(self, queries: np.ndarray, cy: np.ndarray, cx: np.ndarray) -> torch.Tensor:
        """Bilinear logits of query queries[n] over the pixels of cell (cy[n], cx[n]): N x cell rows x cell cols."""
        g = self.logits
        q, y0, x0 = (torch.from_numpy(a) for a in (queries, cy, cx))
        y1, x1 = torch.from_numpy(self.y.next[cy]), torch.from_numpy(self.x.next[cx])
        fy = torch.from_numpy(self.y.frac[cy])[:, :, None]
        fx = torch.from_numpy(self.x.frac[cx])[:, None, :]
        # rows first, then columns
        left = torch.lerp(g[q, y0, x0][:, None, None], g[q, y1, x0][:, None, None], fy)
        right = torch.lerp(g[q, y0, x1][:, None, None], g[q, y1, x1][:, None, None], fy)
        return torch.lerp(left, right, fx)

    def _scatter(self, out: np.ndarray, cy: np.ndarray, cx: np.ndarray, block) -> None:
        """Write per-cell pixel blocks (N x cell rows x cell cols, or one value per cell) into the H x W
        map. A padded slot repeats its cell's last pixel with that pixel's own weights: a duplicate write."""
        flat = (self.y.pixel[cy] * self.width)[:, :, None] + self.x.pixel[cx][:, None, :]
        out.reshape(-1)[flat] = block

    def _candidates(self, alive: np.ndarray) -> np.ndarray:
        """K x cells: may query q win a pixel of the cell (its largest value reaches the best smallest one)?"""
        lo = np.where(alive[:, None, None], self.value_min, -np.inf)
        hi = np.where(alive[:, None, None], self.value_max, -np.inf)
        floor = lo.max(0)
        return hi >= floor - MARGIN * np.maximum(1.0, np.abs(floor))

    def resample_share(self, count_own: bool) -> float:
        """The work this decision would resample, as a share of the dense path's (K x H x W values):
        each open cell's pixels once per candidate, and, when own areas are counted, the pixels of
        every cell a mask's border crosses. Street frames need a few percent; noisy masks (random
        weights, a hundred queries) open nearly every cell, and above ~0.2 the dense path is faster."""
        count = self._candidates(np.ones(len(self.logits), dtype=bool)).sum(0)
        work = (count * (count > 1) * self.cell_area).sum()
        if count_own:
            work += (((self.logit_min <= 0) & (self.logit_max > 0)) * self.cell_area).sum()
        return float(work) / max(len(self.logits) * self.height * self.width, 1)

    def winners(self, alive: np.ndarray) -> np.ndarray:
        """H x W index of the best alive query per pixel (the first one on ties).

        Between calls queries only die (the merge's dropping rules). After they do, only cells where
        one of them was a candidate can change: there the floor may drop and new candidates appear;
        elsewhere the candidates, and so the answer, are the same."""
        candidate = self._candidates(alive)
        count = candidate.sum(0)
        has_pixels = self.cell_area > 0
        if self.best is not None and (alive & ~self.alive).any():
            self.best = None  # a query came back to life: decide afresh
        if self.best is None:
            best = np.repeat(np.repeat(candidate.argmax(0), self.y.count, 0), self.x.count, 1).astype(np.int64)
            redo = count > 1
        else:
            best = self.best.copy()
            redo = self.candidate[self.alive & ~alive].any(0)
            single = np.nonzero(redo & (count == 1) & has_pixels)
            self._scatter(best, *single, candidate[:, single[0], single[1]].argmax(0)[:, None, None])
            redo &= count > 1
        self.alive, self.candidate, self.best = alive.copy(), candidate, best
        cy, cx = np.nonzero(redo & has_pixels)
        if not len(cy):
            return best
        # every (open cell, candidate) pair, cell by cell in query order, resampled at once
        cell, query = np.nonzero(candidate[:, cy, cx].T)
        values = self._values(self._resample(query, cy[cell], cx[cell]), query).flatten(1).numpy()
        # candidate slot x cell x pixel (slots past a cell's candidates: -inf); a running maximum over the
        # few slots, replaced only by a strictly larger value, keeps the lowest query on ties as the
        # dense rule does (two scatter-reduces over the pairs took twice as long)
        slot = np.arange(len(cell)) - np.searchsorted(cell, cell)
        table = np.full((int(slot.max()) + 1, len(cy), values.shape[1]), -np.inf, np.float32)
        table[slot, cell] = values
        top, choice = table[0].copy(), np.zeros(table.shape[1:], np.int64)
        for s in range(1, len(table)):
            choice[table[s] > top] = s
            np.maximum(top, table[s], out=top)
        queries = np.zeros(table.shape[:2], np.int64)
        queries[slot, cell] = query
        pick = queries[choice, np.arange(len(cy))[:, None]]
        self._scatter(best, cy, cx, pick.reshape(len(cy), self.y.frac.shape[1], self.x.frac.shape[1]))
        return best

    def own_areas(self, queries: Optional[np.ndarray] = None) -> np.ndarray:
        """Per query, the pixels of the frame where its own logit is positive; with `queries` (K bools), for
        those only and 0 for the rest (the overlap rule counts thing queries: the long borders of the stuff
        masks need not be resampled)."""
        area = ((self.logit_min > 0) * self.cell_area).sum((1, 2)).astype(np.int64)
        border = (self.logit_min <= 0) & (self.logit_max > 0)  # cells the mask's border crosses
        if queries is not None:
            area[~queries] = 0
            border &= queries[:, None, None]
        q, cy, cx = np.nonzero(border)
        if len(q):
            valid = self.y.valid[cy][:, :, None] & self.x.valid[cx][:, None, :]
            positive = (self._resample(q, cy, cx).numpy() > 0) & valid
            area += np.bincount(q, weights=positive.sum((1, 2)), minlength=len(area)).astype(np.int64)
        return area
