"""Reading image files: camera frames as HxWx3 uint8 RGB, label maps as integer arrays. Every
problem (not an image, truncated, over PIL's size limit, a label map of another size or depth) is one
ValueError naming the file and what was expected."""
import numpy as np
from PIL import Image, ImageOps

# modes PIL gives integer labels in, by how many bits the values may use
LABEL_BITS = {"L": 8, "P": 8, "I;16": 16, "I;16B": 16, "I;16L": 16, "I": 32}


def open_image(path) -> Image.Image:
    try:
        im = Image.open(path)
        im.load()  # decode now: a truncated file fails here, not later
        return im
    except Image.DecompressionBombError as e:
        raise ValueError(f"image '{path}' is larger than PIL's safety limit ({e}); expected a camera frame") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise ValueError(f"cannot read image '{path}' ({e}); expected a PNG or JPEG file") from None


def check_image(path) -> tuple:
    """(width, height) of an image file whose every chunk is there and intact, without decoding its pixels (PNG
    checksums: ~3 ms for a 2048x1024 frame, against ~90 to decode it); open_image's one-line error otherwise."""
    try:
        with Image.open(path) as im:
            size = im.size
            im.verify()
        return size
    except (OSError, ValueError, SyntaxError) as e:
        raise ValueError(f"cannot read image '{path}' ({e}); expected a PNG or JPEG file") from None


def read_rgb(path) -> np.ndarray:
    """An image file as RGB, upright: a JPEG's EXIF orientation is applied, as image viewers, OpenCV
    and detectron2 do, so the maps line up with the picture a user sees. 16- and 32-bit greyscale are
    scaled to 8 bits (PIL's convert("RGB") clips them, which turns a 16-bit frame white)."""
    with open_image(path) as stored:
        try:
            im = ImageOps.exif_transpose(stored)  # the same image when there is no orientation to apply
        except Exception:  # a damaged EXIF block says nothing reliable: the pixels as stored
            im = stored
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            a = np.asarray(im).astype(np.float64)
            top = 65535.0 if im.mode != "I" or a.max() > 255 else 255.0
            grey = np.clip(np.round(a * (255.0 / top)), 0, 255).astype(np.uint8)
            return np.repeat(grey[..., None], 3, axis=-1)
        if im.mode == "F":
            raise ValueError(f"image '{path}' holds floating-point values (mode F); expected an 8- or 16-bit image")
        return np.asarray(im.convert("RGB"))


def read_labels(path, bits: int = 8, shape=None) -> np.ndarray:
    """A label map (class or instance ids) exactly as stored: refused when it is a colour image, has
    more bits than `bits` allows, or is not `shape` (the frame it labels)."""
    with open_image(path) as im:
        if im.mode not in LABEL_BITS:
            raise ValueError(f"label map '{path}' is a {im.mode} image; expected single-channel integer ids")
        if LABEL_BITS[im.mode] > bits:
            a = np.asarray(im)
            if a.size and (a.max() >= 2 ** bits or a.min() < 0):
                raise ValueError(f"label map '{path}' holds values up to {a.max()} ({im.mode}); expected "
                                 f"{bits}-bit ids")
        a = np.asarray(im).copy()
    if shape is not None and a.shape[:2] != tuple(shape[:2]):
        raise ValueError(f"label map '{path}' is {a.shape[1]}x{a.shape[0]} but its image is "
                         f"{shape[1]}x{shape[0]}; expected the same size")
    return a

