"""numpy <-> ROS message fields, shared by the live node and the bag reader / writer.

Nothing here imports ROS: functions read attributes of any message object with the standard
field names (rclpy messages and rosbags dataclasses alike) and return plain field values, so the
same code is tested here through the bag path and runs in the node.
"""
import io
from typing import Dict, List

import numpy as np

from .inference.result import PanopticResult
from .taxonomy import Taxonomy

# encoding -> (channels, dtype, to RGB)
_DECODERS = {
    "rgb8": (3, np.uint8, lambda a: a),
    "bgr8": (3, np.uint8, lambda a: a[..., ::-1]),
    "rgba8": (4, np.uint8, lambda a: a[..., :3]),
    "bgra8": (4, np.uint8, lambda a: a[..., 2::-1]),
    "mono8": (1, np.uint8, lambda a: np.repeat(a, 3, axis=2)),
}
SUPPORTED_ENCODINGS = tuple(_DECODERS)
SUPPORTED_FORMATS = ("jpeg", "png")


class FrameError(ValueError):
    """A frame that cannot be decoded; the message says what was wrong and what was expected."""


def image_to_rgb(msg) -> np.ndarray:
    """sensor_msgs/Image -> H x W x 3 uint8 RGB (a copy, safe to keep)."""
    enc = str(msg.encoding).lower()
    if enc not in _DECODERS:
        raise FrameError(f"unsupported encoding '{msg.encoding}', expected one of {', '.join(SUPPORTED_ENCODINGS)}")
    channels, dtype, to_rgb = _DECODERS[enc]
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0 or w <= 0:
        raise FrameError(f"zero-size frame ({w}x{h}), expected a non-empty image")
    row = w * channels * np.dtype(dtype).itemsize
    if step < row:
        raise FrameError(f"step {step} is smaller than width x channels = {row} for {enc}")
    data = np.frombuffer(bytes(msg.data) if not isinstance(msg.data, np.ndarray) else msg.data.tobytes(), np.uint8)
    if data.size != step * h:
        raise FrameError(f"data length {data.size} != step x height = {step} x {h} = {step * h}")
    rows = data.reshape(h, step)[:, :row]
    return np.ascontiguousarray(to_rgb(rows.reshape(h, w, channels)))


def compressed_to_rgb(msg) -> np.ndarray:
    """sensor_msgs/CompressedImage (jpeg / png) -> H x W x 3 uint8 RGB."""
    from PIL import Image, UnidentifiedImageError

    fmt = str(msg.format).lower()
    if not any(f in fmt for f in SUPPORTED_FORMATS):
        raise FrameError(f"unsupported compressed format '{msg.format}', expected jpeg or png")
    data = bytes(msg.data) if not isinstance(msg.data, np.ndarray) else msg.data.tobytes()
    try:
        with Image.open(io.BytesIO(data)) as im:
            rgb = np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as e:
        raise FrameError(f"compressed frame does not decode as {fmt} ({e})") from None
    if rgb.size == 0:
        raise FrameError("compressed frame decodes to an empty image")
    return rgb


# the encodings we write (outputs, converted bags): encoding -> (dtype, channels)
OUTPUT_ENCODINGS = {"mono8": (np.uint8, 1), "mono16": (np.uint16, 1), "32SC1": (np.int32, 1), "rgb8": (np.uint8, 3),
                    "bgr8": (np.uint8, 3)}


def image_fields(array: np.ndarray, encoding: str) -> Dict[str, object]:
    """H x W (x C) array -> Image fields (height, width, encoding, is_bigendian, step, data)."""
    if encoding not in OUTPUT_ENCODINGS:
        raise ValueError(f"cannot write encoding '{encoding}', expected one of {sorted(OUTPUT_ENCODINGS)}")
    dtype, channels = OUTPUT_ENCODINGS[encoding]
    array = np.ascontiguousarray(array, dtype=dtype)
    if array.ndim != (2 if channels == 1 else 3):
        raise ValueError(f"{encoding} needs a {'H x W' if channels == 1 else 'H x W x 3'} array, got {array.shape}")
    array = array.astype(array.dtype.newbyteorder("<"), copy=False)  # little endian on the wire
    h, w = array.shape[:2]
    return {"height": h, "width": w, "encoding": encoding, "is_bigendian": 0,
            "step": w * channels * array.dtype.itemsize, "data": array.view(np.uint8).reshape(-1)}


def image_array(msg) -> np.ndarray:
    """Our output images (mono8, mono16, 32SC1, rgb8, bgr8) back to arrays (tests, evaluation)."""
    if msg.encoding not in OUTPUT_ENCODINGS:
        raise FrameError(f"unsupported encoding '{msg.encoding}', expected one of {sorted(OUTPUT_ENCODINGS)}")
    dtype, channels = OUTPUT_ENCODINGS[msg.encoding]
    dt = np.dtype(dtype).newbyteorder(">" if msg.is_bigendian else "<")
    data = np.frombuffer(bytes(msg.data) if not isinstance(msg.data, np.ndarray) else msg.data.tobytes(), np.uint8)
    h, w = int(msg.height), int(msg.width)
    if h <= 0 or w <= 0 or int(msg.step) < w * channels * dt.itemsize:
        raise FrameError(f"a {w}x{h} {msg.encoding} image with step {msg.step}; expected a non-empty image whose "
                         f"step holds a row")
    if data.size != int(msg.step) * h:
        raise FrameError(f"data length {data.size} != step x height = {msg.step} x {h}")
    rows = data.reshape(h, int(msg.step))[:, : w * channels * dt.itemsize]
    arr = np.frombuffer(rows.tobytes(), dt).reshape((h, w) if channels == 1 else (h, w, channels))
    return arr.astype(dtype)


def detections(result: PanopticResult, taxonomy: Taxonomy) -> List[Dict[str, object]]:
    """One entry per thing segment: id = instance id, class id + name, score, box centre / size in
    input pixels (vision_msgs BoundingBox2D convention: centre and full size)."""
    out = []
    for s in result.segments:
        if not s.is_thing:
            continue
        x0, y0, x1, y1 = s.box
        out.append({"id": str(s.instance), "class_id": str(s.label), "class_name": taxonomy.name_of(s.label),
                    "score": float(s.score), "center_x": (x0 + x1) / 2.0, "center_y": (y0 + y1) / 2.0,
                    "size_x": float(x1 - x0), "size_y": float(y1 - y0)})
    return out


def label_info(taxonomy: Taxonomy) -> List[Dict[str, object]]:
    return [{"class_id": c.id, "class_name": c.name} for c in taxonomy.classes]
