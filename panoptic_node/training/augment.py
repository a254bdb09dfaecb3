"""Training augmentation: random scale, random crop (train on crops, predict on full frames),
horizontal flip, photometric changes and (optionally) a random roll of the camera, copy-paste of another
frame's objects or class mix with another drive's frame. Labels are resampled with nearest neighbour.

Photometric recipes: `basic` is the colour jitter the first releases trained with (brightness,
contrast, saturation ±20 %); `strong` aims at drives the model never saw (dusk, glare, another
camera's white balance and focus): wider brightness / contrast / saturation, gamma, colour
temperature, Gaussian blur and sensor noise; `lighting` is strong's light alone (its brightness,
contrast and gamma) with basic's saturation and no colour temperature, blur or noise: CamVid's dusk
drive differs from its daylight ones in light (mean grey level 60 against 100-138, less contrast), not
in colour. Each step is a small function of a float image."""
from dataclasses import dataclass
from typing import Tuple

import numpy as np
from PIL import Image
from scipy import ndimage

from ..taxonomy import VOID
from .data import Sample


def _resize(a: np.ndarray, size: Tuple[int, int], nearest: bool) -> np.ndarray:
    h, w = size
    if a.dtype == np.uint16:  # PIL's 16-bit mode: I;16
        return np.asarray(Image.fromarray(a).resize((w, h), Image.NEAREST)).astype(np.uint16)
    return np.asarray(Image.fromarray(a).resize((w, h), Image.NEAREST if nearest else Image.BILINEAR))


@dataclass(frozen=True)
class Photometric:
    """Strengths: factors are drawn from [1 - x, 1 + x]; gamma from (1 + gamma) ** U(-1, 1);
    temperature t from U(-x, x) scales red by 1 + t and blue by 1 - t; blur and noise happen with
    their probability, sigma drawn from the range (noise in grey levels). With probability dusk_p a frame is
    first darkened as dusk darkens a street: gamma from dusk_gamma (mid-tones fall, highlights stay), then
    brightness times a factor from dusk_brightness."""
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    gamma: float = 0.0
    temperature: float = 0.0
    blur_p: float = 0.0
    blur_sigma: Tuple[float, float] = (0.5, 1.5)
    noise_p: float = 0.0
    noise_sigma: Tuple[float, float] = (2.0, 8.0)
    dusk_p: float = 0.0
    dusk_gamma: Tuple[float, float] = (1.2, 2.0)
    dusk_brightness: Tuple[float, float] = (0.6, 0.9)


PHOTOMETRIC = {
    "none": Photometric(0.0, 0.0, 0.0),
    "basic": Photometric(),
    "strong": Photometric(brightness=0.5, contrast=0.4, saturation=0.4, gamma=0.5, temperature=0.15,
                          blur_p=0.25, noise_p=0.5),
    "lighting": Photometric(brightness=0.5, contrast=0.4, saturation=0.2, gamma=0.5),
    # basic's jitter on every frame, a third of them darkened first: CamVid's dusk drive 0001TP is the day
    # drive 0016E5 under gamma 1.5 and brightness 0.75 (grey-level percentiles 5-95 within 7 levels)
    "dusk": Photometric(dusk_p=1 / 3),
}


def adjust_gamma(f: np.ndarray, g: float) -> np.ndarray:
    return 255.0 * (np.clip(f, 0, 255) / 255.0) ** g


def darken_as_dusk(f: np.ndarray, gamma: float, gain: float) -> np.ndarray:
    """Mid-tones fall with the gamma, then the whole frame with the gain (`--photometric dusk`'s first step)."""
    return adjust_gamma(f, gamma) * gain


def adjust_contrast(f: np.ndarray, c: float) -> np.ndarray:
    mean = f.mean()
    return (f - mean) * c + mean


def adjust_saturation(f: np.ndarray, s: float) -> np.ndarray:
    grey = f.mean(-1, keepdims=True)
    return (f - grey) * s + grey


def adjust_temperature(f: np.ndarray, t: float) -> np.ndarray:
    """Warmer (t > 0: more red, less blue) or cooler light, as another white balance gives."""
    return f * np.array([1 + t, 1.0, 1 - t], np.float32)


def gaussian_blur(f: np.ndarray, sigma: float) -> np.ndarray:
    return ndimage.gaussian_filter(f, sigma=(sigma, sigma, 0), mode="nearest")


def photometric(rgb: np.ndarray, rng: np.random.Generator, p: Photometric) -> np.ndarray:
    """Draws only what `p` enables, so a recipe's random stream stays the same as it was."""
    f = rgb.astype(np.float32)
    if p.dusk_p > 0 and rng.random() < p.dusk_p:
        f = darken_as_dusk(f, rng.uniform(*p.dusk_gamma), rng.uniform(*p.dusk_brightness))  # drawn in this order
    if p.gamma > 0:
        f = adjust_gamma(f, (1 + p.gamma) ** rng.uniform(-1, 1))
    if p.brightness > 0:
        f = f * rng.uniform(1 - p.brightness, 1 + p.brightness)
    if p.contrast > 0:
        f = adjust_contrast(f, rng.uniform(1 - p.contrast, 1 + p.contrast))
    if p.saturation > 0:
        f = adjust_saturation(f, rng.uniform(1 - p.saturation, 1 + p.saturation))
    if p.temperature > 0:
        f = adjust_temperature(f, rng.uniform(-p.temperature, p.temperature))
    if p.blur_p > 0 and rng.random() < p.blur_p:
        f = gaussian_blur(f, rng.uniform(*p.blur_sigma))
    if p.noise_p > 0 and rng.random() < p.noise_p:
        f = f + rng.normal(0, rng.uniform(*p.noise_sigma), f.shape).astype(np.float32)
    return np.clip(f, 0, 255).astype(np.uint8)


def rotated(sample: Sample, degrees: float) -> Sample:
    """The frame turned about its centre by `degrees`, counter-clockwise as seen (a camera rolled the other way):
    colour bilinear, classes and instances nearest; where no pixel of the frame lands, black and void."""
    h, w = sample.semantic.shape
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    dy, dx = y - (h - 1) / 2, x - (w - 1) / 2
    # each output pixel's source: the inverse turn (image rows grow downward)
    src_y, src_x = (h - 1) / 2 + s * dx + c * dy, (w - 1) / 2 + c * dx - s * dy
    rgb = np.stack([ndimage.map_coordinates(sample.rgb[..., k].astype(np.float32), (src_y, src_x), order=1,
                                            mode="nearest") for k in range(sample.rgb.shape[-1])], -1)
    # a pixel whose nearest source lies off the frame is void and black; one inside near the edge mixes edge pixels
    ny, nx = np.rint(src_y).astype(np.int64), np.rint(src_x).astype(np.int64)
    inside = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
    ny, nx = np.clip(ny, 0, h - 1), np.clip(nx, 0, w - 1)
    sem = np.where(inside, sample.semantic[ny, nx], VOID).astype(sample.semantic.dtype)
    inst = np.where(inside, sample.instance[ny, nx], 0).astype(sample.instance.dtype)
    rgb = np.where(inside[..., None], np.clip(np.rint(rgb), 0, 255), 0).astype(sample.rgb.dtype)
    return Sample(sample.name, rgb, sem, inst)


def augment(sample: Sample, rng: np.random.Generator, crop: Tuple[int, int], scale=(0.75, 1.5),
            colour: Photometric = PHOTOMETRIC["basic"], rotate: float = 0.0) -> Sample:
    """`rotate` > 0: the frame is first turned by an angle drawn from [-rotate, rotate] degrees."""
    if rotate > 0:  # draws nothing when off, so the other recipes' random streams stay as they were
        sample = rotated(sample, rng.uniform(-rotate, rotate))
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
    rgb = photometric(rgb, rng, colour)
    return Sample(sample.name, np.ascontiguousarray(rgb), np.ascontiguousarray(sem), np.ascontiguousarray(inst))


def _donor_as_placed(donor: Sample, shape, rng: np.random.Generator):
    """The donor's colour, classes and instances at the frame's size, mirrored as a whole half of the time."""
    if donor.semantic.shape != shape:
        donor = Sample(donor.name, _resize(donor.rgb, shape, False), _resize(donor.semantic, shape, True),
                       _resize(donor.instance, shape, True))
    d_rgb, d_sem, d_inst = donor.rgb, donor.semantic, donor.instance
    if rng.random() < 0.5:
        d_rgb, d_sem, d_inst = d_rgb[:, ::-1], d_sem[:, ::-1], d_inst[:, ::-1]
    return d_rgb, d_sem, d_inst


def copy_paste(sample: Sample, donor: Sample, rng: np.random.Generator, thing_lut: np.ndarray) -> Sample:
    """Simple Copy-Paste (Ghiasi et al., CVPR 2021): each thing instance of another training frame is, with
    probability 1/2, pasted onto this frame at the same place (the donor mirrored as a whole half of the
    time), with its colour, class and a new instance id. What it covers is occluded: the rest of a covered
    instance keeps its id. More objects per frame, rare classes in new streets, and objects in front of
    one another, which parked rows and pedestrian groups need."""
    d_rgb, d_sem, d_inst = _donor_as_placed(donor, sample.semantic.shape, rng)
    is_thing = thing_lut[d_sem] & (d_inst > 0)
    ids = np.unique(d_inst[is_thing])
    chosen = ids[rng.random(len(ids)) < 0.5]
    paste = is_thing & np.isin(d_inst, chosen)
    if not paste.any():
        return sample
    offset = int(sample.instance.max())
    if offset + int(chosen.max()) > np.iinfo(np.uint16).max:
        return sample  # ids would not fit in the instance map
    rgb, sem, inst = sample.rgb.copy(), sample.semantic.copy(), sample.instance.copy()
    rgb[paste], sem[paste] = d_rgb[paste], d_sem[paste]
    inst[paste] = d_inst[paste].astype(inst.dtype) + offset
    return Sample(sample.name, rgb, sem, inst)


def class_mix(sample: Sample, donor: Sample, rng: np.random.Generator, thing_lut: np.ndarray) -> Sample:
    """ClassMix (Olsson et al., WACV 2021) with labels on both sides: half of the classes in the donor (a frame
    of another drive; rounded up, chosen at random) are pasted onto this frame, every pixel of them, at the same
    place (the donor mirrored as a whole half of the time), with their colour and class; pasted things keep their
    instances under new ids, pasted stuff has none. What it covers is occluded. One drive's pavement, fences and
    signs stand in another drive's street, so a class cannot be told by the street around it."""
    d_rgb, d_sem, d_inst = _donor_as_placed(donor, sample.semantic.shape, rng)
    classes = np.unique(d_sem[d_sem != VOID])
    if not len(classes):
        return sample
    chosen = rng.permutation(classes)[:(len(classes) + 1) // 2]
    paste = np.isin(d_sem, chosen)
    things = paste & thing_lut[d_sem] & (d_inst > 0)
    offset = int(sample.instance.max())
    if things.any() and offset + int(d_inst[things].max()) > np.iinfo(np.uint16).max:
        return sample  # ids would not fit in the instance map
    rgb, sem, inst = sample.rgb.copy(), sample.semantic.copy(), sample.instance.copy()
    rgb[paste], sem[paste], inst[paste] = d_rgb[paste], d_sem[paste], 0
    inst[things] = d_inst[things].astype(inst.dtype) + offset
    return Sample(sample.name, rgb, sem, inst)
