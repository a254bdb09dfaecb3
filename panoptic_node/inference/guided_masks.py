"""Mask borders moved onto the frame's own edges: the Fast Guided Filter (He and Sun, 2015) of the mask logits.

The network's masks are a grid at stride 8; resampled bilinearly, a border between two segments can only be
placed within a cell. Here each mask is first resampled to a grid `step` pixels apart (4), where it is fitted, in
every 3x3 window of that grid, as a line of the frame's grey level (least squares, the slope shrunk by `eps`):
a = cov(grey, logit) / (var(grey) + eps), b = mean(logit) - a mean(grey). The windows' a and b are averaged per
grid point, and each pixel's logit is a * grey + b with a and b bilinear between grid points: where the frame has
an edge inside a window the mask's step moves onto it, where the frame is flat the mask is left smooth
(models/experiments/guided_masks.md measured it on the held-out drives).

Both ways of deciding take it: DenseDecision from `dense_logits`, and GuidedCellDecision cell by cell, since with
a and b bilinear in a cell and the grey level between the cell's smallest and largest, every query's logit in the
cell has bounds from the cell's corners and its grey range alone.
"""
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from .cell_decision import MARGIN, CellDecision
from .postprocess import resize_masks
from .preprocess import Geometry


@dataclass(frozen=True)
class GuideSettings:
    step: int = 4         # pixels between the grid points a and b are fitted at
    radius: int = 1       # windows of (2 radius + 1)^2 grid points
    eps: float = 1e-3     # the slope's shrinkage, in squared grey levels (grey in [0, 1])


def grey_guide(rgb: np.ndarray, height: int, width: int) -> torch.Tensor:
    """The frame's grey level (mean of R, G and B, in [0, 1]) at height x width (area-averaged when the frame is
    decided at a smaller size than its own)."""
    grey = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32).mean(-1) / 255.0)
    if grey.shape != (height, width):
        grey = F.interpolate(grey[None, None], size=(height, width), mode="area")[0, 0]
    return grey


def box_mean(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Each (2 radius + 1)^2 window's mean over the last two dimensions of N x C x H x W, cut at the edges."""
    return F.avg_pool2d(x, 2 * radius + 1, stride=1, padding=radius, count_include_pad=False)


def fitted_lines(mask_logits: torch.Tensor, geom: Geometry, stride: int, guide: torch.Tensor,
                 settings: GuideSettings):
    """K x h x w logits on the network's grid at `stride` -> (a, b), each K x rows x cols on the grid `step`
    pixels apart over the resized frame; `guide` is the grey level at the size the frame is decided at."""
    step = settings.step
    rows, cols = -(-geom.resized_h // step), -(-geom.resized_w // step)
    # the grid's point j sits at resized pixel (j + .5) step: a "frame" of rows x cols pixels `step` apart
    fine = resize_masks(mask_logits, replace(geom, height=rows, width=cols, resized_h=rows * step,
                                             resized_w=cols * step), stride)
    small = F.adaptive_avg_pool2d(guide[None, None], (rows, cols))
    p = fine[None]
    mean_g, mean_p = box_mean(small, settings.radius), box_mean(p, settings.radius)
    var_g = box_mean(small * small, settings.radius) - mean_g * mean_g
    a = (box_mean(small * p, settings.radius) - mean_g * mean_p) / (var_g + settings.eps)
    b = mean_p - a * mean_g
    return box_mean(a, settings.radius)[0], box_mean(b, settings.radius)[0]


def dense_logits(a: torch.Tensor, b: torch.Tensor, guide: torch.Tensor, geom: Geometry, step: int) -> torch.Tensor:
    """K x H x W guided logits at the size the frame is decided at (guide.shape): a * grey + b, with a and b
    resampled bilinearly from their grid as resize_masks resamples the network's masks."""
    return resize_masks(a, geom, step).mul_(guide.to(a.device)).add_(resize_masks(b, geom, step))


class GuidedCellDecision(CellDecision):
    """CellDecision of the guided logits a * grey + b (a, b: K x rows x cols from fitted_lines). In a cell, a and
    b are bilinear mixes of the cell's corners and the grey level lies between the cell's smallest and largest
    (>= 0), so each query's logit there lies within the corners' bounds of b plus the extreme products of a's
    bounds and the grey level's; bounds are widened by MARGIN, for the float rounding of the products."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor, guide: torch.Tensor, geom: Geometry, step: int,
                 scores: torch.Tensor, merge: str):
        self.a, self.b = a.float().contiguous(), b.float().contiguous()
        self.guide = guide.float().contiguous()
        super().__init__(self.a, geom, step, scores, merge)

    def _logit_bounds(self):
        a_min, a_max = self.corner_bounds(self.a.numpy())
        b_min, b_max = self.corner_bounds(self.b.numpy())
        g_min, g_max = self._cell_range(self.guide.numpy())
        products = (a_min * g_min, a_min * g_max, a_max * g_min, a_max * g_max)
        low = b_min + np.minimum.reduce(products)
        high = b_max + np.maximum.reduce(products)
        return (low - MARGIN * np.maximum(1.0, np.abs(low)), high + MARGIN * np.maximum(1.0, np.abs(high)))

    def _cell_range(self, image: np.ndarray):
        """rows x cols: the smallest and largest value of `image` (H x W) over each cell's pixels (cells without
        pixels: those of the pixel their axis repeats)."""
        rows = self.y.pixel  # cells x slots; a padded slot repeats the cell's last pixel
        cols = self.x.pixel
        low = image[rows].min(1)[:, cols].min(-1)
        high = image[rows].max(1)[:, cols].max(-1)
        return low, high

    def _resample(self, queries: np.ndarray, cy: np.ndarray, cx: np.ndarray) -> torch.Tensor:
        grey = self.guide[torch.from_numpy(self.y.pixel[cy])[:, :, None], torch.from_numpy(self.x.pixel[cx])[:, None, :]]
        return self.lerp(self.a, queries, cy, cx).mul_(grey).add_(self.lerp(self.b, queries, cy, cx))
