"""The car itself in its own camera's view (the bonnet, a mirror, the camera housing): a mask of those
pixels makes them void in every output, so a driving stack is never given a 'car' that is its own.

One 8-bit PNG per camera, at the camera's resolution, 0 where the car itself is; the masks of a car lie in
one folder, each named after its camera's namespace (`/camera/front` -> `camera_front.png`), which is what
the node's `ego_mask_dir` and replay's `--ego-masks` take.
"""
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from .result import PanopticResult, nearest_indices, result_from_segments


def mask_file(folder, namespace: str) -> Path:
    """The mask of the camera publishing under `namespace`: '/camera/front' -> FOLDER/camera_front.png."""
    return Path(folder) / f"{namespace.strip('/').replace('/', '_') or 'camera'}.png"


def load_ego_mask(path) -> np.ndarray:
    """H x W bool, True where the frame is the street (kept); refused in one line when it cannot be read or
    masks every pixel."""
    from ..images import open_image
    if not Path(path).is_file():
        raise FileNotFoundError(f"ego mask '{path}' does not exist")
    try:
        with open_image(path) as im:  # a damaged file or one over PIL's size limit: one ValueError
            keep = np.asarray(im.convert("L")) > 0
    except ValueError as e:
        raise ValueError(f"ego mask: {e}") from None  # open_image's line says what was expected
    if not keep.any():
        raise ValueError(f"ego mask '{path}' masks every pixel; expected 0 only where the car itself is (its "
                         f"bonnet, a mirror) and non-zero elsewhere")
    return keep


def masks_for(folder, namespaces: List[str]) -> Dict[str, Optional[np.ndarray]]:
    """Each camera's mask from `folder` (None: no file for that camera, so nothing is masked there). A folder
    that is not there is refused: a mistyped path must not silently mask nothing."""
    if not Path(folder).is_dir():
        raise FileNotFoundError(f"ego mask folder '{folder}' is not a folder; expected one holding a PNG per camera "
                                f"named after its namespace (/camera/front -> camera_front.png)")
    return {ns: load_ego_mask(mask_file(folder, ns)) if mask_file(folder, ns).is_file() else None
            for ns in namespaces}


def describe(folder, namespace: str, keep: Optional[np.ndarray]) -> str:
    """The line the node and replay log for a camera's mask (or its absence)."""
    path = mask_file(folder, namespace)
    return (f"camera {namespace or '/'}: ego mask {path} ({100 * (1 - keep.mean()):.1f} % of its pixels void in "
            f"every output)" if keep is not None else f"camera {namespace or '/'}: no ego mask ({path} not found)")


def check_folder(folder) -> Dict[str, str]:
    """Every mask in `folder` read once (a bad one refused in one line now, not in the middle of a fleet);
    returns each file's sha256, what a fleet's rerun compares (other masks, other scores)."""
    from .cache_key import file_sha256
    masks_for(folder, [])  # the folder itself
    out = {}
    for path in sorted(Path(folder).glob("*.png")):
        load_ego_mask(path)
        out[path.name] = file_sha256(path)
    return out


def fit_note(namespace: str, keep: np.ndarray, height: int, width: int) -> str:
    """What to say when a camera's mask is scaled to its frames ('' when it was drawn at their size): a mask of
    another shape stretched over them hides the wrong pixels, the likely cause another camera mode."""
    mh, mw = keep.shape
    if (mh, mw) == (height, width):
        return ""
    note = f"camera {namespace or '/'}: ego mask is {mw}x{mh}, its frames {width}x{height}: the mask is scaled to them"
    if abs(mw / mh - width / height) > 0.01 * width / height:
        note += (f", stretched from a {mw / mh:.2f} to a {width / height:.2f} aspect ratio (drawn for another "
                 f"camera mode? draw it on one of these frames)")
    return note


def fitted(keep: np.ndarray, height: int, width: int) -> np.ndarray:
    """The mask at a frame's size (nearest neighbour, as the maps are upsampled) when it was drawn at another."""
    if keep.shape == (height, width):
        return keep
    return keep.take(nearest_indices(keep.shape[0], height), axis=0).take(nearest_indices(keep.shape[1], width), axis=1)


def apply_ego_mask(result: PanopticResult, keep: np.ndarray, thing_lut: np.ndarray) -> PanopticResult:
    """`result` with the masked pixels void: a segment wholly there is gone, one partly there keeps the rest
    (its area and box counted again), and things are numbered 1..N again."""
    keep = fitted(keep, *result.shape)
    kept = np.where(keep, result.segment_ids, 0)
    present = np.unique(kept)
    present = present[present > 0]
    by_id = {s.id: s for s in result.segments}
    renumber = np.zeros(int(result.segment_ids.max(initial=0)) + 1, np.int64)
    renumber[present] = np.arange(1, len(present) + 1)
    masked = result_from_segments(renumber[kept], np.array([by_id[i].label for i in present.tolist()], np.int64),
                                  np.array([by_id[i].score for i in present.tolist()]), thing_lut, result.labels)
    masked.timings = result.timings
    return masked
