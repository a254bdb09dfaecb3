"""RGB uint8 frame -> normalised, padded tensor + padding mask, and the geometry to undo it."""
from dataclasses import dataclass
from typing import Tuple

import numpy as np
import torch
from PIL import Image

from ..model.config import InputConfig

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32) * 255


@dataclass(frozen=True)
class Geometry:
    height: int          # input frame
    width: int
    resized_h: int       # after the aspect-keeping resize
    resized_w: int
    padded_h: int        # after padding to size_divisibility
    padded_w: int


def check_rgb(image) -> np.ndarray:
    """The one place frames are validated: H x W x 3 uint8, non-empty."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"expected an H x W x 3 uint8 numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"expected an H x W x 3 uint8 RGB image, got dtype {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 RGB image, got shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"expected a non-empty image, got shape {image.shape}")
    return image


def target_size(h: int, w: int, short_side: int, max_size: int) -> Tuple[int, int]:
    """DETR's rule: scale the short side to `short_side` unless the long side would pass `max_size`."""
    scale = short_side / min(h, w)
    if max(h, w) * scale > max_size:
        scale = max_size / max(h, w)
    return max(1, int(round(h * scale))), max(1, int(round(w * scale)))


def off_scale(h: int, w: int, cfg: InputConfig) -> str:
    """'' for a frame the model sees near the scale it learned; else one sentence saying why it will not:
    so wide (or tall) that max_size leaves its short side under half of short_side (a panorama), or so
    small that it is blown up more than 4x (a thumbnail). The frame still runs: the maps come back at its
    size, but objects are far smaller or blurrier than anything the model was trained on."""
    rh, rw = target_size(h, w, cfg.short_side, cfg.max_size)
    if 2 * min(rh, rw) < cfg.short_side:
        return (f"a {w}x{h} frame runs at {rw}x{rh}: max_size {cfg.max_size} leaves its short side at {min(rh, rw)} "
                f"px, under half the {cfg.short_side} the model expects, so objects shrink below what it learned; "
                f"crop or tile frames this wide")
    if rh > 4 * h:
        return (f"a {w}x{h} frame is blown up {rh / h:.0f}x to {rw}x{rh}: the model sees no detail at that scale; "
                f"expected frames with a short side near {cfg.short_side} px")
    return ""


class OffScaleNotes:
    """off_scale() once per frame size: a replay or a camera says it on its first frame, not on every one."""

    def __init__(self, cfg: InputConfig):
        self.cfg, self.seen = cfg, set()

    def first(self, h: int, w: int) -> str:
        if (h, w) in self.seen:
            return ""
        self.seen.add((h, w))
        return off_scale(h, w, self.cfg)


# `frame`: the spread (x - 127) / 128 gives a daylight CamVid frame (grey-level std about 78)
FRAME_STD = 0.6


_LEVELS = np.arange(256, dtype=np.float64)


def grey_level_stats(values: np.ndarray) -> Tuple[float, float]:
    """Mean and standard deviation of uint8 values, exactly, from their histogram (0.6 ms for a 480x360 frame,
    where numpy's mean and std over float32 take 3 ms); (127, 64) for no values."""
    if not values.size:
        return 127.0, 64.0
    return histogram_stats(np.bincount(values.ravel(), minlength=256), _LEVELS)


def histogram_stats(counts: np.ndarray, levels: np.ndarray) -> Tuple[float, float]:
    """Mean and standard deviation of the values `levels` counted `counts` times (arrays of one shape)."""
    n = float(counts.sum())
    mean = float((counts * levels).sum()) / n
    return mean, float(np.sqrt(max(float((counts * levels * levels).sum()) / n - mean * mean, 0.0)))


# `frame_wb`: the grey-world gains are kept within this factor of 1, so that a frame of one colour (a red bus
# filling the view) is not turned grey
WB_LIMIT = 1.5


def white_balanced_stats(values: np.ndarray) -> Tuple[np.ndarray, float, float]:
    """Grey-world white balance of `values` (N x 3 uint8), as a camera's automatic white balance would: per-channel
    gains (3,) that give each channel the mean of all three (dusk's blue cast taken out), and the mean and standard
    deviation of all three channels after them, exactly, from each channel's histogram."""
    if not values.size:
        return np.ones(3), 127.0, 64.0
    counts = np.stack([np.bincount(values[..., c].ravel(), minlength=256) for c in range(3)]).astype(np.float64)
    n = counts[0].sum()
    means = counts @ _LEVELS / n
    gains = np.clip(means.mean() / np.maximum(means, 1.0), 1 / WB_LIMIT, WB_LIMIT)
    return (gains, *histogram_stats(counts, _LEVELS[None] * gains[:, None]))  # each channel's levels after its gain


def normalize(rgb: np.ndarray, mode: str, valid: np.ndarray = None) -> np.ndarray:
    """`valid` (H x W bool): the pixels `frame` / `frame_wb` take their statistics from (training crops padded
    past the frame leave the padding out); all of them when None."""
    x = rgb.astype(np.float32)
    if mode == "tf":  # EfficientNet-Lite was trained on (x - 127) / 128 (in place: times 1/128 is exact)
        x -= 127.0
        x *= 1.0 / 128.0
        return x
    if mode in ("frame", "frame_wb"):  # as an auto-exposure would: each frame to mean 0, one spread, whatever its light
        pixels = rgb if valid is None else rgb[valid]
        if mode == "frame_wb":  # and as an automatic white balance would, first
            gains, mean, std = white_balanced_stats(pixels)
            x *= gains.astype(np.float32)
        else:
            mean, std = grey_level_stats(pixels)
        x -= mean
        x *= FRAME_STD / max(std, 1.0)  # a flat frame is not blown up into noise
        return x
    return (x - IMAGENET_MEAN) / IMAGENET_STD


def preprocess(image: np.ndarray, cfg: InputConfig, fixed_size: Tuple[int, int] = None):
    """Returns (tensor 1 x 3 x Hp x Wp, pad mask 1 x Hp x Wp bool, Geometry).

    fixed_size pads to that canvas instead (static-shape backends such as an exported ONNX graph).
    """
    check_rgb(image)
    h, w = image.shape[:2]
    rh, rw = target_size(h, w, cfg.short_side, cfg.max_size)
    if fixed_size is not None:
        # fit inside the canvas, keeping the aspect
        scale = min(fixed_size[0] / h, fixed_size[1] / w)
        rh, rw = max(1, min(fixed_size[0], int(round(h * scale)))), max(1, min(fixed_size[1], int(round(w * scale))))
    resized = image if (rh, rw) == (h, w) else np.asarray(Image.fromarray(image).resize((rw, rh), Image.BILINEAR))
    if fixed_size is not None:
        ph, pw = fixed_size
    else:
        d = max(1, cfg.size_divisibility)
        ph, pw = -(-rh // d) * d, -(-rw // d) * d
    canvas = np.zeros((3, ph, pw), np.float32)  # channels first, written once
    canvas[:, :rh, :rw] = normalize(resized, cfg.normalization).transpose(2, 0, 1)
    mask = np.ones((ph, pw), bool)
    mask[:rh, :rw] = False
    return torch.from_numpy(canvas)[None], torch.from_numpy(mask)[None], Geometry(h, w, rh, rw, ph, pw)
