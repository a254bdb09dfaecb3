"""Colour overlays of a PanopticResult: class colour blended over the frame, things shaded per
instance, segment boundaries drawn, and each thing's class, instance id and score and each large stuff
region's class written on it (colours alone do not say which class is which). Used by the CLI, replay
videos and the node's overlay topic; and several cameras' overlays side by side for one video."""
from functools import lru_cache

import numpy as np

from .inference.result import VOID_LABEL, PanopticResult
from .taxonomy import Taxonomy


def colorize(result: PanopticResult, taxonomy: Taxonomy) -> np.ndarray:
    """H x W x 3 uint8 RGB: class colours, each thing instance a little lighter or darker.

    Every segment has one colour, so the colours are made per segment and the image is one lookup
    by segment id (at 1080p ~6x faster than colouring the label and instance maps pixel by pixel).
    Each colour is looked up as one 4-byte word and the answer is a view of its first three bytes
    (not contiguous): gathering three separate bytes per pixel took 9x as long (2.6 ms a 480x360 frame)."""
    top = int(result.segment_ids.max()) if result.segment_ids.size else 0
    lut = np.empty((top + 1, 3), np.int16)
    lut[:] = taxonomy.color_lut[VOID_LABEL]
    for s in result.segments:
        if s.id <= top:
            lut[s.id] = taxonomy.color_lut[s.label]
            if s.instance:  # a deterministic per-instance offset so touching cars stay tellable apart
                lut[s.id] += (s.instance * 37) % 61 - 30
    words = np.zeros((top + 1, 4), np.uint8)
    words[:, :3] = np.clip(lut, 0, 255)
    pixels = words.view(np.uint32)[:, 0].take(result.segment_ids)
    return pixels.view(np.uint8).reshape(*result.segment_ids.shape, 4)[..., :3]


def boundaries(segment_ids: np.ndarray) -> np.ndarray:
    edge = np.zeros(segment_ids.shape, bool)
    edge[:, 1:] |= segment_ids[:, 1:] != segment_ids[:, :-1]
    edge[1:, :] |= segment_ids[1:, :] != segment_ids[:-1, :]
    return edge


def overlay(rgb: np.ndarray, result: PanopticResult, taxonomy: Taxonomy, alpha: float = 0.5,
            labels: bool = True) -> np.ndarray:
    """RGB uint8 frame with the result drawn over it (void pixels keep the frame); `labels` writes the
    class names on it (not on frames under MIN_LABELLED_HEIGHT pixels, which have no room for text)."""
    if rgb.shape[:2] != result.shape:
        raise ValueError(f"overlay: frame {rgb.shape[:2]} and result {result.shape} differ in size")
    # 8-bit fixed-point blend over the whole frame, then a select: ~5x faster than float maths
    # on boolean-indexed pixels, and the overlay runs on every replayed / published frame; the sum is
    # built in place in one uint16 array
    a = int(round(alpha * 256))
    blend = rgb.astype(np.uint16)
    blend *= 256 - a
    blend += np.multiply(colorize(result, taxonomy), a, dtype=np.uint16)
    blend >>= 8
    out = np.where((result.segment_ids > 0)[..., None], blend.astype(np.uint8), rgb)
    out[boundaries(result.segment_ids)] = 255
    if labels and out.shape[0] >= MIN_LABELLED_HEIGHT:
        out = draw_labels(out, result, taxonomy)
    return out


MIN_LABELLED_HEIGHT = 96    # smaller frames get no text
STUFF_LABEL_SHARE = 0.01    # stuff regions of at least this share of the frame are named


@lru_cache(maxsize=8)
def _font(size: int):
    """Pillow's own font (nothing to find on the machine): scalable from Pillow 10.1; before that (Ubuntu
    22.04's apt Pillow 9, a Jetson's) its fixed 11-pixel bitmap font."""
    from PIL import ImageFont
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def _text_box(draw, text: str, font):
    """(x0, y0, x1, y1) of the text drawn at (0, 0). Before Pillow 9.2 (Ubuntu 22.04's apt Pillow 9.0)
    textbbox measures TrueType fonts only and the bitmap font has getsize (gone in Pillow 10) instead."""
    try:
        return draw.textbbox((0, 0), text, font=font)
    except ValueError:
        width, height = font.getsize(text)
        return 0, 0, width, height


def _inside_point(segment_ids: np.ndarray, seg_id: int, step: int):
    """A point of the segment near its centre (on a grid of `step` pixels, so HD frames stay cheap):
    the centroid itself can lie outside a curved region such as a road."""
    ys, xs = np.nonzero(segment_ids[::step, ::step] == seg_id)
    if not len(ys):
        return None
    k = np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2)
    return int(xs[k]) * step, int(ys[k]) * step


def draw_labels(rgb: np.ndarray, result: PanopticResult, taxonomy: Taxonomy) -> np.ndarray:
    """Each thing: 'class #id score' (its instance id, which tracking keeps from frame to frame) on a tag of
    its colour at its box's top-left corner (largest first, so small objects' tags stay on top); each stuff
    region covering STUFF_LABEL_SHARE of the frame: its class name in white outlined in black, at a point
    inside it."""
    from PIL import Image, ImageDraw
    h, w = rgb.shape[:2]
    size = max(10, round(h / 32))
    font = _font(size)
    scalable = hasattr(font, "size")  # FreeTypeFont; the bitmap ImageFont has no size
    image = Image.fromarray(rgb)
    draw = ImageDraw.Draw(image)
    step = max(1, min(h, w) // 90)
    for s in result.segments:
        if s.is_thing or s.area < STUFF_LABEL_SHARE * h * w:
            continue
        at = _inside_point(result.segment_ids, s.id, step)
        if at:
            name = taxonomy.name_of(s.label)
            x0, y0, x1, y1 = _text_box(draw, name, font)
            centred = (at[0] - (x0 + x1) // 2, at[1] - (y0 + y1) // 2)
            # an outline only where the font is scalable (a bitmap font takes no stroke)
            outline = {"stroke_width": max(1, size // 10), "stroke_fill": (0, 0, 0)} if scalable else {}
            draw.text(centred, name, font=font, fill=(255, 255, 255), **outline)
    for s in sorted((s for s in result.segments if s.is_thing), key=lambda s: -s.area):
        text = f"{taxonomy.name_of(s.label)} #{s.instance} {s.score:.2f}"
        x0, y0, x1, y1 = _text_box(draw, text, font)
        tw, th = x1 - x0 + 4, y1 - y0 + 4
        x = min(max(0, s.box[0]), max(0, w - tw))
        y = min(max(0, s.box[1] - th), max(0, h - th))  # above the box, or inside it at the top edge
        colour = tuple(int(c) // 2 for c in taxonomy.color_lut[s.label])  # darkened: white text reads on it
        draw.rectangle((x, y, x + tw - 1, y + th - 1), fill=colour)
        draw.text((x + 2 - x0, y + 2 - y0), text, font=font, fill=(255, 255, 255))
    return np.array(image)  # writable, as the overlay without labels is


def side_by_side(images, height: int, width: int) -> np.ndarray:
    """The images (RGB uint8, or None for a camera with no frame yet: black) each fitted into a
    height x width tile, aspect kept, centred on black, the tiles in a row: a video frame of constant
    size whatever the cameras' sizes."""
    from PIL import Image
    tiles = []
    for img in images:
        tile = np.zeros((height, width, 3), np.uint8)
        if img is not None:
            scale = min(height / img.shape[0], width / img.shape[1])
            h, w = max(1, round(img.shape[0] * scale)), max(1, round(img.shape[1] * scale))
            fitted = img if (h, w) == img.shape[:2] else np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR))
            top, left = (height - h) // 2, (width - w) // 2
            tile[top:top + h, left:left + w] = fitted
        tiles.append(tile)
    return np.concatenate(tiles, axis=1)
