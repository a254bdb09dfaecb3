"""Training augmentation: random scale, random crop (train on crops, predict on full frames),
horizontal flip and colour jitter. Labels are resampled with nearest neighbour."""
from typing import Tuple

import numpy as np
from PIL import Image

from ..taxonomy import VOID
from .data import Sample


def _resize(a: np.ndarray, size: Tuple[int, int], nearest: bool) -> np.ndarray:
    h, w = size
    if a.dtype == np.uint16:  # PIL's 16-bit mode: I;16
        return np.asarray(Image.fromarray(a).resize((w, h), Image.NEAREST)).astype(np.uint16)
    return np.asarray(Image.fromarray(a).resize((w, h), Image.NEAREST if nearest else Image.BILINEAR))


def augment(sample: Sample, rng: np.random.Generator, crop: Tuple[int, int], scale=(0.75, 1.5),
            jitter: float = 0.2) -> Sample:
    s = rng.uniform(*scale)
    h, w = sample.semantic.shape
    nh, nw = max(1, int(round(h * s))), max(1, int(round(w * s)))
    rgb = _resize(sample.rgb, (nh, nw), False)
    sem = _resize(sample.semantic, (nh, nw), True)
    inst = _resize(sample.instance, (nh, nw), True)
    ch, cw = crop
    # pad with void where the scaled frame is smaller than the crop
    if nh < ch or nw < cw:
        ph, pw = max(ch, nh), max(cw, nw)
        rgb = np.pad(rgb, ((0, ph - nh), (0, pw - nw), (0, 0)))
        sem = np.pad(sem, ((0, ph - nh), (0, pw - nw)), constant_values=VOID)
        inst = np.pad(inst, ((0, ph - nh), (0, pw - nw)))
        nh, nw = ph, pw
    y = int(rng.integers(0, nh - ch + 1))
    x = int(rng.integers(0, nw - cw + 1))
    rgb, sem, inst = rgb[y:y + ch, x:x + cw], sem[y:y + ch, x:x + cw], inst[y:y + ch, x:x + cw]
    if rng.random() < 0.5:
        rgb, sem, inst = rgb[:, ::-1], sem[:, ::-1], inst[:, ::-1]
    if jitter > 0:
        f = rgb.astype(np.float32)
        f = f * rng.uniform(1 - jitter, 1 + jitter)                                   # brightness
        mean = f.mean()
        f = (f - mean) * rng.uniform(1 - jitter, 1 + jitter) + mean                    # contrast
        grey = f.mean(-1, keepdims=True)
        f = (f - grey) * rng.uniform(1 - jitter, 1 + jitter) + grey                    # saturation
        rgb = np.clip(f, 0, 255).astype(np.uint8)
    return Sample(sample.name, np.ascontiguousarray(rgb), np.ascontiguousarray(sem), np.ascontiguousarray(inst))
