"""Score COCO-panoptic folders (panopticapi's pq_compute arguments) with our streaming PQ."""
import json
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..coco_format import rgb_to_id
from .pq import PQAccumulator, SegmentInfo


def pq_from_folders(gt_json, gt_folder, pred_json, pred_folder):
    """Returns (PQAccumulator, categories {id: {isthing, name}})."""
    gt = json.loads(Path(gt_json).read_text())
    pred = json.loads(Path(pred_json).read_text())
    categories = {c["id"]: c for c in gt["categories"]}
    preds = {a["image_id"]: a for a in pred["annotations"]}
    acc = PQAccumulator()
    for ann in tqdm(gt["annotations"], desc="evaluate", unit="frame"):
        if ann["image_id"] not in preds:
            raise ValueError(f"no prediction for image '{ann['image_id']}' in {pred_json}")
        p = preds[ann["image_id"]]
        gt_ids = rgb_to_id(np.asarray(Image.open(Path(gt_folder) / ann["file_name"]).convert("RGB")))
        pr_ids = rgb_to_id(np.asarray(Image.open(Path(pred_folder) / p["file_name"]).convert("RGB")))
        for s in p["segments_info"]:
            if s["category_id"] not in categories:
                raise ValueError(f"prediction segment {s['id']} of image '{p['image_id']}' has unknown category "
                                 f"{s['category_id']}")
        acc.add(gt_ids, {s["id"]: SegmentInfo(s["category_id"], bool(s.get("iscrowd", 0))) for s in ann["segments_info"]},
                pr_ids, {s["id"]: SegmentInfo(s["category_id"], False) for s in p["segments_info"]})
    return acc, categories
