"""Score COCO-panoptic folders (panopticapi's pq_compute arguments) with our streaming evaluator."""
import json
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..images import open_image

from .evaluator import Evaluator, taxonomy_from_categories
from .pq import SegmentInfo


def _read_ids(path: Path) -> np.ndarray:
    """A COCO panoptic PNG as segment ids, R + 256 G + 256² B (coco_format.rgb_to_id): PIL adds an
    alpha byte in C, and a pixel's four bytes read as one little-endian integer are the id plus
    alpha << 24; one mask instead of rgb_to_id's widening copy and arithmetic over three planes."""
    with open_image(path) as img:  # a missing or damaged PNG is one line naming it
        # a grey or 16-bit map converts to equal R, G and B: ids of 65793 times its values, scored as garbage
        if img.mode not in ("RGB", "RGBA", "P"):
            raise ValueError(f"'{path}' has image mode {img.mode}; expected a colour (RGB) PNG of segment ids "
                             f"(R + 256 G + 256² B, COCO panoptic)")
        return np.asarray(img.convert("RGBA")).view("<u4")[..., 0] & 0xFFFFFF


EXPECTED_JSON = "expected a COCO panoptic JSON (annotations with image_id, file_name and segments_info{})"


def read_panoptic_json(path, role: str, categories: bool = False) -> dict:
    """The JSON of a COCO-panoptic folder, with the keys scoring reads checked: a missing file, bad JSON
    or a missing key is one line naming the file, not a KeyError from the middle of the scoring."""
    expected = EXPECTED_JSON.format(", and categories" if categories else "")
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{role} '{path}' does not exist; {expected}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{role} '{path}' is not readable JSON ({e}); {expected}") from None
    for key in ["annotations"] + (["categories"] if categories else []):
        if not isinstance(data, dict) or not isinstance(data.get(key), list):
            raise ValueError(f"{role} '{path}' has no list '{key}'; {expected}")
    for ann in data["annotations"]:
        if not isinstance(ann, dict) or not {"image_id", "file_name", "segments_info"} <= ann.keys():
            raise ValueError(f"{role} '{path}' has an annotation without image_id, file_name or segments_info; "
                             f"{expected}")
        for s in ann["segments_info"]:
            if not isinstance(s, dict) or not {"id", "category_id"} <= s.keys():
                raise ValueError(f"{role} '{path}': a segment of image '{ann['image_id']}' lacks id or category_id; "
                                 f"{expected}")
            for key in ("id", "category_id"):  # ids are compared with the PNG's integers
                if not isinstance(s[key], int) or isinstance(s[key], bool):
                    raise ValueError(f"{role} '{path}': a segment of image '{ann['image_id']}' has {key} "
                                     f"{json.dumps(s[key])}; expected a whole number")
    for c in data["categories"] if categories else []:
        if not isinstance(c, dict) or "id" not in c:
            raise ValueError(f"{role} '{path}' has a category without an id; {expected}")
    return data


_END = object()


def _prefetched(function, items, workers: int = 2, ahead: int = 4):
    """function(item) for each item in order, computed on `workers` threads at most `ahead` items
    ahead: PNG decoding releases the GIL, so decoding overlaps the scoring of the previous frame
    while memory stays bounded."""
    items = iter(items)
    with ThreadPoolExecutor(workers) as pool:
        pending = deque(pool.submit(function, item) for _, item in zip(range(ahead), items))
        while pending:
            result = pending.popleft().result()
            following = next(items, _END)
            if following is not _END:
                pending.append(pool.submit(function, following))
            yield result


def evaluate_folders(gt_json, gt_folder, pred_json, pred_folder) -> Evaluator:
    """PQ (and mIoU, pixel accuracy, Dice: each pixel's class is its segment's) of COCO-panoptic
    folders, in the ground truth JSON's categories."""
    for option, value in (("--gt-json", gt_json), ("--gt-folder", gt_folder), ("--pred-json", pred_json),
                          ("--pred-folder", pred_folder)):
        if not value:
            raise ValueError(f"{option} is missing; expected all four of --gt-json, --gt-folder, --pred-json and "
                             f"--pred-folder to score COCO-panoptic folders")
    gt = read_panoptic_json(gt_json, "--gt-json", categories=True)
    pred = read_panoptic_json(pred_json, "--pred-json")
    categories = {c["id"]: c for c in gt["categories"]}
    preds = {a["image_id"]: a for a in pred["annotations"]}
    for ann in gt["annotations"]:
        if ann["image_id"] not in preds:
            raise ValueError(f"no prediction for image '{ann['image_id']}' in {pred_json}")

    def read(ann):
        return (_read_ids(Path(gt_folder) / ann["file_name"]),
                _read_ids(Path(pred_folder) / preds[ann["image_id"]]["file_name"]))

    evaluator = Evaluator(taxonomy_from_categories(categories, Path(gt_json).stem))
    frames = _prefetched(read, gt["annotations"])
    for ann, (gt_ids, pr_ids) in tqdm(zip(gt["annotations"], frames), total=len(gt["annotations"]),
                                      desc="evaluate", unit="frame"):
        p = preds[ann["image_id"]]
        for s in p["segments_info"]:
            if s["category_id"] not in categories:
                raise ValueError(f"prediction segment {s['id']} of image '{p['image_id']}' has unknown category "
                                 f"{s['category_id']}")
        where = f"image '{ann['image_id']}' ({Path(pred_folder) / p['file_name']} against " \
                f"{Path(gt_folder) / ann['file_name']})"
        if gt_ids.shape != pr_ids.shape:
            raise ValueError(f"{where}: ground truth {gt_ids.shape[::-1]} and prediction {pr_ids.shape[::-1]} pixels "
                             f"(width, height); expected a prediction PNG the size of its ground truth")
        try:
            evaluator.add_segments(
                gt_ids, {s["id"]: SegmentInfo(s["category_id"], bool(s.get("iscrowd", 0))) for s in ann["segments_info"]},
                pr_ids, {s["id"]: SegmentInfo(s["category_id"], False) for s in p["segments_info"]})
        except ValueError as e:  # which of thousands of frames: the files to look at
            # a segment listed but not drawn is refused too: panopticapi refuses it in a prediction and counts it
            # missed in a ground truth, which nothing could have found
            raise ValueError(f"{where}: {e}; expected a PNG and its JSON's segments_info to name the same "
                             f"segments") from None
    return evaluator
