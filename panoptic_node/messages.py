"""numpy <-> ROS message fields, shared by the live node and the bag reader / writer.

Nothing here imports ROS: functions read attributes of any message object with the standard
field names (rclpy messages and rosbags dataclasses alike) and return plain field values, so the
same code is tested here through the bag path and runs in the node.
"""
import functools
import io
import warnings
from typing import Dict, List, Tuple

import numpy as np

from .inference.result import PanopticResult
from .taxonomy import Taxonomy


def stamp_ns(header) -> int:
    """A std_msgs/Header's stamp in nanoseconds (0: the sender left it unset)."""
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def _top_byte(a: np.ndarray) -> np.ndarray:
    """16-bit camera values to 8 bits, as cv_bridge converts them: the top byte."""
    return (a >> 8).astype(np.uint8)


@functools.lru_cache(maxsize=8)
def _bayer_layout(h: int, w: int, pattern: str):
    """Per colour of a Bayer pattern: where its sites are, its kernel, and 1 / the kernel's weight over
    the sites each pixel sees (the normalisation; depends on the frame size only, so kept per size)."""
    from scipy.ndimage import convolve
    cross = np.array([[0, 1, 0], [1, 4, 1], [0, 1, 0]], np.float32)
    box = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], np.float32)
    layout = []
    for colour in "rgb":
        sites = np.zeros((h, w), np.float32)
        for (dy, dx), c in zip(((0, 0), (0, 1), (1, 0), (1, 1)), pattern):
            if c == colour:
                sites[dy::2, dx::2] = 1
        kernel = cross if colour == "g" else box
        layout.append((sites, kernel, 1 / convolve(sites, kernel, mode="mirror")))
    return layout


def demosaic(raw: np.ndarray, pattern: str) -> np.ndarray:
    """A Bayer mosaic (H x W, the 2x2 `pattern` of its top-left corner, e.g. 'rggb') -> H x W x 3 RGB,
    bilinear: a pixel keeps its own colour and takes each other colour as the mean of its nearest sites
    of that colour (4-neighbours for green; row, column or diagonal neighbours for red and blue), by
    normalised convolution so the frame's border needs no special case."""
    from scipy.ndimage import convolve
    values = raw.astype(np.float32)
    out = np.empty((*raw.shape, 3), np.uint8)
    for i, (sites, kernel, norm) in enumerate(_bayer_layout(*raw.shape, pattern)):
        weighted = convolve(values * sites, kernel, mode="mirror")
        out[..., i] = np.clip(np.round(weighted * norm), 0, 255)
    return out


def _bt601_tables():
    """ITU-R BT.601 studio range (Y 16-235, chroma 16-240 around 128) as integer tables, x 64: the
    per-pixel work is then table look-ups and additions."""
    v = np.arange(256, dtype=np.float64)
    scaled = lambda a: np.round(64 * a).astype(np.int32)  # noqa: E731
    return (scaled(1.164 * (v - 16)), scaled(1.596 * (v - 128)), scaled(-0.392 * (v - 128)),
            scaled(-0.813 * (v - 128)), scaled(2.017 * (v - 128)))


_BT601 = _bt601_tables()


def yuv422_to_rgb(a: np.ndarray, y_first: bool) -> np.ndarray:
    """Packed YUV 4:2:2 (H x W x 2 bytes; UYVY, or YUYV when `y_first`) -> RGB with ITU-R BT.601
    studio-range coefficients, as USB cameras send it and OpenCV decodes it."""
    luma, red_v, green_u, green_v, blue_u = _BT601
    y = luma[a[..., 0 if y_first else 1]]
    chroma = a[..., 1 if y_first else 0]
    u, v = chroma[:, 0::2], chroma[:, 1::2]  # each pair of pixels shares one U and one V
    out = np.empty((*a.shape[:2], 3), np.uint8)
    for i, term in enumerate((red_v[v], green_u[u] + green_v[v], blue_u[u])):
        channel = y + np.repeat(term, 2, axis=1) + 32  # + 32: round the x 64 fixed point
        np.clip(channel >> 6, 0, 255, out=channel)
        out[..., i] = channel
    return out


# encoding -> (channels, bytes per channel, to RGB): the encodings of sensor_msgs/image_encodings.hpp a
# camera driver publishes (8- and 16-bit colour and grey, raw Bayer, packed YUV 4:2:2)
_DECODERS = {
    "rgb8": (3, 1, lambda a: a),
    "bgr8": (3, 1, lambda a: a[..., ::-1]),
    "rgba8": (4, 1, lambda a: a[..., :3]),
    "bgra8": (4, 1, lambda a: a[..., 2::-1]),
    "mono8": (1, 1, lambda a: np.repeat(a, 3, axis=2)),
    "rgb16": (3, 2, lambda a: _top_byte(a)),
    "bgr16": (3, 2, lambda a: _top_byte(a[..., ::-1])),
    "rgba16": (4, 2, lambda a: _top_byte(a[..., :3])),
    "bgra16": (4, 2, lambda a: _top_byte(a[..., 2::-1])),
    "mono16": (1, 2, lambda a: np.repeat(_top_byte(a), 3, axis=2)),
    **{f"bayer_{p}8": (1, 1, lambda a, p=p: demosaic(a[..., 0], p)) for p in ("rggb", "bggr", "gbrg", "grbg")},
    "yuv422": (2, 1, lambda a: yuv422_to_rgb(a, y_first=False)),  # ROS's name for UYVY
    "uyvy": (2, 1, lambda a: yuv422_to_rgb(a, y_first=False)),
    "yuv422_yuy2": (2, 1, lambda a: yuv422_to_rgb(a, y_first=True)),  # ROS's name for YUYV
    "yuyv": (2, 1, lambda a: yuv422_to_rgb(a, y_first=True)),
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
    channels, size, to_rgb = _DECODERS[enc]
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0 or w <= 0:
        raise FrameError(f"zero-size frame ({w}x{h}), expected a non-empty image")
    if channels == 2 and w % 2:
        raise FrameError(f"a {enc} frame {w} pixels wide; expected an even width (two pixels share their chroma)")
    row = w * channels * size
    if step < row:
        raise FrameError(f"step {step} is smaller than width x channels x bytes = {row} for {enc}")
    data = np.frombuffer(bytes(msg.data) if not isinstance(msg.data, np.ndarray) else msg.data.tobytes(), np.uint8)
    if data.size != step * h:
        raise FrameError(f"data length {data.size} != step x height = {step} x {h} = {step * h}")
    rows = data.reshape(h, step)[:, :row]
    if size == 2:  # the byte order the message says (a view needs the rows without their padding)
        rows = np.ascontiguousarray(rows).view(np.dtype(np.uint16).newbyteorder(">" if msg.is_bigendian else "<"))
    return np.ascontiguousarray(to_rgb(rows.reshape(h, w, channels)))


MAX_FRAME_PIXELS = 64_000_000  # 8K x 8K: larger than any camera a car carries


def _decode_compressed(msg, what: str, convert) -> np.ndarray:
    """Untrusted compressed bytes -> `convert(opened PIL image)`, the frame's size read from its header and
    capped before a pixel is decoded; whatever goes wrong is one FrameError naming `what` was expected."""
    from PIL import Image

    data = bytes(msg.data) if not isinstance(msg.data, np.ndarray) else msg.data.tobytes()
    if not data:
        raise FrameError(f"compressed frame holds no data (0 bytes); expected {what}")
    try:
        with warnings.catch_warnings():  # Pillow warns of big frames at open; the cap below decides
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
        with im:
            # the header's size, before a pixel is decoded: a few bytes can declare a frame of gigabytes
            if im.width * im.height > MAX_FRAME_PIXELS:
                raise FrameError(f"compressed frame declares {im.width}x{im.height} pixels, more than any camera's "
                                 f"(at most {MAX_FRAME_PIXELS // 1_000_000} megapixels are decoded)")
            array = convert(im)
    except FrameError:
        raise
    except Image.DecompressionBombError as e:  # Pillow's own limit, met at open
        raise FrameError(f"compressed frame declares more pixels than any camera's ({e})") from None
    except Image.UnidentifiedImageError:  # Pillow's words name a BytesIO object and its address
        raise FrameError(f"compressed frame does not decode as {what}: its {len(data)} bytes are no image file "
                         f"Pillow knows (they start {data[:8].hex(' ')})") from None
    except Exception as e:  # untrusted bytes: Pillow raises OSError, but also SyntaxError ("broken PNG file"),
        # ValueError and others for damaged data; whatever it raises, the frame does not decode
        raise FrameError(f"compressed frame does not decode as {what} ({type(e).__name__}: {e})") from None
    if array.size == 0:
        raise FrameError("compressed frame decodes to an empty image")
    return array


def _decoded_rgb(im) -> np.ndarray:
    """A decoded compressed frame as 8-bit RGB. A 16-bit grey PNG (a mono16 camera through image_transport's
    png compression) keeps its top byte, as its raw frame does: PIL's convert("RGB") clips it, which
    turned all but the darkest pixels white."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        grey = _top_byte(np.asarray(im).astype(np.int64).clip(0, 65535))
        return np.repeat(grey[..., None], 3, axis=-1)
    if im.mode == "F":
        raise FrameError("compressed frame holds floating-point values; expected an 8- or 16-bit image")
    return np.asarray(im.convert("RGB"))


def compressed_to_rgb(msg) -> np.ndarray:
    """sensor_msgs/CompressedImage (jpeg / png) -> H x W x 3 uint8 RGB."""
    fmt = str(msg.format).lower()
    if "compresseddepth" in fmt:  # a PNG behind a 12-byte depth header: a depth camera, not a colour one
        raise FrameError(f"compressed format '{msg.format}' is a depth image (image_transport's compressedDepth); "
                         f"expected a camera frame in jpeg or png")
    if not any(f in fmt for f in SUPPORTED_FORMATS):
        raise FrameError(f"unsupported compressed format '{msg.format}', expected jpeg or png")
    return _decode_compressed(msg, f"'{msg.format}'", _decoded_rgb)


# image_transport's compressed format for a colour frame: the raw encoding, then what the JPEG holds
JPEG_FORMAT = "bgr8; jpeg compressed bgr8"


def jpeg_fields(rgb: np.ndarray, quality: int = 80) -> Dict[str, object]:
    """H x W x 3 uint8 RGB -> CompressedImage fields (format, data) as image_transport's compressed plugin
    writes them for a bgr8 image: what RViz and `ros2 run image_transport republish` decode."""
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, np.uint8)).save(buf, format="JPEG", quality=quality)
    return {"format": JPEG_FORMAT, "data": buf.getvalue()}


# image_transport's compressed format for a mono image in PNG: the raw encoding, then the compression (the
# plugin names a target only for colour images, hence the trailing space)
PNG_LABEL_ENCODINGS = {"mono8": np.uint8, "mono16": np.uint16}
PNG_COMPRESSION = 3  # zlib level: as fast as 1 on label maps here (1.1 ms for 480x360 mono8), and smaller


def png_fields(labels: np.ndarray, encoding: str) -> Dict[str, object]:
    """H x W label map -> CompressedImage fields (format, data) as image_transport's compressed plugin writes a
    mono8 / mono16 image in PNG: lossless, so every label and instance id arrives exactly (JPEG would blur
    them); a 480x360 semantic map takes about 5 KB instead of 173 KB (bench/bench_map_compression.py)."""
    from PIL import Image
    if encoding not in PNG_LABEL_ENCODINGS:
        raise ValueError(f"cannot PNG-compress encoding '{encoding}', expected one of {sorted(PNG_LABEL_ENCODINGS)}")
    array = np.ascontiguousarray(labels, PNG_LABEL_ENCODINGS[encoding])
    if array.ndim != 2:
        raise ValueError(f"{encoding} needs an H x W array, got {array.shape}")
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=PNG_COMPRESSION)  # 16 bits stay 16 bits
    return {"format": f"{encoding}; png compressed ", "data": buf.getvalue()}


# the modes Pillow opens each kind of PNG label map in (a 16-bit grey PNG is "I;16", or "I" in older Pillows)
_PNG_LABEL_MODES = {"mono8": ("L",), "mono16": ("I;16", "I;16B", "I")}


def png_labels(msg) -> np.ndarray:
    """A label map's lossless twin (the CompressedImage png_fields writes, as image_transport's compressed
    plugin does) back to its H x W array: mono8 -> uint8, mono16 -> uint16, every value exact."""
    fmt = str(msg.format)
    encoding = fmt.split(";")[0].strip()
    if encoding not in PNG_LABEL_ENCODINGS or "png" not in fmt.lower():
        raise FrameError(f"compressed map of format '{fmt}'; expected a lossless label map "
                         f"('mono8; png compressed ' or 'mono16; png compressed ')")
    dtype = PNG_LABEL_ENCODINGS[encoding]

    def labels(im):
        if im.format != "PNG" or im.mode not in _PNG_LABEL_MODES[encoding]:
            raise FrameError(f"compressed map of format '{fmt}' holds a {im.format} image of mode {im.mode}; "
                             f"expected a one-channel {np.dtype(dtype).itemsize * 8}-bit PNG")
        array = np.asarray(im)
        if array.min(initial=0) < 0 or array.max(initial=0) > np.iinfo(dtype).max:  # mode "I" is 32-bit
            raise FrameError(f"compressed map of format '{fmt}' holds values outside {encoding}")
        return array.astype(dtype)
    return _decode_compressed(msg, "a PNG label map", labels)


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


def calibrated_size(info) -> Tuple[int, int]:
    """(w, h) of the frames a sensor_msgs/CameraInfo describes, as image_geometry reads it: its roi (the
    whole sensor when 0) over its binning (0 or 1: none)."""
    roi = info.roi
    w, h = (int(roi.width), int(roi.height)) if roi.width and roi.height else (int(info.width), int(info.height))
    return w // max(1, int(info.binning_x)), h // max(1, int(info.binning_y))


def calibration_misfit(calibrated: Tuple[int, int], frames: Tuple[int, int]) -> str:
    """Why a calibration does not fit its frames ('' when it does): intrinsics of another resolution
    misplace every pixel a consumer projects with them."""
    if calibrated == frames:
        return ""
    return (f"camera_info describes {calibrated[0]}x{calibrated[1]} frames (after its roi and binning), the frames "
            f"are {frames[0]}x{frames[1]}: the maps go out with a calibration that does not fit them (the driver's "
            f"calibration file is for another resolution?)")


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
